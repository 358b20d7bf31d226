"""A small event loop on epoll (poll elsewhere): file handlers, timers, cross-thread calls.

The server needs little from a loop and needs it fast: asyncio's machinery costs more per request
than a whole loopback round trip (measured: an asyncio echo server answers in ~55 us where this loop
answers in ~25 us and a blocking socket in ~21 us; see docs/architecture.md).
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import os
import select
from collections.abc import Callable
from os import sched_yield
from time import monotonic
from typing import Any

__all__ = ["Loop", "Timer", "READ", "WRITE"]

log = logging.getLogger("shoal.server")

SPIN = 0.0001       # seconds a loop that had work polls, yielding the CPU, before it sleeps
CROWDED = 0.001     # a yield that lost the CPU this long: another process computes on it
CROWDING = 0.05     # when more spins than this (a moving average over about 64) had one,
QUIET = 0.005       # ... no spinning for this long, doubled while it keeps happening
QUIET_MAX = 1.6     # (seconds)
READ = select.POLLIN
WRITE = select.POLLOUT
_ERR = select.POLLERR | select.POLLHUP


class Timer:
    """A scheduled call; ``cancel()`` makes it a no-op."""

    __slots__ = ("when", "seq", "callback", "loop")

    def __init__(self, when: float, seq: int, callback: Callable[[], None] | None,
                 loop: Loop) -> None:
        self.when, self.seq, self.callback, self.loop = when, seq, callback, loop

    def cancel(self) -> None:
        if self.callback is not None:
            self.callback = None
            self.loop._cancelled += 1

    def __lt__(self, other: Timer) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)


class Loop:
    """Run handlers for ready file descriptors, due timers and calls posted from other threads."""

    def __init__(self) -> None:
        if hasattr(select, "epoll"):
            self._poller = select.epoll()
            self._scale = 1.0          # epoll takes seconds
        else:  # pragma: no cover - non-Linux
            self._poller = select.poll()  # type: ignore[assignment]
            self._scale = 1000.0       # poll takes milliseconds
        self._handlers: dict[int, Callable[[int], None]] = {}
        self._timers: list[Timer] = []
        self._cancelled = 0        # cancelled timers still in the heap
        self._seq = itertools.count()
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._after: list[Callable[[], None]] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.add(self._wake_r, READ, self._drain_wakeups)
        self.running = True      # until stop(), even one that comes before run()
        self._quiet, self._quiet_until = QUIET, 0.0    # no spinning before then (_spin)
        self._crowding = 0.0    # share of recent spins that lost the CPU for long

    def add(self, fd: int, events: int, handler: Callable[[int], None]) -> None:
        self._handlers[fd] = handler
        self._poller.register(fd, events)

    def modify(self, fd: int, events: int) -> None:
        self._poller.modify(fd, events)

    def remove(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            try:
                self._poller.unregister(fd)
            except (OSError, ValueError, KeyError):
                pass

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        if self._cancelled > 256 and self._cancelled * 2 > len(self._timers):
            # Waits answered before their timeout leave cancelled timers behind: with long
            # timeouts they would pile up until they are due. Drop them now and then.
            self._timers[:] = [t for t in self._timers if t.callback is not None]
            heapq.heapify(self._timers)
            self._cancelled = 0
        t = Timer(monotonic() + delay, next(self._seq), callback, self)
        heapq.heappush(self._timers, t)
        return t

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` in the loop's thread; safe from any thread."""
        self._calls.append(callback)
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending (pipe full) or the loop is closed

    def after_each_turn(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` after every batch of events (used to flush replies in one write)."""
        self._after.append(callback)

    def _drain_wakeups(self, events: int) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def run(self) -> None:
        handlers, timers, calls, after = self._handlers, self._timers, self._calls, self._after
        poll, fileno = self._poller.poll, self._poller.fileno()
        busy = False
        while self.running:
            if calls:
                timeout = 0.0
            elif timers:
                timeout = max(0.0, timers[0].when - monotonic()) * self._scale
            else:
                timeout = -1
            try:
                events = poll(0) if busy or not timeout else ()
                if not events and timeout:
                    if busy and monotonic() >= self._quiet_until:
                        events = self._spin(poll, timers[0].when if timers else None)
                        if not events and timers:   # (the spin took some of the wait)
                            timeout = max(0.0, timers[0].when - monotonic()) * self._scale
                    if not events and 0 < timeout < 0.001 * self._scale:
                        # epoll_wait counts whole milliseconds: wait a shorter time with
                        # select, which counts microseconds, on the epoll descriptor itself.
                        select.select([fileno], [], [], timeout / self._scale)
                        events = poll(0)
                    elif not events:
                        events = poll(timeout)
                busy = len(events) > 0
            except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                continue
            for fd, ev in events:
                handler = handlers.get(fd)
                if handler is not None:
                    try:
                        handler(ev)
                    except Exception:
                        log.exception("internal error in the server loop (the server goes on)")
            if timers:
                now = monotonic()
                while timers and timers[0].when <= now:
                    t = heapq.heappop(timers)
                    cb, t.callback = t.callback, None
                    if cb is not None:
                        self._guard(cb)
                    else:
                        self._cancelled -= 1
            while calls:
                self._guard(calls.popleft())
            for cb in after:
                cb()

    def _spin(self, poll: Callable[[int], Any], until: float | None) -> Any:
        """Requests came last turn: more are likely within microseconds. Wait for them awake
        for up to SPIN (not past ``until``, the next timer) rather than sleep and be woken,
        which costs about as much as the rest of a round trip; between two looks, give the CPU
        to any process ready to run (often the client about to send). A yield that lost the
        CPU for long (CROWDED) means a process that computes shares it: a loop yielding to it
        is not asleep, so a request does not wake it, and waits for that process's time slice.
        When that happens in more than CROWDING of the recent spins, the loop does not spin for
        QUIET, doubled while it keeps happening."""
        now = monotonic()
        end = now + SPIN if until is None else min(now + SPIN, until)
        events: Any = ()
        while now < end and not events:
            sched_yield()
            events = poll(0)
            then, now = now, monotonic()
            if now - then > CROWDED:
                self._crowding += (1.0 - self._crowding) / 64
                if self._crowding > CROWDING:
                    recent = now - self._quiet_until < 10 * self._quiet
                    self._quiet = min(self._quiet * 2, QUIET_MAX) if recent else QUIET
                    self._quiet_until = now + self._quiet
                return events
        self._crowding -= self._crowding / 64
        return events

    def _guard(self, fn: Callable[..., None], *args: int) -> None:
        # One failing handler must not take the server down with it.
        try:
            fn(*args)
        except Exception:
            log.exception("internal error in the server loop (the server goes on)")

    def stop(self) -> None:
        self.running = False
        self.call_soon_threadsafe(lambda: None)

    def close(self) -> None:
        self._poller.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
