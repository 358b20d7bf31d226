"""Many concurrent clients against one ``shoal serve`` server over TCP loopback.

Each client thread loops for ``--duration`` seconds over small operations on shared dicts, picked
at random: 60 % ``d[k]``, 20 % ``d[k] = v``, 20 % ``d.incr(k)``, on 8 dicts of 1,000 keys. Every
operation is timed; the report gives total operations, ops/s, errors (there must be none) and
p50/p90/p99/max latency over all the samples of all threads.

shoal gives each process one connection, shared by all its threads, so the number of threads and
the number of connections are two different loads. Two shapes run, each against a fresh server:

* ``4x50``: 4 processes x 50 threads = 200 clients on 4 connections;
* ``50x4``: 50 processes x 4 threads = 200 clients on 50 connections.

Correctness is checked too: after the run, the counters that ``incr`` raised must add up to the
number of ``incr`` calls that returned, or the run fails.

Usage::

    python benchmarks/bench_load.py                       # both shapes, 30 s each
    python benchmarks/bench_load.py --quick               # both shapes, 5 s each
    python benchmarks/bench_load.py --shape 8x25          # other shapes (repeatable)
    python benchmarks/bench_load.py --markdown docs/benchmarks.md   # also rewrite our section

The exit status is 1 when any operation failed or a counter is off.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import shoal
from _common import INTRO, command_line, load_average as _load, replace_section

START, END = "<!-- bench_load:start -->", "<!-- bench_load:end -->"
REPO = Path(__file__).resolve().parent.parent
KEY = b"YmVuY2gtbG9hZC1rZXktMzItYnl0ZXMtbG9uZyEhIQ=="
DICTS, KEYS = 8, 1000
MIX = (("get", 0.6), ("set", 0.2), ("incr", 0.2))
WARMUP_OPS = 20


# -- the server --------------------------------------------------------------------------------

class Served:
    """A ``python -m shoal serve`` process on a free loopback port."""

    def __init__(self, directory: Path) -> None:
        keyfile = directory / "key"
        keyfile.write_bytes(KEY)
        keyfile.chmod(0o600)
        self.log = directory / "server.log"
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shoal", "serve", "--address", "127.0.0.1:0",
                 "--authkey-file", str(keyfile)],
                stdout=subprocess.PIPE, stderr=err, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("shoal serving on "):
            self.stop()
            raise RuntimeError(f"the server did not start: {line!r} {self.log.read_text()}")
        self.address = line.split()[-1]

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        if self.proc.stdout:
            self.proc.stdout.close()


# -- the clients -------------------------------------------------------------------------------

@dataclass
class ThreadResult:
    ops: dict[str, int] = field(default_factory=lambda: {name: 0 for name, _ in MIX})
    errors: int = 0
    messages: list[str] = field(default_factory=list)
    samples: array[int] = field(default_factory=lambda: array("q"))   # ns per operation
    elapsed: float = 0.0


def _client_thread(address: str, seed: int, ready: threading.Barrier, go: Any, start: Any,
                   duration: float, out: ThreadResult) -> None:
    m = shoal.connect(address, authkey=KEY)          # this process's one connection
    root_load = m.root["load"]
    dicts = [root_load[f"d{i}"] for i in range(DICTS)]   # this thread's own proxies
    rng = random.Random(seed)
    names = [name for name, _ in MIX]
    weights = [w for _, w in MIX]
    for i in range(WARMUP_OPS):
        dicts[i % DICTS].get(f"k{i}")
    ready.wait()
    go.wait()                                         # the parent has written the start time
    begin = start.value
    time.sleep(max(0.0, begin - time.monotonic()))
    deadline = begin + duration
    clock = time.perf_counter_ns
    samples, ops = out.samples, out.ops
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        d = dicts[rng.randrange(DICTS)]
        k = rng.randrange(KEYS)
        op = rng.choices(names, weights)[0]
        t0 = clock()
        try:
            if op == "get":
                d[f"k{k}"]
            elif op == "set":
                d[f"k{k}"] = k
            else:
                d.incr(f"c{k}")
        except Exception as e:   # counted, never hidden: the run fails if there is any
            out.errors += 1
            if len(out.messages) < 5:
                out.messages.append(f"{op}: {type(e).__name__}: {e}")
            continue
        samples.append(clock() - t0)
        ops[op] += 1
    out.elapsed = time.monotonic() - begin


def _client_process(address: str, threads: int, index: int, ready: Any, go: Any, start: Any,
                    duration: float, results: Any) -> None:
    """One client process: ``threads`` threads over this process's one connection."""
    outs = [ThreadResult() for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)
    workers = [threading.Thread(target=_client_thread,
                                args=(address, index * 1000 + t, barrier, go, start, duration,
                                      outs[t]))
               for t in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()                                    # every thread connected and warmed up
    ready.put(index)
    for w in workers:
        w.join()
    merged = ThreadResult()
    for o in outs:
        for name in merged.ops:
            merged.ops[name] += o.ops[name]
        merged.errors += o.errors
        merged.messages += o.messages[:5 - len(merged.messages)]
        merged.samples.extend(o.samples)
        merged.elapsed = max(merged.elapsed, o.elapsed)
    results.put((index, merged.ops, merged.errors, merged.messages, merged.samples.tobytes(),
                 merged.elapsed))


# -- one shape ---------------------------------------------------------------------------------

@dataclass
class ShapeResult:
    processes: int
    threads: int
    ops: dict[str, int]
    errors: int
    messages: list[str]
    elapsed: float
    p50: float
    p90: float
    p99: float
    max: float
    server_cpu: float           # fraction of one CPU during the measured window
    counters_ok: bool
    counters: tuple[int, int]   # (sum of the counters, incr calls that returned)
    log_problems: list[str]     # the server's error lines during the run

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def rate(self) -> float:
        return self.total / self.elapsed if self.elapsed else 0.0


def _percentile(sorted_ns: array[int], q: float) -> float:
    """The q-quantile in ms (nearest rank)."""
    if not sorted_ns:
        return float("nan")
    return float(sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))]) / 1e6


