"""One behavioural suite, run on every backend: the local shoal server and Redis.

Each test gets ``sm`` (a started manager of one backend) and checks what a user relies on:
the dict and list protocols, nested writes landing, values keeping their types, the root shared
between connections, atomic ``incr``/``cas`` across processes, ``locked()``, the synchronization
primitives with their timeouts, and a killed holder's lock coming free again (at once on the
local server, within the lease on Redis).

The Redis backend runs against a real ``redis-server`` started by ``tests/redis_server.py``
(never a fake; the run fails, not skips, without one), in a namespace of its own.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import shoal

from . import helpers
from .helpers import (cas_many, get_forever, hold_locked, in_thread, incr_many,
                      interrupted_after, join_all, kill, locked_many, set_event_later, timed)
from .redis_server import redis_url  # noqa: F401  (the fixture)

LEASE = 2.0          # s: the Redis manager's lease in these tests (the default is 10)
LATE = 0.15          # s: how late a timeout or a wake-up may be (a loaded 2-core machine)
FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")
start = functools.partial(helpers.start, ctx=FORK)


@dataclass
class Backend:
    name: str
    m: Any                                  # the manager
    again: Callable[[], Any]                # another manager/connection on the same data
    dead_free: float                        # s: a killed holder's lock is free within this


@pytest.fixture(scope="module", params=["local", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "local":
        with shoal.Manager() as m:
            yield Backend("local", m, lambda: shoal.connect(m.address), 1.0)
        return
    from shoal.redis import connect
    url = request.getfixturevalue("redis_url")
    namespace = f"test-{secrets.token_hex(4)}"
    m = connect(url, namespace=namespace, lease=LEASE)
    try:
        yield Backend("redis", m, lambda: connect(url, namespace=namespace, lease=LEASE),
                      LEASE + 1.0)
    finally:
        m.purge()
        m.shutdown()


@pytest.fixture
def sm(backend: Backend) -> Any:
    return backend.m


# -- helpers and child-process workers (module level, so spawn can import them) ---------------

def assert_honoured(elapsed: float, timeout: float) -> None:
    assert timeout - 0.005 <= elapsed <= timeout + LATE, (elapsed, timeout)


def _nested_writes(d: Any, first: int, n: int) -> None:
    for i in range(first, first + n):
        d["test"][i] = i


def _producer(q: Any, first: int, n: int) -> None:
    for i in range(first, first + n):
        q.put(i)


def _consumer(q: Any, out: Any, n: int) -> None:
    got = [q.get(timeout=20) for _ in range(n)]
    out.extend(got)


def _hold(obj: Any, ready: Any) -> None:
    obj.acquire()
    ready.set()
    time.sleep(600)


def _notify_when_set(c: Any, d: Any) -> None:
    time.sleep(0.2)
    with c:
        d["go"] = True
        c.notify_all()


def _barrier_party(b: Any, out: Any) -> None:
    try:
        out.append(("index", b.wait(10)))
    except threading.BrokenBarrierError:
        out.append(("broken", None))


def _roundtrip(d: Any, l: Any, q: Any, lk: Any) -> None:
    with lk:
        d["child"] = {"pid": os.getpid(), "seen": d["parent"]}
        d["child"]["more"] = [1]
        l.append(d["child"]["seen"])
    q.put("done")


class Opaque:
    """A user class: travels pickled, comes back equal."""

    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.x == self.x


# -- containers ------------------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_dict_protocol(sm: Any) -> None:
    d = sm.dict({"a": 1}, b=2)
    assert d["a"] == 1 and d.get("b") == 2 and d.get("zz") is None and d.get("zz", 5) == 5
    with pytest.raises(KeyError):
        d["zz"]
    with pytest.raises(KeyError):
        del d["zz"]
    d["c"] = 3
    assert len(d) == 3 and "c" in d and "zz" not in d
    assert sorted(d.keys()) == ["a", "b", "c"] and sorted(d) == ["a", "b", "c"]
    assert sorted(d.values()) == [1, 2, 3]
    assert sorted(d.items()) == [("a", 1), ("b", 2), ("c", 3)]
    assert d.pop("c") == 3 and d.pop("c", "gone") == "gone"
    with pytest.raises(KeyError):
        d.pop("c")
    assert d.setdefault("e", 5) == 5 and d.setdefault("e", 6) == 5
    d.update({"f": 6}, g=7)
    d.update([("h", 8)])
    assert d == {"a": 1, "b": 2, "e": 5, "f": 6, "g": 7, "h": 8}
    assert d.get_many(["a", "zz", "h"], 0) == [1, 0, 8]
    k, v = d.popitem()
    assert k not in d and v in (1, 2, 5, 6, 7, 8)
    d[(1, 2)] = "tuple key"
    d[3] = "int key"
    d[frozenset({"x", "y"})] = "frozenset key"
    assert d[(1, 2)] == "tuple key" and d[3] == "int key"
    assert d[frozenset({"y", "x"})] == "frozenset key"
    del d[3]
    assert 3 not in d
    copy = d.copy()
    assert type(copy) is dict and copy == d
    d.clear()
    assert len(d) == 0 and d == {}
    with pytest.raises(KeyError):
        d.popitem()


@pytest.mark.timeout(20)
def test_list_protocol(sm: Any) -> None:
    l = sm.list([3, 1, 2])
    assert len(l) == 3 and l[0] == 3 and l[-1] == 2 and l[1:] == [1, 2] and l[::-1] == [2, 1, 3]
    with pytest.raises(IndexError):
        l[3]
    with pytest.raises(IndexError):
        l[-4] = 0
    l.append(4)
    l.extend([5, 6])
    l += [7]
    l.insert(0, 0)
    l.insert(100, 8)
    assert list(l) == [0, 3, 1, 2, 4, 5, 6, 7, 8]
    assert l.pop() == 8 and l.pop(0) == 0 and l.pop(1) == 1
    assert list(l) == [3, 2, 4, 5, 6, 7]
    l.remove(4)
    with pytest.raises(ValueError):
        l.remove(42)
    assert l.index(5) == 2 and l.count(5) == 1 and 5 in l and 42 not in l and 5.0 in l
    with pytest.raises(ValueError):
        l.index(42)
    l[0] = 30
    l[1:3] = ["a", "b", "c"]
    assert list(l) == [30, "a", "b", "c", 6, 7]
    del l[1:4]
    del l[0]
    assert list(l) == [6, 7]
    l.extend([1, 9, 5])
    l.sort()
    assert list(l) == [1, 5, 6, 7, 9]
    l.sort(key=lambda x: -x)
    assert list(l) == [9, 7, 6, 5, 1]
    l.reverse()
    assert l == [1, 5, 6, 7, 9]
    l *= 2
    assert len(l) == 10 and l[5:] == [1, 5, 6, 7, 9]
    assert l + [0] == [1, 5, 6, 7, 9] * 2 + [0]
    l.clear()
    assert len(l) == 0
    with pytest.raises(IndexError):
        l.pop()


@pytest.mark.timeout(20)
def test_values_keep_their_types(sm: Any) -> None:
    values = [None, True, False, 0, -1, 2**70, -(2**70), 1.5, float("inf"), "text", "",
              b"\x00bytes", (1, "two", (3.0,)), {1, 2}, frozenset({"a"}), Opaque(7),
              [1, [2, [3]]], {"k": {"n": (1, 2)}}]
    d = sm.dict()
    l = sm.list()
    for i, v in enumerate(values):
        d[i] = v
        l.append(v)
    for i, v in enumerate(values):
        for got in (d[i], l[i]):
            assert got == v
            if not isinstance(v, (list, dict)):
                assert type(got) is type(v)
    assert shoal.unwrap(d[16]) == [1, [2, [3]]] and type(shoal.unwrap(d[16])) is list
    assert type(l.copy()[17]) is dict


@pytest.mark.timeout(20)
def test_nested_writes_land(sm: Any) -> None:
    d = sm.dict()
    d["test"] = {}
    for i in range(5):
        d["test"][i] = i                     # lands in the nested dict
    assert d["test"] == {i: i for i in range(5)}
    assert isinstance(d["test"], shoal.DictProxy)
    row = d["test"]                          # the Manager idiom keeps working
    row[10] = 10
    d["test"] = row
    assert d["test"][10] == 10 and len(d["test"]) == 6
    d["rows"] = [[], {"deep": [0]}]
    d["rows"][0].append(1)
    d["rows"][1]["deep"][0] += 5
    assert d["rows"] == [[1], {"deep": [5]}]
    inner = sm.dict(x=1)
    d["ref"] = inner                         # a proxy stored: a reference, not a copy
    inner["y"] = 2
    assert d["ref"] == {"x": 1, "y": 2}
    plain = shoal.unwrap(d)
    assert plain["rows"] == [[1], {"deep": [5]}] and type(plain["rows"][1]) is dict


@pytest.mark.timeout(60)
def test_nested_writes_from_four_processes(sm: Any) -> None:
    d = sm.dict()
    d["test"] = {}
    procs = [start(_nested_writes, d, 100 * k, 100) for k in range(4)]
    join_all(procs, 50)
    assert d["test"] == {i: i for i in range(400)}


@pytest.mark.timeout(20)
def test_namespace_and_value(sm: Any) -> None:
    ns = sm.Namespace(x=1)
    ns.y = [1]
    ns.y.append(2)
    assert ns.x == 1 and ns.y == [1, 2]
    with pytest.raises(AttributeError):
        _ = ns.missing
    del ns.x
    with pytest.raises(AttributeError):
        _ = ns.x
    with pytest.raises(AttributeError, match="'Namespace' object has no attribute 'x'"):
        del ns.x
    assert "y=[1, 2]" in repr(ns)
    v = sm.Value("i", 5)
    v.value += 1
    assert v.value == 6 and v.get() == 6
    v.set("now a str")
    assert v.value == "now a str" and repr(v) == "Value('i', 'now a str')"


def test_dict_pairs_may_be_any_iterable_of_two(sm: Any) -> None:
    # As dict(): an iterator or a str of two is a pair (the local server got them pickled).
    d = sm.dict()
    d.update([iter((1, 2)), "ab", (3, 4)])
    assert d.copy() == {1: 2, "a": "b", 3: 4}
    assert sm.dict([iter(("x", "y"))]).copy() == {"x": "y"}
    with pytest.raises(TypeError):
        d.update([5])


def test_keywords_named_self_or_other_are_keys(sm: Any) -> None:
    assert sm.dict(self=2, other=3).copy() == {"self": 2, "other": 3}
    d = sm.dict()
    d.update(other=1, self=5)
    assert d.copy() == {"other": 1, "self": 5}
    assert sm.Namespace(self=1).self == 1


@pytest.mark.timeout(30)
def test_str_of_sync_proxies(sm: Any) -> None:
    # Manager's str() shows the referent; shoal's said "'__str__()' failed" for these.
    for proxy, typeid in ((sm.Lock(), "Lock"), (sm.Event(), "Event"), (sm.Queue(), "Queue"),
                          (sm.Semaphore(2), "Semaphore"), (sm.Barrier(2), "Barrier")):
        text = str(proxy)
        assert typeid in text and "failed" not in text, text


def test_root_is_shared_between_connections(backend: Backend) -> None:
    key = f"shared-{secrets.token_hex(3)}"
    backend.m.root[key] = {"hits": 0}
    other = backend.again()
    try:
        assert other.root[key] == {"hits": 0}
        other.root[key].incr("hits")
        other.root[key]["by_other"] = [1]
        assert backend.m.root[key] == {"hits": 1, "by_other": [1]}
    finally:
        if backend.name == "redis":
            other.shutdown()
        del backend.m.root[key]


@pytest.mark.timeout(60)
def test_proxies_pickle_into_spawned_children(sm: Any) -> None:
    d, l, q, lk = sm.dict(), sm.list(), sm.Queue(), sm.Lock()
    d["parent"] = "hello"
    p = start(_roundtrip, d, l, q, lk, ctx=SPAWN)
    assert q.get(timeout=40) == "done"
    join_all([p])
    assert d["child"]["seen"] == "hello" and d["child"]["more"] == [1]
    assert d["child"]["pid"] == p.pid and list(l) == ["hello"]


# -- atomic operations -------------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_incr_and_cas(sm: Any) -> None:
    d = sm.dict()
    assert d.incr("n") == 1 and d.incr("n", 5) == 6 and d.incr("n", -6) == 0
    assert d.incr("f", 0.5) == 0.5 and type(d["f"]) is float
    assert d.incr("d", 1, default=10) == 11
    assert d.incr("big", 2**62) == 2**62 and d.incr("big", 2**62) == 2**63
    d["s"] = "text"
    with pytest.raises(TypeError):
        d.incr("s")
    assert d.cas("k", None, 1) is True               # missing reads as None
    assert d.cas("k", None, 2) is False and d["k"] == 1
    assert d.cas("k", 1, {"nested": []}) is True      # a plain dict stored: made nested
    d["k"]["nested"].append(1)
    assert d["k"] == {"nested": [1]}
    d["k"] = "replaced"
    assert d.cas("k", "other", "x") is False and d["k"] == "replaced"
    d["one"] = 1
    assert d.cas("one", 1.0, "equal, not identical") is True


@pytest.mark.timeout(90)
@pytest.mark.parametrize("worker", [incr_many, cas_many, locked_many])
def test_four_processes_lose_no_update(sm: Any, worker: Any) -> None:
    d = sm.dict()
    procs = [start(worker, d, "n", 200) for _ in range(4)]
    join_all(procs, 80)
    assert d["n"] == 800


@pytest.mark.timeout(60)
def test_queue_across_four_processes_loses_nothing(sm: Any) -> None:
    q = sm.Queue()
    out = sm.list()
    producers = [start(_producer, q, 100 * k, 100) for k in range(2)]
    consumers = [start(_consumer, q, out, 100) for _ in range(2)]
    join_all(producers + consumers, 50)
    assert sorted(out) == list(range(200)) and q.empty()


# -- locked() -----------------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_locked_excludes_others_from_the_object_and_its_nested(sm: Any) -> None:
    d, other = sm.dict(), sm.dict()
    d["sub"] = {"list": []}
    inner = d["sub"]["list"]
    ready = FORK.Event()
    p = start(hold_locked, d, ready, 0.5)
    assert ready.wait(20)
    held_at = time.monotonic()
    _, elapsed = timed(other.__setitem__, "free", 1)   # another object: not held up
    assert elapsed < 0.3
    inner.append(1)                                    # nested two levels down: waits
    assert time.monotonic() - held_at >= 0.4
    assert d["by_child"] is True                       # the holder's write came first
    join_all([p])
    assert d["sub"]["list"] == [1]


@pytest.mark.timeout(20)
def test_locked_is_reentrant(sm: Any) -> None:
    d = sm.dict()
    d["sub"] = {}
    with d.locked():
        with d.locked():
            d["a"] = 1
            d["sub"]["b"] = 2
            with d["sub"].locked():
                d["sub"]["c"] = 3
        d.incr("n")
    assert d == {"a": 1, "sub": {"b": 2, "c": 3}, "n": 1}


@pytest.mark.timeout(30)
def test_locked_holder_killed_frees_it(backend: Backend) -> None:
    d = backend.m.dict()
    ready = FORK.Event()
    p = start(hold_locked, d, ready, 600)
    assert ready.wait(20)
    t, out = in_thread(lambda: (d.__setitem__("after", 1), time.monotonic()))
    time.sleep(0.2)
    assert t.is_alive()                                # waiting for the holder
    killed_at = kill(p)
    t.join(backend.dead_free + 5)
    assert out and out[0][1] - killed_at < backend.dead_free
    assert "by_child" not in d and d["after"] == 1
    with d.locked() as state:
        assert state.owner_died is True
    with d.locked() as state:
        assert state.owner_died is False


# -- synchronization -----------------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_lock(sm: Any) -> None:
    lk = sm.Lock()
    assert lk.acquire() is True and lk.locked()
    got, elapsed = timed(lk.acquire, timeout=0.2)
    assert got is False
    assert_honoured(elapsed, 0.2)
    assert lk.acquire(False) is False
    def release_elsewhere() -> str:
        try:
            lk.release()
        except RuntimeError:
            return "refused"
        return "released"
    t, out = in_thread(release_elsewhere)              # another thread: not the owner
    t.join(5)
    assert out == ["refused"] and lk.locked()
    lk.release()
    assert not lk.locked()
    with pytest.raises(RuntimeError):
        lk.release()
    with lk:
        assert lk.locked()
    with pytest.raises(ValueError):
        lk.acquire(False, 1)


@pytest.mark.timeout(20)
def test_rlock(sm: Any) -> None:
    rl = sm.RLock()
    for _ in range(3):
        assert rl.acquire() is True
    assert rl._is_owned()
    t, out = in_thread(rl.acquire, True, 0.1)
    t.join(5)
    assert out == [False]
    for _ in range(3):
        rl.release()
    with pytest.raises(RuntimeError):
        rl.release()
    t, out = in_thread(rl.acquire, False)
    t.join(5)
    assert out == [True]


@pytest.mark.timeout(20)
def test_semaphores(sm: Any) -> None:
    s = sm.Semaphore(2)
    assert s.acquire() and s.acquire(timeout=0.1)
    got, elapsed = timed(s.acquire, timeout=0.2)
    assert got is False
    assert_honoured(elapsed, 0.2)
    assert s.get_value() == 0
    t, out = in_thread(s.acquire, True, 5)
    time.sleep(0.1)
    s.release()
    t.join(5)
    assert out == [True]
    s.release(2)
    assert s.get_value() == 2
    bs = sm.BoundedSemaphore(1)
    with bs:
        assert bs.acquire(False) is False
    with pytest.raises(ValueError):
        bs.release()


@pytest.mark.timeout(20)
def test_event(sm: Any) -> None:
    e = sm.Event()
    assert not e.is_set()
    got, elapsed = timed(e.wait, 0.2)
    assert got is False
    assert_honoured(elapsed, 0.2)
    p = start(set_event_later, e, 0.3)
    got, elapsed = timed(e.wait, 10)
    assert got is True and elapsed < 0.3 + 1.0
    assert e.is_set() and e.wait(0) is True
    e.clear()
    assert not e.is_set()
    join_all([p])


@pytest.mark.timeout(30)
def test_condition(sm: Any) -> None:
    c = sm.Condition()
    with pytest.raises(RuntimeError):
        c.wait(0.1)
    with pytest.raises(RuntimeError):
        c.notify()
    with c:
        got, elapsed = timed(c.wait, 0.2)
        assert got is False
        assert_honoured(elapsed, 0.2)
        c.notify()                                      # allowed: it got its lock back
    d = sm.dict()
    p = start(_notify_when_set, c, d)
    with c:
        assert c.wait_for(lambda: d.get("go"), 10) is True
    join_all([p])
    out: list[Any] = []

    def waiter() -> None:
        with c:
            out.append(c.wait(10))
    threads = [threading.Thread(target=waiter, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    with c:
        c.notify()
    time.sleep(0.3)
    assert out == [True]
    with c:
        c.notify_all()
    for t in threads:
        t.join(5)
    assert out == [True, True]


@pytest.mark.timeout(30)
def test_barrier(sm: Any) -> None:
    b = sm.Barrier(3)
    assert b.parties == 3 and b.n_waiting == 0 and not b.broken
    out = sm.list()
    procs = [start(_barrier_party, b, out) for _ in range(2)]
    index = b.wait(10)
    join_all(procs)
    assert sorted([index] + [i for _, i in out]) == [0, 1, 2]
    t0 = time.monotonic()
    with pytest.raises(threading.BrokenBarrierError):
        b.wait(0.2)                                     # alone: times out, breaks it
    assert_honoured(time.monotonic() - t0, 0.2)
    assert b.broken
    with pytest.raises(threading.BrokenBarrierError):
        b.wait(1)
    b.reset()
    assert not b.broken
    def wait_broken() -> bool:
        try:
            b.wait(10)
        except threading.BrokenBarrierError:
            return True
        return False
    t, res = in_thread(wait_broken)
    time.sleep(0.3)
    b.abort()
    t.join(5)
    assert res == [True] and b.broken


@pytest.mark.timeout(30)
def test_queues(sm: Any) -> None:
    q = sm.Queue(maxsize=2)
    assert q.empty() and not q.full() and q.qsize() == 0
    q.put(1)
    q.put_nowait((2, "two"))
    assert q.full() and q.qsize() == 2
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    t0 = time.monotonic()
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.2)
    assert_honoured(time.monotonic() - t0, 0.2)
    t, out = in_thread(q.put, 3, True, 5)              # blocked until a get makes room
    time.sleep(0.2)
    assert t.is_alive()
    assert q.get() == 1 and q.get() == (2, "two")
    t.join(5)
    assert not t.is_alive() and q.get(timeout=1) == 3
    with pytest.raises(queue.Empty):
        q.get_nowait()
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.2)
    assert_honoured(time.monotonic() - t0, 0.2)
    t, out = in_thread(q.get, True, 5)                  # blocked until a put
    time.sleep(0.2)
    q.put({"a": [1]})
    t.join(5)
    assert out == [{"a": [1]}]
    jq = sm.JoinableQueue()
    jq.put("job")
    jq.put("job2")
    t, _ = in_thread(jq.join)
    assert jq.get() == "job"
    jq.task_done()
    time.sleep(0.1)
    assert t.is_alive()
    jq.get()
    jq.task_done()
    t.join(5)
    assert not t.is_alive()
    with pytest.raises(ValueError):
        jq.task_done()


# -- a killed holder ----------------------------------------------------------------------------

@pytest.mark.timeout(40)
def test_killed_lock_holder_frees_it(backend: Backend) -> None:
    lk = backend.m.Lock()
    ready = FORK.Event()
    p = start(_hold, lk, ready)
    assert ready.wait(20)
    assert lk.acquire(timeout=0.05) is False
    killed_at = kill(p)
    assert lk.acquire(timeout=backend.dead_free + 5) is True
    assert time.monotonic() - killed_at < backend.dead_free
    assert lk.owner_died is True
    lk.release()
    assert lk.acquire() is True and lk.owner_died is False
    lk.release()


@pytest.mark.timeout(40)
def test_killed_semaphore_holder_gives_its_count_back(backend: Backend) -> None:
    s = backend.m.Semaphore(1)
    ready = FORK.Event()
    p = start(_hold, s, ready)
    assert ready.wait(20)
    t, out = in_thread(lambda: (s.acquire(timeout=backend.dead_free + 5), time.monotonic()))
    time.sleep(0.1)
    killed_at = kill(p)
    t.join(backend.dead_free + 6)
    got, got_at = out[0]
    assert got is True and got_at - killed_at < backend.dead_free
    s.release()


@pytest.mark.timeout(30)
def test_killed_getter_does_not_swallow_an_item(sm: Any) -> None:
    q = sm.Queue()
    ready = FORK.Event()
    p = start(get_forever, q, ready)
    assert ready.wait(20)
    time.sleep(0.3)                                    # the child is blocked in get
    kill(p)
    q.put("item")
    assert q.get(timeout=5) == "item"
    assert q.empty()


# -- Redis only: what differs by design ---------------------------------------------------------

@pytest.fixture
def redis_m(redis_url: str) -> Iterator[Any]:  # noqa: F811
    from shoal.redis import connect
    namespace = f"test-{secrets.token_hex(4)}"
    m = connect(redis_url, namespace=namespace, lease=LEASE)
    try:
        yield m
    finally:
        m.shutdown()
        with connect(redis_url, namespace=namespace) as cleaner:
            cleaner.purge()


def _keys(m: Any) -> set[str]:
    b = m._b
    pattern = b.prefix.replace("{", "\\{").replace("}", "\\}") + "*"
    return {k.decode() for k in b.redis.scan_iter(match=pattern)
            if b"client:" not in k and b"wake:" not in k}


@pytest.mark.timeout(20)
def test_redis_url_forms() -> None:
    from shoal.redis._backend import parse_url
    assert parse_url("valkey://h:1/2?namespace=app&lease=3") == ("redis://h:1/2", "app", 3.0)
    assert parse_url("valkeys://h/0") == ("rediss://h/0", "shoal", 10.0)
    assert parse_url("redis://h/0?namespace=a", namespace="b")[1] == "b"
    with pytest.raises(ValueError):
        parse_url("http://h/")
    with pytest.raises(ValueError):
        parse_url("redis://h/0?namespace=a{b}")


@pytest.mark.timeout(20)
def test_redis_keys_share_one_hash_tag_and_nested_containers_are_freed(redis_m: Any) -> None:
    ns = redis_m.namespace
    d = redis_m.dict()
    d["x"] = {"a": [1, {"b": 2}]}
    keys = _keys(redis_m)
    assert keys and all(k.startswith(f"shoal:{{{ns}}}:") for k in keys)
    nested = len(keys)
    d["x"] = 1                                          # the nested dict, list, dict: deleted
    assert len(_keys(redis_m)) == nested - 6            # three objects, each data + meta
    d["y"] = [{"deep": 1}]
    assert d.pop("y") == [{"deep": 1}]                  # taken out: a plain copy
    assert len(_keys(redis_m)) == nested - 6
    kept = redis_m.dict(k=1)
    redis_m.root[f"kept-{ns}"] = kept
    gone = redis_m.dict(g=1)
    gone_key = gone._redis_key
    redis_m.shutdown()                                  # unreferenced objects go, others stay
    from shoal.redis import connect
    other = connect(redis_m._spec[0], namespace=ns, lease=LEASE)
    assert other.root[f"kept-{ns}"] == {"k": 1}
    assert gone_key + ":meta" not in _keys(other)
    with pytest.raises(ReferenceError):
        gone["g"]
    other.shutdown()


@pytest.mark.timeout(20)
def test_redis_namespaces_do_not_collide(redis_url: str) -> None:  # noqa: F811
    from shoal.redis import connect
    a = connect(redis_url, namespace=f"a-{secrets.token_hex(3)}")
    b = connect(redis_url, namespace=f"b-{secrets.token_hex(3)}")
    try:
        a.root["k"] = "a"
        b.root["k"] = "b"
        assert a.root["k"] == "a" and b.root["k"] == "b"
    finally:
        for m in (a, b):
            m.purge()
            m.shutdown()


@pytest.mark.timeout(30)
def test_redis_lost_lease_is_reported_on_release(redis_m: Any) -> None:
    from shoal.redis import LeaseExpired, connect
    lk = redis_m.Lock()
    d = redis_m.dict()
    assert lk.acquire()
    b = redis_m._b
    b.redis.delete(b._presence_key(b.token))            # as if this process had stalled
    other = connect(redis_m._spec[0], namespace=redis_m.namespace, lease=LEASE + 1)
    try:
        olk = other._b.proxy(lk._redis_key, "Lock")
        assert olk.acquire(timeout=5) is True and olk.owner_died is True
        with pytest.raises(LeaseExpired):
            lk.release()
        olk.release()
        with pytest.raises(LeaseExpired), d.locked():   # the per-object lock's too
            b.redis.delete(b._presence_key(b.token))
    finally:
        other.shutdown()


# -- found by review: interrupted waits, a busy barrier, keys and values at the edges -----------

@pytest.mark.timeout(30)
def test_an_interrupted_condition_wait_takes_the_lock_back_and_leaves_the_queue(sm: Any) -> None:
    """As threading's: the exception goes on with the lock held, and a later notify goes to a
    thread that waits, not to the interrupted wait."""
    c = sm.Condition()
    with c:
        with interrupted_after(0.2):
            c.wait(5)
    # (leaving the block released the lock: it was held again, or that raised)
    t, out = in_thread(lambda: (c.acquire(), c.wait(5), c.release())[1])
    time.sleep(0.3)                                    # the thread waits
    with c:
        c.notify()
    t.join(10)
    assert out == [True]


@pytest.mark.timeout(30)
def test_a_party_arriving_while_the_action_runs_waits_for_it(sm: Any) -> None:
    b = sm.Barrier(1, action=functools.partial(time.sleep, 0.5))
    t, out = in_thread(lambda: b.wait(5))
    time.sleep(0.1)                                    # the action runs now
    assert b.wait(5) == 0
    t.join(10)
    assert out == [0]


class _Seconds(float):
    """A float of another type, as numpy.float64 is."""


@pytest.mark.timeout(30)
def test_timeouts_of_any_number_type(sm: Any) -> None:
    """threading takes True and float subclasses (numpy.float64) as timeouts; they were
    refused with "timeout must be a number or None, not bool" (or "not Opaque")."""
    import queue
    e, q, lock = sm.Event(), sm.Queue(), sm.Lock()
    t0 = time.monotonic()
    assert e.wait(_Seconds(0.1)) is False
    with pytest.raises(queue.Empty):
        q.get(timeout=_Seconds(0.1))
    assert 0.2 <= time.monotonic() - t0 < 0.2 + 2 * LATE
    assert lock.acquire(timeout=True) is True
    lock.release()
    assert lock.acquire(True, _Seconds(0.1)) is True
    lock.release()
    with pytest.raises(TypeError, match="timeout must be a number or None, not str"):
        e.wait("1")


def _slow_failing_action() -> None:
    time.sleep(0.5)
    raise RuntimeError("the action failed")


@pytest.mark.timeout(30)
def test_a_failing_action_breaks_the_barrier_for_a_party_that_arrived_meanwhile(
        sm: Any) -> None:
    """As threading's: the party of the next round that arrived while the action ran waited out
    its whole timeout (for ever without one) instead of getting BrokenBarrierError."""
    b = sm.Barrier(2, action=_slow_failing_action)
    t1, out1 = in_thread(lambda: b.wait())
    time.sleep(0.1)
    t2, out2 = in_thread(lambda: b.wait())             # fills it: the action runs now
    time.sleep(0.1)
    t0 = time.monotonic()
    with pytest.raises(threading.BrokenBarrierError):
        b.wait(10)                                     # the next round's first party
    assert time.monotonic() - t0 < 2
    t1.join(10)
    t2.join(10)
    assert sorted(type(x).__name__ for x in out1 + out2) == ["BrokenBarrierError",
                                                             "RuntimeError"]
    assert b.broken


def test_unhashable_keys_are_refused_and_leave_the_dict_whole(sm: Any) -> None:
    d = sm.dict(a=1)
    for call in (lambda: d.__setitem__([1], 2), lambda: d.setdefault(["x"], 0),
                 lambda: d.incr([1]), lambda: d.get({1}), lambda: {"a": 1} in d,
                 lambda: d.update([([1], 2)])):
        with pytest.raises(TypeError, match="unhashable"):
            call()
    assert d.copy() == {"a": 1} and len(d) == 1


def test_update_takes_pairs_of_any_kind(sm: Any) -> None:
    d = sm.dict()
    d.update(sm.list([["h", 8]]))
    d.update(["ab"])
    assert d.copy() == {"h": 8, "a": "b"}
    with pytest.raises(ValueError, match="has length 3; 2 is required"):
        d.update([(1, 2, 3)])


def test_nan_equals_nothing_stored(sm: Any) -> None:
    nan = float("nan")
    lst, d = sm.list([nan, 1]), sm.dict(k=nan)
    assert (nan in lst) is False and lst.count(nan) == 0
    with pytest.raises(ValueError):
        lst.index(nan)
    assert d.cas("k", nan, "replaced") is False and d["k"] != d["k"]


def test_a_pipeline_takes_only_a_shoal_servers_proxies(sm: Any, backend: Backend) -> None:
    d = sm.dict()
    if backend.name == "redis":
        with pytest.raises(TypeError, match="proxies of a shoal server"):
            shoal.pipeline(d)
        return
    with shoal.pipeline(d) as pd:
        pd["k"] = 1
    assert d["k"] == 1
    with pytest.raises(TypeError, match="proxies of a shoal server"):
        shoal.pipeline({"not": "a proxy"})  # type: ignore[arg-type]


def _hold_past_the_lease(lock: Any, sem: Any, d: Any, ready: Any, resumed: Any, out: Any) -> None:
    lock.acquire()
    sem.acquire()
    block = d.locked()
    block.__enter__()
    ready.set()
    resumed.wait(30)           # stopped in here for longer than the lease, then resumed
    time.sleep(1.0)            # the renewing thread finds the lease lapsed
    got = []
    for release in (lock.release, sem.release, lambda: block.__exit__(None, None, None)):
        try:
            release()
            got.append("released")
        except shoal.redis.LeaseExpired:
            got.append("LeaseExpired")
    out.put(got)


@pytest.mark.timeout(60)
def test_redis_releasing_after_the_lease_lapsed_raises_and_gives_nothing_twice(
        redis_url: str) -> None:  # noqa: F811
    import signal
    import shoal.redis
    m = shoal.redis.connect(redis_url, namespace=f"lapse-{secrets.token_hex(4)}", lease=1.0)
    try:
        lock, sem, d = m.Lock(), m.Semaphore(1), m.dict()
        ready, resumed, out = FORK.Event(), FORK.Event(), FORK.Queue()
        p = start(_hold_past_the_lease, lock, sem, d, ready, resumed, out)
        assert ready.wait(20)
        os.kill(p.pid, signal.SIGSTOP)
        time.sleep(2.5)
        os.kill(p.pid, signal.SIGCONT)
        resumed.set()
        assert out.get(timeout=30) == ["LeaseExpired"] * 3
        join_all([p])
        assert sem.get_value() == 1               # its count came back once, not twice
    finally:
        m.purge()
        m.shutdown()


@pytest.mark.timeout(30)
def test_an_interrupted_barrier_wait_leaves_its_place(sm: Any) -> None:
    """As threading's: the party that got the exception is no longer counted, so a lone later
    party does not pass for two."""
    b = sm.Barrier(2)
    with interrupted_after(0.3):
        b.wait(10)
    assert b.n_waiting == 0 and not b.broken
    with pytest.raises(threading.BrokenBarrierError):
        b.wait(0.5)                            # alone: it times out, as threading's would


# -- found by review: waits without a timeout, death, lost wake-ups, Python's checks ------------

def _put_later(q: Any, items: list[Any], gap: float) -> None:
    for item in items:
        time.sleep(gap)
        q.put(item)


@pytest.mark.timeout(30)
def test_redis_get_without_timeout_waits_past_the_socket_timeout(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """queue.Queue.get() waits for ever; on Redis it waits in rounds, each shorter than
    redis-py's socket timeout (it raised ConnectionLost once that passed), and every item is
    got once."""
    from shoal.redis import _backend, connect
    monkeypatch.setattr(_backend, "MAX_WAIT", 0.3)       # several rounds per item
    m = connect(redis_url, namespace=f"getwait-{secrets.token_hex(4)}", lease=LEASE,
                socket_timeout=1.0)
    try:
        q = m.Queue()
        with interrupted_after(0.5):                       # interrupted: takes nothing
            q.get()
        p = start(_put_later, q, ["a", "b", "c"], 1.2)
        assert [q.get() for _ in range(3)] == ["a", "b", "c"]
        join_all([p])
        assert q.empty()
        assert m._b.redis.llen(f"{q._redis_key}:inflight:{m._b.token}") == 0
    finally:
        m.purge()
        m.shutdown()


@pytest.mark.timeout(20)
def test_repeating_an_empty_list_any_number_of_times_is_instant(sm: Any) -> None:
    # Redis looped n times in one script, blocking the server, to repeat nothing.
    l = sm.list()
    t0 = time.monotonic()
    l *= 10**12
    assert len(l) == 0 and time.monotonic() - t0 < 1.0
    with pytest.raises(OverflowError):
        l *= 2**70                                  # as Python's, even for an empty list


@pytest.mark.timeout(20)
def test_redis_list_repeated_past_the_bound_is_refused_unchanged(redis_m: Any) -> None:
    """Python raises MemoryError for such sizes; Redis refuses them before any work (it looped
    in one script, blocking the server), and a big but allowed one is quick."""
    from shoal.redis._proxies import MAX_REPEAT_ITEMS
    l = redis_m.list([1, 2])
    for n in (10**12, MAX_REPEAT_ITEMS // 2 + 1):
        with pytest.raises(MemoryError, match="at most"):
            l *= n
    assert l == [1, 2]
    d = redis_m.dict()
    l.append(d)
    l *= 4
    assert len(l) == 12 and l[2] == {} and l[11] == {}

    def refs() -> int:
        return int(redis_m._b.redis.hget(d._redis_key + ":meta", "r"))
    assert refs() == 4                              # one per copy of the reference
    l.clear()
    assert refs() == 0
    many = redis_m.list(["x"])
    many *= 100_000
    assert len(many) == 100_000 and many[99_999] == "x"


def _wait_at_barrier(b: Any, ready: Any) -> None:
    ready.set()
    b.wait()


@pytest.mark.timeout(40)
def test_a_party_killed_while_waiting_breaks_the_barrier_for_the_next(backend: Backend) -> None:
    # On Redis the dead party still counted as arrived: the next wait() passed the barrier.
    b = backend.m.Barrier(2)
    ready = FORK.Event()
    p = start(_wait_at_barrier, b, ready)
    assert ready.wait(20)
    time.sleep(0.3)                                    # the child waits in b.wait()
    kill(p)
    time.sleep(backend.dead_free)                      # its lease has run out
    t0 = time.monotonic()
    with pytest.raises(threading.BrokenBarrierError):
        b.wait(5)
    assert time.monotonic() - t0 < 1.0 and b.broken


@pytest.mark.timeout(40)
def test_set_then_clear_at_once_releases_every_waiter(sm: Any) -> None:
    """threading.Event.set() releases every thread waiting then, clear() right after or not;
    on Redis a woken waiter that looked after the clear() waited on."""
    e = sm.Event()
    for _ in range(3):
        waits = [in_thread(e.wait, 3) for _ in range(4)]
        time.sleep(0.3)                                # they wait
        e.set()
        e.clear()
        for t, _ in waits:
            t.join(10)
        assert [out for _, out in waits] == [[True]] * 4
    assert e.wait(0.1) is False                        # cleared: a later wait waits


@pytest.mark.timeout(20)
def test_a_list_made_from_a_shared_list_copies_one_level(sm: Any) -> None:
    # As list(l) and m.dict(d): the nested containers are the same; Redis copied them too.
    src = sm.list([[1], {"k": 0}])
    cp = sm.list(src)
    cp[0].append(2)
    cp[1]["k"] = 1
    cp.append(3)
    assert src == [[1, 2], {"k": 1}] and cp == [[1, 2], {"k": 1}, 3]
    del src[:]                                         # the nested ones live on in cp
    assert cp[0] == [1, 2]


@pytest.mark.timeout(20)
def test_queue_put_checks_its_timeout_only_when_bounded(sm: Any) -> None:
    # As queue.Queue.put: an unbounded queue never waits, so its timeout is never looked at.
    q = sm.Queue()
    q.put(1, timeout=-1)
    assert q.get(timeout=1) == 1
    bounded = sm.Queue(2)
    with pytest.raises(ValueError, match="non-negative"):
        bounded.put(1, timeout=-1)
    assert bounded.empty()
    bounded.put(2, timeout=0)
    assert bounded.get_nowait() == 2


@pytest.mark.timeout(20)
def test_counts_are_whole_numbers_as_threading_takes_them(sm: Any) -> None:
    # A fraction is refused (Redis took 2.5 and the count no longer added up; in threading it
    # makes a Semaphore or Barrier that never works). Bools and whole floats are counts, as
    # threading takes them (they were refused).
    for make in (sm.Semaphore, sm.BoundedSemaphore):
        with pytest.raises(TypeError, match="semaphore initial value must be an int"):
            make(1.5)
    s = sm.Semaphore(2)
    assert s.acquire()
    with pytest.raises(TypeError, match="n must be an int"):
        s.release(1.5)
    assert s.get_value() == 1
    s.release(True)
    assert s.get_value() == 2
    s.release(2.0)
    assert s.get_value() == 4 and type(s.get_value()) is int
    one = sm.Semaphore(True)
    assert one.acquire(timeout=0) and not one.acquire(timeout=0)
    bounded = sm.BoundedSemaphore(2.0)
    assert bounded.acquire(timeout=0)
    bounded.release()
    with pytest.raises(ValueError, match="released too many times"):
        bounded.release()
    with pytest.raises(TypeError, match="parties must be an int"):
        sm.Barrier(2.5)
    with pytest.raises(ValueError, match="parties must be an int > 0"):
        sm.Barrier(0)
    b = sm.Barrier(1.0)
    assert b.parties == 1 and b.wait(timeout=5) == 0
    assert sm.Barrier(True).wait(timeout=5) == 0
    for odd in (IntLike(2), FloatLike(2.0)):    # (a local server gets them pickled) alike
        with pytest.raises(TypeError, match=r"must be an int, not .*\(pass int"):
            sm.Semaphore(odd)
        with pytest.raises(TypeError, match=r"must be an int, not .*\(pass int"):
            s.release(odd)
        with pytest.raises(TypeError, match=r"must be an int, not .*\(pass int"):
            sm.Barrier(odd)


@pytest.mark.timeout(20)
def test_redis_refuses_counts_it_cannot_keep_exactly(redis_m: Any) -> None:
    # Its scripts count in doubles: 1e20 came back as -2**63, and acquire went through.
    for make in (redis_m.Semaphore, redis_m.Barrier):
        with pytest.raises(OverflowError, match=r"at most 2\*\*53 on Redis"):
            make(10 ** 20)
    s = redis_m.Semaphore(0)
    with pytest.raises(OverflowError, match=r"at most 2\*\*53 on Redis"):
        s.release(1e20)
    assert s.get_value() == 0 and not s.acquire(timeout=0)
    s.release(2 ** 53)
    assert s.get_value() == 2 ** 53


class IntLike(int):
    pass


class FloatLike(float):
    pass


@pytest.mark.timeout(30)
def test_redis_root_is_made_again_after_redis_lost_its_data(redis_m: Any) -> None:
    """After a restart without persistence or a FLUSHALL, the root of running processes is
    empty again (it raised ReferenceError until a new process connected)."""
    redis_m.root["x"] = 1
    b = redis_m._b
    pattern = b.prefix.replace("{", "\\{").replace("}", "\\}") + "*"
    b.redis.delete(*b.redis.scan_iter(match=pattern))  # this namespace's data, presence too
    assert "x" not in redis_m.root
    redis_m.root["x"] = 2
    assert redis_m.root.copy() == {"x": 2}
