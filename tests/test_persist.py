"""persist=DIR: the shared state survives a restart, exactly; damaged files are handled."""

from __future__ import annotations

import fractions
import os
import pathlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import shoal
from shoal import _persist
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
        from shoal import _client
        for key, conn in list(_client._connections.items()):
            if key[0] == srv.address:
                _client.forget_connection(conn)


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
    files = sorted(os.listdir(tmp_path))
    assert "snapshot" in files and "journal.0" not in files
    journal = [f for f in files if f.startswith("journal.")]
    assert len(journal) == 1 and os.path.getsize(tmp_path / journal[0]) < 40_000
    with server_in_thread(tmp_path) as m:
        check(m)
        assert m.root["hot"] == 2999


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
