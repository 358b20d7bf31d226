"""Synchronization cost: the seed's Lock + copy-back pattern, its lock-free replacements, and
per-op Lock and Queue latency, on multiprocessing.Manager and shoal side by side.

Workloads (each timed on both systems in the same run, interleaved):

* **(a) seed pattern, 4 processes.** The body of the seed's ``test`` function (``lock.acquire();
  row = d['test']; row[i] = i; d['test'] = row; lock.release()``), unchanged, in 4 processes ×
  ``--updates`` updates each, on Manager and on shoal. The processes are started, connected
  and warmed up before the clock starts; the clock runs from a shared start signal to the last
  process's last update. ``d['test']`` starts empty each round, so the row grows to
  4 × ``--updates`` entries, as in the seed.
* **(a) seed program as written.** The same function as a ``Pool(4).apply_async`` task per
  update (``--updates`` tasks), the proxies pickled into every task, as ``program4.py`` does;
  the pool is started and warmed up before the clock starts (each worker has run a task that
  takes the lock and reads the dict, so it is connected to the manager).
* **(b) the same work without a separate Lock, shoal only.** 4 processes × ``--updates``:
  ``d['test'][i] = i`` (nested write-through, no lock); ``d['test'].incr(i, i)`` (atomic
  counter add, leaves the same ``{i: i}``); the same ``incr`` through a proxy of the nested
  dict that each process takes once (``row = d['test']`` at its first update: the proxy stays
  live, so each update is one round trip instead of two); and the seed's body with
  ``with d.locked():`` in place of the Lock. Compared with Manager's seed program as written
  from the same round: what the same job costs once a program uses shoal's tools.
* **(c) Lock acquire + release**, one client, ``--ops`` pairs per round.
* **(d) Queue put + get**, one client, ``--ops`` pairs per round.

Every round runs every system and workload once, in an order that alternates between rounds;
the table gives the median over rounds (per update for (a)/(b), per op for (c)/(d)), and for
(c)/(d) p50/p90 of the single-op times of all rounds. After each multi-process round the row is
checked to hold every update. Ratios are Manager / shoal of the medians (above 1: shoal faster).
Below the table, Manager's seed program as written is also divided by each (b) row.

Usage::

    python benchmarks/bench_sync.py                               # 7 rounds, print a table
    python benchmarks/bench_sync.py --quick                       # 3 rounds, fewer ops
    python benchmarks/bench_sync.py --markdown docs/benchmarks.md # also rewrite our section
"""

from __future__ import annotations

import argparse
import datetime
import gc
import multiprocessing
import os
import platform
import statistics
import sys
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import shoal
from _common import INTRO, command_line, load_average as _load, replace_section

START, END = "<!-- bench_sync:start -->", "<!-- bench_sync:end -->"
REPO = Path(__file__).resolve().parent.parent
PROCS = 4
CTX = multiprocessing.get_context("fork")   # workers inherit the started managers' proxies

# -- the work done in each process ------------------------------------------------------------


def seed_update(idx: int, test_dict: Any, lock: Any) -> None:
    """The seed's ``test`` function (program4.py), unchanged."""
    lock.acquire()
    row = test_dict['test']
    row[idx] = idx
    test_dict['test'] = row
    lock.release()


def nested_update(idx: int, test_dict: Any, lock: Any) -> None:
    test_dict['test'][idx] = idx


def incr_update(idx: int, test_dict: Any, lock: Any) -> None:
    test_dict['test'].incr(idx, idx)


_rows: dict[int, Any] = {}     # per process: the nested dict's proxy, taken at the first update


def held_incr_update(idx: int, test_dict: Any, lock: Any) -> None:
    row = _rows.get(id(test_dict))
    if row is None:                         # (in the timed loop: counted once per process)
        row = _rows[id(test_dict)] = test_dict['test']
    row.incr(idx, idx)


def locked_update(idx: int, test_dict: Any, lock: Any) -> None:
    with test_dict.locked():
        row = test_dict['test']
        row[idx] = idx
        test_dict['test'] = row


