"""persist=DIR: the shared state survives a restart, exactly; damaged files are handled."""

from __future__ import annotations

import fractions
import multiprocessing
import os
import pathlib
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import shoal
from shoal import _client, _persist
from shoal._persist import CorruptStore, StoreLocked
from shoal._server import Server


@contextmanager
def server_in_thread(directory: pathlib.Path, **kw: object) -> Iterator[shoal.SyncManager]:
    """A persisting server run in this process (so tests can reach its storage layer)."""
    srv = Server(None, b"k" * 16, persist=str(directory), **kw)  # type: ignore[arg-type]
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield shoal.connect(srv.address, authkey=b"k" * 16)
    finally:
        srv.loop.call_soon_threadsafe(srv.stop)
        t.join(10)
        for key, conn in list(_client._connections.items()):
            if key[0] == srv.address:
                _client.forget_connection(conn)


def persistence(m: shoal.SyncManager) -> dict[str, object]:
    return m.root._conn.call(0, "inspect", [])["persistence"]  # type: ignore[no-any-return]


def wait_until_compacted(m: shoal.SyncManager) -> int:
    """Wait while a snapshot is written; how many calls were answered meanwhile."""
    answered = 0
    while persistence(m)["compacting"]:
        answered += 1
    return answered


def fill(m: shoal.SyncManager) -> None:
    r = m.root
    r["n"] = 1
    r["nested"] = {"x": [1, 2, {"y": (1, 2)}], "s": {1, 2}, "b": b"\x00", "big": 2**80}
    r["nested"]["x"].append(3)
    r["opaque"] = fractions.Fraction(1, 3)
    q = m.Queue()
    for item in ({"job": 1}, "two", "three"):
        q.put(item)
    assert q.get() == {"job": 1}
    r["q"] = q
    d = m.dict(k=1)
    r["d"] = d
    d["k"] = 2
    r.incr("count", 5)
    del r["n"]
    ns = m.Namespace(x=1)
    r["ns"] = ns
    ns.y = [1]
    r["arr"] = m.Array("i", [1, 2, 3])
    r["lock"] = m.Lock()
    r["lock"].acquire()                      # lock state is not data: it comes back free


EXPECTED = {"nested": {"x": [1, 2, {"y": (1, 2)}, 3], "s": {1, 2}, "b": b"\x00", "big": 2**80},
            "opaque": fractions.Fraction(1, 3), "d": {"k": 2}, "count": 5}


def check(m: shoal.SyncManager) -> None:
    r = m.root
    got = {k: shoal.unwrap(r[k]) for k in EXPECTED}
    assert got == EXPECTED
    assert type(got["nested"]["x"][2]["y"]) is tuple and type(got["nested"]["s"]) is set
    assert r["q"].qsize() == 2 and r["q"].get() == "two"
    assert r["ns"].x == 1 and r["ns"].y == [1]
    assert r["arr"][:] == [1, 2, 3]
    assert r["lock"].acquire(False) is True


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fsync", ["always", "everysec", "no"])
def test_state_survives_a_restart(tmp_path: pathlib.Path, fsync: str) -> None:
    with shoal.Manager(persist=tmp_path, fsync=fsync) as m:
        fill(m)
    with shoal.Manager(persist=tmp_path, fsync=fsync) as m:
        check(m)
        m.root["nested"]["x"][2]["z"] = 1          # and it goes on from there
    with shoal.Manager(persist=tmp_path) as m:
        assert m.root["nested"]["x"][2] == {"y": (1, 2), "z": 1}


@pytest.mark.timeout(60)
def test_compaction_keeps_the_live_data_only(tmp_path: pathlib.Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_persist, "COMPACT_FLOOR", 20_000)
    with server_in_thread(tmp_path, fsync="always") as m:
        fill(m)
        scratch = m.dict()
        for i in range(3000):                    # history: written over and over
            m.root["hot"] = i
            scratch[i % 10] = i                  # not reachable from root: not kept
        assert persistence(m)["snapshots"] >= 1
        wait_until_compacted(m)
    files = sorted(os.listdir(tmp_path))
    assert "snapshot" in files and "journal.0" not in files
    journal = [f for f in files if f.startswith("journal.")]
    assert len(journal) == 1 and os.path.getsize(tmp_path / journal[0]) < 40_000
    with server_in_thread(tmp_path) as m:
        check(m)
        assert m.root["hot"] == 2999


