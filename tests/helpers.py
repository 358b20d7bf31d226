"""Worker functions for child processes (module level, so spawn and forkserver can import them),
and the helpers the tests use to run them, kill them and time what they wait for."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any


# -- running child processes and threads ---------------------------------------------------------

def start(target: Callable[..., Any], *args: Any, ctx: Any = None) -> Any:
    """``target(*args)`` in a started daemon process (``ctx``: the default context)."""
    p = (ctx or multiprocessing.get_context()).Process(target=target, args=args, daemon=True)
    p.start()
    return p


def join_all(procs: list[Any], timeout: float = 30) -> None:
    for p in procs:
        p.join(timeout)
        assert p.exitcode == 0, f"child exit code {p.exitcode}"


def kill(p: Any) -> float:
    """SIGKILL ``p``, wait until it is gone; return when the kill was sent."""
    t = time.monotonic()
    os.kill(p.pid, signal.SIGKILL)
    p.join(5)
    assert p.exitcode == -signal.SIGKILL
    return t


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``fn``'s result and how long it took."""
    start = time.monotonic()
    result = fn(*args, **kwargs)
    return result, time.monotonic() - start


def in_thread(fn: Callable[..., Any], *args: Any) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` in a daemon thread; the list gets its result or its exception."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn(*args))
        except BaseException as e:
            out.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


# -- workers -------------------------------------------------------------------------------------


def set_item(d: Any, key: Any, value: Any) -> None:
    d[key] = value


def nested_write(d: Any, i: int) -> None:
    d["test"][i] = i


def incr_many(d: Any, key: str, n: int) -> None:
    for _ in range(n):
        d.incr(key)


def cas_many(d: Any, key: str, n: int) -> None:
    for _ in range(n):
        while True:
            old = d.get(key)                  # None while missing: cas compares d.get(key)
            if d.cas(key, old, (old or 0) + 1):
                break


def locked_many(d: Any, key: str, n: int) -> None:
    for _ in range(n):
        with d.locked():
            d[key] = d.get(key, 0) + 1


def get_forever(q: Any, ready: Any) -> None:
    """Wait in ``q.get()``, then stay (until killed)."""
    ready.set()
    q.get()
    time.sleep(600)


def hold_locked(d: Any, ready: Any, seconds: float) -> None:
    with d.locked():
        ready.set()
        time.sleep(seconds)
        d["by_child"] = True


def set_event_later(e: Any, delay: float) -> None:
    time.sleep(delay)
    e.set()


def put_then_write(q: Any, d: Any, ready: Any, go: Any) -> None:
    """Put into ``q`` (an unbounded queue: sent without waiting), then write ``d``."""
    q.put("warm-up")                     # (a forked child reconnects on this one)
    q.put("warm-up")                     # the process asks once whether its puts may go blind
    ready.set()
    go.wait(10)
    q.put("item")
    d["after_put"] = True


# -- a wait interrupted by an exception (a signal handler's, Ctrl-C) -----------------------------

class Alarm(Exception):
    """What ``interrupted_after`` raises in the main thread."""


def _raise_alarm(*_: Any) -> None:
    raise Alarm()


@contextlib.contextmanager
def interrupted_after(seconds: float) -> Iterator[None]:
    """Raise Alarm in this (the main) thread after ``seconds``; the block must raise it."""
    import pytest
    old = signal.signal(signal.SIGALRM, _raise_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        with pytest.raises(Alarm):
            yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def end_process(proc: Any, timeout: float = 10.0) -> None:
    """SIGTERM ``proc`` (a ``subprocess.Popen``), then SIGKILL if it has not ended within
    ``timeout``: a test leaves no server behind (a stuck one would take a CPU from every test
    after it)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class SentBytes:
    """Wraps a client connection's socket to keep what it sends."""

    def __init__(self, sock: Any) -> None:
        self.sock, self.sent = sock, bytearray()

    def send(self, data: bytes) -> int:
        n = self.sock.send(data)
        self.sent += data[:n]
        return n  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)
