"""What durability costs: write throughput under each fsync policy, and restart time.

Two parts, each beside its baselines from the same run:

* **writes**: total ``d[k] = v`` per second (1,000 small int keys, int values) from client
  processes started together, on a shoal server persisting with ``fsync="always"`` (1 client:
  one fsync per write; 4 and 8 clients, and 4 clients of 8 writing threads each: what group
  commit makes of it), ``"everysec"`` and ``"no"``,
  on shoal without persistence and on ``multiprocessing.Manager`` (memory only, the reference),
  and on SQLite in WAL mode (stdlib ``sqlite3``, one autocommitted ``INSERT OR REPLACE`` per
  write, ``synchronous=FULL`` and ``NORMAL``), the alternative engine. Each round also times
  the raw ``os.fsync`` of a small append in the same directory: 1 / that latency is the most
  writes per second that one fsync per write allows; and the engines alone, in one thread (the
  journal append shoal's server makes, SQLite's autocommitted insert), with and without fsync.
* **restart**: seconds from launching ``python -m shoal serve --persist DIR`` to its
  "serving on" line, for 1,000,000 int keys in the root dict written with ``root.update`` in
  chunks of 10,000 (kept in the journal), the same after ``server.compact()`` (kept in a
  snapshot), 1,000,000 keys written one ``root[k] = v`` at a time (pipelined; the server
  compacts as it goes), and an empty directory (the interpreter and import alone).

The machine may be shared and noisy, so every case runs once per round, in an order that
alternates from round to round, and the tables give medians over rounds.

Usage::

    python benchmarks/bench_persist.py                       # both parts, 5 rounds
    python benchmarks/bench_persist.py --quick               # 2 rounds, short runs, 100,000 keys
    python benchmarks/bench_persist.py --writes              # one part only
    python benchmarks/bench_persist.py --markdown docs/benchmarks.md   # also rewrite our section
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import multiprocessing
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import shoal
from _common import INTRO, join_parts, kept_parts, replace_section
from _common import load_average as _load, shown_path as _shown_path

NAME = "bench_persist"
START, END = f"<!-- {NAME}:start -->", f"<!-- {NAME}:end -->"
REPO = Path(__file__).resolve().parent.parent
KEY = b"bench-persist-authkey-0123456789"
KEYS = 1000
THREADS = 8         # writing threads in each client process of the threaded cases


# -- small helpers -----------------------------------------------------------------------------


def _nproc() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _shoal_version() -> str:
    """The commit the measured shoal comes from, flagged when src/ has uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"shoal {shoal.__version__}"
    return f"shoal {shoal.__version__} at commit {head}" + (
        " plus uncommitted changes in src/" if dirty else "")


def _forget_connections() -> None:
    from shoal import _client
    for conn in list(_client._connections.values()):
        _client.forget_connection(conn)


# -- part 1: write throughput ------------------------------------------------------------------

# (row label, how many client processes, threads writing in each, system kind, its setting)
WRITE_CASES: list[tuple[str, int, int, str, str]] = [
    ("shoal, `fsync=\"always\"`", 1, 1, "shoal", "always"),
    ("shoal, `fsync=\"always\"`", 4, 1, "shoal", "always"),
    ("shoal, `fsync=\"always\"`", 8, 1, "shoal", "always"),
    ("shoal, `fsync=\"always\"`", 4, THREADS, "shoal", "always"),
    ("shoal, `fsync=\"everysec\"`", 4, 1, "shoal", "everysec"),
    ("shoal, `fsync=\"no\"`", 4, 1, "shoal", "no"),
    ("shoal, no persistence", 4, 1, "shoal", "none"),
    ("shoal, no persistence", 4, THREADS, "shoal", "none"),
    ("multiprocessing.Manager (memory only)", 4, 1, "Manager", ""),
    ("SQLite WAL, `synchronous=FULL`", 1, 1, "sqlite", "FULL"),
    ("SQLite WAL, `synchronous=FULL`", 4, 1, "sqlite", "FULL"),
    ("SQLite WAL, `synchronous=NORMAL`", 4, 1, "sqlite", "NORMAL"),
]


