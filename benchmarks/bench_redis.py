"""Per-operation latency of shoal on Redis, beside plain redis-py doing the same work and beside
the local shoal server.

One client (this process), one call at a time, on three systems:

* **redis-py**: the plain commands that do the same work on the same server: ``HSET``/``HGET``
  on one hash, ``HINCRBY``, redis-py's own ``Lock`` (``SET NX PX`` + a Lua release), ``RPUSH``
  + ``LPOP``. What shoal's layer costs is the ratio to these.
* **shoal-redis**: ``shoal.redis.connect(url)``: ``d[k] = v``, ``d[k]``, ``d.incr(k)``, a Lock's
  acquire + release, a Queue's put + get (each call one EVALSHA of shoal's Lua).
* **shoal-local**: ``shoal.Manager()`` (a server process on a Unix socket).

Values are small ints on 1,000 keys. The systems are interleaved: each round runs every system
once (the order alternates from round to round), and the table gives the median over rounds of
each round's mean µs per op, with p50/p90 of the single-op times of all rounds.

A redis-server is started on a free loopback port in a temporary directory (``--save ''
--appendonly no``) and stopped at the end, unless ``--url`` names one.

Usage::

    python benchmarks/bench_redis.py                                 # 7 rounds x 2,000 ops
    python benchmarks/bench_redis.py --quick                         # 3 rounds x 300 ops
    python benchmarks/bench_redis.py --markdown docs/benchmarks.md   # also rewrite our section
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from array import array
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import shoal
import shoal.redis
from _common import INTRO, command_line, load_average as _load, redis_server
from _common import replace_section

START, END = "<!-- bench_redis:start -->", "<!-- bench_redis:end -->"
REPO = Path(__file__).resolve().parent.parent
SYSTEMS = ("redis-py", "shoal-redis", "shoal-local")
HASH = "bench:redis:h"

# -- the operations, per system ------------------------------------------------------------------

Op = Callable[[int], Any]


def redis_py_ops(url: str, stack: ExitStack) -> dict[str, Op]:
    import redis
    r = redis.Redis.from_url(url)
    stack.callback(r.close)
    r.delete(HASH)
    lock = r.lock("bench:redis:lock", timeout=10)

    def lock_cycle(i: int) -> None:
        lock.acquire()
        lock.release()

    def queue_cycle(i: int) -> None:
        r.rpush("bench:redis:q", i)
        r.lpop("bench:redis:q")
    return {"set": lambda i: r.hset(HASH, i % 1000, i), "get": lambda i: r.hget(HASH, i % 1000),
            "incr": lambda i: r.hincrby(HASH, "n", 1), "lock": lock_cycle, "queue": queue_cycle}


def shoal_ops(m: Any) -> dict[str, Op]:
    d, lk, q = m.dict(), m.Lock(), m.Queue()

    def lock_cycle(i: int) -> None:
        lk.acquire()
        lk.release()

    def queue_cycle(i: int) -> None:
        q.put(i)
        q.get()
    return {"set": lambda i: d.__setitem__(i % 1000, i), "get": lambda i: d[i % 1000],
            "incr": lambda i: d.incr("n"), "lock": lock_cycle, "queue": queue_cycle}


OPS = {"set": ("`d[k] = v` / HSET", 1), "get": ("`d[k]` / HGET", 1),
       "incr": ("`d.incr(k)` / HINCRBY", 1), "lock": ("Lock acquire + release", 2),
       "queue": ("Queue put + get / RPUSH + LPOP", 2)}


def _run(fn: Op, ops: int, samples: array) -> float:
    clock = time.perf_counter_ns
    t_start = clock()
    for i in range(ops):
        t0 = clock()
        fn(i)
        samples.append(clock() - t0)
    return (clock() - t_start) / ops


def _percentile(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000


def measure(url: str | None, rounds: int, ops: int) -> dict[tuple[str, str], dict[str, float]]:
    """{(system, op): {"median", "p50", "p90"}} in µs per op, over interleaved rounds."""
    per_round: dict[tuple[str, str], list[float]] = {}
    samples: dict[tuple[str, str], array] = {}
    with ExitStack() as stack:
        if url is None:
            try:
                url = f"redis://127.0.0.1:{stack.enter_context(redis_server())}/0"
            except RuntimeError as e:
                sys.exit(f"{e} (or pass --url)")
        namespace = f"bench-{os.getpid()}"
        rm = stack.enter_context(shoal.redis.connect(url, namespace=namespace))
        stack.callback(rm.purge)
        lm = stack.enter_context(shoal.Manager())
        systems = {"redis-py": redis_py_ops(url, stack), "shoal-redis": shoal_ops(rm),
                   "shoal-local": shoal_ops(lm)}
        for table in systems.values():                    # warm up: connections, scripts
            for fn in table.values():
                _run(fn, min(ops, 300), array("q"))
        order = list(systems)
        for r in range(rounds):
            for name in (order if r % 2 == 0 else order[::-1]):
                for op, fn in systems[name].items():
                    gc.collect()
                    s = samples.setdefault((name, op), array("q"))
                    per_round.setdefault((name, op), []).append(_run(fn, ops, s) / 1000)
            print(f"  round {r + 1}/{rounds} done", file=sys.stderr)
        shoal.redis.close_all()
    result = {}
    for key, means in per_round.items():
        ns = sorted(samples[key])
        result[key] = {"median": statistics.median(means), "p50": _percentile(ns, 0.5),
                       "p90": _percentile(ns, 0.9)}
    return result


# -- reporting ---------------------------------------------------------------------------------

def table(result: dict[tuple[str, str], dict[str, float]]) -> str:
    lines = ["| operation | redis-py µs/op | shoal-redis µs/op | shoal-local µs/op | "
             "shoal-redis / redis-py | shoal-redis / shoal-local |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for op, (label, _) in OPS.items():
        cells = []
        for name in SYSTEMS:
            r = result[(name, op)]
            cells.append(f"{r['median']:.1f} (p50 {r['p50']:.1f}, p90 {r['p90']:.1f})")
        rp, sr, sl = (result[(n, op)]["median"] for n in SYSTEMS)
        lines.append(f"| {label} | {' | '.join(cells)} | {sr / rp:.2f}× | {sr / sl:.2f}× |")
    return "\n".join(lines)



def _redis_version(url: str | None) -> str:
    exe = shutil.which("redis-server") or shutil.which("valkey-server")
    if url is not None or exe is None:
        return "a running server"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout
    return out.split(" sha=")[0].strip()


def section(tbl: str, command: str, rounds: int, ops: int, load: str, server: str) -> str:
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import redis
    return f"""{START}
