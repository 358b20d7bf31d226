"""``python -m shoal bench``: shoal beside multiprocessing.Manager (and Redis), one run.

Each case is timed on every system in the same run, in interleaved rounds (the order alternates
from round to round, so a burst of load elsewhere does not count against one system only), and
reported as the median over rounds with the ratio to Manager. The fuller suite, with the
socket floor, many clients, bulk work, persistence and memory, is in ``benchmarks/``.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from ._errors import ShoalError
from ._managers import _REDIS_SCHEMES, Manager, connect

__all__ = ["run", "CASES"]

Case = Callable[[Any, int], None]


def _set(s: Any, n: int) -> None:
    d = s["dict"]
    for i in range(n):
        d[i & 255] = i


def _get(s: Any, n: int) -> None:
    d = s["dict"]
    for i in range(n):
        d[i & 255]


def _incr(s: Any, n: int) -> None:
    d = s["dict"]
    if hasattr(d, "incr"):
        for _ in range(n):
            d.incr("n")
    else:                          # Manager: the same count, correct only under a lock
        lock = s["lock"]
        for _ in range(n):
            with lock:
                d["n"] = d.get("n", 0) + 1


def _lock(s: Any, n: int) -> None:
    lock = s["lock"]
    for _ in range(n):
        lock.acquire()
        lock.release()


def _queue(s: Any, n: int) -> None:
    q = s["queue"]
    for i in range(n):
        q.put(i)
        q.get()


def _append(s: Any, n: int) -> None:
    lst = s["list"]
    for i in range(n):
        lst.append(i)


CASES: dict[str, tuple[str, Case]] = {
    "set": ("d[k] = v", _set),
    "get": ("d[k]", _get),
    "incr": ("counter +1 (shoal: d.incr; Manager: lock + read + write)", _incr),
    "append": ("list.append(v)", _append),
    "lock": ("Lock acquire + release", _lock),
    "queue": ("Queue put + get", _queue),
}


def _objects(m: Any) -> dict[str, Any]:
    return {"dict": m.dict({i: i for i in range(256)}), "lock": m.Lock(), "queue": m.Queue(),
            "list": m.list()}


def _progress(done: int, total: int, label: str) -> None:
    width = 30
    filled = width * done // total
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:<24}")
    sys.stderr.flush()
    if done == total:
        sys.stderr.write("\n")


def measure(rounds: int, ops: int, redis: Any = None) -> dict[str, dict[str, float]]:
    """µs per op, the median over ``rounds``, for each case and system (``redis``: a manager
    connected to Redis, to time too)."""
    with ExitStack() as stack:
        systems: dict[str, dict[str, Any]] = {}
        mp = stack.enter_context(multiprocessing.Manager())
        systems["Manager"] = _objects(mp)
        sh = stack.enter_context(Manager())
        systems["shoal"] = _objects(sh)
        if redis is not None:
            systems["shoal on Redis"] = _objects(redis)
        samples: dict[str, dict[str, list[float]]] = {c: {s: [] for s in systems} for c in CASES}
        names = list(systems)
        total, done = rounds * len(CASES) * len(names), 0
        for r in range(rounds):
            order = names if r % 2 == 0 else names[::-1]
            for case, (_, fn) in CASES.items():
                for name in order:
                    t = time.perf_counter()
                    fn(systems[name], ops)
                    samples[case][name].append((time.perf_counter() - t) / ops * 1e6)
                    done += 1
                    _progress(done, total, f"{case} on {name}")
        return {c: {s: statistics.median(v) for s, v in per.items()} for c, per in samples.items()}


def table(result: dict[str, dict[str, float]]) -> str:
    systems = list(next(iter(result.values())))
    head = "| case | " + " | ".join(f"{s} µs/op" for s in systems) + " | Manager / shoal |"
    lines = [head, "|" + " --- |" * (len(systems) + 2)]
    for case, per in result.items():
        cells = " | ".join(f"{per[s]:.1f}" for s in systems)
        lines.append(f"| {CASES[case][0]} | {cells} | {per['Manager'] / per['shoal']:.2f}x |")
    return "\n".join(lines)


def plot(result: dict[str, dict[str, float]], path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("the plot needs matplotlib: pip install 'shoal[plot]'") from None
    systems = list(next(iter(result.values())))
    cases = list(result)
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=120)
    width = 0.8 / len(systems)
    for i, s in enumerate(systems):
        xs = [c + i * width for c in range(len(cases))]
        ax.bar(xs, [result[c][s] for c in cases], width, label=s)
    ax.set_xticks([c + width * (len(systems) - 1) / 2 for c in range(len(cases))])
    ax.set_xticklabels(cases)
    ax.set_ylabel("µs per operation (lower is better)")
    ax.set_title(f"shoal vs multiprocessing.Manager, one client (nproc {os.cpu_count()})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _unwritable(path: str, what: str) -> str | None:
    """Why ``path`` cannot be written, as far as can be told before writing it; None if it can."""
    folder = os.path.dirname(path) or "."
    if os.path.isdir(path):
        why = "it is a directory"
    elif not os.path.isdir(folder):
        why = f"there is no directory {folder!r}"
    elif not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(path)
                                                    and not os.access(path, os.W_OK)):
        why = "permission denied"
    else:
        return None
    return f"cannot write the {what} to {path!r}: {why}"


def _problem(png: str | None, as_json: str | None, redis_url: str | None) -> str | None:
    """What can be told wrong with the arguments before the run (rather than after it)."""
    if as_json and (problem := _unwritable(as_json, "JSON")):
        return problem
    if png and (problem := _unwritable(png, "plot")):
        return problem
    if png and importlib.util.find_spec("matplotlib") is None:
        return "the plot needs matplotlib: pip install 'shoal[plot]'"
    if redis_url and not redis_url.startswith(_REDIS_SCHEMES):
        return f"--redis takes a URL starting with {', '.join(_REDIS_SCHEMES)}; not {redis_url!r}"
    return None


def _write(path: str, what: str, write: Callable[[str], None]) -> bool:
    """``write(path)``; False, saying why on stderr, if it failed."""
    try:
        write(path)
    except (OSError, ValueError) as e:        # ValueError: a format matplotlib does not know
        why = e.strerror if isinstance(e, OSError) and e.strerror else e
        print(f"shoal bench: cannot write the {what} to {path!r}: {why}", file=sys.stderr)
        return False
    print(f"{what} written to {path}")
    return True


def run(quick: bool = False, png: str | None = None, as_json: str | None = None,
        redis_url: str | None = None) -> int:
    problem = _problem(png, as_json, redis_url)
    if problem:
        print(f"shoal bench: {problem}", file=sys.stderr)
        return 2
    redis = None
    if redis_url:
        try:
            redis = connect(redis_url)
        except ShoalError as e:               # it names Redis and the URL
            print(f"shoal bench: {e}", file=sys.stderr)
            return 1
        except (ValueError, ImportError) as e:      # a bad URL; no redis-py
            print(f"shoal bench: cannot use --redis {redis_url!r}: {e}", file=sys.stderr)
            return 2
    rounds, ops = (3, 300) if quick else (7, 2000)
    try:
        result = measure(rounds, ops, redis)
    finally:
        if redis is not None:
            redis.shutdown()
    print(f"medians of {rounds} interleaved rounds x {ops} ops, nproc {os.cpu_count()}")
    print(table(result))
    ok = True
    if as_json:
        def write_json(path: str) -> None:
            with open(path, "w") as f:
                json.dump(result, f, indent=1, sort_keys=True)
        ok = _write(as_json, "JSON", write_json)
    if png:
        ok = _write(png, "plot", lambda path: plot(result, path)) and ok
    return 0 if ok else 1
