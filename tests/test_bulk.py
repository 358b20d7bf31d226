"""Bulk calls and pipelines: many operations, few round trips, same results."""

from __future__ import annotations

import multiprocessing
import pathlib
import subprocess
import sys
import threading
import time

import pytest

import shoal


def test_pipeline_writes_land_in_order(manager: shoal.SyncManager) -> None:
    d = manager.dict()
    with shoal.pipeline(d) as pd:
        for i in range(20_000):
            pd[i] = i
        pd["k"] = 1
        pd["k"] = 2                      # runs after the first: order is kept
        n = pd.incr("count", 5)
        got = pd.get(7)
    assert len(d) == 20_002 and d["k"] == 2
    assert n.value == 5 and got.value == 7


def test_pipeline_reports_the_first_error_at_the_end(manager: shoal.SyncManager) -> None:
    d = manager.dict()
    with pytest.raises(KeyError):
        with shoal.pipeline(d) as pd:
            pd["a"] = 1
            missing = pd["missing"]
            pd["b"] = 2                  # still runs: a pipeline does not stop at an error
    assert d == {"a": 1, "b": 2}
    with pytest.raises(KeyError):
        missing.value
    assert d.get("a") == 1               # the connection is in a clean state afterwards


def test_a_pipeline_that_ends_with_writes_waits_for_them(manager: shoal.SyncManager) -> None:
    """The last writes of a block travel as one batch: the block's end waits for it too, and
    raises its error."""
    d, lst = manager.dict(), manager.list(range(5))
    with pytest.raises(TypeError, match="unhashable"):
        with shoal.pipeline(d) as pd:
            pd["a"] = 1
            pd[[1]] = 2                  # a list cannot be a key
    with pytest.raises(ValueError):
        with shoal.pipeline(lst) as pl:
            pl[::2] = ["x", "y"]         # 3 places, 2 items
    with shoal.pipeline(d) as pd:
        pd["b"] = 2
    assert d._conn._replies == {}        # no reply was left behind
    assert d == {"a": 1, "b": 2}


def test_pipeline_over_several_objects(manager: shoal.SyncManager) -> None:
    d, lst = manager.dict(), manager.list()
    with shoal.pipeline(d, lst) as (pd, pl):
        for i in range(100):
            pd[i] = i
            pl.append(i)
    assert len(d) == 100 and lst[:3] == [0, 1, 2] and len(lst) == 100


def test_value_read_inside_the_block_waits_for_it(manager: shoal.SyncManager) -> None:
    d = manager.dict(x=41)
    with shoal.pipeline(d) as pd:
        r = pd.incr("x")
        assert r.value == 42


def test_bulk_calls(manager: shoal.SyncManager) -> None:
    d = manager.dict()
    d.update({i: i * i for i in range(50_000)})
    assert len(d) == 50_000 and d.get_many([3, 4, -1], None) == [9, 16, None]
    lst = manager.list()
    lst.extend(range(10_000))
    assert len(lst) == 10_000 and lst[-1] == 9_999
    assert d.copy()[49_999] == 49_999 ** 2



def _put_later(q: object) -> None:
    time.sleep(0.3)
    q.put(7)  # type: ignore[attr-defined]


def test_a_pipeline_reading_hands_other_threads_their_replies(manager: shoal.SyncManager) -> None:
    """A process has one connection: while a pipeline waits for its replies, a reply to another
    thread of the process can come first, and must reach that thread."""
    q, other = manager.Queue(), manager.dict({1: -1})
    got: dict[str, object] = {}

    def pipelined() -> None:
        with shoal.pipeline(q) as pq:
            item = pq.get()              # parked in the server until the other process puts
        got["item"] = item.value

    p = threading.Thread(target=pipelined)
    p.start()
    time.sleep(0.3)                      # the pipeline is reading now, waiting for the item
    t = threading.Thread(target=lambda: got.setdefault("other", other[1]))
    t.start()
    putter = multiprocessing.get_context("fork").Process(target=_put_later, args=(q,))
    putter.start()
    t.join(10)
    p.join(10)
    putter.join(10)
    assert not t.is_alive() and not p.is_alive()
    assert got == {"item": 7, "other": -1}


def test_pipelined_writes_in_a_row_travel_together_and_behave_as_alone(
        manager: shoal.SyncManager) -> None:
    d, lst = manager.dict(), manager.list([0, 0, 0])
    with pytest.raises(TypeError):                 # the first error, after every call ran
        with shoal.pipeline(d, lst) as (pd, pl):
            for i in range(2_500):                 # more than one batch
                pd[i] = i
            pd["x"] = 1
            pd[("t", 1)] = {"nested": [1]}         # a tuple key; a value made shared
            before = pd.get("x")                   # another call: the writes before it ran
            pd["x"] = 2
            pd[["unhashable"]] = 3                 # fails in the server ...
            pd["after"] = 4                        # ... and the next ones still run
            pl[1] = "b"
            pl[7] = "out of range"                 # IndexError: not the first error
            pl[2] = "c"
    assert before.value == 1
    assert len(d) == 2_503 and d[2_499] == 2_499 and d["x"] == 2 and d["after"] == 4
    d[("t", 1)]["nested"].append(2)                # shared, as a single write makes it
    assert d[("t", 1)] == {"nested": [1, 2]}
    assert list(lst) == [0, "b", "c"]


