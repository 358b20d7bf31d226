"""Synchronization objects on Redis, with the signatures of ``threading`` and ``queue``.

Each blocking call loops on this side: one run of the script tries (and, if it must wait,
registers this thread as a waiter in the same atomic step), then the thread waits on its wake
list with BLPOP until whoever frees the object pushes to it, or until its timeout, or until the
lease of the holder it waits for would run out (a holder that dies wakes nobody). No polling:
a waiter looks again only when woken or when something may have expired.

Ownership is by lease (see ``_backend``): a lock, a semaphore count, a place in a barrier or a
condition is held in the name of this process's presence key, renewed while the process lives.
A holder that dies frees what it held within one lease; the next ``acquire`` of such a lock
sets ``owner_died``. Queues put with RPUSH and take with LPOP, or block on BLMOVE into this
process's in-flight list (an item taken by a process that dies right then goes back to the
queue).
"""

from __future__ import annotations

import pickle
import queue
import threading
from collections.abc import Callable
from typing import Any

from .._sync import timeout_value as _timeout, whole_number
from .._syncproxies import (
    BarrierProxy,
    ConditionProxy,
    EventProxy,
    LockProxy,
    QueueProxy,
    RLockProxy,
    SemaphoreProxy,
)
from ._backend import LeaseExpired, deadline_of, remaining
from ._proxies import PROXY_TYPES, RedisProxy
from ._scripts import BLOCKED, OK

__all__ = [
    "RedisBarrierProxy",
    "RedisConditionProxy",
    "RedisEventProxy",
    "RedisLockProxy",
    "RedisQueueProxy",
    "RedisRLockProxy",
    "RedisSemaphoreProxy",
]

#: Redis' scripts count in doubles: a count above this would come back wrong.
MAX_COUNT = 2 ** 53


def redis_count(value: Any, what: str) -> int:
    """``whole_number``, and small enough for Redis to keep exactly."""
    n = whole_number(value, what)
    if n > MAX_COUNT:
        raise OverflowError(f"{what} must be at most 2**53 on Redis, not {n}")
    return n


ACTION = 5


class _SyncProxy(RedisProxy):
    _CALLS: dict[str, Callable[..., Any]] = {}

    def __str__(self) -> str:       # (Manager's shows the referent's repr)
        return f"<shoal {self._typeid} at {self._redis_key!r} on Redis>"

    def _try(self, op: str, *args: Any) -> list[Any]:
        """One run; errors raised, OK and BLOCKED replies returned."""
        b = self._b
        r = b.run(self._redis_key, op, *args)
        if r[0] != OK and r[0] != BLOCKED and r[0] != ACTION:
            b.fail(r, self._redis_key)
        return r

    def _wait(self, wait_ms: Any, deadline: float | None) -> None:
        b = self._b
        b.wait(b.holder(), b.wait_bound(wait_ms, remaining(deadline)))


# -- Lock, RLock ----------------------------------------------------------------------------

class _AcquirerMixin(_SyncProxy):
    owner_died = False
    _reentrant = "0"

    def _lock_key(self) -> str:
        return self._redis_key

    def _acquire(self, blocking: bool, timeout: float | None, count: int = 1) -> bool:
        key = self._lock_key()
        b = self._b
        deadline = deadline_of(timeout)
        while True:
            holder = b.holder()
            r = b.run(key, "acq", str(count), self._reentrant, "1" if blocking else "0",
                      holder=holder)
            if r[0] == OK:
                b.held[(key, holder)] = b.held.get((key, holder), 0) + count
                self.owner_died = bool(r[1])
                return True
            if r[0] != BLOCKED:
                b.fail(r, key)
            left = remaining(deadline)
            if not blocking or (left is not None and left <= 0):
                return False
            b.wait(holder, b.wait_bound(r[1], left))

    def acquire(self, blocking: bool = True, timeout: float | None = -1) -> bool:
        if not blocking and timeout not in (-1, None):
            raise ValueError("can't specify a timeout for a non-blocking call")
        return self._acquire(blocking, _timeout(timeout, "lock"))

    def release(self) -> None:
        key = self._lock_key()
        b = self._b
        holder = b.holder()
        depth = b.held.get((key, holder), 0)
        if not depth and b.lapsed:
            # Taken under a token whose lease lapsed: released under that one, which the
            # script reports as LeaseExpired (or releases, if nobody has looked meanwhile).
            tid = holder.rpartition("/")[2]
            for token in b.lapsed:
                depth = b.held.get((key, f"{token}/{tid}"), 0)
                if depth:
                    holder = f"{token}/{tid}"
                    break
        if depth <= 1:
            b.held.pop((key, holder), None)
        else:
            b.held[(key, holder)] = depth - 1
        r = b.run(key, "rel", "1" if depth else "0", self._reentrant, holder=holder)
        if r[0] != OK:
            b.fail(r, key)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _state(self) -> list[Any]:
        return self._b.call(self._lock_key(), "lstate")


class RedisLockProxy(_AcquirerMixin, LockProxy):
    """A shared ``threading.Lock`` on Redis, held as a lease."""

    def locked(self) -> bool:  # type: ignore[override]
        return bool(self._state()[1])