@pytest.mark.timeout(60)
def test_a_container_held_only_by_a_proxy_survives(tmp_path: pathlib.Path) -> None:
    """The journal does not say which objects clients held: a container taken out of its
    parent and put back, or swapped with another, must replay as it ran."""
    with shoal.Manager(persist=tmp_path, fsync="always") as m:
        r = m.root
        r["a"], r["x"], r["y"] = {"v": 1}, {"name": "X"}, {"name": "Y"}
        a = r["a"]
        del r["a"]                               # only the proxy keeps it now
        a["w"] = 2
        r["b"] = a
        x, y = r["x"], r["y"]
        r["x"], r["y"] = y, x
    with shoal.Manager(persist=tmp_path) as m:
        assert shoal.unwrap(m.root) == {"b": {"v": 1, "w": 2}, "x": {"name": "Y"},
                                        "y": {"name": "X"}}


@pytest.mark.timeout(60)
def test_a_container_stored_after_a_snapshot_was_taken_survives(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_persist, "COMPACT_FLOOR", 20_000)
    with server_in_thread(tmp_path, fsync="always") as m:
        scratch = m.dict(k="v")                  # not reachable from the root (yet)
        i = 0
        while persistence(m)["snapshots"] == 0:
            m.root["hot"] = i
            i += 1
        wait_until_compacted(m)
        scratch["k2"] = "v2"
        m.root["kept"] = scratch
    with server_in_thread(tmp_path) as m:
        assert m.root["kept"] == {"k": "v", "k2": "v2"}


@pytest.mark.timeout(60)
def test_a_write_that_fails_half_way_replays_the_same(tmp_path: pathlib.Path) -> None:
    """A pipeline's batch and a sort can change the list before they raise."""
    with shoal.Manager(persist=tmp_path, fsync="always") as m:
        r = m.root
        r["l"], r["s"] = [0, 0, 0], [3, 1, 2, None]
        lst, srt = r["l"], r["s"]
        with pytest.raises(IndexError):
            with shoal.pipeline(lst) as pl:
                pl[0] = "a"
                pl[10] = "b"
                pl[1] = "c"
        with pytest.raises(TypeError):
            srt.sort()
        srt[0] = "x"
        before = shoal.unwrap(r)
        assert before["l"] == ["a", "c", 0]
    with shoal.Manager(persist=tmp_path) as m:
        assert shoal.unwrap(m.root) == before


def _big_state_then_compact(m: shoal.SyncManager, monkeypatch: pytest.MonkeyPatch) -> int:
    """Put 300,000 keys in the root (journal only), then make the next write compact; the
    process it forked to write the snapshot."""
    for lo in range(0, 300_000, 50_000):
        m.root.update({k: k for k in range(lo, lo + 50_000)})
    monkeypatch.setattr(_persist, "COMPACT_FLOOR", 1000)
    before = _children()
    m.root["trigger"] = 1
    (child,) = _children() - before
    return child


@pytest.mark.timeout(120)
def test_the_server_answers_while_a_snapshot_is_written(tmp_path: pathlib.Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_persist, "COMPACT_FLOOR", 1 << 30)
    with server_in_thread(tmp_path, fsync="always") as m:
        _big_state_then_compact(m, monkeypatch)
        assert persistence(m)["compacting"]      # a child writes it; the loop goes on
        m.root["during"] = "the snapshot"        # goes to the new journal
        assert wait_until_compacted(m) > 0       # answered while the child was writing
        m.root["after"] = "it"
        assert persistence(m)["snapshots"] == 1
    files = sorted(os.listdir(tmp_path))
    assert files == ["ID", "LOCK", "journal.1", "snapshot"]
    with server_in_thread(tmp_path) as m:
        assert len(m.root) == 300_003
        assert (m.root[299_999], m.root["during"], m.root["after"]) == (299_999, "the snapshot", "it")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("end", ["child killed", "server crashed"])
