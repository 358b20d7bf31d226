"""Synchronization objects and queues, in real processes: threading/queue semantics, timeouts,
and what happens when a holder is killed (SIGKILL) or exits normally.

Timing rules used throughout: a call with a timeout must not return before the timeout, nor more
than ``LATE`` after it; a call that can go on because another party acted must return within
``LATE`` of that action. A lock, semaphore count or barrier place held by a killed process must be
free again within ``DEAD_FREE`` of the kill.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import pickle
import queue
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import shoal
from shoal._loop import Loop

from .helpers import (SentBytes, cas_many, get_forever, hold_locked, in_thread, incr_many,
                      interrupted_after, join_all, kill, locked_many, put_then_write,
                      set_event_later, start, timed)

LATE = 0.05          # s: how late a timeout or a wake-up may be
DEAD_FREE = 1.0      # s: how soon what a killed process held must be free again
CTX = multiprocessing.get_context()


# -- workers for child processes (module level, so spawn and forkserver can import them) --------

def _hold(obj: Any, times: int, ready: Any) -> None:
    """Acquire ``obj`` ``times`` times, say so, and keep it until killed."""
    for _ in range(times):
        obj.acquire()
    ready.set()
    time.sleep(600)


def _acquire_and_exit(lock: Any, ready: Any) -> None:
    lock.acquire()
    ready.set()                # and return: a normal exit, still holding the lock


def _hold_and_fork(lock: Any, ready: Any) -> None:
    """Acquire ``lock``, fork a child that never touches shoal and outlives us, say so."""
    lock.acquire()
    if os.fork() == 0:
        time.sleep(5)
        os._exit(0)
    ready.set()
    time.sleep(600)


def _acquire_forever(lock: Any, ready: Any) -> None:
    ready.set()
    lock.acquire()
    time.sleep(600)


def _wait_on_barrier(b: Any, out: Any) -> None:
    try:
        out.put(("index", b.wait(10)))
    except threading.BrokenBarrierError:
        out.put(("broken", time.monotonic()))


def _put(q: Any, item: Any) -> None:
    q.put(item)


def _release(s: Any) -> None:
    s.release()


def _wait_for_key(c: Any, d: Any, out: Any) -> None:
    with c:
        out.put(c.wait_for(lambda: d.get("go"), 10))


def _in_semaphore(s: Any, d: Any, seen: Any) -> None:
    for _ in range(5):
        with s:
            seen.append(d.incr("inside"))
            time.sleep(0.01)
            d.incr("inside", -1)


def _lock_copy_back(d: Any, lock: Any, first: int, n: int) -> None:
    """The seed's pattern: read the nested dict, change the copy, write it back, under a Lock."""
    for i in range(first, first + n):
        with lock:
            row = d["test"]
            row[i] = i
            d["test"] = row


def _hold_locked_then_write(sub: Any, ready: Any, seconds: float, out: Any) -> None:
    with sub.locked():
        ready.set()
        time.sleep(seconds)
        sub["x"] = 1
    out.put("done")


def _notify_and_hang(c: Any, ready: Any) -> None:
    c.acquire()
    c.notify()
    ready.set()
    time.sleep(600)


def _record_action() -> None:
    _ACTIONS.append(threading.get_ident())


def _failing_action() -> None:
    raise ZeroDivisionError("the barrier's action failed")


_ACTIONS: list[int] = []


# -- helpers ------------------------------------------------------------------------------------

def raises_timed(exc: type[BaseException], fn: Callable[..., Any], *args: Any,
                 **kwargs: Any) -> float:
    start = time.monotonic()
    with pytest.raises(exc):
        fn(*args, **kwargs)
    return time.monotonic() - start


def assert_honoured(elapsed: float, timeout: float) -> None:
    assert timeout <= elapsed < timeout + LATE, f"{timeout} s timeout took {elapsed:.3f} s"


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.005)


@pytest.fixture
def m(manager: shoal.SyncManager) -> Iterator[shoal.SyncManager]:
    """The module's shared manager (conftest), under a short name; each test makes its own
    objects in it."""
    yield manager


# -- Lock -----------------------------------------------------------------------------------------

@pytest.mark.timeout(10)
def test_lock_acquire_release(m: shoal.SyncManager) -> None:
    lk = m.Lock()
    assert not lk.locked()
    assert lk.acquire() is True
    assert lk.locked()
    assert lk.acquire(False) is False
    assert lk.acquire(blocking=False) is False
    lk.release()
    assert not lk.locked()
    with lk:
        assert lk.locked()
    assert not lk.locked()
    assert lk.acquire(True, None) is True     # timeout=None: wait for ever, as threading allows
    lk.release()


def test_str_of_a_sync_proxy_tells_its_state(m: shoal.SyncManager) -> None:
    # Manager's str() shows the referent's repr; shoal's had no repr to show for these.
    lock, event = m.Lock(), m.Event()
    assert "held=False" in str(lock)
    with lock:
        assert "held=True" in str(lock) and f"holder_pid={os.getpid()}" in str(lock)
    assert "set=False" in str(event)
    event.set()
    assert "set=True" in str(event)
    q = m.Queue()
    q.put(1)
    assert "items=1" in str(q) and "Queue" in str(q)
    assert "parties=2" in str(m.Barrier(2)) and "value=3" in str(m.Semaphore(3))


@pytest.mark.timeout(10)
@pytest.mark.parametrize("timeout", [0, 0.1, 0.3])
def test_lock_timeout_is_honoured(m: shoal.SyncManager, timeout: float) -> None:
    lk = m.Lock()
    lk.acquire()
    got, elapsed = timed(lk.acquire, timeout=timeout)
    assert got is False
    assert_honoured(elapsed, timeout)
    t, out = in_thread(lk.acquire, True, timeout)   # another thread of the same process
    t.join(5)
    assert out == [False]


@pytest.mark.timeout(10)
def test_lock_waiter_wakes_promptly(m: shoal.SyncManager) -> None:
    lk = m.Lock()
    released_at: list[float] = []

    def hold() -> None:
        lk.acquire()
        time.sleep(0.15)
        released_at.append(time.monotonic())
        lk.release()
    holder = threading.Thread(target=hold)
    holder.start()
    wait_until(lk.locked)
    assert lk.acquire(timeout=3) is True
    assert time.monotonic() - released_at[0] < LATE
    lk.release()
    holder.join(5)


@pytest.mark.timeout(10)
def test_lock_bad_release_raises(m: shoal.SyncManager) -> None:
    lk = m.Lock()
    with pytest.raises(RuntimeError):
        lk.release()
    lk.acquire()
    t, out = in_thread(lk.release)                 # not the owner thread
    t.join(5)
    assert isinstance(out[0], RuntimeError)
    assert lk.locked()
    lk.release()
    with pytest.raises(RuntimeError):
        lk.release()


@pytest.mark.timeout(10)
def test_lock_nonblocking_with_timeout_is_refused(m: shoal.SyncManager) -> None:
    lk = m.Lock()
    lk.acquire()
    with pytest.raises(ValueError):
        lk.acquire(False, 1)
    lk.release()


@pytest.mark.timeout(10)
def test_lock_nonblocking_with_timeout_is_refused_when_free(m: shoal.SyncManager) -> None:
    lk = m.Lock()
    with pytest.raises(ValueError):
        lk.acquire(False, 1)                      # threading: ValueError, held or not


@pytest.mark.timeout(10)
def test_lock_negative_timeout_is_refused(m: shoal.SyncManager) -> None:
    lk = m.Lock()
    lk.acquire()
    t, out = in_thread(lk.acquire, True, -2)
    t.join(1)
    assert out and isinstance(out[0], ValueError)  # threading: "timeout value must be positive"


# -- RLock ----------------------------------------------------------------------------------------

@pytest.mark.timeout(10)
def test_rlock_recursion(m: shoal.SyncManager) -> None:
    rl = m.RLock()
    for _ in range(3):
        assert rl.acquire() is True
    assert rl._is_owned()
    t, out = in_thread(rl.acquire, True, 0.1)     # another thread: not re-entrant for it
    t.join(5)
    assert out == [False]
    t, out = in_thread(rl.release)
    t.join(5)
    assert isinstance(out[0], RuntimeError)
    for _ in range(3):
        rl.release()
    assert not rl._is_owned()
    with pytest.raises(RuntimeError):
        rl.release()
    t, out = in_thread(rl.acquire, False)          # free now
    t.join(5)
    assert out == [True]


@pytest.mark.timeout(10)
def test_rlock_timeout_is_honoured(m: shoal.SyncManager) -> None:
    rl = m.RLock()
    with rl:
        t, out = in_thread(timed, rl.acquire, True, 0.2)
        t.join(5)
    got, elapsed = out[0]
    assert got is False
    assert_honoured(elapsed, 0.2)


