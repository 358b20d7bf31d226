"""Shared containers behave like the local types, nested ones included."""

from __future__ import annotations

import array
import fractions
import gc
import pickle
import time
import multiprocessing
import threading
from typing import Any

import pytest

import shoal

from .helpers import SentBytes


def test_dict_protocol(manager: shoal.SyncManager) -> None:
    d = manager.dict({"a": 1}, b=2)
    d["c"] = 3
    assert d["a"] == 1 and len(d) == 3 and "b" in d and "z" not in d
    assert sorted(d) == ["a", "b", "c"] and sorted(d.keys()) == ["a", "b", "c"]
    assert sorted(d.values()) == [1, 2, 3] and sorted(d.items()) == [("a", 1), ("b", 2), ("c", 3)]
    assert d.get("z") is None and d.get("z", 9) == 9
    assert d.pop("c") == 3 and d.pop("c", None) is None
    assert d.setdefault("e", 5) == 5 and d.setdefault("e", 6) == 5
    d.update({"f": 6}, g=7)
    d.update([("h", 8)])
    assert d == {"a": 1, "b": 2, "e": 5, "f": 6, "g": 7, "h": 8}
    assert d != {"a": 1}
    assert (d | {"z": 0})["z"] == 0 and "z" not in d
    d |= {"z": 0}
    assert d["z"] == 0
    del d["z"]
    assert repr(d) == repr(d.copy()) and str(d) == repr(d.copy())
    k, v = d.popitem()
    assert k not in d
    d.clear()
    assert len(d) == 0 and d == {}


def test_dict_errors_come_back_as_themselves(manager: shoal.SyncManager) -> None:
    d = manager.dict()
    with pytest.raises(KeyError):
        d["missing"]
    with pytest.raises(KeyError):
        del d["missing"]
    with pytest.raises(TypeError, match="unhashable"):
        d[[1, 2]] = 3
    with pytest.raises(KeyError):
        d.popitem()
    with pytest.raises(shoal.RemoteError, match="has no method 'no_such_method'"):
        d._callmethod("no_such_method")
    with pytest.raises(TypeError):
        d._callmethod("__getitem__", (1, 2, 3))
    d["x"] = 1
    assert d == {"x": 1}                        # the server and the data are intact


def test_values_keep_their_types(manager: shoal.SyncManager) -> None:
    d = manager.dict()
    values = [None, True, 1, 2**100, -2**70, 1.5, "s", b"b", (1, (2,)), {1, 2}, frozenset([3]),
              fractions.Fraction(1, 3), array.array("i", [1])]
    for i, v in enumerate(values):
        d[i] = v
    for i, v in enumerate(values):
        got = d[i]
        assert got == v and type(got) is type(v)
    d[(1, "k")] = "tuple key"
    assert d[(1, "k")] == "tuple key"


def test_list_protocol(manager: shoal.SyncManager) -> None:
    lst = manager.list(range(5))
    assert lst[0] == 0 and lst[-1] == 4 and lst[1:3] == [1, 2] and len(lst) == 5
    lst[1:3] = ["a", "b", "c"]
    assert lst == [0, "a", "b", "c", 3, 4]
    del lst[1:4]
    lst.append(5)
    lst.extend(x for x in (6, 7))
    lst.insert(0, -1)
    assert list(lst) == [-1, 0, 3, 4, 5, 6, 7]
    assert lst.pop() == 7 and lst.pop(0) == -1
    lst.remove(3)
    assert lst.index(4) == 1 and lst.count(4) == 1 and 5 in lst
    lst.reverse()
    assert lst == [6, 5, 4, 0]
    lst.sort()
    assert lst == [0, 4, 5, 6]
    lst.sort(key=lambda x: -x)
    assert lst == [6, 5, 4, 0]
    lst.sort(reverse=True)
    assert lst + [1] == [6, 5, 4, 0, 1] and lst * 2 == [6, 5, 4, 0] * 2
    lst += [9]
    assert isinstance(lst, shoal.ListProxy) and lst[-1] == 9
    lst *= 2
    assert len(lst) == 10
    assert list(reversed(lst))[0] == 9
    assert lst < [7] and lst > [1]
    with pytest.raises(IndexError):
        lst[100]
    with pytest.raises(ValueError):
        lst.remove("nope")
    assert str(lst) == str(lst.copy())


