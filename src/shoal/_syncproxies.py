"""Proxies of the synchronization objects, with the signatures of ``threading`` and ``queue``.

Each blocking call is one request that the server answers when it may go on (or its timeout,
kept by the server, fires). Every call carries the calling thread's id: ownership is per
process and thread, as in ``threading``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from threading import get_ident
from types import TracebackType
from typing import Any

from . import _client
from ._proxies import BaseProxy
from ._sync import OWNER_DIED

__all__ = ["LockProxy", "RLockProxy", "SemaphoreProxy", "ConditionProxy", "EventProxy",
           "BarrierProxy", "QueueProxy", "IteratorProxy", "PoolProxy", "AsyncResultProxy"]


def _seconds(timeout: Any) -> Any:
    """A timeout as it travels: a number of another type (True, numpy.float64: threading takes
    them) as a float, which the server reads, rather than pickled; anything else as it is, for
    the server's own error."""
    if isinstance(timeout, (int, float)) and type(timeout) not in (int, float):
        return float(timeout)
    return timeout


class AcquirerProxy(BaseProxy):
    """Common part of locks and conditions.

    ``owner_died`` is True after an acquire that got the lock from a holder that died holding it
    (its process ended or its connection dropped), so the data the lock protects may be half
    written; the next successful acquire sets it back to False (like POSIX's EOWNERDEAD).
    """

    owner_died = False

    def acquire(self, blocking: bool = True, timeout: float | None = -1) -> bool:
        tid = get_ident()
        timeout = -1 if timeout is None else _seconds(timeout)
        r = self._call_may_wait("acquire", blocking, timeout, tid,
                                undo=lambda got: ("release", [tid]) if got else None)
        if r == OWNER_DIED:
            self.owner_died = True
            return True
        if r is True:
            self.owner_died = False
        return r  # type: ignore[no-any-return]

    def release(self) -> None:
        self._call("release", get_ident())

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


class _OwnedLock(AcquirerProxy):
    """Locks remember in the process which of its threads hold them: a release by a holder
    cannot fail, so it is sent without waiting for the reply (one round trip per acquire and
    release instead of two). It reaches the server before any later call of the process; a
    release by a thread that holds nothing is a normal call, which raises."""

    def acquire(self, blocking: bool = True, timeout: float | None = -1) -> bool:
        got = AcquirerProxy.acquire(self, blocking, timeout)
        if got:
            key = (self._id, get_ident())
            owned = self._conn.owned
            owned[key] = owned.get(key, 0) + 1
        return got

    def release(self) -> None:
        key = (self._id, get_ident())
        conn = self._conn
        held = conn.owned.get(key, 0)
        if held <= 0 or conn.closed:
            self._call("release", key[1])
            return
        if held == 1:
            del conn.owned[key]
        else:
            conn.owned[key] = held - 1
        conn.send(self._id, "release", [key[1]])


class LockProxy(_OwnedLock):
    """A shared ``threading.Lock``; only its holder (process and thread) may release it."""

    def locked(self) -> bool:  # type: ignore[override]  # threading.Lock's, not BaseProxy's
        return self._call("locked")  # type: ignore[no-any-return]


class RLockProxy(_OwnedLock):
    """A shared ``threading.RLock``."""

    def _is_owned(self) -> bool:
        return self._call("_is_owned", get_ident())  # type: ignore[no-any-return]


class SemaphoreProxy(BaseProxy):
    """A shared ``threading.Semaphore`` (or BoundedSemaphore). Counts taken by a process that
    dies are given back."""

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        return self._call_may_wait(  # type: ignore[no-any-return]
            "acquire", blocking, _seconds(timeout), get_ident(),
            undo=lambda got: ("release", [1]) if got else None)

    def release(self, n: int = 1) -> None:
        self._call("release", n)

    def get_value(self) -> int:
        return self._call("get_value")  # type: ignore[no-any-return]

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class ConditionProxy(AcquirerProxy):
    """A shared ``threading.Condition``."""

    def release(self) -> None:
        AcquirerProxy.release(self)
        # The lock under it may be one this thread took through that lock's own proxy, which
        # counted it to release it without waiting: the count is stale now. This thread's
        # counts are dropped, so its next release of such a lock is a call again (which
        # raises if the lock is not held), never a silent one.
        owned = self._conn.owned
        if owned:
            tid = get_ident()
            for key in [k for k in owned if k[1] == tid]:
                del owned[key]

    def wait(self, timeout: float | None = None) -> bool:
        return self._call_may_wait(  # type: ignore[no-any-return]
            "wait", _seconds(timeout), get_ident(), undo=_client.FINISH)

    def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        endtime = None
        waittime = timeout
        result = predicate()
        while not result:
            if waittime is not None:
                if endtime is None:
                    endtime = time.monotonic() + waittime
                else:
                    waittime = endtime - time.monotonic()
                    if waittime <= 0:
                        break
            self.wait(waittime)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        self._call("notify", n, get_ident())

    def notify_all(self) -> None:
        self._call("notify_all", get_ident())

    notifyAll = notify_all


class EventProxy(BaseProxy):
    """A shared ``threading.Event``."""

    def is_set(self) -> bool:
        return self._call("is_set")  # type: ignore[no-any-return]

    def set(self) -> None:
        self._call("set")

    def clear(self) -> None:
        self._call("clear")

    def wait(self, timeout: float | None = None) -> bool:
        return self._call_may_wait(  # type: ignore[no-any-return]
            "wait", _seconds(timeout), get_ident())