# -- Semaphore, BoundedSemaphore ------------------------------------------------------------------

@pytest.mark.timeout(10)
def test_semaphore_counts(m: shoal.SyncManager) -> None:
    s = m.Semaphore(2)
    assert s.get_value() == 2
    assert s.acquire() and s.acquire()
    assert s.get_value() == 0
    assert s.acquire(False) is False
    got, elapsed = timed(s.acquire, timeout=0.2)
    assert got is False
    assert_honoured(elapsed, 0.2)
    with pytest.raises(ValueError):
        s.acquire(False, 1)
    s.release()
    assert s.acquire(timeout=0) is True
    s.release(2)                                   # release(n)
    assert s.get_value() == 2
    s.release()                                    # an unbounded semaphore may go above start
    assert s.get_value() == 3
    with s:
        assert s.get_value() == 2
    assert s.get_value() == 3


@pytest.mark.timeout(10)
def test_semaphore_released_by_another_process(m: shoal.SyncManager) -> None:
    s = m.Semaphore(0)
    p = start(_release, s)
    assert s.acquire(timeout=10) is True
    join_all([p])
    assert s.get_value() == 0


@pytest.mark.timeout(20)
def test_semaphore_bounds_concurrency_across_processes(m: shoal.SyncManager) -> None:
    s, d, seen = m.Semaphore(2), m.dict(), m.list()
    procs = [start(_in_semaphore, s, d, seen) for _ in range(4)]
    join_all(procs)
    assert len(seen) == 20 and max(seen) <= 2
    assert s.get_value() == 2 and d["inside"] == 0


@pytest.mark.timeout(10)
def test_bounded_semaphore(m: shoal.SyncManager) -> None:
    bs = m.BoundedSemaphore(2)
    with pytest.raises(ValueError):
        bs.release()
    assert bs.acquire() and bs.acquire()
    assert bs.acquire(timeout=0.05) is False
    bs.release()
    bs.release()
    with pytest.raises(ValueError):
        bs.release()
    assert bs.get_value() == 2


# -- Condition ------------------------------------------------------------------------------------

@pytest.mark.timeout(10)
def test_condition_needs_its_lock(m: shoal.SyncManager) -> None:
    c = m.Condition()
    with pytest.raises(RuntimeError):
        c.wait(0.01)
    with pytest.raises(RuntimeError):
        c.notify()
    with pytest.raises(RuntimeError):
        c.notify_all()


@pytest.mark.timeout(10)
def test_a_lock_let_go_through_its_condition_is_not_released_twice_in_silence(
        m: shoal.SyncManager) -> None:
    """Its proxy still counted it held, sent the second release without waiting, and the
    server's RuntimeError was lost."""
    lock = m.Lock()
    cond = m.Condition(lock)
    lock.acquire()
    cond.release()                            # the same lock: free now
    assert not lock.locked()
    with pytest.raises(RuntimeError):
        lock.release()
    lock.acquire()                            # and it works on as before
    lock.release()
    with cond:
        assert lock.locked()
    assert not lock.locked()



@pytest.mark.timeout(10)
def test_condition_wait_timeout_and_reacquire(m: shoal.SyncManager) -> None:
    c = m.Condition(m.Lock())
    with c:
        got, elapsed = timed(c.wait, 0.2)
        assert got is False
        assert_honoured(elapsed, 0.2)
        # The lock is ours again after the wait: another thread can't take it.
        t, out = in_thread(c.acquire, True, 0.05)
        t.join(5)
        assert out == [False]
        got, elapsed = timed(c.wait_for, lambda: False, 0.2)
        assert got is False
        assert_honoured(elapsed, 0.2)
    t, out = in_thread(c.acquire, False)
    t.join(5)
    assert out == [True]