def test_pipelined_writes_survive_a_restart(tmp_path: pathlib.Path) -> None:
    with shoal.Manager(persist=tmp_path, fsync="always") as m:
        with shoal.pipeline(m.root) as pr:
            for i in range(1_500):
                pr[i] = i * i
    with shoal.Manager(persist=tmp_path, fsync="always") as m:
        assert len(m.root) == 1_500 and m.root[1_499] == 1_499 ** 2


@pytest.mark.parametrize("where", [0, 49_999, 99_999])
def test_a_large_update_still_shares_a_nested_container_wherever_it_is(
        manager: shoal.SyncManager, where: int) -> None:
    # Requests over 64 KiB are decoded counting their containers, so that a flat update skips
    # looking at each value; one nested dict or list anywhere must still become shared.
    d = manager.dict()
    big: dict[int, object] = {i: i for i in range(100_000)}
    big[where] = {"inner": [1]}
    d.update(big)
    d[where]["inner"].append(2)                   # written through: it is shared
    assert d[where] == {"inner": [1, 2]}
    assert len(d) == 100_000 and d[where + 1 if where < 99_999 else 0] in (where + 1, 0)
    flat = {i: -i for i in range(100_000)}
    d.update(flat)                                # the counted, flat case
    assert d.get_many([0, 5, 99_999]) == [0, -5, -99_999]
    d.update({"t": (1, [2]), **flat}, extra={"k": 1})   # a list in a tuple stays a value
    assert d["t"] == (1, [2]) and d["extra"]["k"] == 1
    d["extra"]["k"] = 2
    assert d["extra"] == {"k": 2}


def test_a_pipeline_keeps_the_proxies_it_sends_alive_until_they_are_sent(
        manager: shoal.SyncManager) -> None:
    d = manager.dict()
    with shoal.pipeline(d) as pd:
        for i in range(5):
            pd[i] = manager.list([i])             # each new list's only proxy is dropped here
    assert [d[i] for i in range(5)] == [[0], [1], [2], [3], [4]]


class _Thing:
    def __init__(self) -> None:
        self.n = 0

    def bump(self) -> int:
        self.n += 1
        return self.n


class _ThingManager(shoal.BaseManager):
    pass


_ThingManager.register("Thing", _Thing)

_READ_A_THING_IN_A_PIPELINE = """
import sys, shoal
m = shoal.connect(sys.argv[1], authkey=bytes.fromhex(sys.argv[2]))
with shoal.pipeline(m.root) as pd:
    thing = pd["thing"]
    n = pd["n"]
print(thing.value.bump(), n.value)
"""


@pytest.mark.timeout(60)
def test_a_pipelined_reply_with_a_type_this_process_never_registered() -> None:
    # The reference becomes an AutoProxy, which asks the server for the type's methods while
    # the pipeline collects its replies: that call must not wait for the pipeline's own read.
    with _ThingManager() as m:
        root = shoal.connect(m.address, authkey=bytes(m._authkey)).root
        root["thing"] = m.Thing()
        root["n"] = 7
        out = subprocess.run([sys.executable, "-c", _READ_A_THING_IN_A_PIPELINE, m.address,
                              bytes(m._authkey).hex()], capture_output=True, text=True,
                             timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["1", "7"]
        del root["thing"], root["n"]


def test_a_pipelined_sort_of_pickled_values_raises_instead_of_doing_nothing(
        manager: shoal.SyncManager) -> None:
    """Only the proxy's sort() can order values the server keeps pickled (it sorts them in
    the calling process); a sort sent as it is says so, never leaves the list unsorted quietly."""
    import decimal
    D = decimal.Decimal
    lst = manager.list([D(3), D(1), D(2)])
    with pytest.raises(TypeError, match="cannot compare .* outside a pipeline"):
        with shoal.pipeline(lst) as pl:
            pl.sort()
    with pytest.raises(TypeError, match="cannot compare"):
        lst._callmethod("sort")
    assert lst[:] == [D(3), D(1), D(2)]
    lst.sort()
    assert lst[:] == [D(1), D(2), D(3)]
    nums = manager.list([3, 1, 2])
    with shoal.pipeline(nums) as pn:
        done = pn.sort(True)
    assert done.value is None and nums[:] == [3, 2, 1]       # as list.sort(reverse=True)
