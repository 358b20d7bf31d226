"""Per-operation latency of a shared dict: the socket floor, multiprocessing.Manager and shoal.

One client (this process) talks to one server process and does ``d[k] = v`` then ``d[k]``,
one request at a time, on three systems:

* **floor**: a raw AF_UNIX ping-pong with a server process that keeps a dict; small
  length-prefixed messages, blocking sockets, no serializer beyond ``struct``. Nothing that
  goes through a socket to another process can be faster than this.
* **Manager**: ``multiprocessing.Manager().dict()``.
* **shoal**: ``shoal.Manager().dict()``.

The machine may be shared and noisy, so the systems are interleaved: each round runs every
system once (the order alternates from round to round), and the table reports the median over
rounds of each round's mean time per op, with p50/p90 of the single-op times of all rounds.

Usage::

    python benchmarks/bench_core.py                       # 7 rounds x 5,000 ops, print a table
    python benchmarks/bench_core.py --quick               # 3 rounds x 1,000 ops
    python benchmarks/bench_core.py --markdown docs/benchmarks.md   # also rewrite our section
"""

from __future__ import annotations

import argparse
import datetime
import gc
import multiprocessing
import os
import platform
import socket
import statistics
import struct
import sys
import time
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import shoal
from _common import INTRO, command_line, load_average as _load, replace_section

START, END = "<!-- bench_core:start -->", "<!-- bench_core:end -->"
REPO = Path(__file__).resolve().parent.parent

# -- the floor: a raw AF_UNIX ping-pong --------------------------------------------------------

_LEN = struct.Struct("!I")
_KEY = struct.Struct("!q")
_SET, _GET = b"S", b"G"


def _recv_message(sock: socket.socket, buf: bytearray) -> bytes:
    """One length-prefixed message (b"" when the peer closed)."""
    del buf[:]
    while len(buf) < 4 or len(buf) < 4 + _LEN.unpack_from(buf)[0]:
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        buf += chunk
    return bytes(buf[4:])


def _floor_server(sock: socket.socket) -> None:
    store: dict[bytes, bytes] = {}
    buf = bytearray()
    while True:
        msg = _recv_message(sock, buf)
        if not msg:
            return
        key = msg[1:9]
        if msg[:1] == _SET:
            store[key] = msg[9:]
            reply = b""
        else:
            reply = store.get(key, b"")
        sock.sendall(_LEN.pack(len(reply)) + reply)