def test_nested_writes_land(manager: shoal.SyncManager) -> None:
    d = manager.dict()
    d["test"] = {}
    for i in range(10):
        d["test"][i] = i
    assert d == {"test": {i: i for i in range(10)}}
    d["rows"] = [[0] * 3 for _ in range(3)]
    d["rows"][1][2] = 7
    d["rows"][0].append(1)
    assert d["rows"] == [[0, 0, 0, 1], [0, 0, 7], [0, 0, 0]]
    assert isinstance(d["test"], shoal.DictProxy)
    assert isinstance(d.copy()["test"], dict)     # copies are plain, all the way down
    assert shoal.unwrap(d) == d.copy()
    # Manager's copy-back idiom still works and stays correct.
    row = d["test"]
    row[99] = 99
    d["test"] = row
    assert d["test"][99] == 99
    # Storing a proxy stores a reference to the same object.
    other = manager.dict(x=1)
    d["ref"] = other
    other["y"] = 2
    assert d["ref"] == {"x": 1, "y": 2}


def test_nested_in_list_and_namespace(manager: shoal.SyncManager) -> None:
    lst = manager.list([{"a": 1}])
    lst[0]["b"] = 2
    assert lst == [{"a": 1, "b": 2}]
    ns = manager.Namespace(x=1)
    ns.d = {}
    ns.d["k"] = "v"
    assert ns.d == {"k": "v"} and ns.x == 1
    assert "Namespace(" in repr(ns) and "x=1" in repr(ns)
    del ns.x
    with pytest.raises(AttributeError):
        ns.x


def test_self_reference_does_not_hang(manager: shoal.SyncManager) -> None:
    d = manager.dict()
    d["me"] = d
    assert d["me"]["me"]["me"] is not None
    assert "{...}" in repr(d)


def test_copy_mode_gives_copies(copy_manager: shoal.SyncManager) -> None:
    d = copy_manager.dict()
    d["test"] = {}
    d["test"][1] = 1                            # lands on a copy, as in multiprocessing.Manager
    assert d == {"test": {}}
    inner = copy_manager.dict()
    d["shared"] = inner                          # explicit proxies stay shared in both modes
    d["shared"]["k"] = 1
    assert inner == {"k": 1}


def test_incr_and_cas(manager: shoal.SyncManager) -> None:
    d = manager.dict()
    assert d.incr("n") == 1 and d.incr("n", 5) == 6 and d.incr("f", 0.5, default=1) == 1.5
    assert d.cas("n", 6, 10) is True and d.cas("n", 6, 11) is False and d["n"] == 10
    assert d.cas("new", None, 1) is True and d["new"] == 1
    d["s"] = "text"
    with pytest.raises(TypeError, match="incr needs numbers"):
        d.incr("s")
    assert d.get_many(["n", "zz"], 0) == [10, 0]


def test_value_and_array(manager: shoal.SyncManager) -> None:
    v = manager.Value("i", 7)
    assert v.value == 7 and v.get() == 7
    v.value = 8
    v.set(v.value + 1)
    assert v.value == 9 and repr(v) == "Value('i', 9)"
    a = manager.Array("i", [0] * 4)
    a[1] = 5
    assert len(a) == 4 and list(a) == [0, 5, 0, 0] and a[0:2] == [0, 5]
    with pytest.raises(TypeError):
        a[0] = "not an int"
    with pytest.raises(IndexError):
        a[10]
    assert a._getvalue() == array.array("i", [0, 5, 0, 0])         # as Manager's
    assert manager.Array("d", 3)._getvalue() == array.array("d", [0.0, 0.0, 0.0])