def _sqlite_open(path: str, sync: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=60, isolation_level=None)   # autocommit: a commit a write
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={sync}")
    return db


def _writer(kind: str, handle: Any, wid: int, threads: int, duration: float, barrier: Any,
            results: Any) -> None:
    """One client process: warm up, wait for the others, then write for ``duration`` s from
    ``threads`` threads (shoal's threads share the process's connection)."""
    try:
        if kind == "sqlite":
            path, sync = handle
            db = _sqlite_open(path, sync)
            stmt = "INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)"

            def setf(k: int, v: int) -> None:
                db.execute(stmt, (k, v))
            close: Callable[[], None] = db.close
        else:
            setf, close = handle.__setitem__, (lambda: None)
        for i in range(100):                              # warm up: connection, caches
            setf((wid * 7919 + i) % KEYS, i)
        barrier.wait(timeout=300)
        clock = time.perf_counter
        counts = [0] * threads

        def write(t: int, end: float) -> None:
            base = (wid * threads + t) * 7919
            n = 0
            while True:
                setf((base + n) % KEYS, n)
                n += 1
                if clock() >= end:
                    break
            counts[t] = n
        t0 = clock()
        if threads == 1:
            write(0, t0 + duration)
        else:
            pool = [threading.Thread(target=write, args=(t, t0 + duration))
                    for t in range(threads)]
            for th in pool:
                th.start()
            for th in pool:
                th.join()
            if not all(counts):
                raise RuntimeError("a writing thread failed")
        elapsed = clock() - t0
        close()
        results.put((sum(counts), elapsed, None))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which decides
        with contextlib.suppress(Exception):
            barrier.abort()
        results.put((0, 0.0, f"{type(e).__name__}: {e}"))


def run_writers(kind: str, handle: Any, nclients: int, threads: int, duration: float) -> float:
    """Total writes per second of ``nclients`` processes started together."""
    barrier = multiprocessing.Barrier(nclients + 1)
    results: Any = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_writer, daemon=True,
                                     args=(kind, handle, i, threads, duration, barrier, results))
             for i in range(nclients)]
    for p in procs:
        p.start()
    try:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=300)
        out = [results.get(timeout=duration + 300) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join()
    errors = [e for *_, e in out if e]
    if errors:
        raise RuntimeError(errors[0])
    return sum(n / elapsed for n, elapsed, _ in out)


def fsync_latency(directory: str, n: int) -> list[float]:
    """Seconds per ``os.fsync`` after a 64-byte append, ``n`` times, in ``directory``."""
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    times = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 64)
            t0 = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    return times


# The engines alone, in one thread: what the server's loop would pay per write.
ENGINE_CASES: list[tuple[str, str, bool]] = [
    ("shoal journal: encode the record, append it (`os.write`)", "journal", False),
    ("SQLite WAL, `synchronous=NORMAL`: one autocommitted `INSERT OR REPLACE`", "NORMAL", False),
    ("shoal journal, and `os.fsync`", "journal", True),
    ("SQLite WAL, `synchronous=FULL`: one autocommitted `INSERT OR REPLACE`", "FULL", True),
]


def _engine_writer(base: str, engine: str, fsync: bool) -> tuple[Callable[[int], None],
                                                                   Callable[[], None]]:
    """(write(i), close) for one engine case, on fresh files in ``base``."""
    if engine == "journal":
        from shoal._codec import Codec
        from shoal._persist import Store
        directory = tempfile.mkdtemp(dir=base)
        store = Store(directory, "always" if fsync else "no")
        store.load()
        codec = Codec()

        def write(i: int) -> None:
            # The record a `d[k] = v` request becomes: [0, next id, the request's bytes].
            request = codec.encode([1, "__setitem__", [i % KEYS, i]])
            store.append(codec.encode([0, 2, request]))
            store.commit()
        return write, store.close
    fd, path = tempfile.mkstemp(dir=base, suffix=".db")
    os.close(fd)
    os.unlink(path)
    db = _sqlite_open(path, engine)
    db.execute("CREATE TABLE kv (k INTEGER PRIMARY KEY, v)")
    db.executemany("INSERT INTO kv VALUES (?, 0)", ((k,) for k in range(KEYS)))
    stmt = "INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)"

    def sql_write(i: int) -> None:
        db.execute(stmt, (i % KEYS, i))
    return sql_write, db.close