## shoal on Redis: one operation, one client

Each operation one call at a time from one client, with small int values on 1,000 keys, on
plain redis-py doing the same work against the same server (HSET/HGET on one hash, HINCRBY,
redis-py's `Lock`, RPUSH + LPOP), on `shoal.redis.connect(url)` (each call one EVALSHA of
shoal's Lua: the per-object-lock check, reference counting, type-exact values) and on the local
`shoal.Manager()`. {server} on TCP loopback, started by the script with `--save ''
--appendonly no`. {rounds} rounds × {ops:,} ops per system and operation, the systems
interleaved (order alternating each round); each cell gives the median over rounds of the mean
µs/op, then p50 and p90 of the single-op times of all rounds. Ratios are of the medians: above
1.0 means shoal-on-Redis takes longer.

{tbl}

Produced by `{command}` on {today} (redis-py {redis.__version__}).
Machine: nproc {nproc}, {platform.system()} {platform.machine()}, Python {platform.python_version()};
1-minute load average {load} before the run and {_load()} after it.
{END}"""


def write_markdown(path: Path, text: str) -> None:
    replace_section(path, START, END, text, INTRO)



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Per-op latency of shoal on Redis beside plain redis-py and the local shoal "
                    "server, interleaved over several rounds.",
        epilog="example: python benchmarks/bench_redis.py --markdown docs/benchmarks.md")
    parser.add_argument("--quick", action="store_true", help="3 rounds x 300 ops (a smoke run)")
    parser.add_argument("--rounds", type=int, help="rounds (default 7, or 3 with --quick)")
    parser.add_argument("--ops", type=int, help="ops per round (default 2000, or 300 with --quick)")
    parser.add_argument("--url", help="use this Redis server instead of starting one")
    parser.add_argument("--markdown", type=Path, metavar="FILE",
                        help="also rewrite this script's section of FILE (e.g. docs/benchmarks.md)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 7)
    ops = args.ops or (300 if args.quick else 2000)

    command = command_line("bench_redis.py", argv, hide=("--url",))

    load = _load()
    server = _redis_version(args.url)
    result = measure(args.url, rounds, ops)
    tbl = table(result)
    print(tbl)
    if args.markdown:
        write_markdown(args.markdown, section(tbl, command, rounds, ops, load, server))
        print(f"wrote the bench_redis section of {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