@pytest.mark.timeout(30)
def test_number_of_objects_counts_a_dropped_cycle_at_once(manager: shoal.SyncManager) -> None:
    before = manager._number_of_objects()
    d = manager.dict()
    d["me"] = d
    del d
    assert manager._number_of_objects() == before       # asked again at once: still exact


def test_root_is_the_same_object_everywhere(manager: shoal.SyncManager) -> None:
    manager.root["hello"] = {"n": 1}
    other = shoal.connect(manager.address, authkey=bytes(manager._authkey))
    assert other.root["hello"]["n"] == 1
    other.root["hello"]["n"] = 2
    assert manager.root["hello"] == {"n": 2}
    del manager.root["hello"]


def test_objects_are_freed_when_unreferenced() -> None:
    with shoal.Manager() as m:
        d = m.dict()
        d["nested"] = {"x": [1, 2]}
        lst = m.list([{}])
        lock = m.Lock()
        q = m.Queue()
        q.put({"a": 1})
        inner = d["nested"]["x"]
        assert m._number_of_objects() >= 5
        del d, lst, lock, q, inner
        gc.collect()
        assert m._number_of_objects() == 0, m._debug_info()


def test_freed_object_gives_a_clear_error() -> None:
    with shoal.Manager() as m:
        d = m.dict()
        token = d._token
        del d
        gc.collect()
        assert m._number_of_objects() == 0
        ghost = shoal.DictProxy(token, authkey=bytes(m._authkey))
        with pytest.raises(ReferenceError, match="no longer exists"):
            ghost["x"] = 1


def _count_objects(address: Any, authkey: bytes, out: Any) -> None:
    out.send(shoal.connect(address, authkey=authkey)._number_of_objects())


def _objects_seen_by_another_process(m: shoal.SyncManager) -> int:
    """The server's object count, asked by a process that holds no proxies."""
    ctx = multiprocessing.get_context("fork")
    here, there = ctx.Pipe()
    p = ctx.Process(target=_count_objects, args=(m.address, bytes(m._authkey), there))
    p.start()
    try:
        return here.recv()  # type: ignore[no-any-return]
    finally:
        p.join(10)


def test_reading_the_same_nested_object_again_and_again_sends_no_release() -> None:
    with shoal.Manager() as m:
        d = m.dict({"row": {}})
        conn = d._conn
        conn.sock = spy = SentBytes(conn.sock)
        try:
            for i in range(50):
                d["row"].incr(i, i)
        finally:
            conn.sock = spy.sock
        assert d["row"] == {i: i for i in range(50)}
        assert b"release" not in spy.sent
        assert spy.sent.count(b"incr") == 50


def test_unpickling_a_proxy_of_an_object_held_already_sends_no_hold() -> None:
    """A pool worker unpickles the same proxies for every task: the server is asked to keep
    the object once, not once per task."""
    with shoal.Manager() as m:
        d = m.dict()
        blob = pickle.dumps(d)
        conn = d._conn
        conn.sock = spy = SentBytes(conn.sock)
        try:
            for i in range(50):
                task_d = pickle.loads(blob)
                task_d[i] = i
                del task_d
        finally:
            conn.sock = spy.sock
        assert d == {i: i for i in range(50)}
        assert b"hold" not in spy.sent and b"release" not in spy.sent


def test_a_dropped_proxy_is_released_by_the_second_call_after_the_drop() -> None:
    with shoal.Manager() as m:
        d = m.dict({"gone": {"a": 1}})
        inner = d["gone"]
        del d["gone"]                      # now only the proxy keeps the nested dict
        assert _objects_seen_by_another_process(m) == 2
        assert inner == {"a": 1}
        del inner
        gc.collect()
        d["x"] = 1
        d["x"] = 2
        assert _objects_seen_by_another_process(m) == 1, m._debug_info()


