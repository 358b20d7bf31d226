"""``python -m shoal demo``: the seed scenario on multiprocessing.Manager and on shoal, side by side.

The scenario is the one shoal started from: a dict shared by the workers of a ``Pool(4)``. Each
row runs on both systems, with the same pool, and prints what the dict holds afterwards and how
long the work took (pool and process start-up excluded):

(a) fill      100 tasks store ``d[i] = i``; both complete.
(b) nested    100 tasks store ``d['test'][i] = i``; Manager silently drops every write.
(c) counter   4 processes add 1 to ``d['n']`` 500 times each, no lock: ``d['n'] += 1`` on
              Manager loses updates, ``d.incr('n')`` on shoal counts exactly 2000.
(d) locked    the Lock + copy-back idiom of the seed's program 4, correct on both; then, on
              shoal, the nested write with no lock at all, and counters kept under the Lock.

Worker functions live at module level so that every start method (fork, spawn, forkserver) can
find them.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import platform
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

from ._managers import Manager as ShoalManager

__all__ = ["run"]

TASKS = 100
PROCS = 4
INCREMENTS = 500


# -- work done in the pool's processes (module level: spawn and forkserver import them) ---------

def _ignore_sigint() -> None:
    # Ctrl-C reaches every process of the terminal's group, but only the main process should
    # act on it: it stops the workers itself. A pool worker killed by it while holding the
    # pool's task-queue lock leaves Pool.terminate() waiting for ever.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})    # see _sigint_held


def _noop(_: Any) -> None:
    pass


def _fill(i: int, d: Any) -> None:
    d[i] = i


def _nested(i: int, d: Any) -> None:
    d['test'][i] = i


def _locked_copy_back(i: int, d: Any, lock: Any) -> None:
    lock.acquire()
    try:
        row = d['test']
        row[i] = i
        d['test'] = row
    finally:
        lock.release()


def _count_racy(d: Any, n: int) -> None:
    for _ in range(n):
        d['n'] += 1          # a read, then a write: another process may write in between


def _count_incr(d: Any, n: int) -> None:
    for _ in range(n):
        d.incr('n')          # one atomic request to the server


def _count_locked(d: Any, n: int, lock: Any) -> None:
    for _ in range(n):
        with lock:
            d['n'] += 1


def _counting_process(work: Callable[..., None], d: Any, ready: Any, go: Any,
                      *extra: Any) -> None:
    """A counter row's process: say it is up, wait for the others, then count with ``work``."""
    _ignore_sigint()
    ready.release()
    go.acquire()
    work(d, INCREMENTS, *extra)


# -- starting processes ------------------------------------------------------------------------

@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Hold SIGINT back in the main process while it starts workers.

    A worker inherits the mask and lets SIGINT through only once it ignores it, so Ctrl-C
    cannot kill one half started. And the main process gets its KeyboardInterrupt here, not
    inside fork's at-fork hooks, which would print and drop it (the demo would go on).
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _pool(ctx: Any) -> Any:
    """A Pool whose workers ignore SIGINT. (Interrupted as it returns, the pool is terminated by
    its own exit handler.)"""
    with _sigint_held():
        return ctx.Pool(PROCS, initializer=_ignore_sigint)


# -- rows --------------------------------------------------------------------------------------

Result = tuple[int, float]    # (what the shared dict holds: entries or count, seconds)


def _pool_row(pool: Any, mgr: Any, work: Callable[..., None], nested: bool,
              lock: Any = None) -> Result:
    d = mgr.dict()
    if nested:
        d['test'] = {}
    args = [(i, d) if lock is None else (i, d, lock) for i in range(TASKS)]
    t0 = time.perf_counter()
    pool.starmap(work, args)
    elapsed = time.perf_counter() - t0
    got = d['test'] if nested else d
    expected = {i: i for i in range(TASKS)}
    entries = sum(1 for k, v in dict(got).items() if expected.get(k) == v)
    return entries, elapsed


def _counter_row(ctx: Any, mgr: Any, work: Callable[..., None], lock: Any = None) -> Result:
    d = mgr.dict()
    d['n'] = 0
    # Everyone starts together, so that process start-up is not timed. Semaphores, not a
    # Barrier: a KeyboardInterrupt inside multiprocessing's Barrier breaks its locks.
    ready, go = ctx.Semaphore(0), ctx.Semaphore(0)
    extra = () if lock is None else (lock,)
    procs = [ctx.Process(target=_counting_process, args=(work, d, ready, go) + extra)
             for _ in range(PROCS)]
    try:
        with _sigint_held():
            for p in procs:
                p.start()
        for _ in procs:
            ready.acquire()
        t0 = time.perf_counter()
        for _ in procs:
            go.release()
        for p in procs:
            p.join()
        elapsed = time.perf_counter() - t0
    finally:
        for p in procs:      # after Ctrl-C: they ignore SIGINT, and must not outlive the demo
            if p.is_alive():
                p.terminate()
                p.join()
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError("a counting process failed; see its traceback above")
    return d['n'], elapsed


# -- output ------------------------------------------------------------------------------------

