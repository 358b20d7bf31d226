"""The server's limits hold against peers that push them: silent sockets filling the connection
limit, running out of file descriptors, a client that never reads its replies."""

from __future__ import annotations

import os
import pathlib
import resource
import socket
import subprocess
import sys
import time

import pytest

import shoal
from shoal import _protocol as P
from shoal._codec import Codec

from .test_network import KEY, _keyfile


def _serve(tmp_path: pathlib.Path, *extra: str, nofile: int | None = None) -> tuple[
        subprocess.Popen[str], str]:
    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal", "serve", "--address", "127.0.0.1:0", "--authkey-file",
         str(_keyfile(tmp_path)), "--handshake-timeout", "30", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=limit)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("shoal serving on"), line
    return proc, line.split()[-1]


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(10)
    if proc.stdout:
        proc.stdout.close()


def _raw(address: str) -> socket.socket:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.timeout(60)
def test_silent_sockets_cannot_keep_key_holders_out(tmp_path: pathlib.Path) -> None:
    proc, address = _serve(tmp_path, "--max-connections", "20")
    silent = []
    try:
        for _ in range(30):                        # more than the limit, none authenticates
            s = _raw(address)
            s.recv(P.HELLO_SIZE)
            silent.append(s)
        m = shoal.connect(address, authkey=KEY)     # the oldest silent ones make room
        m.root["in"] = True
        assert m.root["in"] is True
    finally:
        for s in silent:
            s.close()
        _stop(proc)


@pytest.mark.timeout(60)
def test_running_out_of_descriptors_does_not_spin(tmp_path: pathlib.Path) -> None:
    proc, address = _serve(tmp_path, nofile=48)
    socks = []
    try:
        for _ in range(80):                         # past the server's 48 descriptors
            socks.append(_raw(address))
        time.sleep(0.3)
        before = _cpu(proc.pid)
        time.sleep(1.0)
        used = _cpu(proc.pid) - before
        assert used < 0.3, f"the server used {used:.2f} s of CPU in 1 s while out of descriptors"
    finally:
        for s in socks:
            s.close()
        _stop(proc)


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


@pytest.mark.timeout(120)
def test_replies_to_a_client_that_does_not_read_are_bounded() -> None:
    with shoal.Manager(authkey=KEY) as m:
        m.root["big"] = list(range(100_000))        # each copy() reply is ~0.4 MB
        big = m.root["big"]
        s = socket.socket(socket.AF_UNIX)
        s.connect(m.address)
        hello = s.recv(P.HELLO_SIZE)
        proof, _ = P.client_proof(KEY, hello)
        s.sendall(proof)
        s.recv(33)
        body = Codec().encode([big._id, "copy", []])
        before = _rss_kib(m._process.pid)
        s.sendall(b"".join(P.HEADER.pack(len(body), i + 1) + body for i in range(1000)))
        time.sleep(2)                               # ~400 MB of replies asked for, none read
        grown = (_rss_kib(m._process.pid) - before) / 1024
        assert grown < 120, f"the server buffered {grown:.0f} MiB for a client that reads nothing"
        assert m.root["big"][:3] == [0, 1, 2]       # others are served meanwhile
        s.settimeout(10)
        got = 0
        while got < 1000 * 300_000:                 # and every reply comes once it reads
            chunk = s.recv(1 << 20)
            assert chunk
            got += len(chunk)
        s.close()
