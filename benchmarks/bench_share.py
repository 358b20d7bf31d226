"""Round trips while other processes compute on the same CPUs: multiprocessing.Manager and
shoal side by side.

A server that waits for requests awake (shoal's loop spins a little after each busy turn,
yielding its CPU between two looks) must not lose its CPU to a process that computes: a
yielded loop is not asleep, so a request does not wake it, and it would wait for that process's
time slice. Two workloads, each timed on both systems in every round (order alternating):

* **hog**: a CPU-bound process (no client) pinned to the server's CPU, the server (all its
  threads) pinned there too, and one client on another CPU making ``--calls`` calls
  ``d[k] = v`` (a 0.3 ms pause every 4 calls, a client with a little work of its own). Needs
  2 CPUs.
* **workers**: ``--workers`` processes, nothing pinned, each for ``--duration`` s: 2 ms of
  computing, then 5 calls ``d[k] = v``, over and over (as Pool workers do).

Each cell gives the median over rounds of the round's mean, p50 and p99 of the single calls'
times (µs), and for the workers the calls made (the more, the better).

Usage::

    python benchmarks/bench_share.py                                # 5 rounds, print a table
    python benchmarks/bench_share.py --quick                        # 2 rounds, shorter
    python benchmarks/bench_share.py --markdown docs/benchmarks.md  # also rewrite our section
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import shoal
from _common import INTRO, command_line, load_average as _load, replace_section

START, END = "<!-- bench_share:start -->", "<!-- bench_share:end -->"
CTX = multiprocessing.get_context("fork")
SYSTEMS = ("Manager", "shoal")


def _hog() -> None:
    os.sched_setaffinity(0, {0})
    while True:
        pass


def _stats(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {"calls": len(times), "mean": statistics.fmean(times) * 1e6,
            "p50": times[len(times) // 2] * 1e6, "p99": times[int(len(times) * 0.99)] * 1e6}


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of process ``pid`` (Manager's server serves each client in a thread)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)


def hog_round(server_pid: int, d: Any, calls: int) -> dict[str, float]:
    everywhere = os.sched_getaffinity(0)
    _pin(server_pid, {0})
    os.sched_setaffinity(0, {1})
    hog = CTX.Process(target=_hog, daemon=True)
    hog.start()
    try:
        time.sleep(0.2)
        clock = time.perf_counter
        times = []
        for i in range(calls):
            t = clock()
            d[i % 100] = i
            times.append(clock() - t)
            if i % 4 == 3:
                time.sleep(0.0003)
    finally:
        hog.kill()
        hog.join()
        os.sched_setaffinity(0, everywhere)
        _pin(server_pid, everywhere)
    return _stats(times)


def _worker(d: Any, wid: int, duration: float, out: Any) -> None:
    clock = time.perf_counter
    times, k = [], 0
    d[wid] = 0                                  # connected before the clock starts
    end = time.monotonic() + duration
    while time.monotonic() < end:
        t = clock()
        while clock() - t < 0.002:
            pass
        for _ in range(5):
            t = clock()
            d[wid] = k
            times.append(clock() - t)
            k += 1
    out.put(times)


def workers_round(d: Any, workers: int, duration: float) -> dict[str, float]:
    out = CTX.Queue()
    procs = [CTX.Process(target=_worker, args=(d, w, duration, out)) for w in range(workers)]
    for p in procs:
        p.start()
    times = [t for _ in procs for t in out.get(timeout=duration + 60)]
    for p in procs:
        p.join(60)
    return _stats(times)


def measure(rounds: int, calls: int, workers: int, duration: float
            ) -> dict[tuple[str, str], dict[str, float]]:
    """{(system, workload): median over rounds of each figure}."""
    hog = {0, 1} <= os.sched_getaffinity(0)          # (it pins to CPUs 0 and 1)
    per_round: dict[tuple[str, str], list[dict[str, float]]] = {}
    with multiprocessing.Manager() as mm, shoal.Manager() as sm:
        managers: dict[str, Any] = {"Manager": mm, "shoal": sm}
        dicts = {name: m.dict() for name, m in managers.items()}
        tasks = [(s, w) for w in (("hog", "workers") if hog else ("workers",)) for s in SYSTEMS]
        for r in range(rounds):
            for system, workload in (tasks if r % 2 == 0 else tasks[::-1]):
                d = dicts[system]
                got = (hog_round(managers[system]._process.pid, d, calls) if workload == "hog"
                       else workers_round(d, workers, duration))
                per_round.setdefault((system, workload), []).append(got)
            print(f"  round {r + 1}/{rounds} done", file=sys.stderr)
    return {key: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            for key, rs in per_round.items()}


def table(result: dict[tuple[str, str], dict[str, float]], workers: int) -> str:
    labels = {"hog": "a CPU-bound process on the server's CPU, 1 client",
              "workers": f"{workers} workers: 2 ms of computing, then 5 calls"}
    lines = ["| workload | system | calls | mean µs | p50 µs | p99 µs "
             "| Manager / shoal (mean) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for workload, label in labels.items():
        if ("shoal", workload) not in result:
            continue
        ratio = result[("Manager", workload)]["mean"] / result[("shoal", workload)]["mean"]
        for system in SYSTEMS:
            r = result[(system, workload)]
            lines.append(f"| {label} | {system} | {r['calls']:,.0f} | {r['mean']:.0f} | "
                         f"{r['p50']:.0f} | {r['p99']:.0f} | "
                         f"{f'{ratio:.2f}×' if system == 'shoal' else ''} |")
    return "\n".join(lines)


def section(tbl: str, command: str, rounds: int, calls: int, workers: int, duration: float,
            load: str) -> str:
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    nproc = len(os.sched_getaffinity(0))
    return f"""{START}
