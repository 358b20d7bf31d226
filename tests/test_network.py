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

import pytest

import shoal
from shoal import _protocol as P

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
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(10)
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
        P.check_server(KEY, hello, cn, first + s.recv(32))
        s.sendall(frame)
        s.close()
    assert m.root["x"] == 1 and m.dict(a=1) == {"a": 1}