def test_what_a_process_dropped_is_released_before_it_waits() -> None:
    """A call that may wait long (a queue's get, a lock's acquire ...) takes the releases of
    the proxies dropped before it along, rather than leaving them for the call after it."""
    with shoal.Manager() as m:
        d = m.dict({"gone": list(range(1000))})
        q = m.Queue()
        inner = d["gone"]
        del d["gone"]                      # now only the proxy keeps the nested list
        del inner
        gc.collect()
        getter = threading.Thread(target=q.get, daemon=True)
        getter.start()                     # waits in the server
        deadline = time.monotonic() + 10
        while _objects_seen_by_another_process(m) != 2:   # d and q
            assert time.monotonic() < deadline, m._debug_info()
            time.sleep(0.05)
        q.put("done")
        getter.join(10)
        assert not getter.is_alive()


def test_copy_is_plain_and_deep_and_keeps_shared_objects_as_proxies(
        manager: shoal.SyncManager) -> None:
    d = manager.dict({"n": 1, "row": {"a": [1, (2, {"b": 3})]}})
    lock = manager.Lock()
    d["lock"] = lock
    got = d.copy()
    assert type(got) is dict and type(got["row"]) is dict and type(got["row"]["a"]) is list
    assert got["row"] == {"a": [1, (2, {"b": 3})]} and got["n"] == 1
    assert isinstance(got["lock"], shoal.BaseProxy) and got["lock"]._id == lock._id
    got["row"]["a"].append(4)                     # a copy: the shared one is unchanged
    assert d["row"]["a"] == [1, (2, {"b": 3})]
    assert manager.list([[1], {"x": [2]}]).copy() == [[1], {"x": [2]}]


def test_copy_of_a_container_inside_itself_keeps_the_reference_and_leaks_nothing() -> None:
    with shoal.Manager() as m:
        d = m.dict({"lock": m.Lock()})
        d["me"] = d                               # a cycle: d holds itself
        got = d.copy()
        assert set(got) == {"lock", "me"} and isinstance(got["me"], shoal.DictProxy)
        assert got["me"]._id == d._id
        del got
        gc.collect()
        del d["me"], d
        gc.collect()
        assert m._number_of_objects() == 0, m._debug_info()


def test_copy_through_a_tuple_cycle_and_of_a_container_reached_twice(
        manager: shoal.SyncManager) -> None:
    d = manager.dict({"lock": manager.Lock()})
    d["t"] = (d, 1)                               # a cycle through a tuple
    got = d.copy()
    assert got["t"][1] == 1 and got["t"][0]._id == d._id
    shared = manager.dict({"x": [1]})
    e = manager.dict()
    e["a"] = shared
    e["b"] = shared                               # one container under two keys
    assert e.copy() == {"a": {"x": [1]}, "b": {"x": [1]}}
    del d["t"]


def test_copy_of_a_big_container_inside_itself_is_not_expanded_again_and_again(
        manager: shoal.SyncManager) -> None:
    d = manager.dict({i: "x" * 100 for i in range(20_000)})
    d["self"] = d
    started = time.monotonic()
    got = d.copy()
    assert len(got) == 20_001 and got["self"]._id == d._id
    assert time.monotonic() - started < 5       # 511 nested copies would take far longer
    del d["self"]


def test_nested_containers_compare_by_content_on_the_server(manager: shoal.SyncManager) -> None:
    """``in``, ``index``, ``count``, ``remove``, ``cas`` and ``sort`` meet nested dicts and lists
    as the values they stand for, as in Manager (where they are copies)."""
    lst = manager.list([[1, 2], {"a": 1}, [0]])
    assert [1, 2] in lst and {"a": 1} in lst and [9] not in lst
    assert lst.index([1, 2]) == 0 and lst.count({"a": 1}) == 1
    lst.remove([0])
    assert len(lst) == 2
    rows = manager.list([[3], [1], [2, 0], [2]])
    rows.sort()
    assert rows == [[1], [2], [2, 0], [3]]
    d = manager.dict(row={"a": 1}, tags=[1])
    assert d.cas("row", {"a": 1}, "new") is True and d["row"] == "new"
    assert d.cas("tags", [1], "new") is True
    assert d.cas("missing", [1], "x") is False