class RedisRLockProxy(_AcquirerMixin, RLockProxy):
    """A shared ``threading.RLock`` on Redis, held as a lease."""

    _reentrant = "1"

    def _is_owned(self) -> bool:
        return bool(self._state()[2])


# -- Semaphore --------------------------------------------------------------------------------

class RedisSemaphoreProxy(_SyncProxy, SemaphoreProxy):
    """A shared ``threading.Semaphore`` (or BoundedSemaphore) on Redis; counts taken by a
    process that dies come back within its lease."""

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        if not blocking and timeout is not None:
            raise ValueError("can't specify timeout for non-blocking acquire")
        deadline = deadline_of(_timeout(timeout, "now"))
        b = self._b
        while True:
            token = b.token
            r = self._try("sacq", "1" if blocking else "0")
            if r[0] == OK:
                if r[1]:
                    key = (self._redis_key, token)
                    b.taken[key] = b.taken.get(key, 0) + 1
                return bool(r[1])
            left = remaining(deadline)
            if left is not None and left <= 0:
                return False
            self._wait(r[1], deadline)

    def release(self, n: int = 1) -> None:
        n = redis_count(n, "n")
        if n < 1:
            raise ValueError("n must be one or more")
        b = self._b
        mine = (self._redis_key, b.token)
        if not b.taken.get(mine) and b.lapsed:
            for token in b.lapsed:
                gone = (self._redis_key, token)
                if b.taken.get(gone):
                    # Its counts went back when its lease lapsed: giving them again would let
                    # one more holder in than the semaphore allows.
                    b.taken[gone] -= 1
                    raise LeaseExpired("the semaphore's lease expired while it was held (the "
                                       "process did not renew it in time); its count was given "
                                       "back then")
        self._try("srel", str(n))
        if b.taken.get(mine):
            b.taken[mine] = max(0, b.taken[mine] - n)

    def get_value(self) -> int:
        return self._try("sval")[1]  # type: ignore[no-any-return]

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# -- Condition --------------------------------------------------------------------------------

class RedisConditionProxy(_AcquirerMixin, ConditionProxy):
    """A shared ``threading.Condition`` on Redis. Its lock is its own RLock unless one was
    given; a waiter that dies gives up its place (a ``notify`` goes to a live waiter)."""

    _lock: str | None = None

    def _lock_key(self) -> str:
        lk = self.__dict__.get("_lock")
        if lk is None:
            lk = self._try("clock")[1].decode()
            typeid = self._b.redis.hget(lk + ":meta", "t")
            object.__setattr__(self, "_reentrant", "0" if typeid == b"Lock" else "1")
            object.__setattr__(self, "_lock", lk)
        return lk  # type: ignore[no-any-return]

    def acquire(self, blocking: bool = True, timeout: float | None = -1) -> bool:
        self._lock_key()
        return super().acquire(blocking, timeout)

    def release(self) -> None:
        self._lock_key()
        super().release()

    def _is_owned(self) -> bool:
        return bool(self._state()[2])

    def wait(self, timeout: float | None = None) -> bool:
        lk = self._lock_key()
        b = self._b
        holder = b.holder()
        timeout = _timeout(timeout, "now")
        r = self._try("cwait")
        depth = int(r[1] or 1)
        b.held.pop((lk, holder), None)
        deadline = deadline_of(timeout)
        notified = False
        try:
            while True:
                left = remaining(deadline)
                if left is not None and left <= 0:
                    notified = bool(self._try("cpoll", "1")[1])
                    break
                b.wait(holder, b.wait_bound(-1, left))
                r = self._try("cpoll", "0")
                if r[0] == OK:
                    notified = True
                    break
        except BaseException:
            # Interrupted (Ctrl-C, a signal handler's exception): leave the queue, or a later
            # notify would wake this entry instead of a thread that waits.
            try:
                self._try("cpoll", "1")
            except Exception:
                pass
            raise
        finally:
            self._acquire(True, None, depth)
        return notified

    def notify(self, n: int = 1) -> None:
        self._try("cnotify", str(n))

    def notify_all(self) -> None:
        self._try("cnotify", "-1")

    notifyAll = notify_all


# -- Event --------------------------------------------------------------------------------------

class RedisEventProxy(_SyncProxy, EventProxy):
    """A shared ``threading.Event`` on Redis."""

    def is_set(self) -> bool:
        return bool(self._try("eis")[1])

    def set(self) -> None:
        self._try("eset")

    def clear(self) -> None:
        self._try("eclear")

    def wait(self, timeout: float | None = None) -> bool:
        deadline = deadline_of(_timeout(timeout, "now"))
        gen = b""                     # how many times it had been set when the wait began
        while True:
            left = remaining(deadline)
            final = left is not None and left <= 0
            r = self._try("ewait", "0" if final else "1", gen)
            if r[0] == OK:
                return bool(r[1])
            gen = r[2]
            self._wait(r[1], deadline)


# -- Barrier -------------------------------------------------------------------------------------