def engine_cost(base: str, engine: str, fsync: bool, n: int) -> float:
    """Microseconds per write of one engine case, ``n`` writes after 100 to warm up."""
    write, close = _engine_writer(base, engine, fsync)
    try:
        for i in range(100):
            write(i)
        t0 = time.perf_counter()
        for i in range(n):
            write(i)
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        close()


@contextlib.contextmanager
def write_systems(base: str) -> Iterator[dict[tuple[str, str], Any]]:
    """Every system of the writes part, started and prefilled: {(kind, setting): handle}."""
    with contextlib.ExitStack() as stack:
        handles: dict[tuple[str, str], Any] = {}
        for *_, kind, setting in WRITE_CASES:
            if (kind, setting) in handles:
                continue
            if kind == "shoal":
                persist = None if setting == "none" else os.path.join(base, f"shoal-{setting}")
                m = stack.enter_context(shoal.Manager(persist=persist, fsync=setting
                                                      if persist else "everysec"))
                d = m.root
            elif kind == "Manager":
                d = stack.enter_context(multiprocessing.Manager()).dict()
            else:
                path = os.path.join(base, f"sqlite-{setting}.db")
                db = _sqlite_open(path, setting)
                db.execute("CREATE TABLE kv (k INTEGER PRIMARY KEY, v)")
                db.executemany("INSERT INTO kv VALUES (?, 0)", ((k,) for k in range(KEYS)))
                db.close()
                handles[(kind, setting)] = (path, setting)
                continue
            d.update({k: 0 for k in range(KEYS)})
            handles[(kind, setting)] = d
        yield handles


def _journal_counts(d: Any) -> tuple[int, int]:
    """(records written, fsyncs) of the journal of the server behind proxy ``d``."""
    p = d._conn.call(0, "inspect")["persistence"]
    return p["records"], p["fsyncs"]