def test_sort_with_a_key_or_of_pickled_values_sorts_on_this_side(
        manager: shoal.SyncManager) -> None:
    import decimal
    nan = float("nan")
    lst = manager.list([2, nan, 1])
    lst.sort(key=lambda x: x)                     # nan != nan: no compare-and-swap loop
    assert repr(lst[:]) == repr(sorted([2, nan, 1], key=lambda x: x))
    decs = manager.list([decimal.Decimal(2), decimal.Decimal(1)])
    decs.sort()                                   # the server never unpickles them
    assert decs[:] == [decimal.Decimal(1), decimal.Decimal(2)]
    pairs = manager.list([(decimal.Decimal(2), "b"), (decimal.Decimal(2), "a")])
    pairs.sort(reverse=True)
    assert pairs[:] == [(decimal.Decimal(2), "b"), (decimal.Decimal(2), "a")]
    with pytest.raises(TypeError):
        manager.list([1, None]).sort()            # still an error where Python has one
    with pytest.raises(TypeError) as err:
        manager.list([{1: 2}, [3]]).sort()        # nested containers, named as clients know them
    assert str(err.value) == "'<' not supported between instances of 'list' and 'dict'"


def test_an_empty_dict_filled_by_update_shares_nothing_with_the_source(
        manager: shoal.SyncManager) -> None:
    """An empty dict takes the request's own dict as it is; never another shared dict's."""
    a = manager.dict({1: 1})
    b = manager.dict()
    b.update(a)
    b[2] = 2
    a[3] = 3
    assert a.copy() == {1: 1, 3: 3} and b.copy() == {1: 1, 2: 2}
    c = manager.dict()
    c.update({i: i for i in range(50_000)})     # a bulk request
    c[-1] = -1
    assert len(c) == 50_001 and c[49_999] == 49_999
    e = manager.dict()
    it = iter(e)                                 # walks the empty dict: it keeps its own
    e.update({"a": 1, "b": 2})
    with pytest.raises(RuntimeError, match="dictionary changed size during iteration"):
        list(it)


def test_bulk_arguments_of_any_iterable_kind(manager: shoal.SyncManager) -> None:
    import collections
    Point = collections.namedtuple("Point", "x y")
    other = shoal.Manager()                       # another server's proxies go as plain data
    try:
        od, ol = other.dict(a=1), other.list([1, 2])
        lst = manager.list(Point(1, 2))
        lst.extend(Point(3, 4))
        lst[0:1] = Point(0, 0)
        lst += ol
        lst.extend(ol)
        assert lst[:] == [0, 0, 2, 3, 4, 1, 2, 1, 2]
        d = manager.dict(od)
        d.update(collections.OrderedDict(b=2))
        d.update(collections.Counter("cc"))
        d.update(collections.defaultdict(int, e=5))
        assert d == {"a": 1, "b": 2, "c": 2, "e": 5}
        assert manager.list(ol)[:] == [1, 2]
    finally:
        other.shutdown()


def test_update_and_dict_take_pairs_of_any_kind(manager: shoal.SyncManager) -> None:
    pairs = manager.list([["a", 1], ["b", 2]])
    d = manager.dict()
    d.update(pairs)
    assert d == {"a": 1, "b": 2} and manager.dict(pairs) == {"a": 1, "b": 2}
    d.update(["cd"])                             # any iterable of two items is a pair
    assert d["c"] == "d"
    with pytest.raises(ValueError, match="element #0 has length 3; 2 is required"):
        d.update([(1, 2, 3)])
    with pytest.raises(TypeError, match="element #1 to a sequence"):
        d.update([(1, 2), 5])