HEADINGS = f"""\
Each row shares one dict between processes, on multiprocessing.Manager and on shoal.
  (a) fill:     {TASKS} tasks on a Pool({PROCS}) each store d[i] = i.
  (b) nested:   d['test'] = {{}}, then {TASKS} tasks each store d['test'][i] = i.
  (c) counter:  {PROCS} processes each add 1 to d['n'] {INCREMENTS} times, with no lock:
                Manager does d['n'] += 1 (read, then write); shoal does d.incr('n').
  (d) locked:   the usual fix on Manager, guarded by a shared Lock:
                lock.acquire(); row = d['test']; row[i] = i; d['test'] = row; lock.release()
                then, for comparison: shoal's nested write with no lock, and the counter
                of (c) kept correct with the Lock on both.
Times are wall-clock for the work only (pool and process start-up excluded)."""

W_LABEL, W_CELL = 30, 32


def _cell(result: Result, expected: int, unit: str = "entries") -> str:
    value, seconds = result
    text = f"{value} {unit}"
    if value != expected:
        text += f" ({expected - value} lost)"
    return f"{text}, {seconds * 1000:.0f} ms"


def _line(label: str, manager: str, shoal: str) -> str:
    return f"{label:<{W_LABEL}} | {manager:<{W_CELL}} | {shoal}"


def _vs(manager_s: float, shoal_s: float) -> str:
    """How shoal's time compares with Manager's, in words."""
    if shoal_s <= 0 or manager_s <= 0:
        return "too fast to compare"
    if manager_s >= shoal_s:
        return f"{manager_s / shoal_s:.1f}x faster"
    return f"{shoal_s / manager_s:.1f}x slower"


def run(start_method: str | None = None) -> int:
    """Run the demo, print the table and the verdicts; return 0 when shoal got every row right."""
    ctx = multiprocessing.get_context(start_method)
    total = PROCS * INCREMENTS
    print("shoal demo: the shared-dict-across-a-Pool scenario, Manager and shoal side by side")
    print(f"start method {ctx.get_start_method()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}\n")
    print(HEADINGS + "\n")
    t_all = time.perf_counter()
    with ctx.Manager() as mp_mgr, ShoalManager(ctx=ctx) as sh_mgr, _pool(ctx) as pool:
        pool.map(_noop, range(4 * PROCS), chunksize=1)     # workers up before any timing
        print(_line("row", "multiprocessing.Manager", "shoal"))
        print(_line("-" * W_LABEL, "-" * W_CELL, "-" * W_CELL))

        a_m = _pool_row(pool, mp_mgr, _fill, nested=False)
        a_s = _pool_row(pool, sh_mgr, _fill, nested=False)
        print(_line("(a) fill d[i] = i", _cell(a_m, TASKS), _cell(a_s, TASKS)))

        b_m = _pool_row(pool, mp_mgr, _nested, nested=True)
        b_s = _pool_row(pool, sh_mgr, _nested, nested=True)
        print(_line("(b) nested d['test'][i] = i", _cell(b_m, TASKS), _cell(b_s, TASKS)))

        c_m = _counter_row(ctx, mp_mgr, _count_racy)
        c_s = _counter_row(ctx, sh_mgr, _count_incr)
        print(_line("(c) counter, no lock", _cell(c_m, total, unit="counted"),
                    _cell(c_s, total, unit="counted")))

        d_m = _pool_row(pool, mp_mgr, _locked_copy_back, nested=True, lock=mp_mgr.Lock())
        d_s = _pool_row(pool, sh_mgr, _locked_copy_back, nested=True, lock=sh_mgr.Lock())
        print(_line("(d) Lock + copy-back", _cell(d_m, TASKS), _cell(d_s, TASKS)))

        d2_s = _pool_row(pool, sh_mgr, _nested, nested=True)
        print(_line("(d) nested write, no lock", "(drops writes, see b)", _cell(d2_s, TASKS)))

        e_m = _counter_row(ctx, mp_mgr, _count_locked, lock=mp_mgr.Lock())
        e_s = _counter_row(ctx, sh_mgr, _count_locked, lock=sh_mgr.Lock())
        print(_line("(d) counter with the Lock", _cell(e_m, total, unit="counted"),
                    _cell(e_s, total, unit="counted")))
        print(_line("(d) counter with d.incr('n')", "(no such call)",
                    _cell(c_s, total, unit="counted")))

    print(f"\n(all rows ran in {time.perf_counter() - t_all:.1f} s)\n")
    print("Verdicts:")
    print(f"  fill:    both complete; shoal was {_vs(a_m[1], a_s[1])}.")
    print(f"  nested:  Manager kept {b_m[0]} of {TASKS} nested writes, shoal kept {b_s[0]}.")
    print(f"  counter: without a lock Manager lost {total - c_m[0]} of {total} updates; "
          f"shoal's incr lost {total - c_s[0]}.")
    print(f"  locked:  Lock + copy-back was {_vs(d_m[1], d_s[1])} on shoal; with no lock, "
          f"shoal's d['test'][i] = i was {_vs(d_m[1], d2_s[1])} than Manager's idiom.")
    print(f"  count:   a correct counter on Manager needs the Lock ({e_m[1] * 1000:.0f} ms); "
          f"shoal's incr was {_vs(e_m[1], c_s[1])} ({c_s[1] * 1000:.0f} ms).")
    ok = (a_s[0], b_s[0], d_s[0], d2_s[0]) == (TASKS,) * 4 and c_s[0] == e_s[0] == total
    return 0 if ok else 1