## Sharing the CPUs: round trips while other processes compute

A server that waits for requests awake must not lose its CPU to a process that computes (see
docs/architecture.md, the loop). Two workloads, on `multiprocessing.Manager()` and on
`shoal.Manager()`, every round running each system once, the order alternating: a CPU-bound
process (not a client) pinned to the server's CPU with the server (all its threads), and one
client on the other CPU making {calls:,} calls `d[k] = v` (a 0.3 ms pause every 4 calls); and
{workers} worker processes, nothing pinned, each for {duration:g} s computing 2 ms and then
making 5 calls `d[k] = v`, over and over. Each cell is the median over {rounds} rounds: the
calls made, and the mean, p50 and p99 of the single calls' times.

{tbl}

Produced by `{command}` on {today}.
Machine: nproc {nproc}, {platform.system()} {platform.machine()}, \
Python {platform.python_version()};
1-minute load average {load} before the run and {_load()} after it.
{END}"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Round trips while other processes compute: Manager and shoal side by side.")
    parser.add_argument("--quick", action="store_true", help="2 rounds, shorter runs")
    parser.add_argument("--rounds", type=int, help="rounds (default 5, or 2 with --quick)")
    parser.add_argument("--calls", type=int, help="calls of the hog workload (default 2000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--duration", type=float, help="seconds per worker run (default 2)")
    parser.add_argument("--markdown", type=Path, metavar="FILE",
                        help="also write the section to FILE (docs/benchmarks.md)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 5)
    calls = args.calls or (500 if args.quick else 2000)
    duration = args.duration or (0.5 if args.quick else 2.0)
    command = command_line("bench_share.py", argv)

    load = _load()
    result = measure(rounds, calls, args.workers, duration)
    tbl = table(result, args.workers)
    print(tbl)
    if args.markdown:
        replace_section(args.markdown, START, END,
                        section(tbl, command, rounds, calls, args.workers, duration, load), INTRO)
        print(f"wrote the bench_share section of {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