def test_sort_of_lists_holding_pickled_values_sorts_on_this_side(
        manager: shoal.SyncManager) -> None:
    """Values the server keeps pickled inside nested lists (or lists in tuples) are ordered
    by the client too, as a local list orders them; the nested lists stay the same objects."""
    import datetime
    import decimal
    D = decimal.Decimal
    rows = manager.list([[D(2), "b"], [D(1), "a"], [D(1)]])
    big = rows[0]
    rows.sort()
    assert rows == [[D(1)], [D(1), "a"], [D(2), "b"]] and rows[2]._id == big._id
    rows.sort(reverse=True)
    assert rows == [[D(2), "b"], [D(1), "a"], [D(1)]]
    dates = manager.list([([datetime.date(2024, 1, 2)], 0), ([datetime.date(2024, 1, 1)], 1)])
    dates.sort()
    assert [i for _, i in dates] == [1, 0]
    me = manager.list([1])
    me.append(me)                                 # a list in itself: looked into once
    with pytest.raises(TypeError):
        manager.list([me, None]).sort()           # still Python's error
    me.pop()


def test_keyword_arguments_named_self_or_other(manager: shoal.SyncManager) -> None:
    """A dict's keys given as keywords may be named as the parameters of the methods that
    take them, as with dict()."""
    d = manager.dict(self=1, other=2)
    assert d == {"self": 1, "other": 2}
    d.update(other=3, self=4)
    d.update({"a": 5}, other=6)
    assert d == {"self": 4, "other": 6, "a": 5}
    ns = manager.Namespace(self=1, typeid=2)
    assert ns.self == 1 and ns.typeid == 2


class _Recorder:
    def record(self, /, **kw: Any) -> dict[str, Any]:
        return kw


class _RecorderManager(shoal.BaseManager):
    pass


_RecorderManager.register("Recorder", _Recorder)


@pytest.mark.timeout(30)
def test_a_registered_types_method_takes_a_keyword_named_self() -> None:
    with _RecorderManager() as m:
        assert m.Recorder().record(self=1, other=2) == {"self": 1, "other": 2}


def test_repr_of_a_namespace_or_value_that_holds_itself(manager: shoal.SyncManager) -> None:
    ns = manager.Namespace()
    ns.me = ns
    assert repr(ns) == str(ns) == "Namespace(me=Namespace(...))"   # as SimpleNamespace's
    v = manager.Value("O", None)
    v.value = v
    assert repr(v) == "Value('O', Value(...))"
    d = manager.dict()
    ns.d, d["ns"] = d, ns                         # a cycle through a dict
    assert repr(ns) == "Namespace(d={'ns': Namespace(...)}, me=Namespace(...))"
    del ns.me, ns.d, d["ns"]
    v.value = None


def _error(f: Any) -> str:
    with pytest.raises(TypeError) as err:
        f()
    return str(err.value)


def test_plus_takes_a_list_only_and_plus_equals_any_iterable(manager: shoal.SyncManager) -> None:
    import collections
    lst = manager.list([1])
    for other in [(2,), "ab", {3: 4}, 5, None]:
        assert _error(lambda: lst + other) == _error(lambda: [1] + other), other
        assert _error(lambda: other + lst) == _error(lambda: other + [1]), other
    assert lst + [2] == [1, 2] and [0] + lst == [0, 1] and lst + lst == [1, 1]
    joined = lst + collections.UserList([2])      # its own + takes a list, as locally
    assert type(joined) is collections.UserList and joined == [1, 2]
    lst += (2,)
    lst += "ab"
    lst += {3: 4}
    assert lst == [1, 2, "a", "b", 3]


def test_slice_assignment_and_repeat_raise_a_lists_errors(manager: shoal.SyncManager) -> None:
    lst = manager.list([1, 2, 3])
    local = [1, 2, 3]
    for index in [slice(0, 2), slice(None, None, 2), slice("a", 2)]:
        expected = _error(lambda: local.__setitem__(index, 5))
        assert _error(lambda: lst.__setitem__(index, 5)) == expected, index
        if index.start != "a":                    # (such a slice does not travel)
            assert _error(lambda: lst._callmethod("__setitem__", [index, 5])) == expected

    def repeat(x: Any, n: Any) -> None:
        x *= n

    for n in ["a", 2.0]:
        assert _error(lambda: repeat(lst, n)) == _error(lambda: repeat(local, n))
    assert lst == local == [1, 2, 3]
