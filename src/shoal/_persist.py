"""Durable state: a snapshot of the live objects, and a journal of the writes
made since, in one directory (the design of Redis' append-only file, with its rewrite).

Files in the directory::

    LOCK              held (flock) by the live server; a second server is refused
    ID                the id of the directory's objects, told to clients (``_protocol``)
    snapshot          every live object, as of the start of journal.<gen>
    journal.<gen>     the writes since that snapshot, in the order they ran; while a new
                      snapshot is written, a newer journal.<gen + 1> takes the writes
    snapshot.<gen>.tmp  a snapshot being written (by a child process); renamed when whole

Both files are sequences of records, each framed as::

    offset  size  field
    0       4     body length N, unsigned big-endian
    4       4     CRC-32 of the body
    8       N     body: one msgpack value (shoal's codec; opaque values stay opaque bytes)

The snapshot's records: ``["shoal-snapshot", 1, gen, next id]``, then ``[id, typeid, parent id,
state]`` for each object (the state as msgpack bytes of its own), then ``["end", count]``. The
journal's: ``["shoal-journal", 1, gen]``, then ``[0, next id, request]`` (a request as it came
from a client, replayed as it ran), ``[1, queue id, item]`` / ``[2, queue id]`` /
``[3, queue id, item]`` (an item put into / taken out of / put back first into a queue) and
``[4, id]`` (ids below it kept used: some were given to objects no journaled request makes)
and ``[5, nested]`` (the server's ``nested`` mode, "share" or "copy", for the requests after
it: each server writes it before its first request and in each new journal).

On start the snapshot is loaded and the journals from its generation on are replayed, oldest
first. A last journal whose last record is cut short (a crash in the middle of a write) is
truncated to its last whole record; any other damage stops the start with an error naming the
file and the offset, and nothing is overwritten. When the journals have grown past twice the
snapshot (and a floor), the server fsyncs the journal, begins journal.<gen + 1>, and a forked
child writes the objects as they were at that moment to ``snapshot.<gen + 1>.tmp`` and fsyncs it;
the server, which went on serving meanwhile, then renames it to ``snapshot`` and removes the
older journals. So a restart reads the live data, not its history, and a crash at any point
leaves either the old snapshot with every journal since it, or the new one with the journal
that follows it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator

from ._errors import ShoalError

__all__ = ["Store", "StoreError", "StoreLocked", "CorruptStore", "FileIO"]

log = logging.getLogger("shoal.server")
FRAME = struct.Struct("!II")
FSYNC_POLICIES = ("always", "everysec", "no")
COMPACT_FLOOR = 16 * 1024 * 1024


class StoreError(ShoalError):
    """The persistence directory cannot be used, or writing to it failed."""


class StoreLocked(StoreError):
    """Another live server uses the directory."""


class CorruptStore(StoreError):
    """A data file is damaged somewhere other than its very end."""


class FileIO:
    """The storage layer's system calls, in one place so tests can make them fail."""

    def write(self, fd: int, data: bytes) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)


def frame(body: bytes) -> bytes:
    return FRAME.pack(len(body), zlib.crc32(body)) + body


def read_records(path: str, tolerate_torn_tail: bool) -> tuple[list[bytes], int]:
    """The bodies of a file's records, and the offset just past the last whole one."""
    with open(path, "rb") as f:
        data = f.read()
    bodies = []
    pos, n = 0, len(data)
    while pos < n:
        if n - pos < FRAME.size:
            break                                    # a header cut short
        length, crc = FRAME.unpack_from(data, pos)
        end = pos + FRAME.size + length
        body = data[pos + FRAME.size:end]
        if end > n or length == 0 or zlib.crc32(body) != crc:
            # A torn last write leaves a cut-short or garbled record with nothing whole after
            # it (zeros included); a whole record further on means damage in the middle.
            # (A large record's successor starts past the search's reach: look where its
            # length, if intact, says the next one begins.)
            if tolerate_torn_tail and not (end < n and _record_at(data, end)) \
                    and not _whole_record_after(data, pos + 1):
                break
            raise CorruptStore(f"{path}: record at offset {pos} is damaged (bad length or "
                               f"checksum); the server will not start on it, and has changed "
                               f"nothing")
        bodies.append(body)
        pos = end
    if pos < n and not tolerate_torn_tail:
        raise CorruptStore(f"{path}: cut short at offset {pos}; the server will not start on "
                           f"it, and has changed nothing")
    return bodies, pos


