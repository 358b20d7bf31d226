"""Types registered with BaseManager.register, as Manager's users write them (the docs'
MathsClass, a proxytype of DictProxy, the remote queue.Queue), in real processes."""

from __future__ import annotations

import array
import asyncio
import collections
import copy
import multiprocessing
import queue
import threading
import time
from multiprocessing import managers
from typing import Any

import pytest

import shoal
from shoal import DictProxy
from shoal._syncproxies import IteratorProxy


class MathsClass:
    def add(self, x: int, y: int) -> int:
        return x + y


_QUEUE: queue.Queue[Any] = queue.Queue()


def _the_queue() -> queue.Queue[Any]:
    return _QUEUE


class CounterProxy(DictProxy):
    """A proxy extended the way Manager's users do it."""

    _exposed_ = DictProxy._exposed_ + ("incr_key",)   # type: ignore[operator]

    def incr_key(self, key: Any) -> Any:
        return self._callmethod("incr_key", (key,))


class Counter(dict):  # type: ignore[type-arg]
    def incr_key(self, key: Any) -> Any:
        self[key] = self.get(key, 0) + 1
        return self[key]


class _Registered(shoal.BaseManager):
    pass


_Registered.register("Maths", MathsClass)
_Registered.register("defaultdict", collections.defaultdict, DictProxy)
_Registered.register("Counter", Counter, CounterProxy)
_Registered.register("get_queue", callable=_the_queue)


class Job:
    def cancel(self) -> None:
        raise asyncio.CancelledError()      # a BaseException, not an Exception


class CounterObj:
    def __init__(self, start: int) -> None:
        self.n = start

    def incr(self) -> int:
        self.n += 1
        return self.n


class Factory:
    def make(self, start: int) -> int:
        return start


_Registered.register("Job", Job)
_Registered.register("CounterObj", CounterObj)
_Registered.register("Factory", Factory, method_to_typeid={"make": "CounterObj"})


def _add(maths: Any, i: int) -> int:
    return maths.add(i, 1)     # type: ignore[no-any-return]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_registered_types_proxy_goes_to_pool_workers(method: str) -> None:
    """An AutoProxy's class is made on the fly: it must pickle all the same."""
    with _Registered() as m:
        maths = m.Maths()
        with multiprocessing.get_context(method).Pool(2) as pool:
            assert pool.starmap(_add, [(maths, i) for i in range(4)]) == [1, 2, 3, 4]


@pytest.mark.timeout(60)
def test_register_with_proxytype_dictproxy_and_an_extended_proxy() -> None:
    with _Registered() as m:
        d = m.defaultdict(int)
        d["a"] = 1
        assert d["a"] == 1 and d["missing"] == 0 and len(d) == 2
        assert sorted(d.keys()) == ["a", "missing"] and sorted(d) == ["a", "missing"]
        c = m.Counter()
        assert c.incr_key("k") == 1 and c.incr_key("k") == 2 and c["k"] == 2