class BarrierProxy(BaseProxy):
    """A shared ``threading.Barrier``; its action runs in the process whose arrival fills it.
    A party that dies while waiting breaks it, as a failing thread does."""

    def wait(self, timeout: float | None = None) -> int:
        r = self._call_may_wait("wait", _seconds(timeout), get_ident(), undo=_ran_stands)
        if type(r) is list:          # ["action", index, action]: we are the last to arrive
            _, index, action = r
            try:
                action()
            except BaseException:
                self._call("action_done", False)
                raise
            self._call("action_done", True)
            return index  # type: ignore[no-any-return]
        return r  # type: ignore[no-any-return]

    def abort(self) -> None:
        self._call("abort")

    def reset(self) -> None:
        self._call("reset")

    @property
    def parties(self) -> int:
        return self._call("_state")[0]  # type: ignore[no-any-return]

    @property
    def n_waiting(self) -> int:
        return self._call("_state")[1]  # type: ignore[no-any-return]

    @property
    def broken(self) -> bool:
        return self._call("_state")[2]  # type: ignore[no-any-return]


def _ran_stands(_: Any) -> None:
    """A put (or a Barrier's wait) whose caller gave up is dropped while it waits; one that
    ran stands."""
    return None


class QueueProxy(BaseProxy):
    """A shared ``queue.Queue`` (``JoinableQueue`` adds ``task_done`` and ``join``)."""

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        conn = self._conn
        if not conn.closed and self._puts_cannot_fail(conn):
            # An unbounded queue of a server that persists nothing: the put cannot wait or
            # fail, so it is sent without waiting for the reply; it reaches the server before
            # any later call of this process. (An item that cannot be encoded raises here.)
            conn.send(self._id, "put_nowait", [item])
        else:
            self._call_may_wait("put", item, block, _seconds(timeout), get_ident(),
                                undo=_ran_stands)

    def _puts_cannot_fail(self, conn: Any) -> bool:
        known = conn.puts_cannot_fail
        answer = known.get(self._id)
        if answer is None:
            answer = known[self._id] = bool(self._call("_puts_cannot_fail"))
        return bool(answer)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        return self._call_may_wait("get", block, _seconds(timeout), get_ident(),
                                   undo=lambda item: ("_unget", [item]))

    def put_nowait(self, item: Any) -> None:
        self._call("put_nowait", item)

    def get_nowait(self) -> Any:
        return self._call("get_nowait")

    def qsize(self) -> int:
        return self._call("qsize")  # type: ignore[no-any-return]

    def empty(self) -> bool:
        return self._call("empty")  # type: ignore[no-any-return]

    def full(self) -> bool:
        return self._call("full")  # type: ignore[no-any-return]

    def task_done(self) -> None:
        self._call("task_done")

    def join(self) -> None:
        self._call_may_wait("join", get_ident())


class IteratorProxy(BaseProxy):
    """An iterator living in the server (what ``Pool.imap`` returns); a generator's ``send``,
    ``throw`` and ``close`` too, as Manager's."""

    _exposed_ = ("__next__", "send", "throw", "close")

    def __iter__(self) -> IteratorProxy:
        return self

    def __next__(self) -> Any:
        return self._callmethod("__next__")

    def send(self, value: Any) -> Any:
        return self._callmethod("send", (value,))

    def throw(self, *args: Any) -> Any:
        return self._callmethod("throw", args)

    def close(self) -> Any:
        return self._callmethod("close")


class AsyncResultProxy(BaseProxy):
    _exposed_ = ("get", "wait", "ready", "successful")

    def get(self, timeout: float | None = None) -> Any:
        return self._callmethod("get", (timeout,))

    def wait(self, timeout: float | None = None) -> None:
        self._callmethod("wait", (timeout,))

    def ready(self) -> bool:
        return self._callmethod("ready")  # type: ignore[no-any-return]

    def successful(self) -> bool:
        return self._callmethod("successful")  # type: ignore[no-any-return]


class PoolProxy(BaseProxy):
    """A ``multiprocessing.Pool`` running in the server process (``manager.Pool(n)``)."""

    _exposed_ = ("apply", "apply_async", "close", "imap", "imap_unordered", "join", "map",
                 "map_async", "starmap", "starmap_async", "terminate")
    _method_to_typeid_ = {"apply_async": "AsyncResult", "map_async": "AsyncResult",
                          "starmap_async": "AsyncResult", "imap": "Iterator",
                          "imap_unordered": "Iterator"}

    def __enter__(self) -> PoolProxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._callmethod("terminate")


def _forward(name: str) -> Any:
    def call(self: BaseProxy, /, *args: Any, **kwds: Any) -> Any:
        return self._callmethod(name, args, kwds)
    call.__name__ = name
    return call


for _name in PoolProxy._exposed_:
    setattr(PoolProxy, _name, _forward(_name))


_client.proxy_types.update({
    "Lock": LockProxy, "RLock": RLockProxy, "Semaphore": SemaphoreProxy,
    "BoundedSemaphore": SemaphoreProxy, "Condition": ConditionProxy, "Event": EventProxy,
    "Barrier": BarrierProxy, "Queue": QueueProxy, "JoinableQueue": QueueProxy,
    "Iterator": IteratorProxy, "AsyncResult": AsyncResultProxy,
})
