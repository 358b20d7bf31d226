"""The standalone server over TCP and TLS, its authkey file, and its handling of bad peers."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

import shoal
from shoal import _protocol as P

from .helpers import end_process

KEY = b"c2hvYWwtdGVzdC1rZXktMzItYnl0ZXMtbG9uZyE="


def _keyfile(tmp_path: pathlib.Path, mode: int = 0o600) -> pathlib.Path:
    path = tmp_path / "key"
    path.write_bytes(KEY + b"\n")          # the trailing newline is stripped
    path.chmod(mode)
    return path


class Served:
    def __init__(self, proc: subprocess.Popen[str], address: str) -> None:
        self.proc, self.address = proc, address


def _serve(tmp_path: pathlib.Path, *extra: str) -> Iterator[Served]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal", "serve", "--address", "127.0.0.1:0",
         "--authkey-file", str(_keyfile(tmp_path)), "--handshake-timeout", "1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("shoal serving on tcp://"), line + (proc.stderr.read()
                                                                   if proc.stderr else "")
        yield Served(proc, line.split()[-1])
    finally:
        end_process(proc)
        for f in (proc.stdout, proc.stderr):
            if f:
                f.close()


@pytest.fixture
def served(tmp_path: pathlib.Path) -> Iterator[Served]:
    yield from _serve(tmp_path)


@pytest.mark.timeout(60)
def test_serve_over_tcp_and_stop_cleanly(served: Served) -> None:
    m = shoal.connect(served.address, authkey=KEY)
    m.root["jobs"] = {"a": [1]}
    m.root["jobs"]["a"].append(2)
    other = shoal.connect(served.address, authkey=KEY)
    assert other.root["jobs"] == {"a": [1, 2]}
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(10) == 0


@pytest.mark.timeout(60)
def test_wrong_key_is_refused_in_under_a_second(served: Served) -> None:
    start = time.monotonic()
    with pytest.raises(shoal.AuthenticationError):
        shoal.connect(served.address, authkey=b"wrong").root
    assert time.monotonic() - start < 1


@pytest.mark.timeout(60)
def test_authkey_file_open_to_others_is_refused(tmp_path: pathlib.Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "shoal", "serve", "--address", "127.0.0.1:0",
         "--authkey-file", str(_keyfile(tmp_path, 0o644))],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "chmod 600" in out.stderr


@pytest.mark.timeout(60)
def test_tls_round_trip_with_a_self_signed_certificate(tmp_path: pathlib.Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "tls-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60)
    for served in _serve(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key)):
        m = shoal.connect(served.address, authkey=KEY, tls=str(cert))
        d = m.dict()
        d["secret"] = b"x" * 100_000               # several TLS records in one frame
        assert d["secret"] == b"x" * 100_000
        # A client that does not speak TLS learns nothing and the server goes on.
        with pytest.raises((shoal.ConnectionLost, shoal.ProtocolError)):
            shoal.connect(served.address, authkey=KEY).root
        # Nor does one that does not trust the certificate.
        with pytest.raises(shoal.ConnectionLost):
            shoal.connect(served.address, authkey=KEY, tls=True).root
        assert d["secret"][:1] == b"x"


def _raw(address: str) -> socket.socket:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


@pytest.mark.timeout(60)
def test_unauthenticated_peers_learn_nothing_and_cannot_hurt(served: Served) -> None:
    m = shoal.connect(served.address, authkey=KEY)
    m.root["x"] = 1
    for junk in (b"\xff" * 64, os.urandom(64), b"GET / HTTP/1.1\r\n\r\n" * 8, b"\x00" * 100):
        s = _raw(served.address)
        hello = s.recv(100)
        assert hello.startswith(P.MAGIC) and len(hello) == P.HELLO_SIZE   # nothing else
        s.sendall(junk)
        assert s.recv(100) in (b"\x00", b"")   # refused, no traceback, no version string
        s.close()
    assert m.root["x"] == 1


@pytest.mark.timeout(60)
def test_huge_and_truncated_frames_after_authentication(served: Served) -> None:
    m = shoal.connect(served.address, authkey=KEY)
    m.root["x"] = 1
    for frame in (P.HEADER.pack(2**31, 1), P.HEADER.pack(0xFFFFFFFF, 1),
                  P.HEADER.pack(10, 1) + b"\x93", P.HEADER.pack(3, 1) + b"\xc1\xc1\xc1"):
        s = _raw(served.address)
        hello = s.recv(P.HELLO_SIZE)
        proof, cn = P.client_proof(KEY, hello)
        s.sendall(proof)
        first = s.recv(1)
        P.check_server(KEY, hello, cn, first + s.recv(P.ANSWER_SIZE - 1))
        s.sendall(frame)
        s.close()
    assert m.root["x"] == 1 and m.dict(a=1) == {"a": 1}


def _serve_at(tmp_path: pathlib.Path, address: str, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal", "serve", "--address", address,
         "--authkey-file", str(_keyfile(tmp_path)), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("shoal serving on")
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    if proc.stdout:
        proc.stdout.close()


@pytest.mark.timeout(60)
def test_a_proxy_from_before_a_restart_refuses_the_new_servers_objects(
        tmp_path: pathlib.Path) -> None:
    """Without persistence the restarted server's objects are new, and the same number names
    another object: a proxy made before must not reach it. With persistence it may."""
    address = str(tmp_path / "sock")
    proc = _serve_at(tmp_path, address)
    m = shoal.connect(address, authkey=KEY)
    mine = m.dict(secret="A")
    _stop(proc)
    proc = _serve_at(tmp_path, address)
    try:
        fresh = shoal.connect(address, authkey=KEY)       # works at its first call
        theirs = fresh.dict(owner="B")
        for _ in range(2):        # (a first call may find the old connection broken)
            with pytest.raises((shoal.ConnectionLost, ReferenceError)):
                mine["secret"] = "written through a stale proxy"
        with pytest.raises(ReferenceError, match="restarted"):
            mine["secret"]
        assert theirs == {"owner": "B"}
    finally:
        _stop(proc)
    data = tmp_path / "data"
    proc = _serve_at(tmp_path, address, "--persist", str(data))
    kept = shoal.connect(address, authkey=KEY).root
    kept["k"] = 1
    _stop(proc)
    proc = _serve_at(tmp_path, address, "--persist", str(data))
    try:
        try:
            kept["k"]
        except shoal.ConnectionLost:                      # the old connection, found broken
            pass
        assert kept["k"] == 1                             # the same objects: it reconnects
    finally:
        _stop(proc)


@pytest.mark.timeout(60)
def test_a_reset_connection_is_connection_lost(tmp_path: pathlib.Path) -> None:
    address = str(tmp_path / "sock")
    proc = _serve_at(tmp_path, address)
    d = shoal.connect(address, authkey=KEY).dict()
    proc.send_signal(signal.SIGSTOP)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            d["k"] = 1
        except BaseException as e:
            errors.append(e)
    import threading
    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.3)                                       # the request waits, unread
    proc.kill()
    proc.wait(10)
    if proc.stdout:
        proc.stdout.close()
    t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], shoal.ConnectionLost)
    assert d._conn.closed


@pytest.mark.timeout(60)
@pytest.mark.parametrize("option", [["--handshake-timeout", "nan"], ["--handshake-timeout", "-1"],
                                    ["--max-connections", "0"], ["--address", "127.0.0.1:99999"]])
def test_serve_refuses_bad_options(tmp_path: pathlib.Path, option: list[str]) -> None:
    args = ["--address", "127.0.0.1:0", *option] if option[0] != "--address" else option
    out = subprocess.run([sys.executable, "-m", "shoal", "serve", *args,
                          "--authkey-file", str(_keyfile(tmp_path))],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and out.stderr.startswith("shoal serve: ")
    assert "Traceback" not in out.stderr


@pytest.mark.timeout(60)
def test_a_missing_or_bad_ca_file_is_one_clear_line(tmp_path: pathlib.Path) -> None:
    for ca in (tmp_path / "missing.pem", _keyfile(tmp_path)):
        out = subprocess.run([sys.executable, "-m", "shoal", "inspect", "127.0.0.1:9",
                              "--authkey-file", str(_keyfile(tmp_path)), "--tls-ca", str(ca)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 1 and "Traceback" not in out.stderr
        assert out.stderr.startswith("shoal inspect: cannot use") and "CA file" in out.stderr


@pytest.mark.timeout(60)
def test_a_server_that_cannot_listen_frees_its_directory(tmp_path: pathlib.Path) -> None:
    from shoal._server import Server
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        with pytest.raises(OSError):
            Server(busy.getsockname(), KEY, persist=str(tmp_path / "d"))
        Server(None, KEY, persist=str(tmp_path / "d")).close()   # not locked by the first
    finally:
        busy.close()


@pytest.mark.timeout(30)
def test_nothing_at_a_socket_path_is_server_not_running(tmp_path: pathlib.Path) -> None:
    with pytest.raises(shoal.ServerNotRunning):
        shoal.connect(str(tmp_path / "no-such.sock"), authkey=b"k")


@pytest.mark.timeout(30)
def test_a_multiprocessing_manager_is_not_a_shoal_server() -> None:
    """Its greeting is shorter than ours, and it waits: the client must tell at once."""
    from multiprocessing.managers import SyncManager
    mp = SyncManager(address=("127.0.0.1", 0), authkey=b"k")
    mp.start()
    try:
        t = time.monotonic()
        with pytest.raises(shoal.ProtocolError):
            shoal.connect(mp.address, authkey=b"k")
        assert time.monotonic() - t < 2
    finally:
        mp.shutdown()


@pytest.mark.timeout(60)
def test_a_server_killed_with_sigkill_can_start_again_on_its_socket_path(
        tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "s.sock")
    m = shoal.Manager(address=path)
    m._process.kill()
    m._process.join(5)
    assert os.path.exists(path)                     # left behind by the killed server
    again = shoal.Manager(address=path)
    try:
        again.dict(a=1)
        m.shutdown()                                # (ends the first one's bookkeeping)
        with pytest.raises(OSError):                # a live server's path is not taken over
            shoal.Manager(address=path)
    finally:
        again.shutdown()


def _listen_at(path: str, barrier: Any, out: Any) -> None:
    from shoal._transport import listen
    barrier.wait()
    try:
        sock, _, _ = listen(path)
        out.put("listening")
        barrier.wait()                     # both have said, before either closes
        sock.close()
    except OSError:
        out.put("refused")
        barrier.wait()


@pytest.mark.timeout(120)
def test_two_servers_starting_at_one_socket_path_do_not_both_listen(
        tmp_path: pathlib.Path) -> None:
    """One that has bound but not yet listened refuses connections: the other must not take
    it for a dead server's socket and replace it."""
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    path = str(tmp_path / "race.sock")
    both = 0
    for _ in range(200):
        if os.path.exists(path):
            os.unlink(path)
        barrier, out = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_listen_at, args=(path, barrier, out)) for _ in range(2)]
        for p in procs:
            p.start()
        said = sorted(out.get(timeout=10) for _ in procs)
        for p in procs:
            p.join(10)
        both += said == ["listening", "listening"]
    assert both == 0
