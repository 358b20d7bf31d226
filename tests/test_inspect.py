"""``shoal inspect`` against a real server: objects, clients, a lock held by another process."""

from __future__ import annotations

import json
import multiprocessing
import pathlib
import subprocess
import sys
from typing import Any

import pytest

import shoal

from .test_network import KEY, _keyfile, _serve


def _hold(address: str, ready: Any, release: Any) -> None:
    m = shoal.connect(address, authkey=KEY)
    lock = m.root["lock"]
    lock.acquire()
    ready.set()
    release.wait(30)
    lock.release()


def _inspect(address: str, keyfile: pathlib.Path, *extra: str) -> str:
    out = subprocess.run([sys.executable, "-m", "shoal", "inspect", address, "--authkey-file",
                          str(keyfile), *extra], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.timeout(60)
def test_inspect_shows_objects_clients_and_the_holder(tmp_path: pathlib.Path) -> None:
    for served in _serve(tmp_path):
        m = shoal.connect(served.address, authkey=KEY)
        m.root["lock"] = m.Lock()
        m.root["jobs"] = m.Queue()
        m.root["jobs"].put("a")
        m.root["jobs"].put("b")
        m.root["data"] = {"x": 1, "y": 2}
        ctx = multiprocessing.get_context("spawn")
        ready, release = ctx.Event(), ctx.Event()
        p = ctx.Process(target=_hold, args=(served.address, ready, release))
        p.start()
        try:
            assert ready.wait(30)
            state = json.loads(_inspect(served.address, _keyfile(tmp_path), "--json"))
            assert state["server"]["address"][1] == int(served.address.rsplit(":", 1)[1])
            assert state["objects"]["Lock"]["count"] == 1
            assert state["objects"]["Queue"] == {"count": 1, "size": 2}
            assert state["objects"]["dict"]["count"] >= 2           # root and data
            pids = {c["pid"] for c in state["clients"]}
            assert p.pid in pids
            (lock,) = [x for x in state["locks"] if x["type"] == "Lock"]
            assert lock["holder_pid"] == p.pid and lock["held"] and lock["held_for"] >= 0
            (queue,) = state["queues"]
            assert queue["items"] == 2 and queue["getters_waiting"] == 0
            assert state["persistence"] is None

            text = _inspect(served.address, _keyfile(tmp_path))
            assert "OBJECTS" in text and "CLIENTS" in text and "QUEUES" in text
            locks_part = text.split("LOCKS AND SEMAPHORES")[1].split("QUEUES")[0]
            lock_line = next(line for line in locks_part.splitlines() if " Lock " in line)
            assert str(p.pid) in lock_line
        finally:
            release.set()
            p.join(30)
        assert p.exitcode == 0


@pytest.mark.timeout(60)
def test_inspect_needs_the_key(tmp_path: pathlib.Path) -> None:
    for served in _serve(tmp_path):
        bad = tmp_path / "bad"
        bad.write_text("not the key")
        bad.chmod(0o600)
        out = subprocess.run([sys.executable, "-m", "shoal", "inspect", served.address,
                              "--authkey-file", str(bad)], capture_output=True, text=True,
                             timeout=30)
        assert out.returncode == 1 and "authkey" in out.stderr


@pytest.mark.timeout(60)
def test_inspect_shows_what_persistence_wrote_and_synced(tmp_path: pathlib.Path) -> None:
    data = tmp_path / "data"
    for served in _serve(tmp_path, "--persist", str(data), "--fsync", "always"):
        m = shoal.connect(served.address, authkey=KEY)
        for i in range(10):
            m.root[i] = i                    # one write at a time: one fsync each
        state = json.loads(_inspect(served.address, _keyfile(tmp_path), "--json"))
        p = state["persistence"]
        assert p["dir"] == str(data) and p["fsync"] == "always" and p["failed"] is None
        assert p["records"] >= 10 and 10 <= p["fsyncs"] <= p["records"]
        assert p["journal_bytes"] > 0
        assert "PERSISTENCE" in _inspect(served.address, _keyfile(tmp_path))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("interval", ["-1", "0", "nan", "inf"])
def test_inspect_refuses_a_bad_interval_before_it_connects(tmp_path: pathlib.Path,
                                                           interval: str) -> None:
    for served in _serve(tmp_path):
        out = subprocess.run([sys.executable, "-m", "shoal", "inspect", served.address,
                              "--authkey-file", str(_keyfile(tmp_path)), "--json", "--watch",
                              "--interval", interval], capture_output=True, text=True,
                             timeout=30)
        assert out.returncode == 2 and out.stdout == ""
        assert "error: argument --interval: must be above 0" in out.stderr, out.stderr


@pytest.mark.timeout(60)
def test_inspect_watch_ends_quietly_when_its_reader_goes(tmp_path: pathlib.Path) -> None:
    for served in _serve(tmp_path):
        proc = subprocess.Popen([sys.executable, "-m", "shoal", "inspect", served.address,
                                 "--authkey-file", str(_keyfile(tmp_path)), "--json", "--watch",
                                 "--interval", "0.05"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stderr is not None
        assert json.loads(proc.stdout.readline())["server"]
        proc.stdout.close()                  # as ``| head -1`` does after one line
        assert proc.wait(30) == 141          # 128 + SIGPIPE, as other tools end
        assert proc.stderr.read() == ""
        proc.stderr.close()


@pytest.mark.timeout(60)
def test_inspect_names_the_server_as_serve_does(tmp_path: pathlib.Path) -> None:
    for served in _serve(tmp_path):                  # served.address: what serve printed
        header = _inspect(served.address, _keyfile(tmp_path)).splitlines()[0]
        assert f" on {served.address} " in header, header
