"""Worker functions for child processes (module level, so spawn and forkserver can import them)."""

from __future__ import annotations

import os
import time
from typing import Any


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


def racy_many(d: Any, key: str, n: int) -> None:
    for _ in range(n):
        d[key] = d.get(key, 0) + 1


def hold_forever(lock: Any, ready: Any) -> None:
    lock.acquire()
    ready.set()
    time.sleep(600)


def report_pid(q: Any) -> None:
    q.put(os.getpid())


def wait_on_barrier(b: Any, ready: Any) -> None:
    ready.set()
    b.wait()


def get_forever(q: Any, ready: Any) -> None:
    ready.set()
    q.get()


def hold_semaphore(s: Any, n: int, ready: Any) -> None:
    for _ in range(n):
        s.acquire()
    ready.set()
    time.sleep(600)