class FloorDict:
    """The client end of the floor: ``d[k] = v`` and ``d[k]`` for int keys and values."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()

    def __setitem__(self, key: int, value: int) -> None:
        body = _SET + _KEY.pack(key) + _KEY.pack(value)
        self._sock.sendall(_LEN.pack(len(body)) + body)
        _recv_message(self._sock, self._buf)

    def __getitem__(self, key: int) -> int:
        body = _GET + _KEY.pack(key)
        self._sock.sendall(_LEN.pack(len(body)) + body)
        return _KEY.unpack(_recv_message(self._sock, self._buf))[0]  # type: ignore[no-any-return]


@contextmanager
def floor_dict() -> Iterator[FloorDict]:
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = multiprocessing.Process(target=_floor_server, args=(theirs,), daemon=True)
    proc.start()
    theirs.close()
    try:
        yield FloorDict(mine)
    finally:
        mine.close()
        proc.join(5)


@contextmanager
def manager_dict() -> Iterator[Any]:
    with multiprocessing.Manager() as m:
        yield m.dict()


@contextmanager
def shoal_dict() -> Iterator[Any]:
    with shoal.Manager() as m:
        yield m.dict()


SYSTEMS: dict[str, Callable[[], Any]] = {
    "floor": floor_dict, "Manager": manager_dict, "shoal": shoal_dict}

# -- measuring ---------------------------------------------------------------------------------


def _set_ops(d: Any, ops: int, keys: int, samples: array) -> float:
    clock = time.perf_counter_ns
    t_start = clock()
    for i in range(ops):
        t0 = clock()
        d[i % keys] = i
        samples.append(clock() - t0)
    return (clock() - t_start) / ops


def _get_ops(d: Any, ops: int, keys: int, samples: array) -> float:
    clock = time.perf_counter_ns
    t_start = clock()
    for i in range(ops):
        t0 = clock()
        d[i % keys]
        samples.append(clock() - t0)
    return (clock() - t_start) / ops


OPS = {"set": ("`d[k] = v`", _set_ops), "get": ("`d[k]`", _get_ops)}


def _percentile(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000


def measure(rounds: int, ops: int, keys: int = 1000) -> dict[tuple[str, str], dict[str, float]]:
    """{(system, op): {"median": µs/op, "p50": µs, "p90": µs}} over ``rounds`` interleaved rounds."""
    per_round: dict[tuple[str, str], list[float]] = {}
    samples: dict[tuple[str, str], array] = {}
    with floor_dict() as fd, manager_dict() as md, shoal_dict() as sd:
        dicts = {"floor": fd, "Manager": md, "shoal": sd}
        for d in dicts.values():                          # warm up: connections, caches
            _set_ops(d, min(ops, 500), keys, array("q"))
            _get_ops(d, min(ops, 500), keys, array("q"))
        order = list(dicts)
        for r in range(rounds):
            for name in (order if r % 2 == 0 else order[::-1]):
                for op, (_, fn) in OPS.items():
                    gc.collect()
                    s = samples.setdefault((name, op), array("q"))
                    per_round.setdefault((name, op), []).append(fn(dicts[name], ops, keys, s) / 1000)
            print(f"  round {r + 1}/{rounds} done", file=sys.stderr)
    result = {}
    for key, means in per_round.items():
        ns = sorted(samples[key])
        result[key] = {"median": statistics.median(means), "p50": _percentile(ns, 0.5),
                       "p90": _percentile(ns, 0.9)}
    return result


# -- reporting ---------------------------------------------------------------------------------

def table(result: dict[tuple[str, str], dict[str, float]]) -> str:
    lines = ["| operation | floor µs/op | Manager µs/op | shoal µs/op | shoal / floor | "
             "Manager / shoal |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for op, (label, _) in OPS.items():
        cells = []
        for name in SYSTEMS:
            r = result[(name, op)]
            cells.append(f"{r['median']:.1f} (p50 {r['p50']:.1f}, p90 {r['p90']:.1f})")
        floor, mgr, sh = (result[(n, op)]["median"] for n in SYSTEMS)
        lines.append(f"| {label} | {' | '.join(cells)} | {sh / floor:.2f}× | {mgr / sh:.2f}× |")
    return "\n".join(lines)



def section(tbl: str, command: str, rounds: int, ops: int, load: str) -> str:
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"""{START}
## Core latency: one dict operation, one client

`d[k] = v` and `d[k]` with small int keys and values, one request at a time from one client to
one server process, on a raw AF_UNIX ping-pong (the floor: length-prefixed messages, blocking
sockets, a dict in the server), `multiprocessing.Manager().dict()` and `shoal.Manager().dict()`.
{rounds} rounds × {ops:,} ops per system and operation, the systems interleaved (order alternating
each round); each cell gives the median over rounds of the mean µs/op, then p50 and p90 of the
single-op times of all rounds. Ratios are of the medians.

{tbl}

Produced by `{command}` on {today}.
Machine: nproc {nproc}, {platform.system()} {platform.machine()}, Python {platform.python_version()};
1-minute load average {load} before the run and {_load()} after it.
{END}"""


def write_markdown(path: Path, text: str) -> None:
    replace_section(path, START, END, text, INTRO)



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Per-op latency of d[k] = v and d[k] on a raw AF_UNIX floor, "
                    "multiprocessing.Manager and shoal, interleaved over several rounds.",
        epilog="example: python benchmarks/bench_core.py --markdown docs/benchmarks.md")
    parser.add_argument("--quick", action="store_true", help="3 rounds x 1,000 ops (a smoke run)")
    parser.add_argument("--rounds", type=int, help="rounds (default 7, or 3 with --quick)")
    parser.add_argument("--ops", type=int, help="ops per round (default 5000, or 1000 with --quick)")
    parser.add_argument("--markdown", type=Path, metavar="FILE",
                        help="also rewrite this script's section of FILE (e.g. docs/benchmarks.md)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 7)
    ops = args.ops or (1000 if args.quick else 5000)

    command = command_line("bench_core.py", argv)

    load = _load()
    result = measure(rounds, ops)
    tbl = table(result)
    print(tbl)
    if args.markdown:
        write_markdown(args.markdown, section(tbl, command, rounds, ops, load))
        print(f"wrote the bench_core section of {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