@pytest.mark.timeout(60)
def test_many_calls_of_a_registered_type_may_block_at_once() -> None:
    """Manager gives each connection a thread: 80 threads blocked in a registered queue's get
    must not keep the puts that wake them from running."""
    with _Registered() as m:
        q = m.get_queue()
        got: list[Any] = []
        threads = [threading.Thread(target=lambda: got.append(q.get(timeout=30)))
                   for _ in range(80)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        start = time.monotonic()
        for i in range(80):
            q.put(i)
        assert time.monotonic() - start < 5
        for t in threads:
            t.join(30)
        assert sorted(got) == list(range(80))


class Filler:
    def fill(self, d: Any, n: int) -> int:
        for i in range(n):
            d[i] = i                 # d arrives as a proxy, as with Manager
        return len(d)


class _SyncWithFiller(shoal.SyncManager):
    pass


_SyncWithFiller.register("Filler", Filler)


def _task(d: Any, ev: Any, i: int) -> bool:
    d[i] = i
    return ev.wait(10)               # type: ignore[no-any-return]


@pytest.mark.timeout(60)
def test_proxies_given_to_server_side_code_arrive_as_proxies() -> None:
    """A registered method, and a task of the manager's own Pool (which runs in the server),
    get proxies of the shared objects passed to them, as Manager's do."""
    with _SyncWithFiller() as sm:
        d, ev = sm.dict(), sm.Event()
        assert sm.Filler().fill(d, 3) == 3 and d == {0: 0, 1: 1, 2: 2}
        ev.set()
        with sm.Pool(2) as pool:
            assert pool.starmap(_task, [(d, ev, i) for i in range(3, 6)]) == [True] * 3
        assert d == {i: i for i in range(6)}
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 5        # its own connection does not slow the stop


def _counting() -> Any:
    got = yield 0
    while True:
        got = yield got * 2


class _GeneratorManager(shoal.SyncManager):
    pass


_GeneratorManager.register("counting", _counting, proxytype=IteratorProxy)


@pytest.mark.timeout(60)
def test_manager_style_errors_and_a_generators_send() -> None:
    """Code written for Manager catches ConnectionRefusedError when nothing listens and
    EOFError when the server goes; a generator's proxy has send, throw and close."""
    with pytest.raises(ConnectionRefusedError):
        shoal.connect(("127.0.0.1", 9), authkey=b"key")
    with _GeneratorManager() as gm:
        it = gm.counting()
        assert next(it) == 0 and it.send(3) == 6 and it.send(5) == 10
        it.close()
        with pytest.raises(StopIteration):
            next(it)
        d = gm.dict()
    with pytest.raises(EOFError):
        d["k"] = 1


@pytest.mark.timeout(30)
def test_a_registered_method_raising_a_base_exception_reaches_its_caller() -> None:
    with _Registered() as m:
        with pytest.raises(asyncio.CancelledError):
            m.Job().cancel()


@pytest.mark.timeout(30)
def test_method_to_typeid_makes_that_types_object_from_the_result() -> None:
    # As Manager: the result goes through the registered callable of the type it names.
    with _Registered() as m:
        assert m.Factory().make(10).incr() == 11


@pytest.mark.timeout(30)
def test_deepcopy_of_a_proxy_is_a_private_copy() -> None:
    with shoal.Manager() as m:
        cfg = m.dict(debug=False, sub={"x": 1})
        mine = copy.deepcopy(cfg)
        mine["debug"] = True
        mine["sub"]["x"] = 2
        assert type(mine) is dict and cfg["debug"] is False and cfg["sub"]["x"] == 1
        items = m.list([1])
        theirs = copy.deepcopy(items)
        theirs.append(2)
        assert items[:] == [1]
        assert copy.deepcopy({"cfg": cfg}) == {"cfg": {"debug": False, "sub": {"x": 1}}}


class Thing:
    def __init__(self) -> None:
        self.v = 1

    def get(self) -> int:
        return self.v


class ThingProxy(managers.BaseProxy):
    """A proxy class written for Manager, on multiprocessing's own BaseProxy."""

    _exposed_ = ("get",)

    def get(self) -> int:
        return self._callmethod("get")  # type: ignore[no-any-return]


class _WithStdlibProxies(shoal.BaseManager):
    pass


_WithStdlibProxies.register("Event", threading.Event, managers.EventProxy)
_WithStdlibProxies.register("Lock", threading.Lock, managers.AcquirerProxy)
_WithStdlibProxies.register("Thing", Thing, ThingProxy)


class LoggingThingProxy(ThingProxy):
    calls = 0

    def get(self) -> int:
        type(self).calls += 1
        return super().get() + 10


_WithStdlibProxies.register("LoggingThing", Thing, LoggingThingProxy)


def _read_both(e: Any, t: Any, q: Any) -> None:
    q.put((e.is_set(), t.get()))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessings_own_proxy_classes_as_proxytype(method: str) -> None:
    ctx = multiprocessing.get_context(method)
    with _WithStdlibProxies(ctx=ctx) as m:
        e = m.Event()
        e.set()
        assert e.is_set() and e.wait(0.1)
        lock = m.Lock()
        with lock:
            assert lock.acquire(False) is False
        t = m.Thing()
        assert t.get() == 1 and type(t).__name__ == "ThingProxy"
        assert isinstance(t, ThingProxy) and isinstance(t, managers.BaseProxy)
        assert m.LoggingThing().get() == 11               # super() in a subclass
        q = ctx.Queue()
        p = ctx.Process(target=_read_both, args=(e, t, q))       # they pickle, too
        p.start()
        assert q.get(timeout=30) == (True, 1)
        p.join(10)


class Obj:
    def __repr__(self) -> str:
        return f"Obj(x={getattr(self, 'x', None)})"


class _WithShoalProxies(shoal.BaseManager):
    pass


# As Manager's users register their own types with its proxy classes (and as SyncManager
# registers Value and Array).
_WithShoalProxies.register("Obj", Obj, shoal.NamespaceProxy)
_WithShoalProxies.register("mylist", list, shoal.ListProxy)
_WithShoalProxies.register("Value", managers.Value, shoal.ValueProxy)
_WithShoalProxies.register("Array", array.array, shoal.ArrayProxy)


@pytest.mark.timeout(30)
def test_shoals_proxy_classes_as_proxytype_of_registered_types() -> None:
    with _WithShoalProxies() as m:
        o = m.Obj()
        o.x = 5
        assert o.x == 5 and str(o) == "Obj(x=5)"
        items = m.mylist([3, 1, 2])
        items.sort()
        assert items[:] == [1, 2, 3] and str(items) == "[1, 2, 3]"
        items.sort(reverse=True)
        assert items[:] == [3, 2, 1]
        v = m.Value("i", 3)
        assert v.value == 3 and str(v) == "Value('i', 3)"
        a = m.Array("i", [1, 2])
        assert a[1] == 2 and len(a) == 2 and list(a) == [1, 2] and str(a) == "array('i', [1, 2])"