UPDATES: dict[str, tuple[str, Callable[[int, Any, Any], None]]] = {
    "seed": ("seed Lock + copy-back", seed_update),
    "nested": ("`d['test'][i] = i`, no lock", nested_update),
    "incr": ("`d['test'].incr(i, i)`, no lock", incr_update),
    "held": ("`row.incr(i, i)`, `row = d['test']` taken once", held_incr_update),
    "locked": ("`with d.locked():` + copy-back", locked_update),
}


def _worker(kind: str, d: Any, lock: Any, first: int, n: int, ready: Any, go: Any,
            done: Any) -> None:
    update = UPDATES[kind][1]
    len(d)                                  # connect and warm up before the clock starts
    lock.acquire()
    lock.release()
    ready.put(os.getpid())
    go.wait()
    for i in range(first, first + n):
        update(i, d, lock)
    done.put(time.perf_counter())


def run_processes(kind: str, d: Any, lock: Any, n: int) -> float:
    """Seconds from the start signal to the last of PROCS processes' last update."""
    d['test'] = {}
    ready, done, go = CTX.Queue(), CTX.Queue(), CTX.Event()
    procs = [CTX.Process(target=_worker, args=(kind, d, lock, k * n, n, ready, go, done))
             for k in range(PROCS)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    gc.collect()
    t0 = time.perf_counter()
    go.set()
    end = max(done.get(timeout=600) for _ in procs)
    for p in procs:
        p.join(60)
        if p.exitcode != 0:
            raise RuntimeError(f"a {kind} worker failed (exit code {p.exitcode})")
    got = d['test']
    if dict(got) != {i: i for i in range(PROCS * n)}:
        raise RuntimeError(f"{kind}: lost updates ({len(got)} of {PROCS * n} present)")
    return end - t0


def _warm(test_dict: Any, lock: Any) -> int:
    """A pool task run before the clock starts: the worker connects (unpickling the proxies)
    and takes the lock once, as the timed tasks will."""
    lock.acquire()
    test_dict.get('test')
    lock.release()
    time.sleep(0.01)                        # (still busy: the next task goes to another worker)
    return os.getpid()


def run_seed_pool(d: Any, lock: Any, n: int) -> float:
    """The seed program's own shape: Pool(4), one apply_async task per update."""
    d['test'] = {}
    pool = CTX.Pool(PROCS)
    try:
        while len(set(pool.starmap(_warm, [(d, lock)] * PROCS, chunksize=1))) < PROCS:
            pass                                 # until every worker is up and connected
        gc.collect()
        t0 = time.perf_counter()
        results = [pool.apply_async(seed_update, args=(i, d, lock)) for i in range(n)]
        for r in results:
            r.get(600)
        elapsed = time.perf_counter() - t0
    finally:
        pool.close()
        pool.join()
    if dict(d['test']) != {i: i for i in range(n)}:
        raise RuntimeError("seed program: lost updates")
    return elapsed


# -- one-client latency -----------------------------------------------------------------------

def lock_ops(lock: Any, ops: int, samples: array) -> float:
    clock = time.perf_counter_ns
    acquire, release = lock.acquire, lock.release
    t_start = clock()
    for _ in range(ops):
        t0 = clock()
        acquire()
        release()
        samples.append(clock() - t0)
    return (clock() - t_start) / ops / 1000


def queue_ops(q: Any, ops: int, samples: array) -> float:
    clock = time.perf_counter_ns
    put, get = q.put, q.get
    t_start = clock()
    for i in range(ops):
        t0 = clock()
        put(i)
        get()
        samples.append(clock() - t0)
    return (clock() - t_start) / ops / 1000


# -- measuring --------------------------------------------------------------------------------

ROWS = [  # (key, workload label, target)
    ("seed", "(a) seed Lock + copy-back, 4 processes", "—"),
    ("pool", "(a) seed program as written: Pool(4), a task per update", "≥ 5×"),
    ("nested", "(b) `d['test'][i] = i`, no lock, 4 processes", "—"),
    ("incr", "(b) `d['test'].incr(i, i)`, no lock, 4 processes", "≥ 50×"),
    ("held", "(b) `row.incr(i, i)`, `row = d['test']` taken once per process, 4 processes",
     "≥ 50×"),
    ("locked", "(b) `with d.locked():` + copy-back, 4 processes", "≥ 50×"),
    ("lock", "(c) Lock acquire + release, one client", "≥ 2×"),
    ("queue", "(d) Queue put + get, one client", "≥ 2×"),
]


def _percentile(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000


def measure(rounds: int, updates: int, ops: int) -> dict[tuple[str, str], dict[str, float]]:
    """{(system, row): {"median": µs per update or op, ["p50", "p90"]}}."""
    per_round: dict[tuple[str, str], list[float]] = {}
    samples: dict[tuple[str, str], array] = {}
    has_locked = hasattr(shoal.DictProxy, "locked")
    with multiprocessing.Manager() as mm, shoal.Manager() as sm:
        objs = {name: {"d": m.dict(), "lock": m.Lock(), "q": m.Queue()}
                for name, m in (("Manager", mm), ("shoal", sm))}
        for o in objs.values():                                  # warm up
            lock_ops(o["lock"], min(ops, 500), array("q"))
            queue_ops(o["q"], min(ops, 500), array("q"))

        def task(system: str, row: str) -> Callable[[], float]:
            o = objs[system]
            if row == "pool":
                return lambda: run_seed_pool(o["d"], o["lock"], updates) / updates * 1e6
            if row in UPDATES:
                return lambda: (run_processes(row, o["d"], o["lock"], updates)
                                / (PROCS * updates) * 1e6)
            s = samples.setdefault((system, row), array("q"))
            fn = lock_ops if row == "lock" else queue_ops
            target = o["lock"] if row == "lock" else o["q"]
            return lambda: fn(target, ops, s)

        tasks = [("Manager", "seed"), ("shoal", "seed"), ("Manager", "pool"), ("shoal", "pool"),
                 ("shoal", "nested"), ("shoal", "incr"), ("shoal", "held")]
        if has_locked:
            tasks.append(("shoal", "locked"))
        tasks += [("Manager", "lock"), ("shoal", "lock"), ("Manager", "queue"), ("shoal", "queue")]
        for r in range(rounds):
            for system, row in (tasks if r % 2 == 0 else tasks[::-1]):
                gc.collect()
                per_round.setdefault((system, row), []).append(task(system, row)())
            print(f"  round {r + 1}/{rounds} done", file=sys.stderr)
    result: dict[tuple[str, str], dict[str, float]] = {}
    for key, values in per_round.items():
        result[key] = {"median": statistics.median(values)}
        if key in samples:
            ns = sorted(samples[key])
            result[key].update(p50=_percentile(ns, 0.5), p90=_percentile(ns, 0.9))
    return result


# -- reporting --------------------------------------------------------------------------------

def _cell(r: dict[str, float] | None) -> str:
    if r is None:
        return "n/a"
    v = r["median"]
    text = f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.1f} µs"
    if "p50" in r:
        text += f" (p50 {r['p50']:.1f}, p90 {r['p90']:.1f})"
    return text


def table(result: dict[tuple[str, str], dict[str, float]], updates: int, ops: int) -> str:
    lines = ["| workload | per | Manager | shoal | Manager / shoal | target |",
             "| --- | --- | ---: | ---: | ---: | --- |"]
    for key, label, target in ROWS:
        sh = result.get(("shoal", key))
        # (b): against the seed program as written on Manager, the baseline
        mgr_key = key if ("Manager", key) in result else "pool"
        mgr = result.get(("Manager", mgr_key))
        per = "op" if key in ("lock", "queue") else "update"
        ratio = f"{mgr['median'] / sh['median']:.1f}×" if sh and mgr else "n/a"
        mgr_cell = _cell(mgr) if mgr_key == key else f"({_cell(mgr)}, seed program)"
        lines.append(f"| {label} | {per} | {mgr_cell} | {_cell(sh)} | {ratio} | {target} |")
    seed = result.get(("Manager", "seed"))
    b_rows = [(UPDATES[key][0], result[("shoal", key)])
              for key in ("nested", "incr", "held", "locked")
              if ("shoal", key) in result]
    if seed and b_rows:
        against = "; ".join(f"{name}: {seed['median'] / r['median']:.1f}×" for name, r in b_rows)
        lines.append("")
        lines.append(f"The (b) rows against Manager's seed pattern in 4 processes of their own "
                     f"(the first row, {_cell(seed)} per update, no Pool tasks): {against}.")
    return "\n".join(lines)


def section(tbl: str, command: str, rounds: int, updates: int, ops: int, load: str) -> str:
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"""{START}
## Synchronization: the seed's Lock + copy-back, its replacements, Lock and Queue per op

(a) The seed's update under a manager Lock (`lock.acquire(); row = d['test']; row[i] = i;
d['test'] = row; lock.release()`), the same code on `multiprocessing.Manager()` and on
`shoal.Manager()`: {PROCS} processes × {updates} updates each (processes started and connected
before the clock starts), and the seed program's own shape, a `Pool({PROCS})` task per update
({updates} tasks, proxies pickled into each; the pool started, and each worker connected by a
first task that takes the lock, before the clock starts): issue 3's baseline ("about 2.3 ms per
update" on Manager), against which it asks for at least 5× with the same code and at least 50×
with `incr` or `d.locked()`. (b) The same job on shoal without a separate Lock: {PROCS} processes ×
{updates} updates, compared with Manager's seed program as written from the same rounds. A
nested dict's proxy stays live (it is not a copy), so a process can take `row = d['test']`
once, at its first update, and make each update one round trip instead of two.
(c) `lock.acquire(); lock.release()` and (d) `q.put(i); q.get()`, one client, {ops:,} pairs per
round. {rounds} rounds, every workload and system once per round, the order alternating each
round. Each cell is the median over rounds of the time per update (wall time of the whole run
divided by the number of updates, so with 4 processes it is a throughput figure) or per op, with
p50/p90 of single ops for (c) and (d). Every round checks that the row holds every update.

{tbl}

Produced by `{command}` on {today}.
Machine: nproc {nproc}, {platform.system()} {platform.machine()}, Python {platform.python_version()};
1-minute load average {load} before the run and {_load()} after it.
{END}"""


def write_markdown(path: Path, text: str) -> None:
    replace_section(path, START, END, text, INTRO)



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="The seed's Lock + copy-back pattern, lock-free replacements, and per-op "
                    "Lock and Queue latency on multiprocessing.Manager and shoal.",
        epilog="example: python benchmarks/bench_sync.py --markdown docs/benchmarks.md")
    parser.add_argument("--quick", action="store_true",
                        help="3 rounds, 50 updates per process, 1,000 ops (a smoke run)")
    parser.add_argument("--rounds", type=int, help="rounds (default 7, or 3 with --quick)")
    parser.add_argument("--updates", type=int,
                        help="updates per process (default 100, or 50 with --quick)")
    parser.add_argument("--ops", type=int, help="Lock/Queue op pairs per round (default 5000, "
                                                "or 1000 with --quick)")
    parser.add_argument("--markdown", type=Path, metavar="FILE",
                        help="also rewrite this script's section of FILE (e.g. docs/benchmarks.md)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 7)
    updates = args.updates or (50 if args.quick else 100)
    ops = args.ops or (1000 if args.quick else 5000)

    command = command_line("bench_sync.py", argv)

    load = _load()
    result = measure(rounds, updates, ops)
    tbl = table(result, updates, ops)
    print(tbl)
    if args.markdown:
        write_markdown(args.markdown, section(tbl, command, rounds, updates, ops, load))
        print(f"wrote the bench_sync section of {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
