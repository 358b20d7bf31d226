"""The server: one loop thread owns every shared object, so every call is atomic without locks.

A connection authenticates (``_protocol``), then sends frames; each frame is one call on one
object. Replies are queued and written once per loop turn, after every request that arrived in
that turn has run. Objects live in a weak table: containers hold their nested objects strongly and
each connection holds the objects it has been sent (a count per object, released by the client),
so an object is freed exactly when nothing refers to it; a dropped connection drops its holds.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import pickle
import shutil
import socket
import ssl
import signal
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import _protocol as P
from ._codec import Codec, Opaque
from ._conn import HEADER, OUT_HIGH, Conn, PlainCodec
from ._errors import RemoteError
from ._persist import FileIO, Store, StoreError
from ._persist import frame as frame_record
from ._loop import READ, Loop, Timer
from ._sync import SYNC_TYPES, SQueue
from ._objects import NATIVE_TYPES, PENDING, SCustom, SDict, SList, Shared, op
from ._transport import Address, listen

__all__ = ["Server", "Registration", "keep_freed_memory"]

log = logging.getLogger("shoal.server")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3     # glibc's mallopt parameters
_PR_SET_PDEATHSIG = 1                              # Linux prctl option
_BULK_BODY = 64 * 1024    # a request this large is decoded counting its containers


def keep_freed_memory() -> None:
    """In a server's own process: let glibc's malloc keep freed memory for reuse (up to 32 MiB
    at the top of the heap; blocks under 8 MiB from the heap, not from fresh mappings of their
    own). Its default gives a large request's buffers back to the kernel when they are freed,
    so the next one pays a page fault per 4 KiB again: on the machines measured that was a
    third of the time of a 100,000-entry ``update`` (docs/architecture.md). Elsewhere than
    glibc: nothing to do."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 8 << 20)
    mallopt(_M_TRIM_THRESHOLD, 32 << 20)


def _die_with_parent() -> None:
    """Linux: have the kernel kill this (forked) process when the thread that forked it ends.
    Elsewhere: nothing (the caller looks for itself)."""
    try:
        prctl = ctypes.CDLL(None).prctl
    except (OSError, AttributeError):
        return
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


_DICT_VIEWS: tuple[type, ...] = (type({}.keys()), type({}.values()), type({}.items()))
_CUSTOM_THREADS = 1024     # registered types' calls running at once (threads made as needed)
_ID_BLOCK = 1024           # ids the journal keeps used at once for objects it does not make
_GROUP_WAIT = 0.0002      # the longest a commit waits for more clients to join its group


class Registration:
    """What the server needs to know of a registered custom type."""

    __slots__ = ("callable", "exposed", "method_to_typeid", "proxytype")

    def __init__(self, callable: Callable[..., Any] | None, exposed: Any = None,
                 method_to_typeid: dict[str, str] | None = None, proxytype: Any = None) -> None:
        self.callable = callable
        self.exposed = tuple(exposed) if exposed is not None else None
        self.method_to_typeid = method_to_typeid
        self.proxytype = proxytype


def _for_user_code(v: Any, proxy_of: Callable[[Shared], Any]) -> Any:
    """Arguments for a registered type's own code (a Pool task's too), deeply: opaque values
    unpickled, shared objects given as proxies (``proxy_of``), as Manager's code gets them."""
    t = type(v)
    if t is Opaque:
        return pickle.loads(v.data)
    if t is list:
        return [_for_user_code(x, proxy_of) for x in v]
    if t is tuple:
        return tuple(_for_user_code(x, proxy_of) for x in v)
    if t is dict:
        return {_for_user_code(k, proxy_of): _for_user_code(x, proxy_of) for k, x in v.items()}
    if isinstance(v, Shared):
        return proxy_of(v)
    return v


