"""Synchronization objects in the server: locks, semaphores, conditions, events, barriers, queues.

They are native to the server's loop: a blocked call is a parked request (no thread per waiter),
answered when the object lets it through or its timeout fires. Each acquisition belongs to the
client connection (and thread) that made it; when a connection drops, ``client_gone`` gives back
everything it held and forgets its waits, and the next owner of a lock whose holder died is told.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._codec import Opaque
from ._objects import OWNER_DIED, PENDING, Shared, op

if TYPE_CHECKING:
    from ._conn import Conn
    from ._server import Server

__all__ = ["SLock", "SRLock", "SSemaphore", "SBoundedSemaphore", "SCondition", "SEvent",
           "SBarrier", "SQueue", "SJoinableQueue", "OWNER_DIED", "SYNC_TYPES"]



class Waiter:
    """A parked request: who asked (connection, request id, thread) and what it carries."""

    __slots__ = ("conn", "rid", "tid", "data", "timer")

    def __init__(self, conn: Conn, rid: int, tid: int, data: Any) -> None:
        self.conn, self.rid, self.tid, self.data = conn, rid, tid, data
        self.timer: Any = None

    def answer(self, value: Any) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.conn.reply(self.rid, value)

    def fail(self, exc: BaseException) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.conn.reply_error(self.rid, exc)


def whole_number(value: Any, what: str) -> int:
    """A count as ``threading`` takes it (a Semaphore's value and release, a Barrier's
    parties): an int, a bool or a float with no fraction. One with a fraction is refused: in
    threading it makes a Semaphore or Barrier that never works. Other types (numpy's) are
    refused on both backends alike: a local server gets them pickled, and never unpickles."""
    t = type(value)
    if t is float and value.is_integer():
        return int(value)
    if t is int or t is bool:
        return int(value)
    name = "a value of a type that is not built in" if t is Opaque else t.__name__
    raise TypeError(f"{what} must be an int, not {name} (pass int(...))")


def timeout_value(value: Any, negative: str) -> float | None:
    """A timeout as the server (and the Redis proxies) keep it: None (for ever) or seconds >= 0.

    What a negative value means depends on the primitive, as in ``threading`` and ``queue``:
    ``negative="lock"``: -1 is for ever, any other is a ValueError (Lock.acquire);
    ``"now"``: do not wait (Condition.wait, Event.wait, Semaphore.acquire, Barrier.wait);
    ``"error"``: a ValueError (Queue.get/put).
    """
    if value is None:
        return None
    if not isinstance(value, (int, float)):    # bool and float subclasses too, as threading
        raise TypeError(f"timeout must be a number or None, not {type(value).__name__}")
    value = float(value)
    if value != value:
        raise ValueError("Invalid value NaN (not a number)")
    if value < 0:
        if negative == "now":
            return 0.0
        if negative == "lock" and value == -1:
            return None
        raise ValueError("'timeout' must be a non-negative number")
    return float(value)


class SyncObject(Shared):
    __slots__ = ()

    @op("__repr__")
    def repr(self) -> str:
        """What ``str(proxy)`` shows (Manager's shows its referent's repr): the state."""
        state = "".join(f" {k}={v!r}" for k, v in self.repr_state().items()
                        if v is not None and k != "held_for")
        return f"<shoal {self.typeid} #{self.oid}{state}>"

    def repr_state(self) -> dict[str, Any]:
        return self.inspect() if hasattr(self, "inspect") else {}

    def park(self, waiters: deque[Waiter], tid: int, data: Any, timeout: float | None,
             on_timeout: Callable[[Waiter], None]) -> Any:
        server = self.server
        conn = server.current
        assert conn is not None
        w = Waiter(conn, server.current_rid, tid, data)
        if timeout is not None:
            def expire() -> None:
                try:
                    waiters.remove(w)
                except ValueError:
                    return
                w.timer = None
                on_timeout(w)
            w.timer = server.loop.call_later(timeout, expire)
        waiters.append(w)
        conn.involved.add(self)
        return PENDING

    def drop_client(self, conn: Conn, clean: bool) -> None:
        """The connection dropped: forget its waits; release what it held unless it ended
        normally (``clean``), in which case what it held stays held, ownerless, as with
        threading."""

    #: the waiter queues a client may leave by cancelling (ServerOps.cancel): waits whose
    #: abandoning leaves nothing half done (not a Condition's or a Barrier's)
    CANCELLABLE: tuple[str, ...] = ()

    def cancel(self, conn: Conn, rid: int) -> bool:
        if Shared.cancel(self, conn, rid):
            return True
        for name in self.CANCELLABLE:
            waiters = getattr(self, name)
            for w in waiters:
                if w.conn is conn and w.rid == rid:
                    if not self.may_cancel(w):
                        return True      # it must run: its reply comes when it has
                    waiters.remove(w)
                    w.fail(RuntimeError("cancelled"))
                    return True
        return False

    def may_cancel(self, w: Waiter) -> bool:
        return True

    @staticmethod
    def drop_waiters(waiters: deque[Waiter], conn: Conn) -> None:
        for w in [w for w in waiters if w.conn is conn]:
            waiters.remove(w)
            if w.timer is not None:
                w.timer.cancel()


class SLock(SyncObject):
    """A lock owned by (connection, thread); ``SRLock`` is its re-entrant kind."""

    __slots__ = ("owner", "count", "waiters", "died", "since")
    CANCELLABLE = ("waiters",)
    typeid = "Lock"
    reentrant = False

    def __init__(self, server: Server, _register: bool = True) -> None:
        if _register:
            super().__init__(server)
        self.owner: tuple[Conn, int] | None = None
        self.count = 0
        self.waiters: deque[Waiter] = deque()   # data: (count, reply, is it an acquire)
        self.died = False
        self.since = 0.0

    def state(self) -> Any:
        return []

    def restore(self, state: Any) -> None:
        SLock.__init__(self, self.server, _register=False)

    def describe(self) -> str:
        held = ("free" if self.owner is None else "held by a process that ended"
                if self.owner[0] is None else f"held by pid {self.owner[0].pid}")
        return f"{self.typeid} #{self.oid} ({held}, {len(self.waiters)} waiting)"

    def _take(self, conn: Conn, tid: int, count: int, result: Any, acquiring: bool) -> Any:
        """Make (conn, tid) the owner and return the reply: ``result``, except that an acquire
        learns of a holder that died (a condition's wait just gets its bool)."""
        self.owner, self.count = (conn, tid), count
        self.since = time.time()
        conn.involved.add(self)
        if self.died:
            self.died = False
            if acquiring:
                return OWNER_DIED
        return result

    @op("acquire")
    def acquire(self, blocking: bool = True, timeout: Any = -1, tid: int = 0) -> Any:
        conn = self.server.current
        assert conn is not None
        if not blocking and timeout not in (-1, None):
            raise ValueError("can't specify a timeout for a non-blocking call")
        wait = timeout_value(timeout, "lock")
        if self.owner is None:
            return self._take(conn, tid, 1, True, True)
        if self.reentrant and self.owner == (conn, tid):
            self.count += 1
            return True
        if not blocking:
            return False
        return self.park(self.waiters, tid, (1, True, True), wait, lambda w: w.answer(False))

    @op("release")
    def release(self, tid: int = 0) -> None:
        conn = self.server.current
        if self.owner is None:
            raise RuntimeError("release unlocked lock" if not self.reentrant
                               else "cannot release un-acquired lock")
        if self.owner != (conn, tid) and self.owner[0] is not None:
            raise RuntimeError("cannot release a lock held by another process or thread")
        self.count -= 1
        if self.count <= 0:
            self._pass_on()

    def _pass_on(self) -> None:
        self.owner, self.count = None, 0
        while self.waiters:
            w = self.waiters.popleft()
            count, result, acquiring = w.data
            w.answer(self._take(w.conn, w.tid, count, result, acquiring))
            return

    def enqueue(self, w: Waiter, count: int, result: Any) -> None:
        """Queue ``w`` to own the lock with ``count`` (a condition's waiter going back to it)."""
        if w.timer is not None:
            w.timer.cancel()
            w.timer = None
        w.data = (count, result, False)
        if self.owner is None:
            w.answer(self._take(w.conn, w.tid, count, result, False))
        else:
            self.waiters.append(w)
            w.conn.involved.add(self)

    def may_cancel(self, w: Waiter) -> bool:
        """Not a Condition's waiter taking the lock back: an interrupted wait ends holding the
        lock, as threading's."""
        return bool(w.data[2])

    def release_all(self, conn: Conn, tid: int) -> int:
        """Give the lock up entirely (for Condition.wait); return the count to restore."""
        if self.owner != (conn, tid):
            raise RuntimeError("cannot wait on un-acquired lock")
        count = self.count
        self._pass_on()
        return count

    def is_owned(self, conn: Conn, tid: int) -> bool:
        return self.owner == (conn, tid)

    @op("locked")
    def locked(self) -> bool:
        return self.owner is not None

    def inspect(self) -> dict[str, Any]:
        owner = self.owner
        held = owner is not None
        return {"holder_pid": owner[0].pid if owner is not None and owner[0] is not None else None,
                "held": held, "held_for": self.since if held else None,
                "depth": self.count, "waiting": len(self.waiters)}

    @op("_is_owned")
    def owned(self, tid: int = 0) -> bool:
        return self.owner == (self.server.current, tid)

    @op("_state")
    def wire_state(self) -> list[Any]:
        pid = self.owner[0].pid if self.owner and self.owner[0] is not None else None
        return [pid, self.count, len(self.waiters)]

    def drop_client(self, conn: Conn, clean: bool) -> None:
        self.drop_waiters(self.waiters, conn)
        if self.owner is not None and self.owner[0] is conn:
            if clean and not self.reentrant:
                self.owner = (None, 0)  # type: ignore[assignment]  # held; anyone may release
            else:
                # An RLock cannot be handed on (only its owner may release it), so it is freed,
                # and the next owner is told that its holder ended without releasing it.
                self.died = True
                self._pass_on()


class SRLock(SLock):
    __slots__ = ()
    typeid = "RLock"
    reentrant = True


class SSemaphore(SyncObject):
    __slots__ = ("value", "initial", "waiters", "holders")
    typeid = "Semaphore"
    CANCELLABLE = ("waiters",)
    bounded = False

    def __init__(self, server: Server, value: int = 1) -> None:
        super().__init__(server)
        value = whole_number(value, "semaphore initial value")
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        self.value = self.initial = value
        self.waiters: deque[Waiter] = deque()
        self.holders: dict[Conn, int] = {}   # counts taken by each live client

    def describe(self) -> str:
        return f"{self.typeid} #{self.oid} (value {self.value}, {len(self.waiters)} waiting)"

    def state(self) -> Any:
        return [self.initial]

    def restore(self, state: Any) -> None:
        self.value = self.initial = state[0]
        self.waiters = deque()
        self.holders = {}

    def _take(self, conn: Conn) -> None:
        self.value -= 1
        self.holders[conn] = self.holders.get(conn, 0) + 1
        conn.involved.add(self)

    @op("acquire")
    def acquire(self, blocking: bool = True, timeout: Any = None, tid: int = 0) -> Any:
        conn = self.server.current
        assert conn is not None
        if not blocking and timeout is not None:
            raise ValueError("can't specify timeout for non-blocking acquire")
        wait = timeout_value(timeout, "now")
        if self.value > 0:
            self._take(conn)
            return True
        if not blocking or wait == 0:
            return False
        return self.park(self.waiters, tid, None, wait, lambda w: w.answer(False))

    @op("release")
    def release(self, n: int = 1) -> None:
        n = whole_number(n, "n")
        if n < 1:
            raise ValueError("n must be one or more")
        if self.bounded and self.value + n > self.initial:
            raise ValueError("Semaphore released too many times")
        self._give_back(self.server.current, n)
        self._wake()

    def _give_back(self, conn: Conn | None, n: int) -> None:
        # The releasing client's own count goes first; a release by a client that took none
        # (signalling) settles someone else's count so a later death does not give it twice.
        # (A step per holder, not per unit: n may be huge.)
        self.value += n
        holders = self.holders
        while n and holders:
            holder = conn if conn in holders else next(iter(holders))
            took = holders[holder]
            if took > n:
                holders[holder] = took - n
                break
            del holders[holder]
            n -= took

    def _wake(self) -> None:
        while self.value > 0 and self.waiters:
            w = self.waiters.popleft()
            self._take(w.conn)
            w.answer(True)

    @op("get_value", "_value")
    def get_value(self) -> int:
        return self.value

    def inspect(self) -> dict[str, Any]:
        return {"value": self.value, "initial": self.initial, "waiting": len(self.waiters),
                "holders": sorted(c.pid for c in self.holders if c.pid is not None)}

    def drop_client(self, conn: Conn, clean: bool) -> None:
        self.drop_waiters(self.waiters, conn)
        n = self.holders.pop(conn, 0)
        if n and not clean:
            self.value += n
            self._wake()


class SBoundedSemaphore(SSemaphore):
    __slots__ = ()
    typeid = "BoundedSemaphore"
    bounded = True


class SCondition(SyncObject):
    __slots__ = ("lock", "waiters")
    typeid = "Condition"

    def __init__(self, server: Server, lock: Any = None) -> None:
        super().__init__(server)
        if lock is None:
            lock = SRLock(server)
        if not isinstance(lock, SLock):
            raise TypeError("Condition needs a shared Lock or RLock (or none)")
        self.lock = lock
        self.waiters: deque[Waiter] = deque()

    def describe(self) -> str:
        return f"Condition #{self.oid} ({len(self.waiters)} waiting)"

    def state(self) -> Any:
        return [self.lock]

    def restore(self, state: Any) -> None:
        self.lock = state[0] if isinstance(state[0], SLock) else SRLock(self.server)
        self.waiters = deque()

    def inspect(self) -> dict[str, Any]:
        info = self.lock.inspect()
        info["waiting_notify"] = len(self.waiters)
        return info

    @op("acquire")
    def acquire(self, blocking: bool = True, timeout: Any = -1, tid: int = 0) -> Any:
        return self.lock.acquire(blocking, timeout, tid)

    @op("release")
    def release(self, tid: int = 0) -> None:
        self.lock.release(tid)

    @op("wait")
    def wait(self, timeout: Any = None, tid: int = 0) -> Any:
        conn = self.server.current
        assert conn is not None
        if not self.lock.is_owned(conn, tid):
            raise RuntimeError("cannot wait on un-acquired lock")
        timeout = timeout_value(timeout, "now")
        count = self.lock.release_all(conn, tid)

        def expire(w: Waiter) -> None:
            self.lock.enqueue(w, count, False)
        result = self.park(self.waiters, tid, count, timeout, expire)
        return result

    @op("notify")
    def notify(self, n: int = 1, tid: int = 0) -> None:
        if not self.lock.is_owned(self.server.current, tid):  # type: ignore[arg-type]
            raise RuntimeError("cannot notify on un-acquired lock")
        while n > 0 and self.waiters:
            w = self.waiters.popleft()
            self.lock.enqueue(w, w.data, True)
            n -= 1

    @op("notify_all")
    def notify_all(self, tid: int = 0) -> None:
        self.notify(len(self.waiters), tid)

    def cancel(self, conn: Conn, rid: int) -> bool:
        """An interrupted wait ends as one that timed out: it takes the lock back (its reply
        comes then), as threading's Condition.wait does before the exception goes on."""
        for w in self.waiters:
            if w.conn is conn and w.rid == rid:
                self.waiters.remove(w)
                if w.timer is not None:
                    w.timer.cancel()
                self.lock.enqueue(w, w.data, False)
                return True
        return False

    def drop_client(self, conn: Conn, clean: bool) -> None:
        self.drop_waiters(self.waiters, conn)


class SEvent(SyncObject):
    __slots__ = ("flag", "waiters")
    typeid = "Event"

    def __init__(self, server: Server) -> None:
        super().__init__(server)
        self.flag = False
        self.waiters: deque[Waiter] = deque()

    def state(self) -> Any:
        return [self.flag]

    def restore(self, state: Any) -> None:
        self.flag = bool(state[0])
        self.waiters = deque()

    def repr_state(self) -> dict[str, Any]:
        return {"set": self.flag, "waiting": len(self.waiters)}

    @op("is_set")
    def is_set(self) -> bool:
        return self.flag

    @op("set", write=True)
    def set(self) -> None:
        self.flag = True
        while self.waiters:
            self.waiters.popleft().answer(True)

    @op("clear", write=True)
    def clear(self) -> None:
        self.flag = False

    @op("wait")
    def wait(self, timeout: Any = None, tid: int = 0) -> Any:
        wait = timeout_value(timeout, "now")
        if self.flag:
            return True
        if wait == 0:
            return False
        return self.park(self.waiters, tid, None, wait, lambda w: w.answer(False))

    def drop_client(self, conn: Conn, clean: bool) -> None:
        self.drop_waiters(self.waiters, conn)


class SBarrier(SyncObject):
    """threading.Barrier; the action runs in the client whose arrival fills the barrier."""

    __slots__ = ("parties", "action", "default_timeout", "waiters", "broken", "running_action")
    CANCELLABLE = ("waiters",)     # an interrupted party leaves, as threading's does
    typeid = "Barrier"

    def __init__(self, server: Server, parties: int, action: Any = None,
                 timeout: Any = None) -> None:
        super().__init__(server)
        parties = whole_number(parties, "parties")
        if parties < 1:
            raise ValueError("parties must be an int > 0")
        self.parties = parties
        self.action = action                 # opaque: only the client that runs it unpickles it
        self.default_timeout = timeout_value(timeout, "now")
        self.waiters: deque[Waiter] = deque()
        self.broken = False
        self.running_action: list[Waiter] | None = None

    def describe(self) -> str:
        return f"Barrier #{self.oid} ({len(self.waiters)}/{self.parties} waiting)"

    def state(self) -> Any:
        return [self.parties, self.action, self.default_timeout]

    def restore(self, state: Any) -> None:
        self.parties, self.action, self.default_timeout = state
        self.waiters = deque()
        self.broken = False
        self.running_action = None

    @op("wait")
    def wait(self, timeout: Any = None, tid: int = 0) -> Any:
        if self.broken:
            raise threading.BrokenBarrierError
        index = len(self.waiters)
        timeout = self.default_timeout if timeout is None else timeout_value(timeout, "now")
        if index + 1 == self.parties:
            conn = self.server.current
            assert conn is not None
            if self.action is not None:
                last = Waiter(conn, self.server.current_rid, tid, index)
                conn.involved.add(self)
                self.running_action = [last, *self.waiters]
                self.waiters.clear()
                return ["action", index, self.action]
            self._release(list(self.waiters))
            self.waiters.clear()
            return index
        return self.park(self.waiters, tid, index, timeout, lambda w: self._break(w))

    def _release(self, waiters: list[Waiter]) -> None:
        for w in waiters:
            w.answer(w.data)

    @op("action_done")
    def action_done(self, ok: bool) -> None:
        party = self.running_action
        self.running_action = None
        if party is None:
            return
        if ok:
            self._release(party[1:])
        else:
            # As threading's: the barrier breaks for this round's parties and for those of the
            # next that arrived while the action ran.
            for w in party[1:]:
                w.fail(threading.BrokenBarrierError())
            self._break()

    def _break(self, timed_out: Waiter | None = None) -> None:
        self.broken = True
        waiters = list(self.waiters)
        self.waiters.clear()
        if timed_out is not None:
            waiters.append(timed_out)
        for w in waiters:
            w.fail(threading.BrokenBarrierError())

    @op("abort")
    def abort(self) -> None:
        self._break()

    @op("reset")
    def reset(self) -> None:
        self._break()
        self.broken = False

    @op("_state")
    def wire_state(self) -> list[Any]:
        return [self.parties, len(self.waiters), self.broken]

    def inspect(self) -> dict[str, Any]:
        return {"parties": self.parties, "waiting": len(self.waiters), "broken": self.broken}

    def drop_client(self, conn: Conn, clean: bool) -> None:
        party = self.running_action
        if party is not None and party[0].conn is conn:
            self.action_done(False)
        if any(w.conn is conn for w in self.waiters):
            self.drop_waiters(self.waiters, conn)
            self._break()


class SQueue(SyncObject):
    """queue.Queue (with ``task_done`` and ``join``, as Manager's Queue, which is one). Items
    are values (a dict put in is a dict got out, never made shared)."""

    __slots__ = ("items", "maxsize", "getters", "putters", "unfinished", "joiners")
    CANCELLABLE = ("getters", "putters")
    typeid = "Queue"

    def __init__(self, server: Server, maxsize: int = 0) -> None:
        super().__init__(server)
        if type(maxsize) is not int:
            raise TypeError("maxsize must be an int")
        self.items: deque[Any] = deque()
        self.maxsize = maxsize
        self.getters: deque[Waiter] = deque()
        self.putters: deque[Waiter] = deque()     # data: the item to put
        self.unfinished = 0
        self.joiners: deque[Waiter] = deque()

    def size(self) -> int:
        return len(self.items)

    def state(self) -> Any:
        return [self.maxsize, list(self.items)]

    def restore(self, state: Any) -> None:
        self.maxsize, items = state
        self.items = deque(items)
        self.getters, self.putters, self.joiners = deque(), deque(), deque()
        self.unfinished = len(self.items)

    def describe(self) -> str:
        return (f"{self.typeid} #{self.oid} ({len(self.items)} items, {len(self.getters)} getters "
                f"waiting, {len(self.putters)} putters waiting)")

    def _full(self) -> bool:
        return 0 < self.maxsize <= len(self.items)

    def _deliver(self, item: Any) -> None:
        self.unfinished += 1
        if self.getters:
            self.getters.popleft().answer(item)
        else:
            self.items.append(item)
            self.server.journal_queue(self, item)

    @op("put")
    def put(self, item: Any, block: bool = True, timeout: Any = None, tid: int = 0) -> Any:
        if block and self.maxsize > 0:
            timeout_value(timeout, "error")     # checked even when it need not wait (queue)
        if not self._full():
            self._deliver(item)
            return None
        if not block:
            raise queue.Full
        return self.park(self.putters, tid, item, timeout_value(timeout, "error"),
                         lambda w: w.fail(queue.Full()))

    @op("put_nowait")
    def put_nowait(self, item: Any) -> Any:
        return self.put(item, False)

    @op("_puts_cannot_fail")
    def puts_cannot_fail(self) -> bool:
        """Whether a put can neither wait nor fail (no maxsize) nor needs to be acknowledged
        (nothing persisted): clients then send puts without waiting for their replies."""
        return self.maxsize <= 0 and self.server.store is None

    @op("get")
    def get(self, block: bool = True, timeout: Any = None, tid: int = 0) -> Any:
        if block:
            timeout_value(timeout, "error")     # checked even when it need not wait (queue)
        if self.items:
            item = self.items.popleft()
            self.server.journal_queue(self, put=False)
            if self.putters and not self._full():
                w = self.putters.popleft()
                self._deliver(w.data)
                w.answer(None)
            return item
        if not block:
            raise queue.Empty
        return self.park(self.getters, tid, None, timeout_value(timeout, "error"),
                         lambda w: w.fail(queue.Empty()))

    @op("get_nowait")
    def get_nowait(self) -> Any:
        return self.get(False)

    @op("_unget")
    def unget(self, item: Any) -> None:
        """Give back an item whose getter had given up (ServerOps.cancel came too late): it is
        the next one got, as if never taken."""
        if self.getters:
            self.getters.popleft().answer(item)
        else:
            self.items.appendleft(item)
            self.server.journal_queue(self, item, front=True)

    @op("qsize")
    def qsize(self) -> int:
        return len(self.items)

    def inspect(self) -> dict[str, Any]:
        return {"items": len(self.items), "maxsize": self.maxsize,
                "getters_waiting": len(self.getters), "putters_waiting": len(self.putters),
                "unfinished": self.unfinished}

    @op("empty")
    def empty(self) -> bool:
        return not self.items

    @op("full")
    def full(self) -> bool:
        return self._full()

    @op("task_done")
    def task_done(self) -> None:
        if self.unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self.unfinished -= 1
        if self.unfinished == 0:
            while self.joiners:
                self.joiners.popleft().answer(None)

    @op("join")
    def join(self, tid: int = 0) -> Any:
        if self.unfinished == 0:
            return None
        return self.park(self.joiners, tid, None, None, lambda w: None)

    def drop_client(self, conn: Conn, clean: bool) -> None:
        for waiters in (self.getters, self.putters, self.joiners):
            self.drop_waiters(waiters, conn)


class SJoinableQueue(SQueue):
    __slots__ = ()
    typeid = "JoinableQueue"


SYNC_TYPES: dict[str, type[Shared]] = {
    cls.typeid: cls for cls in (SLock, SRLock, SSemaphore, SBoundedSemaphore, SCondition, SEvent,
                                SBarrier, SQueue, SJoinableQueue)
}