class RedisBarrierProxy(_SyncProxy, BarrierProxy):
    """A shared ``threading.Barrier`` on Redis; its action runs in the process whose arrival
    fills it. A party that dies while waiting breaks it, within its lease."""

    def wait(self, timeout: float | None = None) -> int:
        b = self._b
        if timeout is None:
            raw: bytes | None = b.redis.hget(self._redis_key + ":meta", "timeout")  # type: ignore[assignment]
            timeout = b.decode(raw) if raw else None
        deadline = deadline_of(_timeout(timeout, "now"))
        r = self._try("bwait")
        while r[0] != ACTION and r[0] != OK and len(r) < 4:
            # The barrier's action is running: arrive once it is done (threading waits so).
            b.wait(b.holder(), b.wait_bound(int(b.lease * 500), None))
            r = self._try("bwait")
        if r[0] == ACTION:
            index = r[1]
            try:
                pickle.loads(r[3])()
            except BaseException:
                self._try("bdone", "0")
                raise
            self._try("bdone", "1")
            return index  # type: ignore[no-any-return]
        if r[0] == OK:
            return r[1]  # type: ignore[no-any-return]
        index, gen = r[2], r[3]
        try:
            while True:
                left = remaining(deadline)
                if left is not None and left <= 0:
                    self._try("bcheck", gen, "1")
                    return index  # type: ignore[no-any-return]
                b.wait(b.holder(), b.wait_bound(int(b.lease * 500), left))
                r = self._try("bcheck", gen, "0")
                if r[0] == OK:
                    return index  # type: ignore[no-any-return]
        except BaseException as e:
            if not isinstance(e, threading.BrokenBarrierError):
                try:                  # interrupted: leave the barrier, as threading's does
                    self._try("bleave", gen)
                except Exception:
                    pass
            raise

    def abort(self) -> None:
        self._try("babort")

    def reset(self) -> None:
        self._try("breset")

    def _bstate(self) -> list[Any]:
        return self._try("bstate")

    @property
    def parties(self) -> int:
        return self._bstate()[1]  # type: ignore[no-any-return]

    @property
    def n_waiting(self) -> int:
        return self._bstate()[2]  # type: ignore[no-any-return]

    @property
    def broken(self) -> bool:
        return bool(self._bstate()[3])


# -- Queue ---------------------------------------------------------------------------------------

class RedisQueueProxy(_SyncProxy, QueueProxy):
    """A shared ``queue.Queue`` (``JoinableQueue``: with ``task_done``/``join``) on Redis.

    ``get`` blocks on BLMOVE (no polling). ``put`` on a full bounded queue registers as a waiter
    and is woken by the next ``get``."""

    def _maxsize(self) -> int:
        """The queue's maxsize (0: unbounded), asked once: it never changes."""
        size: int | None = self.__dict__.get("_size")
        if size is None:
            size = self._try("qsize")[2]
            object.__setattr__(self, "_size", size)
        return size

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        b = self._b
        raw = b.encode(item)
        # As queue.Queue: the timeout is looked at only where a put may wait (a bounded queue).
        if block and timeout is not None and self._maxsize() > 0:
            deadline = deadline_of(_timeout(timeout, "error"))
        else:
            deadline = None
        while True:
            r = self._try("qput", raw, "1" if block else "0")
            if r[0] == OK:
                return
            left = remaining(deadline)
            if left is not None and left <= 0:
                raise queue.Full
            self._wait(r[1], deadline)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        b = self._b
        timeout = _timeout(timeout, "error") if block else None
        deadline = deadline_of(timeout)
        while True:
            r = self._try("qget", "1" if block else "0")
            if r[0] == OK:
                return b.decode(r[1])
            if not block:
                raise queue.Empty
            left = remaining(deadline)
            if left is not None and left <= 0:
                raise queue.Empty
            # A bounded wait even without a timeout: an unbounded one outlives redis-py's
            # socket timeout. An item that comes as the round ends is still the reply (CLIENT
            # UNBLOCK finds nothing to end), so none is lost between rounds.
            raw = b.blocking(("BLMOVE", self._redis_key,
                              f"{self._redis_key}:inflight:{b.token}", "LEFT", "RIGHT"),
                             b.wait_bound(-1, left))
            if raw is not None:
                self._try("qack", raw)
                return b.decode(raw)

    def put_nowait(self, item: Any) -> None:
        self.put(item, False)

    def get_nowait(self) -> Any:
        return self.get(False)

    def qsize(self) -> int:
        return self._try("qsize")[1]  # type: ignore[no-any-return]

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        r = self._try("qsize")
        return bool(0 < r[2] <= r[1])

    def task_done(self) -> None:
        self._try("qdone")

    def join(self) -> None:
        while True:
            r = self._try("qjoin")
            if r[0] == OK:
                return
            self._wait(-1, None)


PROXY_TYPES.update({
    "Lock": RedisLockProxy, "RLock": RedisRLockProxy, "Semaphore": RedisSemaphoreProxy,
    "BoundedSemaphore": RedisSemaphoreProxy, "Condition": RedisConditionProxy,
    "Event": RedisEventProxy, "Barrier": RedisBarrierProxy, "Queue": RedisQueueProxy,
    "JoinableQueue": RedisQueueProxy,
})