def test_an_unfinished_snapshot_loses_nothing(tmp_path: pathlib.Path, end: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The child writing a snapshot is killed (the server goes on with its journals), or the
    server dies while it writes (emulated: the directory is copied as the crash leaves it)."""
    monkeypatch.setattr(_persist, "COMPACT_FLOOR", 1 << 30)
    data = tmp_path / "data"
    with server_in_thread(data, fsync="always") as m:
        m.root["before"] = [1, 2]
        child = _big_state_then_compact(m, monkeypatch)
        monkeypatch.setattr(_persist, "COMPACT_FLOOR", 1 << 30)
        _stop_while_writing(child)
        m.root["before"].append(3)                # in the new journal
        names = set(os.listdir(data)) - {"snapshot.1.tmp"}
        assert names == {"ID", "LOCK", "journal.0", "journal.1"}
        if end == "server crashed":
            shutil.copytree(data, tmp_path / "crashed")
            data = tmp_path / "crashed"
            os.kill(child, signal.SIGKILL)
        else:
            os.kill(child, signal.SIGKILL)
            os.kill(child, signal.SIGCONT)
            while persistence(m)["compacting"]:  # the server finds its child dead
                time.sleep(0.01)
            assert sorted(os.listdir(data)) == ["ID", "LOCK", "journal.0", "journal.1"]
            m.root["later"] = True
    with server_in_thread(data) as m:
        assert m.root["before"] == [1, 2, 3] and len(m.root) == 300_002 + (end == "child killed")
        assert "snapshot.1.tmp" not in os.listdir(data)     # the torso is removed


@pytest.mark.timeout(60)
def test_a_snapshot_that_cannot_start_leaves_the_journals(tmp_path: pathlib.Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fork() -> int:
        raise OSError(12, "Cannot allocate memory (injected)")
    monkeypatch.setattr(_persist, "COMPACT_FLOOR", 1 << 30)
    with server_in_thread(tmp_path, fsync="always") as m:
        m.root.update({k: k for k in range(20_000)})
        monkeypatch.setattr(os, "fork", no_fork)
        monkeypatch.setattr(_persist, "COMPACT_FLOOR", 1000)
        m.root["a"] = 1                           # would compact: the fork fails, logged
        assert not persistence(m)["compacting"] and persistence(m)["snapshots"] == 0
        assert sorted(os.listdir(tmp_path)) == ["ID", "LOCK", "journal.0", "journal.1"]
        shutil.copytree(tmp_path, tmp_path.parent / "then")
        monkeypatch.undo()
        monkeypatch.setattr(_persist, "COMPACT_FLOOR", 100)
        m.root["b"] = 0
        assert persistence(m)["snapshots"] == 0   # not tried again at once
        m.root.update({k: k for k in range(20_000, 80_000)})
        m.root["b"] = 1                           # grown as much again: tried, and it works
        wait_until_compacted(m)
        assert persistence(m)["snapshots"] == 1
    with server_in_thread(tmp_path) as m:
        assert len(m.root) == 80_002 and (m.root["a"], m.root["b"]) == (1, 1)
    with server_in_thread(tmp_path.parent / "then") as m:    # the journals as the failure left them
        assert len(m.root) == 20_001 and m.root["a"] == 1


@pytest.mark.timeout(60)
def test_a_snapshot_that_fails_to_write_leaves_the_journals(tmp_path: pathlib.Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "snapshot.1.tmp").mkdir()         # the child cannot create its file
    monkeypatch.setattr(_persist, "COMPACT_FLOOR", 1000)
    with server_in_thread(tmp_path, fsync="always") as m:
        m.root.update({k: k for k in range(2_000)})
        wait_until_compacted(m)                   # the child failed, and said nothing
        assert persistence(m)["snapshots"] == 0
        assert {"journal.0", "journal.1"} <= set(os.listdir(tmp_path))
        m.root["after"] = "the failure"
    with server_in_thread(tmp_path) as m:
        assert len(m.root) == 2_001 and m.root["after"] == "the failure"


def _server_process(directory: str, conn: Any) -> None:
    """A persisting server in its own process; it compacts when told to over ``conn``."""
    srv = Server(None, b"k" * 16, persist=directory)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    conn.send(srv.address)
    while conn.recv() == "compact":
        srv.loop.call_soon_threadsafe(srv.compact)


@pytest.mark.timeout(120)
def test_a_server_killed_while_a_snapshot_is_written(tmp_path: pathlib.Path) -> None:
    """kill -9 of the server while its child writes a snapshot: the next server starts at once
    (the child does not hold the directory), has every write, and the child gives up."""
    ours, theirs = multiprocessing.get_context("fork").Pipe()
    proc = multiprocessing.get_context("fork").Process(target=_server_process,
                                                       args=(str(tmp_path), theirs))
    proc.start()
    m = shoal.connect(ours.recv(), authkey=b"k" * 16)
    conn = m.root._conn
    for lo in range(0, 300_000, 50_000):
        m.root.update({k: k for k in range(lo, lo + 50_000)})
    ours.send("compact")
    while persistence(m)["snapshots"] == 0 and not persistence(m)["compacting"]:
        time.sleep(0.001)
    (child,) = _children_of(proc.pid)
    _stop_while_writing(child)
    m.root["last"] = "write"
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    with pytest.raises(shoal.ConnectionLost):     # the child holds no client's socket
        m.root["after"] = "the kill"
    _client.forget_connection(conn)
    deadline = time.monotonic() + 2
    while _alive(child):                          # stopped, yet killed with its server
        assert time.monotonic() < deadline, "the snapshot writer outlived its server"
        time.sleep(0.01)
    with server_in_thread(tmp_path) as m2:        # not refused: the lock went with the server
        assert len(m2.root) == 300_001 and m2.root["last"] == "write"
    assert not list(tmp_path.glob("snapshot*"))   # nothing half-written was installed


def _stop_while_writing(child: int) -> None:
    """SIGSTOP the snapshot writer once it has let go of what it inherited (so it is set up,
    and busy with the objects)."""
    deadline = time.monotonic() + 10
    while len(os.listdir(f"/proc/{child}/fd")) > 5:
        assert time.monotonic() < deadline, "the snapshot writer did not start"
        time.sleep(0.0005)
    os.kill(child, signal.SIGSTOP)


def _children_of(pid: int) -> set[int]:
    out = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out.update(int(p) for p in f.read().split())
    return out


def _children() -> set[int]:
    """This process's child processes."""
    return _children_of(os.getpid())


def _alive(pid: int) -> bool:
    """Running (not ended, not a zombie left for whoever adopted it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.timeout(60)
def test_a_gap_in_the_journals_stops_the_start(tmp_path: pathlib.Path) -> None:
    with server_in_thread(tmp_path) as m:
        m.root["x"] = 1
    (tmp_path / "journal.0").rename(tmp_path / "journal.2")
    (tmp_path / "journal.0").write_bytes((tmp_path / "journal.2").read_bytes())
    with pytest.raises(CorruptStore, match="journal.0 to journal.2 should all be there"):
        Server(None, b"k", persist=str(tmp_path))


@pytest.mark.timeout(60)
def test_a_second_server_on_the_directory_is_refused(tmp_path: pathlib.Path) -> None:
    with shoal.Manager(persist=tmp_path) as m:
        m.root["x"] = 1
        with pytest.raises(StoreLocked, match="in use by another shoal server"):
            Server(None, b"k", persist=str(tmp_path))
    with shoal.Manager(persist=tmp_path) as m:      # the first is gone: the lock went with it
        assert m.root["x"] == 1


def _journal(tmp_path: pathlib.Path) -> pathlib.Path:
    (path,) = [p for p in tmp_path.iterdir() if p.name.startswith("journal.")]
    return path


@pytest.mark.timeout(60)
def test_a_torn_tail_is_recovered_up_to_the_last_whole_record(tmp_path: pathlib.Path) -> None:
    with shoal.Manager(persist=tmp_path, fsync="always") as m:
        for i in range(10):
            m.root[i] = i
    path = _journal(tmp_path)
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size - 3)                      # the last record loses its end
    with shoal.Manager(persist=tmp_path) as m:
        assert dict(m.root) == {i: i for i in range(9)}
        m.root["after"] = 1
    with shoal.Manager(persist=tmp_path) as m:
        assert m.root["after"] == 1 and len(m.root) == 10


@pytest.mark.timeout(60)
def test_damage_in_the_middle_stops_the_start(tmp_path: pathlib.Path) -> None:
    with shoal.Manager(persist=tmp_path, fsync="always") as m:
        for i in range(10):
            m.root[i] = "value %d" % i
    path = _journal(tmp_path)
    data = bytearray(path.read_bytes())
    at = data.index(b"value 3")
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    before = path.read_bytes()
    with pytest.raises(CorruptStore, match=r"journal\.0: record at offset \d+ is damaged"):
        Server(None, b"k", persist=str(tmp_path))
    assert path.read_bytes() == before               # nothing was overwritten


@pytest.mark.timeout(60)
def test_damage_in_a_record_over_a_mebibyte_stops_the_start(tmp_path: pathlib.Path) -> None:
    """Its successor starts past the search for a whole record after it: it looked like a torn
    tail, and the writes after it were cut off."""
    with shoal.Manager(persist=tmp_path, fsync="always") as m:
        m.root["before"] = 1
        m.root["blob"] = b"x" * (2 * 2**20)
        for i in range(10):
            m.root[i] = i
    path = _journal(tmp_path)
    data = bytearray(path.read_bytes())
    data[data.index(b"xxxx") + 2**20] ^= 0xFF
    path.write_bytes(bytes(data))
    before = path.read_bytes()
    with pytest.raises(CorruptStore, match=r"journal\.0: record at offset \d+ is damaged"):
        Server(None, b"k", persist=str(tmp_path))
    assert path.read_bytes() == before


class Box:
    def __init__(self) -> None:
        self.items = [1]

    def clear(self) -> None:
        self.items.clear()


class _BoxManager(shoal.SyncManager):
    pass


_BoxManager.register("Box", Box)


@pytest.mark.timeout(60)
def test_an_id_given_to_an_object_not_persisted_is_not_given_again(
        tmp_path: pathlib.Path) -> None:
    """A registered type's object is not journaled; after a restart a new object took its id,
    and the old proxy reached that object."""
    address = str(tmp_path / "s.sock")
    m1 = _BoxManager(address=address, persist=str(tmp_path / "data"), fsync="always")
    m1.start()
    m1.root["x"] = 1
    box = m1.Box()
    it = iter(m1.root)                             # an iterator: not journaled either
    m1._process.kill()
    m1._process.join(5)
    m2 = _BoxManager(address=address, persist=str(tmp_path / "data"), fsync="always")
    m2.start()
    try:
        m2.root["victim"] = {"a": 1}
        m2.root["other"] = m2.list([1])
        with pytest.raises(ReferenceError):
            box.clear()
        assert m2.root["victim"] == {"a": 1} and m2.root["other"] == [1]
        del it
    finally:
        m2.shutdown()
        m1.shutdown()


@pytest.mark.timeout(60)
def test_a_snapshot_missing_an_object_record_stops_the_start(tmp_path: pathlib.Path) -> None:
    # A snapshot whose end record counts one object more than it holds (a record lost).
    from shoal._codec import Codec
    snap = tmp_path / "snapshot"
    encode = Codec().encode
    records = [encode(["shoal-snapshot", 1, 0, 10]), encode([1, "dict", -1, encode({})]),
               encode(["end", 2])]
    snap.write_bytes(b"".join(_persist.frame(r) for r in records))
    before = snap.read_bytes()
    with pytest.raises(CorruptStore, match="counts 2 objects, but 1 are there"):
        Server(None, b"k", persist=str(tmp_path))
    assert snap.read_bytes() == before


class FailingIO(_persist.FileIO):
    """Fails the Nth write or fsync (SQLite-style fault injection)."""

    def __init__(self, fail_write: int = 0, fail_fsync: int = 0) -> None:
        self.writes = self.fsyncs = 0
        self.fail_write, self.fail_fsync = fail_write, fail_fsync

    def write(self, fd: int, data: bytes) -> int:
        self.writes += 1
        if self.writes == self.fail_write:
            raise OSError(28, "No space left on device (injected)")
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1
        if self.fsyncs == self.fail_fsync:
            raise OSError(5, "Input/output error (injected)")
        super().fsync(fd)


@pytest.mark.timeout(60)
def test_a_put_let_in_by_a_get_waits_for_the_journal(tmp_path: pathlib.Path) -> None:
    """A blocked put() that a get() completes is answered only once its item is on disk: when
    the journal write fails, both hear of it."""
    io = FailingIO()
    with server_in_thread(tmp_path, fsync="always", store_io=io) as m:
        q = m.Queue(maxsize=1)
        m.root["q"] = q
        q.put("A")
        put_result: list[object] = []

        def putter() -> None:
            try:
                q.put("B")
                put_result.append("ok")
            except shoal.RemoteError as e:
                put_result.append(e)

        t = threading.Thread(target=putter)
        t.start()
        deadline = time.monotonic() + 10
        while not any(info["putters_waiting"]
                      for info in m.root._conn.call(0, "inspect", [])["queues"]):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        io.fail_write = io.writes + 1            # the disk fails now
        with pytest.raises(shoal.RemoteError, match="not persisted"):
            q.get()
        t.join(10)
        assert len(put_result) == 1 and isinstance(put_result[0], shoal.RemoteError)
    with server_in_thread(tmp_path) as m:
        q = m.root["q"]
        assert [q.get_nowait() for _ in range(q.qsize())] == ["A"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["write", "fsync"])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_a_failing_disk_never_loses_a_write_silently(tmp_path: pathlib.Path, kind: str,
                                                     n: int) -> None:
    io = FailingIO(**{f"fail_{kind}": n})
    acknowledged, refused = [], []
    with server_in_thread(tmp_path, fsync="always", store_io=io) as m:
        r = m.root
        for i in range(12):
            try:
                r[i] = i
            except shoal.RemoteError as e:
                assert "persist" in str(e)
                refused.append(i)
            else:
                acknowledged.append(i)
        assert refused                               # the failure was reported
    with server_in_thread(tmp_path) as m:            # the files load
        kept = dict(m.root)
    for i in acknowledged:
        assert kept.get(i) == i                      # every acknowledged write is there


@pytest.mark.timeout(60)
def test_an_item_given_back_by_a_getter_that_gave_up_survives_in_its_place(
        tmp_path: pathlib.Path) -> None:
    with server_in_thread(tmp_path, fsync="always") as m:
        q = m.Queue()
        m.root["q"] = q
        for item in ("first", "second"):
            q.put(item)
        conn = q._conn
        rid = conn._request(q._id, "get", [True, None, 1], None)
        time.sleep(0.2)                          # it ran; its caller gives up before reading
        conn._abandon(rid, q._id, lambda item: ("_unget", [item]))
        assert q.qsize() in (1, 2) and q.qsize() == 2    # the late reply gave it back
    with server_in_thread(tmp_path) as m:
        q = m.root["q"]
        assert [q.get_nowait() for _ in range(q.qsize())] == ["first", "second"]


@pytest.mark.timeout(60)
def test_a_get_and_its_cancel_read_in_one_turn_lose_no_item(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A get interrupted as it went out, whose cancel the server reads in the same turn (as a
    busy server does): the get's reply waits for the journal's commit, and the cancel's went
    out first, so the client took the get for one that never arrived (the item lost, its reply
    left unclaimed)."""
    with server_in_thread(tmp_path, fsync="always") as m:
        q = m.Queue()
        q.put("item")
        conn = q._conn
        write = type(conn)._write
        held: list[bytes] = []

        def hold_then_interrupt(self: Any, data: bytes) -> None:
            held.append(data)                    # the get goes out with the cancel, below
            monkeypatch.setattr(type(conn), "_write",
                                lambda self, data: write(self, held.pop() + data))
            raise KeyboardInterrupt
        monkeypatch.setattr(type(conn), "_write", hold_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            q.get(timeout=5)
        monkeypatch.setattr(type(conn), "_write", write)
        deadline = time.monotonic() + 5          # given back from a thread of its own
        while q.qsize() != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert q.get(timeout=2) == "item"
        assert not conn._replies and not conn._abandoned and not conn._cancels


@pytest.mark.timeout(60)
def test_a_failed_commit_does_not_fail_a_cancel_held_behind_it(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancel's reply held only to keep its place goes out as it is when the commit fails
    (it became "not persisted", the client took it for no answer, and an interrupted
    Condition.wait left its lock to be taken later for nobody)."""
    io = FailingIO()
    with server_in_thread(tmp_path, fsync="always", store_io=io) as m:
        cond, box = m.Condition(), m.dict()
        conn = cond._conn
        write, finish = type(conn)._write, type(conn)._finish
        b_has_it, b_may_go = threading.Event(), threading.Event()

        def b() -> None:
            with cond:
                b_has_it.set()
                b_may_go.wait(10)
        calls = [0]

        def interrupt_then_fail(self: Any, data: bytes) -> None:
            if threading.current_thread() is not threading.main_thread():
                return write(self, data)
            calls[0] += 1
            if calls[0] == 1:                     # the wait goes out, then Ctrl-C
                write(self, data)
                raise KeyboardInterrupt
            if calls[0] == 2:                     # the cancel, after a write whose commit fails
                io.fail_write = io.writes + 1
                data = self._frame(self.next_rid(), [box._id, "__setitem__", ["k", 1]]) + data
            return write(self, data)

        def b_first(self: Any, rid: int) -> None:
            threading.Thread(target=b, daemon=True).start()   # the lock is B's when it ends
            b_has_it.wait(5)
            finish(self, rid)
        cond.acquire()
        monkeypatch.setattr(type(conn), "_write", interrupt_then_fail)
        monkeypatch.setattr(type(conn), "_finish", b_first)
        threading.Timer(0.5, b_may_go.set).start()
        with pytest.raises(KeyboardInterrupt):
            cond.wait(timeout=30)
        monkeypatch.setattr(type(conn), "_write", write)
        cond.release()                            # held again, as after threading's wait
        assert cond.acquire(timeout=2) is True
        cond.release()


@pytest.mark.timeout(60)
def test_a_restart_in_the_other_nested_mode_replays_writes_as_they_were_made(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal's requests were replayed in the restarted server's mode: a dict stored
    under nested="share" came back as a plain value, and the writes into it were dropped
    (for good once a server in the other mode compacted)."""
    with shoal.Manager(persist=tmp_path, fsync="always") as m:
        m.root["row"] = {}
        m.root["row"]["a"] = 1
        m.root["lst"] = [1]
        m.root["lst"].append(2)
    with shoal.Manager(persist=tmp_path, nested="copy") as m:
        assert m.root.copy() == {"row": {"a": 1}, "lst": [1, 2]}
        m.root["plain"] = {"b": 2}             # a copy: stays a plain value when replayed
    monkeypatch.setattr(_persist, "COMPACT_FLOOR", 2_000)
    with server_in_thread(tmp_path, nested="copy") as m:
        i = 0
        deadline = time.monotonic() + 30
        while persistence(m)["snapshots"] < 1 and time.monotonic() < deadline:
            m.root["later"] = {"c": i}         # history, until a compaction has run
            i += 1
        m.root["later"] = {"c": 299}
        m.root["lst"].append(3)                # still shared: made under "share"
        assert persistence(m)["snapshots"] >= 1
        wait_until_compacted(m)
        m.root["last"] = {"d": 4}
    with shoal.Manager(persist=tmp_path) as m:
        assert m.root.copy() == {"row": {"a": 1}, "lst": [1, 2, 3], "plain": {"b": 2},
                                 "later": {"c": 299}, "last": {"d": 4}}
        assert isinstance(m.root["row"], shoal.DictProxy)
        assert type(m.root["plain"]) is dict     # plain, as it was made