def run_shape(processes: int, threads: int, duration: float) -> ShapeResult:
    ctx = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        served = Served(Path(tmp))
        try:
            m = shoal.connect(served.address, authkey=KEY)
            m.root["load"] = {f"d{i}": {f"k{k}": k for k in range(KEYS)} for i in range(DICTS)}
            ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
            start = ctx.Value("d", 0.0, lock=False)
            procs = [ctx.Process(target=_client_process,
                                 args=(served.address, threads, i, ready, go, start, duration,
                                       results))
                     for i in range(processes)]
            for p in procs:
                p.start()
            for _ in procs:
                ready.get(timeout=300)
            print(f"  {processes} x {threads}: all {processes * threads} clients ready, "
                  f"running {duration:g} s", file=sys.stderr)
            # A common start (CLOCK_MONOTONIC is one clock for every process), written before
            # the threads are let go to read it.
            begin = time.monotonic() + 0.5
            start.value = begin
            go.set()
            time.sleep(max(0.0, begin - time.monotonic()))
            cpu0 = served.cpu_seconds()
            time.sleep(duration)
            cpu1 = served.cpu_seconds()
            collected = [results.get(timeout=duration + 300) for _ in procs]
            for p in procs:
                p.join(60)
            ops = {name: 0 for name, _ in MIX}
            errors, elapsed = 0, 0.0
            messages: list[str] = []
            samples = array("q")
            for _index, p_ops, p_errors, p_messages, p_samples, p_elapsed in collected:
                for name in ops:
                    ops[name] += p_ops[name]
                errors += p_errors
                messages += p_messages[:5 - len(messages)]
                chunk = array("q")
                chunk.frombytes(p_samples)
                samples.extend(chunk)
                elapsed = max(elapsed, p_elapsed)
            counted = sum(m.root["load"][f"d{i}"].get(f"c{k}", 0)
                          for i in range(DICTS) for k in range(KEYS))
            ordered = array("q", sorted(samples))
            return ShapeResult(
                processes, threads, ops, errors, messages, elapsed,
                _percentile(ordered, 0.50), _percentile(ordered, 0.90),
                _percentile(ordered, 0.99), (ordered[-1] / 1e6) if ordered else float("nan"),
                (cpu1 - cpu0) / duration, counted == ops["incr"], (counted, ops["incr"]),
                [line for line in served.log.read_text(errors="replace").splitlines()
                 if " ERROR " in line or "internal error" in line or "Traceback" in line])
        finally:
            served.stop()


# -- reporting ---------------------------------------------------------------------------------

def table(results: list[ShapeResult]) -> str:
    lines = [
        ("| clients | connections | operations | ops/s | errors | p50 ms | p90 ms | p99 ms | "
         "max ms | server CPU |"),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.processes} processes × {r.threads} threads | {r.processes} | {r.total:,} | "
            f"{r.rate:,.0f} | {r.errors} | {r.p50:.2f} | {r.p90:.2f} | {r.p99:.2f} | "
            f"{r.max:.1f} | {r.server_cpu:.0%} |")
    return "\n".join(lines)



def _commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=REPO, text=True,
                               capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha} (with uncommitted changes in src/)" if dirty else sha