def _record_at(data: bytes, pos: int) -> bool:
    """Does a whole, valid record start at ``pos``?"""
    n = len(data)
    if n - pos < FRAME.size:
        return False
    length, crc = FRAME.unpack_from(data, pos)
    end = pos + FRAME.size + length
    return bool(0 < length and end <= n and zlib.crc32(data[pos + FRAME.size:end]) == crc)


def _whole_record_after(data: bytes, start: int, limit: int = 1 << 20) -> bool:
    """Is there a whole, valid record starting anywhere in ``data[start:]`` (first MiB)?"""
    return any(_record_at(data, pos)
               for pos in range(start, min(len(data) - FRAME.size, start + limit) + 1))


class Store:
    """One server's persistence directory: load what is there, append, sync, compact."""

    def __init__(self, directory: str, fsync: str = "everysec", io: FileIO | None = None) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, not {fsync!r}")
        self.dir = os.path.abspath(directory)
        self.fsync = fsync
        self.io = io or FileIO()
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.lock_fd = os.open(os.path.join(self.dir, "LOCK"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(self.lock_fd, 32, 0).decode(errors="replace").strip()
            os.close(self.lock_fd)
            raise StoreLocked(f"{self.dir} is in use by another shoal server (pid {other or '?'}"
                              f"); stop it first, or use another directory") from None
        os.ftruncate(self.lock_fd, 0)
        os.pwrite(self.lock_fd, f"{os.getpid()}\n".encode(), 0)
        self.gen = 0                      # the journal being written: journal.<gen>
        self._fd = -1
        self.buffer: list[bytes] = []      # framed records waiting for commit()
        self.journal_size = 0             # bytes of the journals a restart would replay
        self.snapshot_size = 0
        self.snapshot_next_oid = 0           # the next object id when the snapshot was taken
        self._retry_size = 0              # after a failed snapshot: journal_size to try again at
        self._unsynced = False
        self.fsync_seconds = 0.0          # how long the last commit's fsync took
        self.records = 0                  # records written to journals since the start
        self.fsyncs = 0                   # fsyncs of journals since the start
        self.snapshots = 0                # snapshots written since the start
        self._sync_lock = threading.Lock()
        self.failed: BaseException | None = None
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None

    # -- loading -----------------------------------------------------------------------------

    def load(self) -> tuple[list[bytes], list[bytes]]:
        """The snapshot's records and the journals', as bodies (header records left out)."""
        from ._codec import Codec
        head = Codec().decode
        snapshot = os.path.join(self.dir, "snapshot")
        snap: list[bytes] = []
        gen = 0
        if os.path.exists(snapshot):
            bodies, _ = read_records(snapshot, tolerate_torn_tail=False)
            if not bodies or head(bodies[0])[:2] != ["shoal-snapshot", 1]:
                raise CorruptStore(f"{snapshot}: not a shoal snapshot (offset 0)")
            end = head(bodies[-1])
            if end[0] != "end":
                raise CorruptStore(f"{snapshot}: its end record is missing (the file ends at "
                                   f"offset {os.path.getsize(snapshot)})")
            if end[1] != len(bodies) - 2:
                raise CorruptStore(f"{snapshot}: its end record counts {end[1]} objects, but "
                                   f"{len(bodies) - 2} are there; the server will not start "
                                   f"on it, and has changed nothing")
            gen = head(bodies[0])[2]
            self.snapshot_next_oid = int(head(bodies[0])[3])
            self.snapshot_size = os.path.getsize(snapshot)
            snap = bodies[1:-1]
        journals: list[int] = []
        stale: list[int | str] = []
        for name in os.listdir(self.dir):
            kind, _, rest = name.partition(".")
            if kind == "journal" and rest.isdigit():
                (journals if int(rest) >= gen else stale).append(int(rest))
            elif kind == "snapshot" and name.endswith(".tmp"):
                stale.append(name)        # a snapshot whose writer died before it was whole
        journals.sort()
        if journals and journals != list(range(gen, journals[-1] + 1)):
            raise CorruptStore(f"{self.dir}: journal.{gen} to journal.{journals[-1]} should all "
                               f"be there, but only {', '.join(map(str, journals))} are")
        records: list[bytes] = []
        self.journal_size = 0
        for g in journals:
            path = self._journal_path(g)
            last = g == journals[-1]
            bodies, good = read_records(path, tolerate_torn_tail=last)
            if bodies and head(bodies[0])[:2] != ["shoal-journal", 1]:
                raise CorruptStore(f"{path}: not a shoal journal (offset 0)")
            with open(path, "r+b") as f:
                if good < os.path.getsize(path):
                    log.warning("%s: the last record was cut short (a crash while writing); "
                                "keeping the %d whole records before offset %d", path,
                                max(len(bodies) - 1, 0), good)
                    f.truncate(good)
                # What the last server wrote may not be on disk yet: make it so before any
                # new write follows it (the new writes build on it).
                self.io.fsync(f.fileno())
            records += bodies[1:]
            self.journal_size += good
        self._open_journal(journals[-1] if journals else gen)
        if stale:
            self._fsync_dir()    # the snapshot's rename is on disk before what it replaced goes
        for old in stale:    # journals older than the snapshot (a crash between renaming it and
            try:             # removing them), and unfinished snapshots
                os.unlink(self._journal_path(old) if isinstance(old, int)
                          else os.path.join(self.dir, old))
            except OSError:
                pass
        return snap, records

    def _journal_path(self, gen: int) -> str:
        return os.path.join(self.dir, f"journal.{gen}")

    def _open_journal(self, gen: int) -> None:
        from ._codec import Codec
        path = self._journal_path(gen)
        fresh = not os.path.exists(path) or os.path.getsize(path) == 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if fresh:
            header = frame(Codec().encode(["shoal-journal", 1, gen]))
            os.write(fd, header)
            os.fsync(fd)
            self._fsync_dir()
        with self._sync_lock:           # the everysec thread must not fsync a closed fd
            if self._fd >= 0:
                os.close(self._fd)
            self._fd = fd
        self.gen = gen
        if fresh:
            self.journal_size += len(header)
        if self.fsync == "everysec" and self._syncer is None:
            self._syncer = threading.Thread(target=self._sync_every_second, daemon=True,
                                            name="shoal-fsync")
            self._syncer.start()

    def instance_id(self) -> bytes:
        """The id of this directory's objects (file ``ID``, made at the first start): the same
        after every restart, since the objects and their ids come back; a new one if the
        directory is emptied."""
        path = os.path.join(self.dir, "ID")
        try:
            with open(path, "rb") as f:
                data = f.read()
            if len(data) == 8:
                return data
        except FileNotFoundError:
            pass
        data = os.urandom(8)
        try:
            with open(path + ".tmp", "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(path + ".tmp", path)
            self._fsync_dir()
        except OSError as e:
            raise StoreError(f"cannot write {path}: {e.strerror or e}") from e
        return data

    def _fsync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- writing -----------------------------------------------------------------------------

    def append(self, body: bytes) -> None:
        """Queue a record; ``commit`` writes the queue."""
        self.buffer.append(frame(body))

    @property
    def pending(self) -> int:
        """How many records wait for ``commit``."""
        return len(self.buffer)

    def commit(self) -> None:
        """Write the queued records (and, with fsync="always", wait until they are on disk).
        Raises StoreError; after a failure every later commit fails too."""
        if self.failed is not None:
            raise StoreError(f"persistence failed earlier ({self.failed}); writes are refused "
                             f"until the server restarts")
        if not self.buffer:
            return
        data = b"".join(self.buffer)
        records = len(self.buffer)
        self.buffer.clear()
        try:
            view = memoryview(data)
            while view:
                n = self.io.write(self._fd, view)   # type: ignore[arg-type]
                view = view[n:]
            self.journal_size += len(data)
            self.records += records
            if self.fsync == "always":
                started = time.perf_counter()
                self.io.fsync(self._fd)
                self.fsync_seconds = time.perf_counter() - started
                self.fsyncs += 1
            else:
                self._unsynced = True
        except OSError as e:
            self.failed = e
            raise StoreError(f"could not write the journal in {self.dir}: {e}") from e

    def _sync_every_second(self) -> None:
        while not self._stop.wait(1.0):
            self.sync()

    def sync(self) -> None:
        """fsync what was written (the everysec thread; also at a clean stop)."""
        with self._sync_lock:
            if not self._unsynced or self._fd < 0 or self.failed is not None:
                return
            self._unsynced = False
            try:
                self.io.fsync(self._fd)
                self.fsyncs += 1
            except OSError as e:
                self.failed = e
                log.error("could not fsync the journal in %s: %s; writes are refused from now "
                          "on", self.dir, e)

    # -- compaction --------------------------------------------------------------------------

    def wants_compaction(self) -> bool:
        return self.journal_size > max(COMPACT_FLOOR, 2 * self.snapshot_size, self._retry_size)

    def switch_journal(self) -> int:
        """Begin a new snapshot: fsync the journal (the restart may replay it before the next
        one) and begin journal.<gen + 1>. Returns the new snapshot's generation. The queued
        records must have been committed."""
        assert not self.buffer
        try:
            with self._sync_lock:
                self.io.fsync(self._fd)
                self._unsynced = False
            self.fsyncs += 1
            self._open_journal(self.gen + 1)
        except OSError as e:
            self.failed = e
            raise StoreError(f"could not begin a new journal in {self.dir}: {e}") from e
        return self.gen

    def snapshot_path(self, gen: int) -> str:
        """Where the snapshot of generation ``gen`` is written before it is whole."""
        return os.path.join(self.dir, f"snapshot.{gen}.tmp")

    @staticmethod
    def write_snapshot(path: str, header: bytes, records: Iterator[bytes], end: bytes) -> None:
        """Write a whole snapshot file and fsync it (in the child process)."""
        with open(path, "wb") as f:
            f.write(frame(header))
            for body in records:
                f.write(frame(body))
            f.write(frame(end))
            f.flush()
            os.fsync(f.fileno())

    def install_snapshot(self, gen: int) -> None:
        """The snapshot of ``gen`` is whole: make it the snapshot, drop the older journals."""
        path = os.path.join(self.dir, "snapshot")
        try:
            os.replace(self.snapshot_path(gen), path)
            self._fsync_dir()
        except OSError as e:
            log.error("could not install a snapshot in %s: %s (the journals go on)", self.dir, e)
            self.drop_snapshot(gen)
            return
        self.snapshot_size = os.path.getsize(path)
        self.journal_size = os.path.getsize(self._journal_path(self.gen))
        self._retry_size = 0
        self.snapshots += 1
        for old in range(gen - 1, -1, -1):
            try:
                os.unlink(self._journal_path(old))
            except FileNotFoundError:
                break
            except OSError:
                pass

    def drop_snapshot(self, gen: int) -> None:
        """A snapshot that was not finished: the journals since the last one stay, and the
        next try waits until they have grown as much again."""
        self._retry_size = 2 * self.journal_size
        try:
            os.unlink(self.snapshot_path(gen))
        except OSError:
            pass

    def close(self) -> None:
        self._stop.set()
        try:
            if self.buffer and self.failed is None:
                self.commit()
            if self._fd >= 0 and self.failed is None:
                os.fsync(self._fd)
        except (OSError, StoreError):
            pass
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        os.close(self.lock_fd)