class Server:
    """A shoal server: ``Server(address, authkey).serve_forever()``.

    ``address`` None makes a Unix socket in a new private directory; a path makes a Unix socket
    there; ``(host, port)`` listens on TCP (port 0 picks a free port; ``server.address`` tells).
    ``nested`` is ``"share"`` (plain dicts and lists stored in a container become shared
    containers) or ``"copy"`` (they are stored as values and read back as copies, as in
    multiprocessing.Manager). ``owner_pid`` makes the server exit when that process ends.
    """

    def __init__(self, address: Address | None, authkey: bytes, *,
                 registry: dict[str, Registration] | None = None, nested: str = "share",
                 owner_pid: int | None = None, handshake_timeout: float = 5.0,
                 max_frame: int = P.MAX_FRAME, max_connections: int = 4096,
                 tls: ssl.SSLContext | None = None, persist: str | None = None,
                 fsync: str = "everysec", store_io: FileIO | None = None) -> None:
        if nested not in ("share", "copy"):
            raise ValueError(f"nested must be 'share' or 'copy', not {nested!r}")
        if not 0 < handshake_timeout < float("inf"):
            raise ValueError(f"the handshake timeout must be a number of seconds above 0, not "
                             f"{handshake_timeout!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections!r}")
        self.authkey = bytes(authkey)
        self.nested = nested
        self.registry = dict(registry or {})
        self.handshake_timeout = handshake_timeout
        self.max_frame = max_frame
        self.max_connections = max_connections
        self.max_unauthenticated = max(1, min(1024, max_connections // 2))
        self.tls = tls
        self.loop = Loop()
        self.loop.after_each_turn(self._flush_dirty)
        # id -> weak reference; an entry goes when its object is freed.
        self.objects: dict[int, weakref.ref[Shared]] = {}
        self._next_oid = 0
        self._restored: list[Shared] | None = None   # while a restore runs: every object
        self.conns: set[Conn] = set()
        self.dirty: list[Conn] = []
        self.current: Conn | None = None      # the connection whose request is running
        self.current_rid = 0
        self.flat_args = False     # the running request's arguments nest no container
        self._in_write = False     # a write that will be journaled runs (see register)
        self._ids_reserved = 0     # ids below this are kept used by the journal (see register)
        self.store: Store | None = None
        self.guarded: set[Shared] = set()     # objects whose per-object lock is held now
        self._executor: ThreadPoolExecutor | None = None
        self.share: Callable[..., Any] = self._sharing(nested)
        self.ops = ServerOps(self)            # object id 0
        self.root = SDict(self)               # object id 1
        # replies waiting for a journal commit: (conn, rid, frame, does it tell of a write)
        self.held: list[tuple[Conn, int, bytes, bool]] = []
        self._group = 0                       # clients in the last commit's group
        self._group_timer: Timer | None = None
        # One codec for every connection (one thread uses it); ``encoding_for`` names the
        # connection whose reply is being encoded, which then holds the objects it is sent.
        self.encoding_for: Conn | None = None
        self.codec = Codec(ref_of=lambda obj: self.encoding_for._ref_of(obj),  # type: ignore[union-attr]
                           make_ref=self.lookup_ref, from_opaque=Opaque)
        self.plain_codec = PlainCodec(ref_of=lambda obj: self.encoding_for._ref_of(obj),  # type: ignore[union-attr]
                                       make_ref=self.lookup_ref, from_opaque=Opaque)
        self.journal_codec = Codec(ref_of=_ref_of_shared, make_ref=self._restore_ref,
                                   from_opaque=Opaque, pickle_unknown=False)
        self._snapshot_child: tuple[int, int, int] | None = None  # (pid, generation, pipe)
        self._closing = False
        self.instance = os.urandom(P.INSTANCE)      # what clients are told the objects are
        if persist is not None:
            self.store = Store(persist, fsync, store_io)
            try:
                self.instance = self.store.instance_id()
                self._restore(self.store)
                self._journal_nested()
            except BaseException:
                self.store.close()
                raise
        try:
            self.listener, self.address, self._private_dir = listen(address)
        except BaseException:
            if self.store is not None:
                self.store.close()          # the directory is free again for another try
            raise
        self.loop.add(self.listener.fileno(), READ, self._accept)
        self.started = time.time()
        self.calls = 0
        self._rate = (time.monotonic(), 0, 0.0)     # (when, calls then, calls per second)
        self.loop.call_later(1.0, self._sample_rate)
        if owner_pid is not None:
            self._watch_owner(owner_pid)

    # -- objects -----------------------------------------------------------------------------

    def register(self, obj: Shared) -> int:
        oid = self._next_oid
        self._next_oid = oid + 1
        objects = self.objects
        objects[oid] = weakref.ref(obj, _forget(objects, oid))
        if self._restored is not None:
            self._restored.append(obj)
        elif oid >= self._ids_reserved and self.store is not None and not self._in_write \
                and self.store.failed is None:
            # An object that no journaled write makes (a registered type's, an iterator): the
            # journal keeps its id used, or a restart would give it to another object, and a
            # proxy of this one would then reach that (persisting servers keep their id). Ids
            # are kept a block at a time: one record (and commit) per _ID_BLOCK such objects.
            self._ids_reserved = oid + _ID_BLOCK
            self.store.append(self.journal_codec.encode([4, self._ids_reserved]))
        return oid

    def get(self, oid: int) -> Shared | None:
        ref = self.objects.get(oid)
        return ref() if ref is not None else None

    def live_objects(self) -> list[Shared]:
        return [o for o in (r() for r in list(self.objects.values())) if o is not None]

    def _restore_ref(self, oid: int, typeid: str) -> Shared | None:
        """A reference in the data files: the object, or None for one that was not kept."""
        obj = self.get(oid)
        if obj is None and self._restored is None:
            raise ReferenceError(f"shared {typeid} #{oid} no longer exists")
        return obj

    def lookup_ref(self, oid: int, typeid: str) -> Shared:
        obj = self.get(oid)
        if obj is None:
            raise ReferenceError(f"shared {typeid} #{oid} no longer exists: it was freed when the "
                                 f"last container and proxy referring to it let go")
        return obj

    def _sharing(self, nested: str) -> Callable[..., Any]:
        """What ``share`` is under ``nested``: plain containers stored in a container become
        shared objects ("share"), or stay plain values ("copy")."""
        return self._share if nested == "share" else _identity

    def _share(self, value: Any, parent: Shared | None = None) -> Any:
        t = type(value)
        if t is dict:
            return SDict(self, value, parent)
        if t is list:
            return SList(self, value, parent)
        return value

    # -- per-object locks --------------------------------------------------------------------

    def blocker(self, obj: Shared, conn: Conn) -> Shared | None:
        """``obj`` or the container around it on which another client holds a per-object lock."""
        get = self.get
        o: Shared | None = obj
        while o is not None:
            g = o.guard
            if g is not None and g.owner is not None and g.owner is not conn:
                return o
            o = get(o.parent) if o.parent >= 0 else None
        return None

    def inner_blocker(self, obj: Shared, conn: Conn) -> Shared | None:
        """A container inside ``obj`` on which another client holds a per-object lock (locking
        ``obj`` must wait for it, or the two holders would wait for each other)."""
        get = self.get
        for held in self.guarded:
            if held.guard.owner is conn or held is obj:  # type: ignore[union-attr]
                continue
            o = get(held.parent) if held.parent >= 0 else None
            while o is not None:
                if o is obj:
                    return held
                o = get(o.parent) if o.parent >= 0 else None
        return None

    def unguard(self, obj: Shared) -> None:
        """``obj``'s per-object lock is free: run the requests that waited for it, in order."""
        g = obj.guard
        assert g is not None
        g.owner, g.count = None, 0
        self.guarded.discard(obj)
        waiting, g.queue = g.queue, deque()
        sizes: dict[Conn, int] = {}              # bytes of replies not yet written, each
        held_back: dict[Conn, list[bytes]] = {}  # ... past the limit: run when they are out
        for conn, rid, body in waiting:
            if rid and conn.closed:
                continue
            if rid and (conn in held_back or conn.paused):
                # Its client is over the limit of unread replies: this waits, in front of
                # its unread requests. (One sent without waiting makes no reply: it runs.)
                held_back.setdefault(conn, []).append(HEADER.pack(len(body), rid) + body)
                continue
            # One sent without waiting runs even if its client has gone since (it was sent);
            # what it took, if anything, is given back at once (its client never knew).
            before = len(conn.out)
            self.handle(conn, rid, body)
            if conn.closed:
                conn.let_go(clean=False)
            elif len(conn.out) > before:
                conn.mark_dirty()
                size = sizes[conn] = sizes.get(conn, conn.backlog) + sum(
                    len(frame) for frame in conn.out[before:])
                if size > OUT_HIGH:
                    held_back[conn] = []
        for conn, frames in held_back.items():
            conn.put_back(frames)
            conn.pause()

    # -- requests ----------------------------------------------------------------------------

    def handle(self, conn: Conn, rid: int, body: bytes) -> None:
        """Run one request. Its reply goes to ``conn.out``; the caller writes it."""
        try:
            if len(body) < _BULK_BODY:
                msg = self.codec.decode(body)
                self.flat_args = False
            else:
                msg, containers = self.codec.decode_counting(body)
            if type(msg) is not list or not 3 <= len(msg) <= 4:
                raise TypeError("malformed request: not [object id, method, args(, kwargs)]")
            oid, name, args = msg[0], msg[1], msg[2]
            if type(args) is not list or type(name) is not str:
                raise TypeError("malformed request")
            if len(body) >= _BULK_BODY:
                # No container below the arguments' top level: a bulk op (update) can take a
                # dict argument as it is, without looking at each value.
                self.flat_args = containers == len(msg) - 1 + sum(
                    1 for a in args if type(a) is dict or type(a) is list)
            ref = self.objects.get(oid)
            obj = ref() if ref is not None else None
            if obj is None:
                raise ReferenceError(f"shared object #{oid} no longer exists: it was freed when "
                                     f"the last container and proxy referring to it let go")
            if self.guarded and (rid or name != "release"):
                # (A release sent without waiting passes: holding it back could leave a
                # lock held that its holder has let go.)
                holder = self.blocker(obj, conn)
                if holder is None and name == "_lock_acquire":
                    holder = self.inner_blocker(obj, conn)
                if holder is not None:   # another client holds a per-object lock over obj
                    holder.guard.queue.append((conn, rid, body))  # type: ignore[union-attr]
                    conn.involved.add(holder)
                    return
            self.current, self.current_rid = conn, rid
            fn = type(obj).OPS.get(name)
            store = self.store
            if store is not None:
                return self._handle_persisted(conn, rid, body, msg, obj, name, fn, store)
            if fn is None:
                fn = obj.fallback(name)
                result = fn(*args, **msg[3]) if len(msg) > 3 else fn(*args)
            else:
                result = fn(obj, *args, **msg[3]) if len(msg) > 3 else fn(obj, *args)
            out = conn.reply_body(rid, result)
        except Exception as e:
            out = conn.encode_error(e) if rid else None
        self.calls += 1
        if out is not None:
            conn.out.append(HEADER.pack(len(out), rid) + out)

    def _handle_persisted(self, conn: Conn, rid: int, body: bytes, msg: list[Any], obj: Shared,
                          name: str, fn: Any, store: Store) -> None:
        """``handle`` when the server persists: a write goes to the journal, and its reply waits
        for the journal's commit at the end of the loop's turn (so a failed commit answers with
        an error instead, and a server killed after the reply has given the write to the OS)."""
        records = store.buffer
        start_oid, queued = self._next_oid, len(records)
        writes = ran = False
        try:
            writes = name in type(obj).WRITES
            if writes and store.failed is not None:
                raise RemoteError(f"the server could not persist ({store.failed}): it refuses "
                                  f"writes until it is restarted")
            args = msg[2]
            ran = True
            self._in_write = writes
            try:
                if fn is None:
                    fn = obj.fallback(name)
                    result = fn(*args, **msg[3]) if len(msg) > 3 else fn(*args)
                else:
                    result = fn(obj, *args, **msg[3]) if len(msg) > 3 else fn(obj, *args)
            finally:
                self._in_write = False
            if writes and result is not PENDING and (type(obj) is not ServerOps
                                                      or self._next_oid != start_oid):
                records.append(frame_record(self.journal_codec.encode([0, start_oid, body])))
            out = conn.reply_body(rid, result)
        except Exception as e:
            out = conn.encode_error(e) if rid else None
            if ran and writes and type(obj) is not ServerOps:
                # A write that raised may have changed something first (a pipeline's batch
                # up to its bad item, a sort that met an uncomparable one): journaled all the
                # same, it does the same again when replayed, and fails the same way.
                records.append(frame_record(self.journal_codec.encode([0, start_oid, body])))
        if out is None:
            return
        frame = HEADER.pack(len(out), rid) + out
        # A cancel's reply must not overtake a held reply of the request it cancels (the
        # client takes it as a sign that no reply of that request is still to come).
        if len(records) > queued:
            self.held.append((conn, rid, frame, True))
        elif self.held and name == "cancel" and type(obj) is ServerOps:
            self.held.append((conn, rid, frame, False))     # (goes out even if the commit fails)
        else:
            conn.out.append(frame)
        self.calls += 1

    def _group_wait(self) -> bool:
        """Group commit, fsync="always": while fewer clients wait for this commit than for the
        last one, wait for the others a little (at most half an fsync) before it, so that one
        fsync serves them all. True while waiting."""
        store = self.store
        assert store is not None
        if store.fsync != "always" or len(self.held) >= self._group:
            return False
        if self._group_timer is None:
            wait = min(_GROUP_WAIT, store.fsync_seconds / 2)
            if wait <= 0:
                return False
            self._group_timer = self.loop.call_later(wait, self._group_waited)
        return True

    def _group_waited(self) -> None:
        self._group_timer = None
        if self.held:
            self.commit()
            self._flush_dirty()

    def commit(self) -> None:
        """Write the journal's new records, then release the replies that waited for them (or
        answer them with the error)."""
        held, self.held = self.held, []
        store = self.store
        assert store is not None
        if self._group_timer is not None:
            self._group_timer.cancel()
            self._group_timer = None
        # The next group waits for as many clients as this one had, or one fewer than the
        # last (so a client that stopped writing is waited for only a few times).
        self._group = max(len({id(conn) for conn, *_ in held}), self._group - 1)
        try:
            store.commit()
        except StoreError as e:
            log.error("%s", e)
            for conn, rid, frame, wrote in held:
                if wrote:
                    conn.reply_error(rid, RemoteError(f"not persisted: {e}"), parked=False)
                elif not conn.closed:
                    conn.out.append(frame)
                    conn.mark_dirty()
            return
        for conn, _, frame, _ in held:
            if not conn.closed:
                conn.out.append(frame)
                conn.mark_dirty()
        if store.wants_compaction():
            self.compact()

    def journal_queue(self, queue: Shared, item: Any = None, put: bool = True,
                      front: bool = False) -> None:
        """Record an item entering (``put``; at the ``front``: given back) or leaving a
        queue."""
        if self.store is not None:
            self.store.append(self.journal_codec.encode(
                [3 if front else 1, queue.oid, item] if put else [2, queue.oid]))

    # -- persistence: snapshot and restore -------------------------------------------------------

    @property
    def compacting(self) -> bool:
        """Is a snapshot being written?"""
        return self._snapshot_child is not None

    def compact(self) -> None:
        """Snapshot every live object and begin a new journal. The snapshot
        is written by a forked child, which sees the objects as they are at the fork, while
        this process goes on serving (Redis' BGREWRITEAOF); the loop pauses only for the fork.
        The child says on a pipe that the snapshot is whole (not by its exit status, which
        someone else may reap)."""
        store = self.store
        assert store is not None
        if store.buffer or self.held:
            self.commit()               # the new journal begins after every write made so far
        if self._snapshot_child is not None or store.failed is not None or self._closing:
            return
        try:
            gen = store.switch_journal()
        except StoreError as e:
            log.error("%s", e)
            return
        self._journal_nested()
        server = os.getpid()
        done_r = done_w = -1
        try:
            done_r, done_w = os.pipe()
            with warnings.catch_warnings():   # Python 3.12+ warns of fork in a threaded
                warnings.simplefilter("ignore", DeprecationWarning)   # process: the child
                pid = os.fork()                                      # takes no lock
        except OSError as e:      # no memory, processes or files left: the journals go on
            for fd in (done_r, done_w):
                if fd >= 0:
                    os.close(fd)
            log.error("could not start writing a snapshot in %s: %s", store.dir, e)
            store.drop_snapshot(gen)
            return
        if pid == 0:
            self._write_snapshot_and_exit(store, gen, server, done_w)
        os.close(done_w)
        self._snapshot_child = (pid, gen, done_r)
        self.loop.add(done_r, READ, lambda events: self._snapshot_done())

    def _write_snapshot_and_exit(self, store: Store, gen: int, server: int, done: int) -> None:
        """The forked child: write the snapshot of ``gen``, say so on ``done``, exit. It dies
        with the ``server`` process (Linux: at once; elsewhere it looks between objects)."""
        code = 1
        try:
            _die_with_parent()
            if os.getppid() != server:
                raise RuntimeError("the server ended")
            gc.disable()                  # nothing to collect, and pages stay shared
            # Let go of every inherited file: the clients' sockets (whose ends must close
            # when the server dies), the listener, the directory's lock. Nothing here uses
            # them, and the objects that own them are never closed (os._exit).
            os.closerange(3, done)
            os.closerange(done + 1, os.sysconf("SC_OPEN_MAX"))
            # Every live object, not only those reachable from the root: one that a client
            # holds through a proxy may be stored in the root after the snapshot, and the
            # journals that made it are gone then. (A restore frees what stays unreachable.)
            objs = [o for o in self.live_objects() if hasattr(o, "state")]
            encode = self.journal_codec.encode
            header = encode(["shoal-snapshot", 1, gen, max(self._next_oid, self._ids_reserved)])

            def records() -> Iterator[bytes]:
                # The state is encoded on its own, so that loading can make every object
                # before it decodes any state (whose references then resolve).
                for o in objs:
                    if os.getppid() != server:
                        raise RuntimeError("the server ended")
                    yield encode([o.oid, o.typeid, o.parent, encode(o.state())])
            store.write_snapshot(store.snapshot_path(gen), header, records(),
                                 encode(["end", len(objs)]))
            os.write(done, b"\1")
            code = 0
        except BaseException as e:
            try:
                os.write(2, f"shoal: writing a snapshot failed: {e!r}\n".encode())
            except BaseException:
                pass
        finally:
            os._exit(code)

    def _snapshot_done(self) -> None:
        """The child wrote its byte (the snapshot is whole and on disk) or ended without."""
        assert self._snapshot_child is not None and self.store is not None
        _, gen, done = self._snapshot_child
        try:
            whole = os.read(done, 1) == b"\1"
        except OSError:
            whole = False
        self._end_snapshot_child()
        if whole:
            self.store.install_snapshot(gen)
        else:
            log.error("writing the snapshot in %s failed (the writer's error, if it could say "
                      "one, is on standard error); the journals go on, and it is tried again "
                      "when they have grown as much again", self.store.dir)
            self.store.drop_snapshot(gen)

    def _end_snapshot_child(self, kill: bool = False) -> None:
        assert self._snapshot_child is not None
        pid, _, done = self._snapshot_child
        self._snapshot_child = None
        self.loop.remove(done)
        os.close(done)
        try:
            if kill:
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)            # it has ended, or ends now
        except OSError:                   # reaped by someone else already
            pass

    def _stop_snapshot(self) -> None:
        """At a stop: a snapshot being written is abandoned (the journals have everything)."""
        if self._snapshot_child is None or self.store is None:
            return
        gen = self._snapshot_child[1]
        self._end_snapshot_child(kill=True)
        self.store.drop_snapshot(gen)

    def _journal_nested(self) -> None:
        """Say in the journal how the writes after this point treat nested containers: a
        replay makes ``d['row'] = {}`` a shared dict or a plain value as it was made, whatever
        ``nested`` the restarted server has. (It goes with the next commit.)"""
        assert self.store is not None
        self.store.append(self.journal_codec.encode([5, self.nested]))

    def _restore(self, store: Store) -> None:
        snapshot, journal = store.load()
        decode = self.journal_codec.decode
        # Every object stays alive until the replay ends: the journal does not say which
        # objects clients held through proxies (a container taken out of its parent and put
        # back later, or made before a snapshot and stored after it), only what they did.
        # What is not reachable from the root at the end is freed then.
        keep = self._restored = [self.root]
        try:
            states = []
            plain = Codec().decode
            for body in snapshot:
                oid, typeid, parent, state = plain(body)
                if oid == self.root.oid:
                    obj: Shared = self.root
                else:
                    cls = NATIVE_TYPES.get(typeid) or SYNC_TYPES.get(typeid)
                    if cls is None or not hasattr(cls, "restore"):
                        continue
                    obj = cls.__new__(cls)
                    Shared.__init__(obj, self)
                    self.objects.pop(obj.oid, None)
                    obj.oid = oid
                    self.objects[oid] = weakref.ref(obj, _forget(self.objects, oid))
                obj.parent = parent
                keep.append(obj)
                states.append((obj, state))
                self._next_oid = max(self._next_oid, oid + 1)
            reserved = store.snapshot_next_oid     # ids given to objects not in it, too
            for obj, state in states:        # every object exists now: references resolve
                obj.restore(decode(state))  # type: ignore[attr-defined]
            replayed = 0
            for body in journal:
                rec = decode(body)
                kind = rec[0]
                if kind == 4:                # ids kept used for objects not journaled
                    reserved = max(reserved, rec[1])
                elif kind == 5:              # how the writes after it nested containers
                    self.share = self._sharing(rec[1])
                elif kind == 0:
                    self._next_oid = rec[1]
                    try:
                        msg = self.journal_codec.decode(rec[2])
                        target = self.get(msg[0])
                        if target is None:
                            continue
                        fn = type(target).OPS[msg[1]]
                        fn(target, *msg[2], **(msg[3] if len(msg) > 3 else {}))
                    except Exception:       # it failed the same way when it first ran
                        pass
                else:
                    q = self.get(rec[1])
                    if q is not None:
                        if kind == 1:
                            q.items.append(rec[2])  # type: ignore[attr-defined]
                        elif kind == 3:
                            q.items.appendleft(rec[2])  # type: ignore[attr-defined]
                        elif q.items:  # type: ignore[attr-defined]
                            q.items.popleft()  # type: ignore[attr-defined]
                replayed += 1
            # (after the replay: each write sets the counter to what it started from)
            self._next_oid = max(self._next_oid, reserved)
            self.share = self._sharing(self.nested)
            for obj in keep:                 # task_done is not journaled: count what is left
                if isinstance(obj, SQueue):
                    obj.unfinished = len(obj.items)
            log.info("restored %d objects from the snapshot and %d journal records",
                     len(states), replayed)
        finally:
            self._restored = None
            keep.clear()

    def custom_call(self, obj: SCustom, name: str) -> Callable[..., Any]:
        """Run a registered type's method in a worker thread and reply when it returns."""
        conn, rid = self.current, self.current_rid
        target = getattr(obj.obj, name)
        typeid = obj.method_to_typeid.get(name)

        def call(*args: Any, **kw: Any) -> Any:
            self.run_in_thread(conn, rid, target, list(args), kw, typeid)
            return PENDING
        return call

    def run_in_thread(self, conn: Conn | None, rid: int, fn: Callable[..., Any], args: list[Any],
                      kw: dict[str, Any], typeid: str | None, creating: bool = False) -> None:
        """Call user code (a registered type) in a worker thread: it may block, and unpickling
        its arguments may even call back into this server."""
        if self._executor is None:
            # A thread per call at once, as Manager has one per connection: registered
            # methods may block (a queue.Queue's get), and must not wait for each other.
            self._executor = ThreadPoolExecutor(max_workers=_CUSTOM_THREADS,
                                                thread_name_prefix="shoal-custom")

        def work() -> None:
            try:
                made: list[Any] = []
                call_args = _for_user_code(args, lambda o: self._proxy_for(o, made))
                call_kw = _for_user_code(kw, lambda o: self._proxy_for(o, made))
                if made:      # their holds reach the server before this call lets go of them
                    made[0]._conn.call(0, "ping")
                result = fn(*call_args, **call_kw)
                reg = self.registry.get(typeid) if typeid is not None and not creating else None
                if reg is not None and reg.callable is not None:
                    # method_to_typeid names a type with a callable: as Manager, what is
                    # shared is the callable's object made from the result.
                    result = reg.callable(result)
            except BaseException as e:       # (a CancelledError too: the caller must hear)
                # multiprocessing reports a failed creation as a RemoteError, a failed method
                # call as the method's own exception.
                err: BaseException = RemoteError(f"{type(e).__name__}: {e}") if creating else e
                self.loop.call_soon_threadsafe(
                    lambda: conn.reply_error(rid, err, custom=not creating))  # type: ignore[union-attr]
                return
            self.loop.call_soon_threadsafe(lambda: self._custom_done(conn, rid, result, typeid))
        self._executor.submit(work)

    def _proxy_for(self, obj: Shared, made: list[Any]) -> Any:
        """A proxy of ``obj``, from this process through a connection of its own, for user code
        in a worker thread (one that passes it to a Pool's worker process, say). Under TLS the
        object itself (this process cannot check its own certificate)."""
        if self.tls is not None:
            return obj
        from ._proxies import AutoProxy, Token, adopt_proxy_type   # (they import the client)
        reg = self.registry.get(obj.typeid)
        cls = adopt_proxy_type(reg.proxytype) if reg is not None and reg.proxytype is not None \
            else AutoProxy
        proxy = cls(Token(obj.typeid, self.address, obj.oid), authkey=self.authkey)
        made.append(proxy)
        return proxy

    def _custom_done(self, conn: Conn | None, rid: int, result: Any, typeid: str | None) -> None:
        if conn is None:
            return
        if typeid is not None:
            result = self.wrap(result, typeid)
        elif type(result) in _DICT_VIEWS:
            result = list(result)        # what Manager's proxies of a dict give back too
        conn.reply(rid, result)

    def wrap(self, obj: Any, typeid: str) -> Shared:
        reg = self.registry.get(typeid)
        return SCustom(self, obj, typeid, reg.exposed if reg else None,
                       reg.method_to_typeid if reg else None)

    def create(self, typeid: str, args: list[Any], kw: dict[str, Any]) -> Any:
        reg = self.registry.get(typeid)
        if reg is not None and reg.callable is not None:
            conn, rid = self.current, self.current_rid
            self.run_in_thread(conn, rid, reg.callable, args, kw, typeid, creating=True)
            return PENDING
        cls = NATIVE_TYPES.get(typeid) or SYNC_TYPES.get(typeid)
        if cls is None:
            raise ValueError(f"unknown type {typeid!r}: register it with BaseManager.register")
        return cls.new(self, args, kw)

    # -- connections -------------------------------------------------------------------------

    def _accept(self, events: int) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # Out of file descriptors (or memory): the listener stays readable, so stop
                # listening for a moment instead of spinning on it.
                log.warning("accept failed: %s; not accepting for 0.1 s", e)
                fd = self.listener.fileno()
                self.loop.remove(fd)
                self.loop.call_later(0.1, lambda: self.loop.add(fd, READ, self._accept))
                return
            if len(self.conns) >= self.max_connections:
                log.warning("refused a connection: already %d (max_connections)", len(self.conns))
                sock.close()
                continue
            # Peers that have not authenticated may hold only so many places: past that, the
            # oldest of them makes room, so they cannot keep key holders out.
            pending = [c for c in self.conns if not c.authed] \
                if len(self.conns) >= self.max_unauthenticated else ()
            if len(pending) >= self.max_unauthenticated:
                min(pending, key=lambda c: c.since).close()
            sock.setblocking(False)
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                try:
                    sock = self.tls.wrap_socket(sock, server_side=True,
                                                do_handshake_on_connect=False)
                except OSError as e:     # the peer reset before we looked (a port scanner)
                    log.info("dropped a TLS peer that went away at once: %s", e)
                    sock.close()
                    continue
            conn = Conn(self, sock)
            self.conns.add(conn)
            self.loop.add(conn.fd, READ, conn.on_event)

    def dropped(self, conn: Conn) -> None:
        self.conns.discard(conn)

    def _flush_dirty(self) -> None:
        store = self.store
        if store is not None and store.buffer:
            if self.held and self._group_wait():
                return
            self.commit()
        dirty = self.dirty
        if dirty:
            self.dirty = []
            for conn in dirty:
                conn.dirty = False
                conn.flush()

    def _watch_owner(self, pid: int) -> None:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.loop.call_later(0, self.stop)
            return
        except (AttributeError, OSError):   # pragma: no cover - old kernels, other systems
            self._poll_owner(pid)
            return
        self.loop.add(fd, READ, lambda ev: self._owner_died(pid))

    def _poll_owner(self, pid: int) -> None:  # pragma: no cover
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            self._owner_died(pid)
            return
        except PermissionError:
            pass
        self.loop.call_later(0.5, lambda: self._poll_owner(pid))

    def _owner_died(self, pid: int) -> None:
        log.info("the owner process %d ended: stopping", pid)
        self.stop()

    # -- running -----------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve until ``stop()`` (or the shutdown request, or the owner's death)."""
        try:
            self.loop.run()
        finally:
            self.close()

    def stop(self) -> None:
        self.loop.stop()

    def close(self) -> None:
        self._closing = True              # no new snapshot from here on
        for conn in list(self.conns):
            conn.flush()
            conn.close()
        self.loop.remove(self.listener.fileno())
        self.listener.close()
        if isinstance(self.address, str):
            try:
                os.unlink(self.address)
            except OSError:
                pass
        if self._private_dir:
            shutil.rmtree(self._private_dir, ignore_errors=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self.store is not None:
            if self.held:
                self.commit()
            self._stop_snapshot()
            self.store.close()
        self.loop.close()

    def _sample_rate(self) -> None:
        now, calls = time.monotonic(), self.calls
        then, before, _ = self._rate
        self._rate = (now, calls, (calls - before) / max(now - then, 1e-9))
        self.loop.call_later(1.0, self._sample_rate)

    def inspect(self) -> dict[str, Any]:
        """What ``shoal inspect`` shows: the server, its objects, clients, locks and queues
        (the layout is documented in docs/inspect.md and stays stable)."""
        now = time.time()
        objects: dict[str, dict[str, int]] = {}
        locks: list[dict[str, Any]] = []
        queues: list[dict[str, Any]] = []
        for obj in self.live_objects():
            if obj is self.ops:
                continue
            kind = objects.setdefault(obj.typeid, {"count": 0, "size": 0})
            kind["count"] += 1
            kind["size"] += obj.size()
            g = obj.guard
            if g is not None and g.owner is not None:
                locks.append({"id": obj.oid, "type": f"{obj.typeid}.locked()",
                              "holder_pid": g.owner.pid, "held_for": round(now - g.since, 3),
                              "waiting": len(g.queue)})
            info = obj.inspect() if hasattr(obj, "inspect") else None
            if info is None:
                continue
            info["id"] = obj.oid
            info["type"] = obj.typeid
            if "held_for" in info and info["held_for"] is not None:
                info["held_for"] = round(now - info["held_for"], 3)
            (queues if "items" in info else locks).append(info)
        clients = [{"pid": c.pid, "host": c.host, "since": round(c.since, 3),
                    "connected_for": round(now - c.since, 3), "holds": len(c.handles)}
                   for c in self.conns if c.authed]
        address = self.address if isinstance(self.address, str) else list(self.address)
        store = self.store
        persistence = None if store is None else {
            "dir": store.dir, "fsync": store.fsync, "journal_bytes": store.journal_size,
            "snapshot_bytes": store.snapshot_size, "records": store.records,
            "fsyncs": store.fsyncs, "snapshots": store.snapshots,
            "compacting": self.compacting, "failed": None if store.failed is None else str(store.failed)}
        return {
            "server": {"pid": os.getpid(), "address": address, "nested": self.nested,
                       "started": round(self.started, 3), "uptime": round(now - self.started, 3),
                       "calls": self.calls, "ops_per_sec": round(self._rate[2], 1),
                       "tls": self.tls is not None},
            "objects": objects,
            "clients": sorted(clients, key=lambda c: c["since"]),
            "locks": sorted(locks, key=lambda x: x["id"]),
            "queues": sorted(queues, key=lambda x: x["id"]),
            "persistence": persistence,
        }

    def number_of_objects(self) -> int:
        gc.collect()             # (exact: objects in reference cycles are counted once freed)
        return sum(1 for o in self.live_objects() if o is not self.ops and o is not self.root)

    def debug_info(self) -> str:
        gc.collect()
        lines = []
        for obj in sorted(self.live_objects(), key=lambda o: o.oid):
            oid = obj.oid
            if obj is self.ops:
                continue
            holders = sum(1 for c in self.conns if oid in c.handles)
            lines.append(f"  {obj.describe()}: size={obj.size()} held by {holders} connection(s)")
        return "\n".join(lines)


def _forget(objects: dict[int, Any], oid: int) -> Callable[[Any], None]:
    """The callback that drops ``oid`` from the object table once its object is freed."""
    return lambda _: objects.pop(oid, None)


def _identity(value: Any, parent: Any = None) -> Any:
    return value


def _ref_of_shared(obj: Any) -> tuple[int, str] | None:
    return (obj.oid, obj.typeid) if isinstance(obj, Shared) else None


class ServerOps(Shared):
    """Object 0: the server's own operations."""

    __slots__ = ()
    typeid = "server"

    @op("create", write=True)
    def create(self, typeid: str, args: list[Any], kw: dict[str, Any]) -> Any:
        return self.server.create(typeid, args, kw)

    @op("_lock_acquire", "_lock_release")
    def no_object_lock(self) -> None:
        # Every client's requests to the server itself (cancel, release...) would wait.
        raise TypeError("the server's own operations have no per-object lock")

    @op("root")
    def root(self) -> SDict:
        return self.server.root

    @op("release")
    def release(self, oid: int, n: int) -> None:
        self.server.current.unref(oid, n)  # type: ignore[union-attr]

    @op("cancel")
    def cancel(self, rid: int) -> bool:
        """The client gave up waiting for request ``rid`` (an exception interrupted it): if it
        is still parked (an acquire, a get, a bounded put, a per-object lock), it is dropped
        and answered with an error the client ignores. One that already ran is undone by the
        client (it releases what it got, or gives the item back). Whether it was found waiting
        (a request that must run to its end, a Condition's wait taking its lock back, counts
        as found: its reply is still to come). The request's replies precede this one's, so a
        client that finds neither knows the request never arrived."""
        conn = self.server.current
        assert conn is not None
        return any(obj.cancel(conn, rid) for obj in list(conn.involved))

    @op("hold")
    def hold(self, oid: int) -> None:
        obj = self.server.get(oid)
        if obj is not None:
            self.server.current._ref_of(obj)  # type: ignore[union-attr]

    @op("hello")
    def hello(self, pid: int, host: str = "") -> None:
        conn = self.server.current
        assert conn is not None
        if type(pid) is not int or type(host) is not str:
            raise TypeError("malformed request: hello takes a process id and a host name")
        conn.pid, conn.host = pid, host

    @op("goodbye")
    def goodbye(self) -> None:
        """The client is ending normally: what it still holds it hands on, as with threading
        (a lock stays locked until someone releases it); only a client that dies or loses its
        connection has its holdings released by the server."""
        self.server.current.clean = True  # type: ignore[union-attr]

    @op("ping")
    def ping(self) -> str:
        return "pong"

    @op("nested")
    def get_nested(self) -> str:
        return self.server.nested

    @op("number_of_objects")
    def number_of_objects(self) -> int:
        return self.server.number_of_objects()

    @op("debug_info")
    def debug_info(self) -> str:
        return self.server.debug_info()

    @op("inspect")
    def inspect(self) -> dict[str, Any]:
        return self.server.inspect()

    @op("exposed")
    def exposed(self, oid: int) -> list[str]:
        obj = self.server.get(oid)
        if isinstance(obj, SCustom):
            return sorted(obj.exposed)
        return sorted(type(obj).OPS) if obj is not None else []

    @op("shutdown")
    def shutdown(self) -> None:
        self.server.loop.call_soon_threadsafe(self.server.stop)