def _condition_waiters(c: Any, n: int) -> tuple[list[threading.Thread], list[Any], list[int]]:
    results: list[Any] = []
    counted = [0]

    def waiter() -> None:
        with c:
            counted[0] += 1               # counted while holding c: in wait once c is free
            results.append(c.wait(5))
    threads = [threading.Thread(target=waiter, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads, results, counted


@pytest.mark.timeout(10)
def test_condition_notify_wakes_one_at_a_time(m: shoal.SyncManager) -> None:
    c = m.Condition()
    threads, results, counted = _condition_waiters(c, 3)
    wait_until(lambda: counted[0] == 3)
    with c:                                 # all three are in wait() now
        c.notify()
    time.sleep(0.2)
    assert results == [True]
    with c:
        c.notify(2)
    for t in threads:
        t.join(5)
    assert results == [True, True, True]


@pytest.mark.timeout(10)
def test_condition_notify_all(m: shoal.SyncManager) -> None:
    c = m.Condition()
    threads, results, counted = _condition_waiters(c, 3)
    wait_until(lambda: counted[0] == 3)
    t0 = time.monotonic()
    with c:
        c.notify_all()
    for t in threads:
        t.join(5)
    assert results == [True, True, True]
    assert time.monotonic() - t0 < 4 * LATE


@pytest.mark.timeout(20)
def test_condition_wait_for_across_processes(m: shoal.SyncManager) -> None:
    c, d = m.Condition(), m.dict()
    out = CTX.Queue()
    p = start(_wait_for_key, c, d, out)
    time.sleep(0.3)
    with c:
        d["go"] = "yes"
        c.notify_all()
    assert out.get(timeout=5) == "yes"       # wait_for returns the predicate's value
    join_all([p])


@pytest.mark.timeout(20)
def test_condition_waiter_notified_by_a_killed_holder(m: shoal.SyncManager) -> None:
    c = m.Condition()
    threads, results, counted = _condition_waiters(c, 1)
    wait_until(lambda: counted[0] == 1)
    ready = CTX.Event()
    p = start(_notify_and_hang, c, ready)            # takes the lock once the waiter waits
    assert ready.wait(10)
    kill(p)
    threads[0].join(5)
    assert results == [True]                          # notified, and has the lock back


# -- Event ----------------------------------------------------------------------------------------

@pytest.mark.timeout(10)
def test_event(m: shoal.SyncManager) -> None:
    e = m.Event()
    assert not e.is_set()
    got, elapsed = timed(e.wait, 0.2)
    assert got is False
    assert_honoured(elapsed, 0.2)
    e.set()
    assert e.is_set() and e.wait() is True and e.wait(0) is True
    e.clear()
    assert not e.is_set()
    assert e.wait(0) is False


@pytest.mark.timeout(20)
def test_event_set_by_another_process_wakes_at_once(m: shoal.SyncManager) -> None:
    e = m.Event()
    p = start(set_event_later, e, 0.0)
    assert e.wait(10) is True
    join_all([p])
    e.clear()
    t, out = in_thread(timed, e.wait, 10)
    time.sleep(0.1)
    set_at = time.monotonic()
    e.set()
    t.join(5)
    assert out[0][0] is True
    assert time.monotonic() - set_at < LATE


@pytest.mark.timeout(10)
def test_negative_timeouts_do_not_wait(m: shoal.SyncManager) -> None:
    # threading: Event/Condition.wait and Semaphore.acquire with a negative timeout give up at
    # once; Barrier.wait breaks at once.
    e, c, s, b = m.Event(), m.Condition(), m.Semaphore(0), m.Barrier(2)

    def condition_wait() -> Any:
        with c:
            return c.wait(-1)
    for fn, args in ((e.wait, (-1,)), (condition_wait, ()), (s.acquire, (True, -1))):
        t, out = in_thread(timed, fn, *args)
        t.join(1)
        assert out and out[0][0] is False and out[0][1] < LATE
    t, out = in_thread(b.wait, -0.5)
    t.join(1)
    assert out and isinstance(out[0], threading.BrokenBarrierError)


# -- Barrier --------------------------------------------------------------------------------------

def _wait_in_threads(b: Any, n: int, timeout: float | None = None) -> tuple[list[threading.Thread],
                                                                              list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(b.wait(timeout))
        except BaseException as e:
            out.append(e)
    threads = [threading.Thread(target=run, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads, out


@pytest.mark.timeout(10)
def test_barrier_indices_and_state(m: shoal.SyncManager) -> None:
    b = m.Barrier(4)
    assert (b.parties, b.n_waiting, b.broken) == (4, 0, False)
    threads, out = _wait_in_threads(b, 3)
    wait_until(lambda: b.n_waiting == 3)
    idx = b.wait(5)
    for t in threads:
        t.join(5)
    assert sorted(out + [idx]) == [0, 1, 2, 3]
    assert b.n_waiting == 0 and not b.broken
    # It can be used again (a new cycle).
    threads, out2 = _wait_in_threads(b, 3)
    idx = b.wait(5)
    for t in threads:
        t.join(5)
    assert sorted(out2 + [idx]) == [0, 1, 2, 3]


@pytest.mark.timeout(10)
def test_barrier_action_runs_once_per_cycle(m: shoal.SyncManager) -> None:
    _ACTIONS.clear()
    b = m.Barrier(3, action=_record_action)
    for cycle in (1, 2):
        threads, out = _wait_in_threads(b, 2)
        idx = b.wait(5)
        for t in threads:
            t.join(5)
        assert sorted(out + [idx]) == [0, 1, 2]
        assert len(_ACTIONS) == cycle


@pytest.mark.timeout(10)
def test_barrier_failing_action_breaks_it(m: shoal.SyncManager) -> None:
    b = m.Barrier(2, action=_failing_action)
    threads, out = _wait_in_threads(b, 2)
    for t in threads:
        t.join(5)
    kinds = sorted(type(x).__name__ for x in out)
    assert kinds == ["BrokenBarrierError", "ZeroDivisionError"]
    assert b.broken


@pytest.mark.timeout(10)
def test_barrier_timeout_breaks_it_for_everyone(m: shoal.SyncManager) -> None:
    b = m.Barrier(3)
    threads, out = _wait_in_threads(b, 1)            # waits without a timeout
    wait_until(lambda: b.n_waiting == 1)
    elapsed = raises_timed(threading.BrokenBarrierError, b.wait, 0.2)
    assert_honoured(elapsed, 0.2)
    threads[0].join(5)
    assert isinstance(out[0], threading.BrokenBarrierError)
    assert b.broken
    elapsed = raises_timed(threading.BrokenBarrierError, b.wait, 5)   # broken: at once
    assert elapsed < LATE
    b.reset()
    assert not b.broken and b.n_waiting == 0
    threads, out = _wait_in_threads(b, 2)
    assert b.wait(5) in (0, 1, 2)
    for t in threads:
        t.join(5)


@pytest.mark.timeout(10)
def test_barrier_default_timeout(m: shoal.SyncManager) -> None:
    b = m.Barrier(2, timeout=0.2)
    elapsed = raises_timed(threading.BrokenBarrierError, b.wait)
    assert_honoured(elapsed, 0.2)
    assert b.broken


@pytest.mark.timeout(10)
def test_barrier_abort_and_reset_wake_the_waiters(m: shoal.SyncManager) -> None:
    b = m.Barrier(3)
    threads, out = _wait_in_threads(b, 2)
    wait_until(lambda: b.n_waiting == 2)
    b.abort()
    for t in threads:
        t.join(5)
    assert all(isinstance(x, threading.BrokenBarrierError) for x in out) and len(out) == 2
    assert b.broken
    b.reset()
    threads, out = _wait_in_threads(b, 2)
    wait_until(lambda: b.n_waiting == 2)
    b.reset()                                      # waiters of a reset barrier are broken out
    for t in threads:
        t.join(5)
    assert all(isinstance(x, threading.BrokenBarrierError) for x in out) and len(out) == 2
    assert not b.broken


@pytest.mark.timeout(20)
def test_barrier_across_processes(m: shoal.SyncManager) -> None:
    b = m.Barrier(4)
    out = CTX.Queue()
    procs = [start(_wait_on_barrier, b, out) for _ in range(3)]
    idx = b.wait(10)
    got = [out.get(timeout=10) for _ in range(3)]
    join_all(procs)
    assert all(kind == "index" for kind, _ in got)
    assert sorted([i for _, i in got] + [idx]) == [0, 1, 2, 3]


# -- Queue, JoinableQueue -------------------------------------------------------------------------

@pytest.mark.timeout(10)
def test_queue_fifo_and_sizes(m: shoal.SyncManager) -> None:
    q = m.Queue(2)
    assert q.empty() and not q.full() and q.qsize() == 0
    q.put(1)
    q.put_nowait(2)
    assert q.full() and not q.empty() and q.qsize() == 2
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    with pytest.raises(queue.Full):
        q.put(3, block=False)
    with pytest.raises(queue.Full):
        q.put(3, False, 5)                          # timeout ignored when not blocking
    elapsed = raises_timed(queue.Full, q.put, 3, timeout=0.2)
    assert_honoured(elapsed, 0.2)
    assert [q.get(), q.get_nowait()] == [1, 2]
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(block=False)
    elapsed = raises_timed(queue.Empty, q.get, timeout=0.2)
    assert_honoured(elapsed, 0.2)
    elapsed = raises_timed(queue.Empty, q.get, True, 0)
    assert elapsed < LATE
    with pytest.raises(ValueError):
        q.get(timeout=-2)                            # queue: "'timeout' must be non-negative"


@pytest.mark.timeout(10)
def test_queue_timeout_minus_one_is_refused(m: shoal.SyncManager) -> None:
    q = m.Queue(1)
    t, out = in_thread(q.get, True, -1)
    t.join(1)
    assert out and isinstance(out[0], ValueError)     # queue: a ValueError, not "for ever"
    q.put(1)
    t, out = in_thread(q.put, 2, True, -1)
    t.join(1)
    assert out and isinstance(out[0], ValueError)


@pytest.mark.timeout(10)
def test_queue_values_keep_their_type(m: shoal.SyncManager) -> None:
    q = m.Queue()
    items = [None, 1, 2**80, 1.5, "s", b"b", (1, 2), [1, [2]], {"a": {"b": 1}}, {1, 2},
             frozenset({3}), ZeroDivisionError("x")]
    for x in items:
        q.put(x)
    got = [q.get() for _ in items]
    assert got[:-1] == items[:-1] and [type(x) for x in got] == [type(x) for x in items]
    assert got[-1].args == ("x",)


@pytest.mark.timeout(10)
def test_queue_blocked_calls_wake_promptly(m: shoal.SyncManager) -> None:
    q = m.Queue(1)
    q.put("a")
    t, out = in_thread(timed, q.put, "b", True, 5)   # blocked: full
    time.sleep(0.1)
    got_at = time.monotonic()
    assert q.get() == "a"
    t.join(5)
    assert out[0][0] is None and time.monotonic() - got_at < LATE
    assert q.get(timeout=1) == "b"
    t, out = in_thread(q.get, True, 5)                 # blocked: empty
    time.sleep(0.1)
    p = start(_put, q, "from a child")
    t.join(10)
    assert out == ["from a child"]
    join_all([p])


@pytest.mark.timeout(10)
def test_joinable_queue(m: shoal.SyncManager) -> None:
    jq = m.JoinableQueue()
    jq.join()                                          # nothing unfinished: at once
    for i in range(3):
        jq.put(i)
    done_at: list[float] = []

    def worker() -> None:
        for _ in range(3):
            jq.get()
            time.sleep(0.05)
            if len(done_at) == 2:
                done_at.append(time.monotonic())
            else:
                done_at.append(0.0)
            jq.task_done()
    t = threading.Thread(target=worker, daemon=True)
    t.start()
    jq.join()
    joined_at = time.monotonic()
    t.join(5)
    assert len(done_at) == 3 and joined_at - done_at[-1] < LATE
    with pytest.raises(ValueError):
        jq.task_done()
    q = m.Queue()                    # a queue.Queue, as Manager's: task_done and join too
    q.put(1)
    assert q.get() == 1
    q.task_done()
    q.join()
    with pytest.raises(ValueError):
        q.task_done()


@pytest.mark.timeout(20)
def test_queue_in_a_dict_and_a_list_is_shared(m: shoal.SyncManager) -> None:
    q, lk = m.Queue(), m.Lock()
    d, l = m.dict(), m.list()
    d["q"] = q
    d["lk"] = lk
    l.append(q)
    d["q"].put(1)
    l[0].put(2)
    p = start(_put, d["q"], 3)
    join_all([p])
    p = start(_put, l[0], 4)
    join_all([p])
    assert [q.get(timeout=1) for _ in range(4)] == [1, 2, 3, 4]
    assert d["q"].empty() and l[0].qsize() == 0
    d["lk"].acquire()
    assert lk.locked()
    lk.release()
    nested = m.dict()
    nested["inner"] = {"queues": [q]}
    nested["inner"]["queues"][0].put(5)
    assert q.get(timeout=1) == 5


# -- a killed holder (SIGKILL) ------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_killed_lock_holder_frees_it_and_is_reported(ctx: Any, m: shoal.SyncManager) -> None:
    lk = m.Lock()
    ready = ctx.Event()
    p = start(_hold, lk, 1, ready, ctx=ctx)
    assert ready.wait(20)
    assert lk.acquire(timeout=0.05) is False
    killed_at = kill(p)
    assert lk.acquire(timeout=5) is True
    assert time.monotonic() - killed_at < DEAD_FREE
    assert lk.owner_died is True
    lk.release()
    assert lk.acquire() is True and lk.owner_died is False   # reset by a normal acquire
    lk.release()


@pytest.mark.timeout(20)
def test_killed_lock_holder_hands_it_to_a_blocked_waiter(m: shoal.SyncManager) -> None:
    lk = m.Lock()
    ready = CTX.Event()
    p = start(_hold, lk, 1, ready)
    assert ready.wait(10)
    t, out = in_thread(lambda: (lk.acquire(timeout=5), time.monotonic(), lk.owner_died))
    time.sleep(0.1)                                     # the thread is blocked in acquire
    killed_at = kill(p)
    t.join(5)
    got, got_at, died = out[0]
    assert got is True and died is True
    assert got_at - killed_at < DEAD_FREE


@pytest.mark.timeout(20)
def test_killed_rlock_holder_frees_every_level(m: shoal.SyncManager) -> None:
    rl = m.RLock()
    ready = CTX.Event()
    p = start(_hold, rl, 3, ready)
    assert ready.wait(10)
    killed_at = kill(p)
    assert rl.acquire(timeout=5) is True
    assert time.monotonic() - killed_at < DEAD_FREE
    assert rl.owner_died is True
    rl.release()                                       # one level: ours, not the dead one's 3
    t, out = in_thread(rl.acquire, False)
    t.join(5)
    assert out == [True]


@pytest.mark.timeout(20)
def test_killed_semaphore_holder_gives_its_counts_back(m: shoal.SyncManager) -> None:
    s = m.Semaphore(2)
    ready = CTX.Event()
    p = start(_hold, s, 2, ready)
    assert ready.wait(10)
    assert s.acquire(False) is False
    t, out = in_thread(lambda: (s.acquire(timeout=5), time.monotonic()))
    time.sleep(0.1)
    killed_at = kill(p)
    t.join(5)
    got, got_at = out[0]
    assert got is True and got_at - killed_at < DEAD_FREE
    assert s.get_value() == 1                           # 2 given back, 1 taken by us
    s.release()


@pytest.mark.timeout(20)
def test_killed_waiter_does_not_take_the_lock_later(m: shoal.SyncManager) -> None:
    lk = m.Lock()
    lk.acquire()
    ready = CTX.Event()
    p = start(_acquire_forever, lk, ready)
    assert ready.wait(10)
    time.sleep(0.1)                                    # the child is parked in acquire
    kill(p)
    lk.release()
    assert lk.acquire(False) is True                   # not handed to the dead waiter
    assert lk.owner_died is False
    lk.release()


@pytest.mark.timeout(20)
def test_killed_barrier_party_breaks_it_for_the_others(m: shoal.SyncManager) -> None:
    b = m.Barrier(3)
    out = CTX.Queue()
    victim = start(_wait_on_barrier, b, out)
    survivor = start(_wait_on_barrier, b, out)
    wait_until(lambda: b.n_waiting == 2, 10)
    killed_at = kill(victim)
    kind, broken_at = out.get(timeout=5)
    assert kind == "broken" and broken_at - killed_at < DEAD_FREE
    assert b.broken
    with pytest.raises(threading.BrokenBarrierError):
        b.wait(1)
    join_all([survivor])


@pytest.mark.timeout(20)
def test_killed_getter_does_not_swallow_an_item(m: shoal.SyncManager) -> None:
    q = m.Queue()
    ready = CTX.Event()
    p = start(get_forever, q, ready)
    assert ready.wait(10)
    time.sleep(0.2)                                    # the child is parked in get
    kill(p)
    q.put("item")
    assert q.get(timeout=1) == "item"
    assert q.empty()


@pytest.mark.timeout(30)
def test_killed_holder_with_a_forked_child_frees_the_lock(m: shoal.SyncManager) -> None:
    """The child's copy of the holder's socket must not keep the holder's connection open."""
    lk = m.Lock()
    ready = CTX.Event()
    p = start(_hold_and_fork, lk, ready, ctx=multiprocessing.get_context("fork"))
    assert ready.wait(10)
    killed_at = time.monotonic()
    os.kill(p.pid, signal.SIGKILL)          # not joined first: the child keeps its sentinel
    assert lk.acquire(timeout=5) is True
    assert time.monotonic() - killed_at < DEAD_FREE
    assert lk.owner_died is True
    lk.release()
    p.join(10)


@pytest.mark.timeout(20)
def test_rlock_held_at_a_normal_exit_is_freed_with_owner_died(m: shoal.SyncManager) -> None:
    rl = m.RLock()
    ready = CTX.Event()
    join_all([start(_acquire_and_exit, rl, ready)])
    assert ready.is_set()
    assert rl.acquire(timeout=1) is True and rl.owner_died is True
    rl.release()


@pytest.mark.timeout(20)
def test_normal_exit_leaves_the_lock_held(m: shoal.SyncManager) -> None:
    lk = m.Lock()
    ready = CTX.Event()
    p = start(_acquire_and_exit, lk, ready)
    join_all([p])
    assert ready.is_set()
    assert lk.locked()
    got, elapsed = timed(lk.acquire, timeout=0.2)       # still held: as with threading/Manager
    assert got is False
    assert_honoured(elapsed, 0.2)
    lk.release()                                         # its holder is gone: anyone may release
    assert not lk.locked()
    assert lk.acquire(False) is True and lk.owner_died is False
    lk.release()


# -- no lost updates: 4 processes x 500 -----------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker", [incr_many, cas_many])
def test_four_processes_lose_no_update(m: shoal.SyncManager, worker: Any) -> None:
    d = m.dict()
    procs = [start(worker, d, "n", 500) for _ in range(4)]
    join_all(procs, 50)
    assert d["n"] == 2000


@pytest.mark.timeout(60)
def test_four_processes_lose_no_update_with_locked(m: shoal.SyncManager) -> None:
    d = m.dict()
    procs = [start(locked_many, d, "n", 500) for _ in range(4)]
    join_all(procs, 50)
    assert d["n"] == 2000


@pytest.mark.timeout(60)
def test_seed_lock_and_copy_back_loses_nothing(m: shoal.SyncManager) -> None:
    d, lk = m.dict(), m.Lock()
    d["test"] = {}
    procs = [start(_lock_copy_back, d, lk, 100 * k, 100) for k in range(4)]
    join_all(procs, 50)
    assert d["test"] == {i: i for i in range(400)}


# -- threads of one process ---------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_blocked_acquire_does_not_block_other_threads(m: shoal.SyncManager) -> None:
    lk, s = m.Lock(), m.Semaphore(0)
    ready = CTX.Event()
    p = start(_hold, lk, 1, ready)                    # held by another process
    assert ready.wait(10)
    t1, out1 = in_thread(lk.acquire, True, 10)         # blocked on the lock
    t2, out2 = in_thread(s.acquire, True, 10)          # blocked on the semaphore
    time.sleep(0.1)
    d, q, e = m.dict(), m.Queue(), m.Event()

    def other_work() -> float:
        t0 = time.monotonic()
        for i in range(100):
            d[i] = i
            assert d[i] == i
        q.put("x")
        assert q.get(timeout=1) == "x"
        return time.monotonic() - t0
    t3, out3 = in_thread(other_work)                    # another thread, other proxies
    elapsed = other_work()                              # and this one
    t3.join(10)
    assert elapsed < 1 and out3[0] < 1
    got, waited = timed(e.wait, 0.1)                    # timeouts still honoured meanwhile
    assert got is False
    assert_honoured(waited, 0.1)
    assert t1.is_alive() and t2.is_alive()
    s.release()
    t2.join(5)
    assert out2 == [True]
    kill(p)
    t1.join(5)
    assert out1 == [True]


# -- d.locked() -----------------------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_locked_excludes_other_clients_from_the_object_and_its_nested(
        m: shoal.SyncManager) -> None:
    d, other = m.dict(), m.dict()
    d["sub"] = {"list": []}
    sub = d["sub"]
    inner = sub["list"]
    ready = CTX.Event()
    p = start(hold_locked, d, ready, 0.4)
    assert ready.wait(10)
    held_at = time.monotonic()
    _, elapsed = timed(other.__setitem__, "free", 1)   # another object: not held up
    assert elapsed < 0.2
    inner.append(1)                                    # nested two levels down: waits
    assert time.monotonic() - held_at >= 0.3
    assert d["by_child"] is True                       # the holder's write came first
    join_all([p])
    assert d["sub"]["list"] == [1]


@pytest.mark.timeout(20)
def test_locked_on_a_list_excludes_other_clients(m: shoal.SyncManager) -> None:
    d = m.dict()
    d["l"] = [0]                                       # made nested in d: covered by d's lock
    l = d["l"]
    ready = CTX.Event()
    p = start(hold_locked, d, ready, 0.3)
    assert ready.wait(10)
    held_at = time.monotonic()
    l.append(1)
    assert time.monotonic() - held_at >= 0.2
    join_all([p])
    with l.locked():
        l.append(2)
    assert list(l) == [0, 1, 2]


@pytest.mark.timeout(10)
def test_locked_is_reentrant_for_its_holder(m: shoal.SyncManager) -> None:
    d = m.dict()
    d["sub"] = {}
    with d.locked():
        with d.locked():
            d["a"] = 1
            d["sub"]["b"] = 2
            with d["sub"].locked():
                d["sub"]["c"] = 3
        d.incr("n")
    assert d == {"a": 1, "sub": {"b": 2, "c": 3}, "n": 1}


@pytest.mark.timeout(20)
def test_locked_holder_killed_releases_it(m: shoal.SyncManager) -> None:
    d = m.dict()
    ready = CTX.Event()
    p = start(hold_locked, d, ready, 600)
    assert ready.wait(10)
    t, out = in_thread(lambda: (d.__setitem__("after", 1), time.monotonic()))
    time.sleep(0.1)
    assert t.is_alive()                                 # waiting for the holder
    killed_at = kill(p)
    t.join(5)
    assert out and out[0][1] - killed_at < DEAD_FREE
    assert "by_child" not in d and d["after"] == 1
    with d.locked() as state:
        assert state.owner_died is True                 # the previous holder died in its block
    with d.locked() as state:
        assert state.owner_died is False                # reset by the next normal hold


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["Queue", "Semaphore", "Event"])   # (a Lock's locked() is
                                                                    # threading's)
def test_locked_on_a_sync_object_is_freed_when_its_holder_dies(m: shoal.SyncManager,
                                                                kind: str) -> None:
    obj = getattr(m, kind)()
    ready = CTX.Event()
    p = start(hold_locked, obj, ready, 600)
    assert ready.wait(10)
    killed_at = kill(p)
    call = {"Queue": lambda: obj.put(1), "Semaphore": lambda: obj.acquire(timeout=0),
            "Event": lambda: obj.set()}[kind]
    t, out = in_thread(lambda: (call(), time.monotonic()))
    t.join(5)
    assert out and not isinstance(out[0], BaseException), out
    assert out[0][1] - killed_at < DEAD_FREE
    with obj.locked() as state:
        assert state.owner_died is True


def _locked_write(d: Any, key: str) -> None:
    with d.locked():
        d[key] = True


@pytest.mark.timeout(40)
def test_a_child_forked_while_a_thread_holds_locked_can_take_it(m: shoal.SyncManager) -> None:
    d = m.dict()
    held, go = threading.Event(), threading.Event()

    def holder() -> None:
        with d.locked():
            held.set()
            go.wait(10)
    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(10)
    p = multiprocessing.get_context("fork").Process(target=_locked_write, args=(d, "child"))
    p.start()
    try:
        time.sleep(0.2)
        go.set()
        t.join(10)
        p.join(10)
        assert p.exitcode == 0 and d["child"] is True
    finally:
        if p.exitcode is None:
            p.kill()
            p.join(5)


@pytest.mark.timeout(20)
def test_locked_on_a_container_waits_for_a_lock_held_inside_it(m: shoal.SyncManager) -> None:
    d = m.dict()
    d["sub"] = {}
    sub = d["sub"]
    ready, out = CTX.Event(), CTX.Queue()
    p = start(_hold_locked_then_write, sub, ready, 0.3, out)
    assert ready.wait(10)

    def outer() -> None:
        with d.locked():
            sub["y"] = 2
    t, res = in_thread(outer)
    try:
        assert out.get(timeout=2) == "done"
        t.join(5)
        assert res == [None] and d["sub"] == {"x": 1, "y": 2}
        join_all([p])
    finally:
        if p.exitcode is None:
            p.kill()                                    # ends a deadlock, if any
            p.join(5)
        t.join(5)


def _put_many_and_exit(q: Any, n: int, ready: Any, go: Any) -> None:
    q.put(-2)                    # connected
    q.put(-1)                    # and knows that its puts cannot fail
    ready.set()
    go.wait(30)
    for i in range(n):
        q.put(i)                 # an unbounded queue: sent without waiting for the reply


def _end_with_the_server_stopped(m: shoal.SyncManager, ctx: Any, target: Any,
                                 args: tuple[Any, ...], wait: float
                                 ) -> tuple[Any, int | None, float]:
    """Run ``target(*args, ready, go)`` in a process; once it is ready, stop the server, let the
    process end and join it for up to ``wait`` s, then let the server go on. Gives the process,
    its exit code while the server was stopped, and how long that join took."""
    ready, go = ctx.Event(), ctx.Event()
    p = ctx.Process(target=target, args=(*args, ready, go))
    p.start()
    assert ready.wait(30)
    server = m._process.pid
    os.kill(server, signal.SIGSTOP)
    try:
        go.set()
        started = time.monotonic()
        p.join(wait)
        return p, p.exitcode, time.monotonic() - started
    finally:
        os.kill(server, signal.SIGCONT)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_process_ends_only_once_the_server_has_what_it_sent_without_waiting(
        method: str) -> None:
    with shoal.Manager() as m:
        q = m.Queue()
        # The 50 puts fit in the socket buffer, but the child's goodbye waits for the answer of
        # the stopped server: it must not have ended.
        p, exitcode, _ = _end_with_the_server_stopped(
            m, multiprocessing.get_context(method), _put_many_and_exit, (q, 50), 0.5)
        assert exitcode is None
        p.join(30)
        assert p.exitcode == 0
        assert q.qsize() == 52
        assert [q.get_nowait() for _ in range(52)] == list(range(-2, 50))


def _exit_with_a_thread_blocked_in_acquire(lock: Any, ready: Any, go: Any) -> None:
    threading.Thread(target=lock.acquire, daemon=True).start()   # it reads the replies
    time.sleep(0.3)
    ready.set()
    go.wait(30)


@pytest.mark.timeout(60)
def test_a_process_ends_in_bounded_time_when_the_server_does_not_answer_its_goodbye() -> None:
    with shoal.Manager() as m:
        lock = m.Lock()
        lock.acquire()                     # the child's thread blocks on it for ever
        p, exitcode, took = _end_with_the_server_stopped(
            m, multiprocessing.get_context("fork"), _exit_with_a_thread_blocked_in_acquire,
            (lock,), 15)
        assert exitcode == 0, "the process did not end while the server was stopped"
        assert took < 6
        lock.release()


# -- bad timeouts ---------------------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_a_nan_timeout_is_refused_and_other_timeouts_still_fire(m: shoal.SyncManager) -> None:
    lk, ev, q, cond = m.Lock(), m.Event(), m.Queue(), m.Condition()
    nan = float("nan")
    assert lk.acquire() is True
    with cond:
        for call in (lambda: lk.acquire(timeout=nan), lambda: ev.wait(nan),
                     lambda: q.get(timeout=nan), lambda: m.Semaphore(0).acquire(timeout=nan),
                     lambda: cond.wait(nan), lambda: m.Barrier(2).wait(nan)):
            with pytest.raises(ValueError, match="NaN"):
                call()
    got, elapsed = timed(lk.acquire, timeout=0.2)     # the server's timers still run
    assert got is False
    assert_honoured(elapsed, 0.2)
    lk.release()


@pytest.mark.timeout(20)
def test_a_queue_refuses_a_negative_timeout_even_when_it_need_not_wait(
        m: shoal.SyncManager) -> None:
    q, bounded = m.Queue(), m.Queue(maxsize=5)
    q.put(1)
    with pytest.raises(ValueError, match="non-negative"):
        q.get(timeout=-1)                         # as queue.Queue: an item is there all the same
    with pytest.raises(ValueError, match="non-negative"):
        bounded.put(1, timeout=-1)
    q.put(2, timeout=-1)                          # unbounded: the timeout is not looked at
    assert q.get(False) == 1 and q.get(timeout=0) == 2


@pytest.mark.timeout(10)
def test_cancelled_timers_do_not_pile_up() -> None:
    """A wait with a long timeout answered early (the usual case) cancels its timer: the loop
    must not keep the timers until they are due."""
    loop = Loop()
    try:
        fired: list[int] = []
        keep = loop.call_later(0, lambda: fired.append(1))
        for _ in range(10_000):
            loop.call_later(1e9, lambda: fired.append(2)).cancel()
        assert len(loop._timers) < 600
        loop.call_soon_threadsafe(loop.stop)
        loop.run()
        assert fired == [1] and keep.callback is None
    finally:
        loop.close()


# -- a wait interrupted by an exception (a signal handler's, Ctrl-C) -------------------------------

@pytest.mark.timeout(30)
def test_an_interrupted_acquire_does_not_take_the_lock_later(m: shoal.SyncManager) -> None:
    lk, sem, release = m.Lock(), m.Semaphore(0), threading.Event()
    t, _ = in_thread(lambda: (lk.acquire(), release.wait(10), lk.release()))
    while not lk.locked():                   # another thread of this process holds it
        time.sleep(0.01)
    with interrupted_after(0.2):
        lk.acquire()
    with interrupted_after(0.2):
        sem.acquire()
    release.set()
    t.join(5)
    assert lk.acquire(timeout=2) is True     # the interrupted request was dropped
    lk.release()
    sem.release()
    assert sem.acquire(timeout=2) is True


@pytest.mark.timeout(30)
def test_an_interrupted_get_does_not_swallow_the_next_item(m: shoal.SyncManager) -> None:
    q, full = m.Queue(), m.Queue(maxsize=1)
    with interrupted_after(0.2):
        q.get()
    q.put("item")
    assert q.get(timeout=2) == "item"
    full.put(1)
    with interrupted_after(0.2):
        full.put(2)                          # waits for room; dropped when interrupted
    assert full.get(timeout=2) == 1 and full.qsize() == 0


@pytest.mark.timeout(30)
def test_a_call_that_ran_before_its_caller_gave_up_is_undone(m: shoal.SyncManager) -> None:
    """The interruption may come after the server answered but before the reply was read: the
    late reply then gives back what the call got (the lock released, the item put back first)."""
    lk, q = m.Lock(), m.Queue()
    q.put("first")
    q.put("second")
    conn = lk._conn
    for proxy, name, args, undo in (
            (lk, "acquire", [True, -1, 1], lambda got: ("release", [1]) if got else None),
            (q, "get", [True, None, 1], lambda item: ("_unget", [item]))):
        rid = conn._request(proxy._id, name, args, None)
        time.sleep(0.2)                      # it ran: its reply waits in the socket, unread
        conn._abandon(rid, proxy._id, undo)
    assert lk.locked() in (True, False)      # reads the late replies, which settle them
    # (each in a thread of its own: give them a moment)
    deadline = time.monotonic() + 5
    while (lk.locked() or q.qsize() < 2) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lk.locked() is False
    assert [q.get(timeout=1), q.get(timeout=1)] == ["first", "second"]


@pytest.mark.timeout(30)
def test_a_put_sent_without_waiting_waits_for_the_queues_per_object_lock(
        m: shoal.SyncManager) -> None:
    """Another process's put into an unbounded queue goes without a reply; inside
    ``q.locked()`` it must still wait (its later calls do not wait for it)."""
    q, d, ready, go = m.Queue(), m.dict(), m.Event(), m.Event()
    p = start(put_then_write, q, d, ready, go)
    assert ready.wait(10)
    assert [q.get(timeout=5), q.get(timeout=5)] == ["warm-up", "warm-up"]
    with q.locked():
        go.set()
        time.sleep(0.5)                       # the put and the write were sent meanwhile
        assert q.qsize() == 0
    join_all([p])
    assert q.get(timeout=5) == "item" and d["after_put"] is True


def _put_then_release(q: Any, lk: Any, ready: Any, go: Any, then_die: bool) -> None:
    q.put("warm-up")                         # (a forked child reconnects on this one)
    q.put("warm-up")                         # the process asks once whether its puts may go blind
    lk.acquire()
    ready.set()
    go.wait(10)
    q.put("item")
    if then_die:
        os.kill(os.getpid(), signal.SIGKILL)
    lk.release()
    time.sleep(600)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("then_die", [False, True])
def test_a_put_waiting_for_a_queues_lock_holds_back_nothing_else(
        m: shoal.SyncManager, then_die: bool) -> None:
    """Its sender's later release, or its death, must reach the server at once: a lock it let
    go (or held when killed) is free while the put still waits; the put lands afterwards."""
    q, lk, ready, go = m.Queue(), m.Lock(), m.Event(), m.Event()
    p = start(_put_then_release, q, lk, ready, go, then_die)
    assert ready.wait(10)
    assert [q.get(timeout=5), q.get(timeout=5)] == ["warm-up", "warm-up"]
    with q.locked():
        go.set()
        got, elapsed = timed(lk.acquire, timeout=5)
        assert got is True and elapsed < DEAD_FREE
        assert lk.owner_died is then_die
        assert q.qsize() == 0
    lk.release()
    assert q.get(timeout=5) == "item"
    if not then_die:
        kill(p)
    p.join(10)


@pytest.mark.timeout(30)
def test_an_interrupted_condition_wait_that_was_notified_waits_for_the_lock(
        m: shoal.SyncManager) -> None:
    """Notified, it queues for the lock; interrupted then, the exception must still wait for the
    lock, as threading's: the block holds it when the exception goes on."""
    cond = m.Condition()
    waiting = threading.Event()

    def notifier() -> None:
        waiting.wait(5)
        time.sleep(0.1)
        with cond:
            cond.notify()
            time.sleep(1.0)                  # holds the lock past the interruption
    t = threading.Thread(target=notifier)
    t.start()
    start_at = time.monotonic()
    with cond:
        waiting.set()
        with interrupted_after(0.5):
            cond.wait(10)
        assert time.monotonic() - start_at >= 1.0   # it waited for the notifier's release
    t.join(5)


class _Thing:
    def hi(self) -> str:
        return "hi"


class _ThingManager(shoal.SyncManager):
    pass


_ThingManager.register("Thing", _Thing)


@pytest.mark.timeout(30)
def test_an_abandoned_get_whose_item_needs_a_call_to_decode_is_given_back() -> None:
    """The late reply of an abandoned get is read by another thread that holds the reader role
    (waiting for its own reply): decoding the item (a registered type's proxy asks the server
    for its methods) must not wait for that thread, and the item must go back at once."""
    with _ThingManager() as tm:
        q, ev, thing = tm.Queue(), tm.Event(), tm.Thing()
        t = threading.Thread(target=ev.wait, args=(20,), daemon=True)
        t.start()                             # holds the reader role while it waits
        time.sleep(0.2)
        conn = q._conn
        rid = conn._request(q._id, "get", [True, None, 1], None)    # parks: q is empty
        with conn._mutex:                      # its caller gives up (the cancel comes later)
            conn._abandoned[rid] = (q._id, lambda item: ("_unget", [item]))
        tm.Queue().put(0)                     # (another call, so the get parked first)
        q.put(thing)                          # answers the abandoned get
        deadline = time.monotonic() + 5
        while q.qsize() == 0:
            assert time.monotonic() < deadline, "the item was not given back"
            time.sleep(0.01)
        assert q.get(timeout=1).hi() == "hi"
        ev.set()
        t.join(5)


def _interrupt_next_write(monkeypatch: Any, conn: Any, after: bool = True) -> None:
    """The connection's next write raises KeyboardInterrupt once, after sending (as
    ``sendall`` does when a signal handler raises) or, ``after=False``, before sending."""
    write = type(conn)._write

    def interrupted(self: Any, data: bytes) -> None:
        monkeypatch.setattr(type(conn), "_write", write)
        if after:
            write(self, data)
        raise KeyboardInterrupt
    monkeypatch.setattr(type(conn), "_write", interrupted)


@pytest.mark.timeout(30)
def test_an_exception_as_the_request_goes_out_loses_nothing(m: shoal.SyncManager,
                                                            monkeypatch: Any) -> None:
    """A signal handler's exception can come as ``sendall`` returns (it runs the handlers after
    sending), before the reply is waited for: what the request takes is given back (the item
    lost, the lock held for good before)."""
    lk, q = m.Lock(), m.Queue()
    q.put("first")
    q.put("second")
    conn = q._conn
    for call in (lambda: q.get(timeout=5), lambda: lk.acquire(timeout=5)):
        _interrupt_next_write(monkeypatch, conn)
        with pytest.raises(KeyboardInterrupt):
            call()
    deadline = time.monotonic() + 5          # given back from a thread of its own
    while (q.qsize() < 2 or lk.locked()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert q.get(timeout=2) == "first" and q.get(timeout=2) == "second"
    assert lk.acquire(timeout=2) is True
    lk.release()


@pytest.mark.timeout(30)
def test_a_condition_wait_interrupted_as_it_goes_out_takes_the_lock_back(
        m: shoal.SyncManager, monkeypatch: Any) -> None:
    """As threading's: the block holds the lock again when the exception goes on, and no wait
    is left behind in the server to take the lock later (it did, and the release raised)."""
    cond = m.Condition()
    conn = cond._conn
    with cond:
        _interrupt_next_write(monkeypatch, conn)
        with pytest.raises(KeyboardInterrupt):
            cond.wait(timeout=1)
    time.sleep(1.5)                          # past the wait's timeout
    t, got = in_thread(lambda: (cond.acquire(timeout=2), cond.release())[0])
    t.join(5)
    assert got == [True] and not conn._replies


@pytest.mark.timeout(30)
def test_a_wait_interrupted_before_its_request_went_out_leaves_nothing(
        m: shoal.SyncManager, monkeypatch: Any) -> None:
    q = m.Queue()
    q.put(1)
    conn = q._conn
    for _ in range(50):
        _interrupt_next_write(monkeypatch, conn, after=False)     # nothing was sent
        with pytest.raises(KeyboardInterrupt):
            q.get(timeout=1)
    assert q.qsize() == 1                    # the cancels' replies come before this one's
    assert not conn._abandoned and not conn._cancels and not conn._replies


@contextlib.contextmanager
def _pending_signals(k: int) -> Iterator[tuple[Callable[[], None], list[bool]]]:
    """K signals whose handlers raise _Signalled in the main thread while ``armed[0]``; gives
    ``(trip, armed)``. ``trip()`` (called from another thread) makes all K pending at once.
    The main thread's blocking call is then not cut short: it returns, and Python raises one
    at each of the next K points where it runs handlers: K exceptions in a row at consecutive
    steps of its clean-up. (Set ``armed[0] = False`` first thing where one is caught: no step
    there runs handlers, and the rest are then ignored.)"""
    armed = [True]

    def handler(signum: int, frame: Any) -> None:
        if armed[0]:
            raise _Signalled
    signums = [signal.SIGRTMIN + i for i in range(k)]
    old = [signal.signal(n, handler) for n in signums]

    def trip() -> None:
        me = threading.get_ident()            # (sent to this thread: delivered to none)
        for n in signums:
            signal.pthread_kill(me, n)
    try:
        yield trip, armed
    finally:
        armed[0] = False
        for n, h in zip(signums, old):
            signal.signal(n, h)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_exceptions_in_a_row_lose_no_item_and_keep_no_lock(m: shoal.SyncManager,
                                                          k: int) -> None:
    """Up to three exceptions one after the other, from the read of the reply on: the item
    goes back and the lock is free again (three lost the item, and kept the lock, when the
    third came as the interrupted call began to give itself up)."""
    q, lk = m.Queue(), m.Lock()
    conn = q._conn
    go = threading.Event()

    def holder() -> None:
        lk.acquire()
        go.wait(10)
        lk.release()
    t = threading.Thread(target=holder)
    t.start()
    while not lk.locked():
        time.sleep(0.01)
    for call, answer in ((lambda: q.get(timeout=5), lambda: q.put("item")),
                         (lambda: lk.acquire(timeout=5), go.set)):
        with _pending_signals(k) as (trip, armed):
            def fire() -> None:
                time.sleep(0.3)               # the main thread waits in the server meanwhile
                trip()
                answer()
            firing = threading.Thread(target=fire)
            firing.start()
            try:
                call()
            except _Signalled:
                armed[0] = False
            else:
                pytest.fail("no exception came out of the call")
            firing.join(5)
    t.join(5)
    _settle(conn)
    assert q.get(timeout=2) == "item"
    assert lk.acquire(timeout=2) is True
    lk.release()
    assert _settled(conn) and not conn._mutex.locked()


@pytest.mark.timeout(60)
def test_a_thread_waiting_for_the_reader_is_not_left_waiting(m: shoal.SyncManager) -> None:
    """The main thread reads for all; two exceptions in a row, the second as it had left the
    reader role but not yet woken the thread waiting for it: that thread waited for ever,
    its reply on the socket."""
    q, q2 = m.Queue(), m.Queue()
    got: list[Any] = []
    worker = threading.Thread(target=lambda: got.append(q2.get(timeout=10)), daemon=True)
    with _pending_signals(2) as (trip, armed):
        def fire() -> None:
            time.sleep(0.3)
            worker.start()                    # its get waits for the reader (the main thread)
            time.sleep(0.3)
            trip()
            q.put("item")                     # the main thread's get returns
            time.sleep(0.5)
            q2.put("for the worker")          # nobody reads any more: the worker must
        firing = threading.Thread(target=fire)
        firing.start()
        try:
            q.get(timeout=5)
        except _Signalled:
            armed[0] = False
        firing.join(5)
    worker.join(5)
    assert got == ["for the worker"]
    _settle(q._conn)


@pytest.mark.timeout(60)
def test_a_pipeline_interrupted_as_it_collects_loses_no_reply() -> None:
    """The replies a collect had taken when the exception came stay the pipeline's: the block's
    exit goes on from there (it asked for them again, and waited for ever)."""
    with shoal.Manager() as m:
        d, ev = m.dict({"a": 1}), m.Event()
        threading.Timer(1.0, ev.set).start()
        # (should the exit wait for ever, the server's end makes it fail instead)
        watchdog = threading.Timer(20, os.kill, (m._process.pid, signal.SIGKILL))
        watchdog.start()
        try:
            with interrupted_after(0.5):
                with shoal.pipeline(d, ev) as (pd, pe):
                    first = pd["a"]
                    waited = pe.wait(5)       # answered after 1 s
                    last = pd["a"]
                    last.value                # collects: interrupted at 0.5 s
        finally:
            watchdog.cancel()
        assert (first.value, waited.value, last.value) == (1, True, 1)
        _settle(d._conn)


@pytest.mark.timeout(60)
def test_a_pipeline_whose_end_is_interrupted_leaves_nothing_behind(
        m: shoal.SyncManager) -> None:
    """Its replies not yet collected are dropped as they come (they were kept for ever), and
    its results, asked for after, say why they are not there."""
    d, ev = m.dict({i: i for i in range(100)}), m.Event()
    threading.Timer(1.0, ev.set).start()
    with interrupted_after(0.5):
        with shoal.pipeline(d, ev) as (pd, pe):
            pe.wait(5)
            gets = [pd.get(i) for i in range(100)]
    time.sleep(0.7)
    _settle(d._conn)
    with pytest.raises(RuntimeError, match="interrupted"):
        gets[-1].value
    assert d[99] == 99


@pytest.mark.timeout(60)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_exceptions_while_a_thread_waits_for_the_reader_come_out_as_they_are(
        m: shoal.SyncManager, k: int) -> None:
    """The main thread waits while another reads for it: the exceptions that stop the wait come
    out as raised, and the connection's lock is left as it was (a threading.Condition's wait,
    stopped half-way, gave RuntimeError('release unlocked lock'))."""
    q, q2 = m.Queue(), m.Queue()
    conn = q._conn
    reader = threading.Thread(target=lambda: q.get(timeout=5), daemon=True)
    reader.start()                            # it holds the reader role, blocked in recv
    time.sleep(0.3)
    with _pending_signals(k) as (trip, armed):
        firing = threading.Timer(0.25, trip)
        firing.start()
        try:
            q2.get(timeout=2)
        except _Signalled:
            armed[0] = False
        else:
            pytest.fail("no exception came out of the wait")
        firing.join(5)
    assert not conn._mutex.locked()
    q.put("x")
    reader.join(5)
    _settle(conn)


@pytest.mark.timeout(60)
def test_a_failed_pipeline_block_whose_end_is_interrupted_keeps_no_reply(
        m: shoal.SyncManager) -> None:
    """The block's error goes on; the replies its end had not taken are dropped as they come
    (they were kept for ever when the interruption was an Exception)."""
    d, q = m.dict(), m.Queue()
    conn = d._conn
    with _pending_signals(1) as (trip, armed):
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGRTMIN)).start()
        with pytest.raises(ValueError, match="block error"):
            with shoal.pipeline(d, q) as (pd, pq):
                pq.get(True, 1.0)             # waits 1 s in the server, then Empty
                for i in range(5):
                    pd.get(i)
                raise ValueError("block error")
        armed[0] = False
    time.sleep(1.2)
    _settle(conn)


@pytest.mark.timeout(30)
def test_notes_stay_queued_when_the_write_that_carries_them_never_starts(
        m: shoal.SyncManager, monkeypatch: Any) -> None:
    """A proxy unpickled here queues a note that this process holds the object: lost with a
    write interrupted before it began, the server would not count the proxy, and could free
    the object under it."""
    d = m.dict({"a": 1})
    holder = m.list([d])                      # keeps the dict when this process lets it go
    blob = pickle.dumps(d)
    del d
    gc.collect()
    len(holder)
    len(holder)                               # (the second call after a drop releases it)
    conn = holder._conn
    twin = pickle.loads(blob)                 # queues a "hold" note
    send_all = type(conn)._send_all

    def interrupted(self: Any, data: bytes, notes: int = 0) -> None:
        monkeypatch.setattr(type(conn), "_send_all", send_all)
        raise KeyboardInterrupt
    monkeypatch.setattr(type(conn), "_send_all", interrupted)
    conn.sock = spy = SentBytes(conn.sock)
    try:
        with pytest.raises(KeyboardInterrupt):
            holder.append(2)                  # (the cancel of which goes out next)
        assert twin["a"] == 1
    finally:
        conn.sock = spy.sock
    assert spy.sent.count(b"hold") == 1 and not conn._notes
    _settle(conn)


class _InterruptedRelease:
    """A connection's reader lock whose next release raises KeyboardInterrupt once done, as a
    signal handler run right after that C call would."""

    def __init__(self, real: Any) -> None:
        self.real, self.armed = real, False

    def acquire(self, *args: Any) -> bool:
        return self.real.acquire(*args)  # type: ignore[no-any-return]

    def release(self) -> None:
        self.real.release()
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt

    def _is_owned(self) -> bool:
        return self.real._is_owned()  # type: ignore[no-any-return]

    def _release_save(self) -> Any:
        return self.real._release_save()


@pytest.mark.timeout(30)
def test_an_exception_just_after_the_reply_was_read_loses_nothing(
        m: shoal.SyncManager, monkeypatch: Any) -> None:
    """The reply had been taken off the socket, but not yet returned: what it gave is given
    back (the item was lost, the lock held for good)."""
    q, lk = m.Queue(), m.Lock()
    q.put("item")
    conn = q._conn
    armed = _InterruptedRelease(conn._read_lock)
    monkeypatch.setattr(conn, "_read_lock", armed)
    for call in (lambda: q.get(timeout=5), lambda: lk.acquire(timeout=5)):
        armed.armed = True
        with pytest.raises(KeyboardInterrupt):
            call()
    deadline = time.monotonic() + 5          # given back from a thread of its own
    while (q.qsize() != 1 or lk.locked()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert q.get(timeout=2) == "item" and lk.acquire(timeout=2) is True
    lk.release()
    assert not conn._abandoned and not conn._cancels and not conn._replies


class _Signalled(Exception):
    pass


@contextlib.contextmanager
def _signal_storm(seconds: float = 1.5) -> Iterator[Callable[[], bool]]:
    """SIGUSR1 to this (the main) thread every 20-300 µs from another thread, each raising
    _Signalled where Python runs the handler: between any two steps of Python code, and in a
    blocking socket call. Gives a function that is true while the storm lasts."""
    active = [True]

    def handler(signum: int, frame: Any) -> None:
        if active[0]:
            raise _Signalled

    old = signal.signal(signal.SIGUSR1, handler)
    main, stop, end = threading.get_ident(), threading.Event(), time.monotonic() + seconds

    def pester() -> None:
        rnd = random.Random(7)
        while not stop.is_set():
            time.sleep(rnd.uniform(0.00002, 0.0003))
            signal.pthread_kill(main, signal.SIGUSR1)
    t = threading.Thread(target=pester, daemon=True)
    t.start()
    try:
        yield lambda: time.monotonic() < end
    finally:
        active[0] = False
        stop.set()
        t.join(5)
        signal.signal(signal.SIGUSR1, old)


def _settled(conn: Any) -> bool:
    return not (conn._abandoned or conn._cancels or conn._replies or conn._unsettled)


def _settle(conn: Any) -> None:
    """Let what interrupted calls left be settled: the replies of their cancels are read by the
    next call (one is made here), and what their requests took goes back from a thread."""
    deadline = time.monotonic() + 10
    while True:
        conn.call(0, "ping")
        if _settled(conn) or time.monotonic() > deadline:
            return
        time.sleep(0.01)


@pytest.mark.timeout(60)
def test_no_reply_is_lost_to_a_signal_handler_that_raises(m: shoal.SyncManager) -> None:
    """Gets and lock acquires interrupted thousands of times, at every step: no item is lost
    or got twice, the lock is free at the end, nothing is left behind. A handler's exception
    raised as ``recv`` returned dropped the chunk it read: about one interruption in fifty
    lost an item (or a lock's grant, the lock then held for good)."""
    n = 20_000
    q, lk = m.Queue(), m.Lock()
    for i in range(n):
        q.put_nowait(i)
    got, interrupted = [], 0
    with _signal_storm() as storming:
        while storming() and len(got) < n:
            try:
                got.append(q.get(timeout=5))
                with lk:
                    pass
            except _Signalled:
                interrupted += 1
    conn = q._conn
    _settle(conn)
    while q.qsize():
        got.append(q.get(timeout=5))
    assert interrupted > 500                 # (the storm did interrupt)
    assert sorted(got) == list(range(n))
    assert lk.acquire(timeout=2) is True
    lk.release()
    assert _settled(conn)


@pytest.mark.timeout(60)
def test_a_plain_call_given_up_to_a_signal_leaves_nothing_behind(
        m: shoal.SyncManager) -> None:
    """A call interrupted after its request went out: its reply, when it comes, is dropped.
    It was kept for ever (thousands of replies after a storm), and the replies after it
    must still go to the right calls."""
    d = m.dict()
    interrupted = 0
    with _signal_storm() as storming:
        i = 0
        while storming():
            i += 1
            try:
                d[i % 100] = i
                assert d[i % 100] == i
            except _Signalled:
                interrupted += 1
    conn = d._conn
    _settle(conn)
    assert interrupted > 500
    d.update({k: -k for k in range(100)})
    assert [d[k] for k in range(100)] == [-k for k in range(100)]
    assert _settled(conn)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["during the send", "two after it"])
def test_a_big_write_interrupted_goes_out_whole_and_the_connection_stays(how: str) -> None:
    """During the send: ``sendall`` raised the handler's exception between two partial sends,
    the rest of the frame was never sent, the server read the next request as its end, and
    the connection hung. Two after it (pending at once, raised at consecutive steps): the
    second, in the clean-up of the first, closed the connection, and the server freed what
    only it held. Now the update is all there, and the next calls work."""
    with shoal.Manager() as m:
        d = m.dict({"keep": "me"})
        big = {i: "x" * 100 for i in range(100_000)}        # about 11 MB: a full socket
        server, main = m._process.pid, threading.get_ident()
        with _pending_signals(1 if how == "during the send" else 2) as (trip, armed):
            def fire() -> None:
                time.sleep(0.5)               # the main thread blocks in its send meanwhile
                if how == "during the send":
                    signal.pthread_kill(main, signal.SIGRTMIN)
                    time.sleep(0.3)
                else:
                    trip()
                os.kill(server, signal.SIGCONT)
            os.kill(server, signal.SIGSTOP)
            firing = threading.Thread(target=fire)
            try:
                firing.start()
                with pytest.raises(_Signalled):
                    d.update(big)
            finally:
                firing.join(5)
                os.kill(server, signal.SIGCONT)
        answers: list[bool] = []

        def check() -> None:
            d["after"] = 1
            answers.append(d["after"] == 1 and d["keep"] == "me" and len(d) == 100_002)
        checking = threading.Thread(target=check, daemon=True)
        checking.start()
        checking.join(20)
        if not answers:                       # (a hung connection: end the server, not the run)
            os.kill(server, signal.SIGKILL)
        assert answers == [True], "the connection no longer answers, or lost the update"
        assert not d._conn.closed


class SlowToUnpickle:
    def __init__(self, n: int) -> None:
        self.n = n

    def __setstate__(self, state: dict[str, Any]) -> None:
        time.sleep(0.3)
        self.__dict__.update(state)


@pytest.mark.timeout(30)
def test_a_get_interrupted_while_its_item_is_unpickled_gives_it_back(
        m: shoal.SyncManager) -> None:
    q = m.Queue()
    q.put(SlowToUnpickle(1))
    q.put("marker")
    with interrupted_after(0.1):
        q.get(timeout=5)
    deadline = time.monotonic() + 5          # the item goes back from a thread of its own
    while q.qsize() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert q.get(timeout=5).n == 1 and q.get(timeout=5) == "marker"     # back in its place
