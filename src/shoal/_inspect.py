"""``python -m shoal inspect``: what a running server holds, who holds its locks, queue depths."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from ._errors import ShoalError
from ._managers import connect
from ._serve import ConfigError, format_address, read_authkey

__all__ = ["snapshot", "render", "inspect"]


def snapshot(address: str, authkey: bytes, tls: Any = None) -> dict[str, Any]:
    """The server's state as a dict (the ``--json`` document)."""
    m = connect(address, authkey=authkey, tls=tls)
    return m._connection().call(0, "inspect")  # type: ignore[no-any-return]


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def render(state: dict[str, Any]) -> str:
    """The text report."""
    s = state["server"]
    lines = [f"shoal server pid {s['pid']} on {format_address(s['address'])}  "
             f"up {_ago(s['uptime'])}  {s['ops_per_sec']:.0f} ops/s  {s['calls']} calls  "
             f"nested={s['nested']}" + ("  tls" if s["tls"] else ""), ""]
    p = state.get("persistence")
    if p is not None:
        lines += [f"PERSISTENCE  {p['dir']}  fsync={p['fsync']}  journal {p['journal_bytes']} B  "
                  f"snapshot {p['snapshot_bytes']} B  {p['records']} records  "
                  f"{p['fsyncs']} fsyncs" + (f"  FAILED: {p['failed']}" if p["failed"] else ""),
                  ""]
    lines.append("OBJECTS")
    lines.append(f"  {'type':<20} {'count':>8} {'entries':>10}")
    for typeid, k in sorted(state["objects"].items()):
        lines.append(f"  {typeid:<20} {k['count']:>8} {k['size']:>10}")
    lines += ["", f"CLIENTS ({len(state['clients'])})"]
    lines.append(f"  {'pid':>8} {'host':<20} {'connected':>10} {'objects held':>13}")
    for c in state["clients"]:
        lines.append(f"  {c['pid'] or '-':>8} {c['host'][:20]:<20} "
                     f"{_ago(c['connected_for']):>10} {c['holds']:>13}")
    lines += ["", f"LOCKS AND SEMAPHORES ({len(state['locks'])})"]
    lines.append(f"  {'id':>6} {'type':<22} {'holder pid':>10} {'held for':>9} {'waiting':>8}")
    for lk in state["locks"]:
        holder = lk.get("holder_pid")
        if "value" in lk:           # a semaphore: its holders and value
            who = ",".join(map(str, lk["holders"])) or "-"
            lines.append(f"  {lk['id']:>6} {lk['type']:<22} {who:>10} "
                         f"{'value ' + str(lk['value']):>9} {lk['waiting']:>8}")
        elif "parties" in lk:
            lines.append(f"  {lk['id']:>6} {lk['type']:<22} {'-':>10} "
                         f"{'broken' if lk['broken'] else '':>9} "
                         f"{str(lk['waiting']) + '/' + str(lk['parties']):>8}")
        else:
            held = lk.get("held", True)
            lines.append(f"  {lk['id']:>6} {lk['type']:<22} "
                         f"{(holder or ('ended' if held else '-')):>10} "
                         f"{_ago(lk.get('held_for')) if held else 'free':>9} {lk['waiting']:>8}")
    lines += ["", f"QUEUES ({len(state['queues'])})"]
    lines.append(f"  {'id':>6} {'type':<14} {'items':>8} {'max':>6} {'getters':>8} "
                 f"{'putters':>8} {'unfinished':>10}")
    for q in state["queues"]:
        unfinished = q["unfinished"]
        lines.append(f"  {q['id']:>6} {q['type']:<14} {q['items']:>8} {q['maxsize'] or '-':>6} "
                     f"{q['getters_waiting']:>8} {q['putters_waiting']:>8} {unfinished:>10}")
    return "\n".join(lines)


def inspect(address: str, authkey_file: str, as_json: bool = False, watch: bool = False,
            interval: float = 1.0, tls: Any = None) -> int:
    """Print the server's state once, or again every ``interval`` seconds with ``watch``."""
    try:
        key = read_authkey(authkey_file)
    except ConfigError as e:
        print(f"shoal inspect: {e}", file=sys.stderr)
        return 2
    try:
        while True:
            state = snapshot(address, key, tls)
            if as_json:
                print(json.dumps(state, sort_keys=True), flush=True)
            else:
                if watch:
                    sys.stdout.write("\x1b[H\x1b[2J")      # like top: redraw in place
                print(render(state), flush=True)
            if not watch:
                return 0
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
    except (ShoalError, ValueError) as e:
        print(f"shoal inspect: {e}", file=sys.stderr)
        return 1