def measure_writes(rounds: int, duration: float, base: str, engine_ops: int
                   ) -> tuple[dict[int, list[float]], list[float], dict[int, list[float]],
                              dict[int, list[float]]]:
    """({case index: [writes/s per round]}, every fsync latency measured, {engine case index:
    [µs per write per round]}, {shoal `always` case index: [writes per fsync per round]}) over
    ``rounds``."""
    res: dict[int, list[float]] = {i: [] for i in range(len(WRITE_CASES))}
    per_fsync: dict[int, list[float]] = {i: [] for i, c in enumerate(WRITE_CASES)
                                         if c[3:] == ("shoal", "always")}
    fsyncs: list[float] = []
    engines: dict[int, list[float]] = {i: [] for i in range(len(ENGINE_CASES))}
    with write_systems(base) as handles:
        order = list(range(len(WRITE_CASES)))
        for r in range(rounds):
            fsyncs += fsync_latency(base, 200)
            for i in (order if r % 2 == 0 else order[::-1]):
                _, n, threads, kind, setting = WRITE_CASES[i]
                gc.collect()
                handle = handles[(kind, setting)]
                before = _journal_counts(handle) if i in per_fsync else (0, 0)
                res[i].append(run_writers(kind, handle, n, threads, duration))
                if i in per_fsync:
                    after = _journal_counts(handle)
                    per_fsync[i].append((after[0] - before[0]) / max(1, after[1] - before[1]))
            fsyncs += fsync_latency(base, 200)
            eorder = list(range(len(ENGINE_CASES)))
            for i in (eorder if r % 2 == 0 else eorder[::-1]):
                _, engine, fsync = ENGINE_CASES[i]
                gc.collect()
                engines[i].append(engine_cost(base, engine, fsync,
                                              engine_ops // 20 if fsync else engine_ops))
            print(f"  writes round {r + 1}/{rounds} done (load {_load()})", file=sys.stderr)
    return res, fsyncs, engines, per_fsync


def engine_table(engines: dict[int, list[float]]) -> str:
    lines = ["| engine, one thread | µs per write | writes/s |", "| --- | ---: | ---: |"]
    for i, (label, _, _) in enumerate(ENGINE_CASES):
        us = statistics.median(engines[i])
        lines.append(f"| {label} | {us:,.1f} | {1e6 / us:,.0f} |")
    return "\n".join(lines)


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def writes_table(res: dict[int, list[float]], fsyncs: list[float],
                 per_fsync: dict[int, list[float]]) -> tuple[str, str]:
    """(the table, the lines comparing it with the goals)."""
    med = {i: statistics.median(v) for i, v in res.items()}
    carried = {i: statistics.median(v) for i, v in per_fsync.items()}
    fs = statistics.median(fsyncs)
    ceiling = 1 / fs

    def find(kind: str, setting: str, n: int, threads: int = 1) -> float:
        return next(med[i] for i, c in enumerate(WRITE_CASES)
                    if c[1:] == (n, threads, kind, setting))

    def carried_by(n: int, threads: int = 1) -> float:
        return next(carried[i] for i, c in enumerate(WRITE_CASES)
                    if c[1:] == (n, threads, "shoal", "always"))

    none4 = find("shoal", "none", 4)
    lines = [("| system | clients | writes/s | µs per write | vs shoal without persistence "
              "| writes per fsync |"), "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for i, (label, n, threads, kind, setting) in enumerate(WRITE_CASES):
        w = med[i]
        each = f"{carried[i]:.2f}" if i in carried else "—"
        clients = f"{n} × {threads} threads" if threads > 1 else f"{n}"
        lines.append(f"| {label} | {clients} | {w:,.0f} | {1e6 / w:,.1f} | {w / none4:.2f}× "
                     f"| {each} |")
    lines.append(f"| one `os.fsync` per write (1 / median fsync latency) | — | {ceiling:,.0f} | "
                 f"{fs * 1e6:,.1f} | {ceiling / none4:.2f}× | 1 |")
    always1, always4 = find("shoal", "always", 1), find("shoal", "always", 4)
    always8 = find("shoal", "always", 8)
    threaded = find("shoal", "always", 4, THREADS)
    threaded_none = find("shoal", "none", 4, THREADS)
    everysec, no = find("shoal", "everysec", 4), find("shoal", "no", 4)
    sqlite4 = find("sqlite", "FULL", 4)
    goals = [
        (f"- Raw `os.fsync` of a 64-byte append in the same directory: median "
         f"{fs * 1e6:,.0f} µs, p90 {_pct(fsyncs, 0.9) * 1e6:,.0f} µs ({len(fsyncs)} samples "
         f"spread over the rounds)."),
        (f"- Group commit (goal: 4 clients with `always` many times one fsync per write): 4 "
         f"client processes with {THREADS} writing threads each write {threaded:,.0f}/s, "
         f"{threaded / ceiling:.2f}× one fsync per write ({ceiling:,.0f}/s); each fsync "
         f"carried {carried_by(4, THREADS):.2f} writes (the server's own counts, `shoal "
         f"inspect`'s `persistence`), and the same load without persistence writes "
         f"{threaded_none:,.0f}/s. With one thread each, 4 clients have at most 4 writes in "
         f"flight, so no fsync can carry more: they write {always4:,.0f}/s, "
         f"{always4 / always1:.2f}× one client ({always1:,.0f}/s) and {always4 / ceiling:.2f}× "
         f"one fsync per write, {carried_by(4):.2f} writes per fsync; 8 clients: "
         f"{always8:,.0f}/s, {carried_by(8):.2f} writes per fsync."),
        (f"- `everysec` beside no persistence (goal: within 1.5×): {none4 / everysec:.2f}× "
         f"slower; `no`: {none4 / no:.2f}× slower."),
        (f"- The alternative engine: SQLite in WAL mode with `synchronous=FULL`, 4 writers: "
         f"{sqlite4:,.0f}/s; shoal with `always` writes {always4 / sqlite4:.2f}× as many; "
         f"with `synchronous=NORMAL` (no fsync per commit): "
         f"{find('sqlite', 'NORMAL', 4):,.0f}/s, against shoal with `everysec` "
         f"{everysec:,.0f}/s."),
    ]
    return "\n".join(lines), "\n".join(goals)


def part_writes(args: argparse.Namespace) -> str:
    load = _load()
    with tempfile.TemporaryDirectory(prefix="bench-persist-", dir=args.dir) as base:
        res, fsyncs, engines, per_fsync = measure_writes(args.rounds, args.duration, base,
                                                         args.engine_ops)
    tbl, goals = writes_table(res, fsyncs, per_fsync)
    return f"""### Write throughput under each fsync policy

`d[k] = v` on 1,000 int keys with int values, from client processes started together (each
warms up with 100 writes, then writes for {args.duration:g} s after a barrier; "4 × {THREADS}
threads": {THREADS} threads of each process write at once, through its one connection); writes/s
is the sum over clients of each client's writes over its own run time, median over
{args.rounds} round{'s' * (args.rounds != 1)} with the cases interleaved. shoal writes into
`m.root` of `shoal.Manager(persist=DIR, fsync=…)`; SQLite runs one autocommitted `INSERT OR
REPLACE INTO kv (k, v)` per write on one WAL-mode file (each writer its own connection, busy
timeout 60 s); Manager is `multiprocessing.Manager().dict()`, with no persistence.

{tbl}

{goals}

The engines alone, without a client or a socket: one thread writes the same `d[k] = v` into
shoal's journal (`shoal._persist.Store`: the record encoded, framed and appended with one
`os.write`, as the server does for each commit) and into SQLite (WAL mode, autocommit), which is
what each would cost the server's loop per write. {args.engine_ops:,} writes per round without
fsync, {args.engine_ops // 20:,} with; medians over the rounds.

{engine_table(engines)}

{_produced(args, load)}"""


# -- part 2: restart time ----------------------------------------------------------------------

def _serve_cmd(directory: str, keyfile: str) -> list[str]:
    return [sys.executable, "-m", "shoal", "serve", "--address", "127.0.0.1:0",
            "--authkey-file", keyfile, "--persist", directory, "--fsync", "no"]


def time_restart(directory: str, keyfile: str, expect: int | None) -> float:
    """Seconds from launching ``shoal serve`` on ``directory`` to its first line; checks the
    root's size when ``expect`` is given (after the timing)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(_serve_cmd(directory, keyfile), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        took = time.perf_counter() - t0
        if not line.startswith("shoal serving on "):
            raise RuntimeError(f"shoal serve on {directory} did not start: {line!r}")
        if expect is not None:
            m = shoal.connect(line.split()[-1], authkey=KEY)
            got = len(m.root)
            _forget_connections()
            if got != expect:
                raise RuntimeError(f"restarted with {got:,} keys, not {expect:,}")
    finally:
        # SIGKILL: nothing was written, and a SIGTERM that comes before the loop runs is lost.
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
        if proc.stdout:
            proc.stdout.close()
    return took


def _prepare(directory: str, keys: int, how: str, out: Any) -> None:
    """Fill ``directory`` with ``keys`` int keys in the root (run in a child process). For
    "snapshot", then write a snapshot (``server.compact()``) while a client keeps calling, and
    put into ``out`` (seconds the snapshot took, seconds ``compact()`` held the loop, the
    slowest call meanwhile in seconds, calls answered meanwhile); None for the other cases."""
    from shoal._server import Server
    srv = Server(None, KEY, persist=directory, fsync="no")
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    root = shoal.connect(srv.address, authkey=KEY).root
    if how == "single":
        step = 100_000
        for lo in range(0, keys, step):
            with shoal.pipeline(root) as p:
                for k in range(lo, min(lo + step, keys)):
                    p[k] = k
    else:
        for lo in range(0, keys, 10_000):
            root.update({k: k for k in range(lo, min(lo + 10_000, keys))})
    assert len(root) == keys
    result = None
    if how == "snapshot":
        called = threading.Event()
        held = 0.0

        def compact() -> None:
            nonlocal held
            t0 = time.perf_counter()
            srv.compact()
            held = time.perf_counter() - t0
            called.set()
        slowest, calls = 0.0, 0
        t0 = time.perf_counter()
        srv.loop.call_soon_threadsafe(compact)
        while not called.is_set() or srv.compacting:
            c0 = time.perf_counter()
            root.get(0)
            slowest, calls = max(slowest, time.perf_counter() - c0), calls + 1
        assert srv.store is not None and srv.store.snapshots == 1
        result = (time.perf_counter() - t0, held, slowest, calls)
    _forget_connections()
    out.put(result)
    srv.loop.call_soon_threadsafe(srv.stop)
    t.join(600)


RESTART_CASES = [
    ("empty directory (interpreter, import, listen)", "empty"),
    ("{keys} keys in the journal (`root.update`, chunks of 10,000)", "journal"),
    ("{keys} keys in a snapshot (after `server.compact()`)", "snapshot"),
    ("{keys} keys written one `root[k] = v` at a time (pipelined)", "single"),
]


def _sizes(directory: str) -> str:
    snap = os.path.join(directory, "snapshot")
    journals = [f for f in os.listdir(directory) if f.startswith("journal.")]
    js = sum(os.path.getsize(os.path.join(directory, f)) for f in journals)
    ss = os.path.getsize(snap) if os.path.exists(snap) else 0
    return f"{ss / 1e6:,.1f} MB | {js / 1e6:,.1f} MB"


def part_restart(args: argparse.Namespace) -> str:
    load = _load()
    keys = args.keys
    with tempfile.TemporaryDirectory(prefix="bench-persist-", dir=args.dir) as base:
        keyfile = os.path.join(base, "key")
        with open(keyfile, "wb") as f:
            f.write(KEY)
        os.chmod(keyfile, 0o600)
        dirs = {how: os.path.join(base, how) for _, how in RESTART_CASES}
        os.makedirs(dirs["empty"])
        prep_time = {}
        snapshot: tuple[float, float, float, int] = (0.0, 0.0, 0.0, 0)
        for how in ("journal", "snapshot", "single"):
            t0 = time.perf_counter()
            out: Any = multiprocessing.Queue()
            p = multiprocessing.Process(target=_prepare, args=(dirs[how], keys, how, out))
            p.start()
            took = out.get(timeout=1800)
            p.join()
            snapshot = took if took is not None else snapshot
            if p.exitcode != 0:
                raise RuntimeError(f"preparing the {how} case failed ({p.exitcode})")
            prep_time[how] = time.perf_counter() - t0
            print(f"  prepared {how} in {prep_time[how]:.1f} s", file=sys.stderr)
        sizes = {how: _sizes(d) for how, d in dirs.items()}
        times: dict[str, list[float]] = {how: [] for _, how in RESTART_CASES}
        for _, how in RESTART_CASES:                      # checks the contents, warms the cache
            time_restart(dirs[how], keyfile, 0 if how == "empty" else keys)
        order = [how for _, how in RESTART_CASES]
        for r in range(args.rounds):
            for how in (order if r % 2 == 0 else order[::-1]):
                gc.collect()
                times[how].append(time_restart(dirs[how], keyfile, None))
            print(f"  restart round {r + 1}/{args.rounds} done (load {_load()})",
                  file=sys.stderr)
    empty = statistics.median(times["empty"])
    lines = [("| what the directory holds | snapshot | journal | restart s (median) | "
              "min – max | less the empty start |"), "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for label, how in RESTART_CASES:
        t = times[how]
        med = statistics.median(t)
        extra = "—" if how == "empty" else f"{med - empty:.2f} s"
        lines.append(f"| {label.format(keys=f'{keys:,}')} | {sizes[how]} | {med:.2f} | "
                     f"{min(t):.2f} – {max(t):.2f} | {extra} |")
    return f"""### Restart time

Seconds from launching `python -m shoal serve --persist DIR` to its "serving on" line (the
snapshot loaded and the journal replayed), median over {args.rounds} round{'s' * (args.rounds != 1)}
with the cases interleaved; each directory was written beforehand by a server in a child
process, and each was started once, untimed, to check that it holds all {keys:,} keys (so the
files are in the page cache: these are warm restarts). Keys and values are ints;
`multiprocessing.Manager` has nothing to restart from, so it has no row.

{chr(10).join(lines)}

Writing the snapshot of {keys:,} keys (`server.compact()`) took {snapshot[0]:.2f} s, in a forked
child; the server's loop stopped for {snapshot[1] * 1e3:.0f} ms (the fork), and a client calling
`root.get(0)` in a loop meanwhile had {snapshot[3]:,} calls answered, the slowest in
{snapshot[2] * 1e3:.0f} ms.

{_produced(args, load)}"""


# -- reporting ---------------------------------------------------------------------------------

def _produced(args: argparse.Namespace, load: str) -> str:
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    return (f"Produced by `{args.command}` on {today}, {_shoal_version()}.\n"
            f"Machine: nproc {_nproc()}, {platform.system()} {platform.machine()}, Python "
            f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}; 1-minute load "
            f"average {load} before this part and {_load()} after it.")


PARTS = ("writes", "restart")


def section(parts: dict[str, str]) -> str:
    body = join_parts(NAME, parts, PARTS)
    return f"""{START}
## Durability: fsync policies, restart time, SQLite beside

What `persist=DIR` costs (`benchmarks/bench_persist.py`; each part states the command and the
date it was produced, and can be refreshed on its own). Why the engine is a snapshot plus an
append-only journal: `docs/durability.md`.

{body}
{END}"""


def write_markdown(path: Path, parts: dict[str, str]) -> None:
    """Replace our section of ``path``; parts not run this time keep their previous text."""
    kept = kept_parts(path, START, END, NAME)
    replace_section(path, START, END, section({**kept, **parts}), INTRO)



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write throughput under each fsync policy (beside no persistence, "
                    "multiprocessing.Manager and SQLite in WAL mode) and restart time for "
                    "1,000,000 keys. With no part selected, both run.",
        epilog="example: python benchmarks/bench_persist.py --markdown docs/benchmarks.md")
    parser.add_argument("--writes", action="store_true", help="run the write-throughput part")
    parser.add_argument("--restart", action="store_true", help="run the restart-time part")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 2 rounds, 0.5 s writes, 100,000 keys")
    parser.add_argument("--rounds", type=int, help="rounds per part (default 5, 2 with --quick)")
    parser.add_argument("--duration", type=float,
                        help="seconds each writer runs (default 2, 0.5 with --quick)")
    parser.add_argument("--keys", type=int,
                        help="keys in the restart part (default 1000000, 100000 with --quick)")
    parser.add_argument("--engine-ops", type=int,
                        help="writes per round in the engines-alone table (default 20000, 4000"
                             " with --quick; a twentieth of it for the cases that fsync)")
    parser.add_argument("--dir", metavar="DIR",
                        help="where the data files go (default: the temporary directory); "
                             "put it on the disk you want measured")
    parser.add_argument("--markdown", type=Path, metavar="FILE",
                        help="also rewrite this script's section of FILE (e.g. docs/benchmarks.md);"
                             " a part not run keeps its previous text")
    args = parser.parse_args(argv)
    q = args.quick
    chosen = [p for p in PARTS if getattr(args, p)] or list(PARTS)
    args.rounds = args.rounds or (2 if q else 5)
    args.duration = args.duration or (0.5 if q else 2.0)
    args.keys = args.keys or (100_000 if q else 1_000_000)
    args.engine_ops = args.engine_ops or (4_000 if q else 20_000)

    words: list[str] = []
    rest = iter(argv if argv is not None else sys.argv[1:])
    for a in rest:
        opt, eq, _ = a.partition("=")
        if opt in ("--markdown", "--dir"):
            if not eq:
                next(rest, None)
            if opt == "--markdown":
                words.append(f"--markdown {_shown_path(args.markdown)}")
        else:
            words.append(a)
    args.command = " ".join(["python benchmarks/bench_persist.py", *words])

    runners = {"writes": part_writes, "restart": part_restart}
    parts: dict[str, str] = {}
    for p in chosen:
        print(f"== {p} (load {_load()})", file=sys.stderr)
        parts[p] = runners[p](args)
        print(parts[p] + "\n", flush=True)
    if args.markdown:
        write_markdown(args.markdown, parts)
        print(f"wrote the {NAME} section of {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