def section(results: list[ShapeResult], command: str, duration: float, load: str,
            commit: str) -> str:
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mix = ", ".join(f"{w:.0%} {label}" for (_, w), label in
                    zip(MIX, ("`d[k]`", "`d[k] = v`", "`d.incr(k)`")))
    busiest = max(r.server_cpu for r in results)
    totals = {r.processes * r.threads for r in results}
    n = str(totals.pop()) if len(totals) == 1 else "many"
    if busiest < 0.6:
        pace = (f"The server was busy at most {busiest:.0%} of the time: on this machine the "
                f"client threads (Python, {nproc} CPUs shared by all of them and the server), not "
                f"the server, set the pace.")
    else:
        pace = (f"The server was busy up to {busiest:.0%} of the time: it is close to what its "
                f"one thread can serve.")
    intro = (
        f"{n.capitalize()} client threads against one `python -m shoal serve` server over TCP loopback, "
        f"{duration:g} s per row after a common start. Each thread loops over random small "
        f"operations on 8 shared dicts of 1,000 keys ({mix}), one at a time, each timed. shoal "
        f"shares one connection per process among its threads, so the rows differ in "
        f"connections: a few processes with many threads each, then many processes with a few "
        f"threads each. Latencies are over every operation of every thread (nearest-rank "
        f"percentiles); server CPU is the server's user + system time over the window, as a "
        f"share of one CPU (the server runs one thread). After each row the `incr` counters must "
        f"add up to the `incr` calls made, and the server's log must hold no error: both held in "
        f"every row shown.")
    reading = (
        f"{pace} With a closed loop of {n} clients, latency is mostly queueing: each client "
        f"always has one request out, so the mean latency is about {n} divided by the throughput "
        f"(Little's law). It shows how evenly time is shared among the clients, not the cost of "
        f"one call (the core latency section gives that).")
    produced = (
        f"Produced by `{command}` on {today}, shoal {commit}. Machine: nproc {nproc}, "
        f"{platform.system()} {platform.machine()}, Python {platform.python_version()}; 1-minute "
        f"load average {load} before the run and {_load()} right after it (the run's own client "
        f"processes count in the second figure).")
    return "\n".join([
        START, f"## Load: {n} concurrent clients on one `shoal serve` server", "",
        textwrap.fill(intro, 96), "", table(results), "", textwrap.fill(reading, 96), "",
        textwrap.fill(produced, 96), END])


def write_markdown(path: Path, text: str) -> None:
    replace_section(path, START, END, text, INTRO)



def _shape(text: str) -> tuple[int, int]:
    try:
        p, t = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is PROCESSESxTHREADS, like 4x50: {text!r}")
    if p < 1 or t < 1:
        raise argparse.ArgumentTypeError(f"a shape needs at least 1 process and 1 thread: {text!r}")
    return p, t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="200 concurrent clients (threads across processes) doing small operations "
                    "on shared dicts against one 'shoal serve' server over TCP loopback.",
        epilog="example: python benchmarks/bench_load.py --markdown docs/benchmarks.md")
    parser.add_argument("--duration", type=float, help="seconds per shape (default 30)")
    parser.add_argument("--quick", action="store_true", help="5 s per shape (a smoke run)")
    parser.add_argument("--shape", type=_shape, action="append", metavar="PxT",
                        help="processes x threads; repeatable (default: 4x50 and 50x4)")
    parser.add_argument("--markdown", type=Path, metavar="FILE",
                        help="also rewrite this script's section of FILE (e.g. docs/benchmarks.md)")
    args = parser.parse_args(argv)
    duration = args.duration or (5.0 if args.quick else 30.0)
    shapes = args.shape or [(4, 50), (50, 4)]

    command = command_line("bench_load.py", argv)

    load, commit = _load(), _commit()
    results = [run_shape(p, t, duration) for p, t in shapes]
    tbl = table(results)
    print(tbl)
    failed = False
    for r in results:
        for message in r.messages:
            print(f"  error ({r.processes}x{r.threads}): {message}", file=sys.stderr)
        for line in r.log_problems[:5]:
            print(f"  server log ({r.processes}x{r.threads}): {line}", file=sys.stderr)
        if r.errors or r.log_problems:
            failed = True
        if not r.counters_ok:
            print(f"  {r.processes}x{r.threads}: the incr counters add up to {r.counters[0]:,}, "
                  f"but {r.counters[1]:,} incr calls returned", file=sys.stderr)
            failed = True
    if args.markdown and not failed:
        write_markdown(args.markdown, section(results, command, duration, load, commit))
        print(f"wrote the bench_load section of {args.markdown}", file=sys.stderr)
    elif args.markdown:
        print("not writing the markdown section: the run had errors", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
