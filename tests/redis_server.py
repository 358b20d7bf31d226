"""A real redis-server for the tests: started on a free loopback port in a temporary directory,
awaited until it answers PING, stopped at the end. No fakes, and never skipped: a missing
``redis-server`` binary fails the tests with how to install it.

Use the ``redis_url`` fixture (import it into a test module), or ``RedisServer`` directly::

    with RedisServer() as server:
        print(server.url)          # redis://127.0.0.1:PORT/0
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

__all__ = ["INSTALL_HINT", "RedisServer", "redis_url"]

INSTALL_HINT = ("redis-server is not installed, and the Redis backend's tests need a real one: "
                "install it with `apt-get install -y redis-server` (Debian/Ubuntu; or valkey-server, "
                "or `brew install redis`), and redis-py with `pip install -e '.[redis]'`")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # type: ignore[no-any-return]


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process: ``--port N --bind 127.0.0.1 --save '' --appendonly no``."""

    def __init__(self, executable: str | None = None, start_timeout: float = 10.0) -> None:
        exe = executable or shutil.which("redis-server") or shutil.which("valkey-server")
        if exe is None:
            raise RuntimeError(INSTALL_HINT)
        self.executable = exe
        self.start_timeout = start_timeout
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="shoal-redis-")
        for _ in range(3):                       # a port taken between our probe and its bind
            self.port = _free_port()
            self.proc = subprocess.Popen(
                [self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", self._dir.name,
                 "--logfile", "redis.log"],
                cwd=self._dir.name, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + self.start_timeout
            while time.monotonic() < deadline:
                if _ping(self.port):
                    return
                if self.proc.poll() is not None:
                    break
                time.sleep(0.02)
            self.stop(keep_dir=True)
        log = ""
        try:
            with open(f"{self._dir.name}/redis.log", encoding="utf-8", errors="replace") as f:
                log = f.read()[-2000:]
        except OSError:
            pass
        raise RuntimeError(f"redis-server ({self.executable}) did not answer PING on a loopback "
                           f"port; its log ends with:\n{log}")

    def stop(self, keep_dir: bool = False) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if not keep_dir and self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of a redis-server started for this test run (fails, never skips, without one)."""
    try:
        server = RedisServer()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    with server:
        yield server.url
        try:
            from shoal.redis import close_all
        except ImportError:
            pass
        else:
            close_all()                   # before the server goes: no renewals into the void
