"""What the benchmark scripts share: the load average they report, writing their section of
docs/benchmarks.md, and a redis-server of their own. Run as scripts, they find this module beside them."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The head of docs/benchmarks.md, written by whichever script makes the file.
INTRO = """\
# Benchmarks

Measurements of shoal beside its baselines, each taken in one run on one machine. Every section
below is written by the script named in it; rerun that command to refresh it. How to run them:
`benchmarks/README.md`.
"""


def load_average() -> str:
    """The 1-minute load average, for the "before and after" line of each section."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def shown_path(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (no machine's paths in docs)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return path.name


def command_line(script: str, argv: Sequence[str] | None, hide: Sequence[str] = ()) -> str:
    """The command that ran ``script`` with ``argv`` (``sys.argv[1:]`` when None), as the docs
    show it: a file named by ``--markdown`` relative to the repository, the values of the
    options in ``hide`` (an address, say) replaced by their names."""
    args = list(sys.argv[1:] if argv is None else argv)
    shown = [f"python benchmarks/{script}"]
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if name == "--markdown" or name in hide:
            if not eq:
                i += 1
                value = args[i] if i < len(args) else ""
            value = shown_path(Path(value)) if name == "--markdown" else name[2:].upper()
            shown.append(f"{name} {value}")
        else:
            shown.append(args[i])
        i += 1
    return " ".join(shown)


def replace_section(path: Path, start: str, end: str, text: str, intro: str) -> None:
    """Replace the section between ``start`` and ``end`` in ``path`` with ``text`` (which
    includes the markers); add it, or the file (beginning with ``intro``), if missing. The file
    is read right before it is written: other scripts write other sections of it."""
    old = path.read_text(encoding="utf-8") if path.exists() else intro
    if start in old and end in old:
        head, rest = old.split(start, 1)
        new = head + text + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new, encoding="utf-8")


# Scripts whose section has parts, each refreshed on its own: the parts are marked inside it.

def join_parts(name: str, parts: dict[str, str], order: Sequence[str]) -> str:
    """The parts in ``order``, each between its markers."""
    return "\n\n".join(f"<!-- {name}:part {p} -->\n{parts[p]}\n<!-- {name}:part-end {p} -->"
                       for p in order if p in parts)


def kept_parts(path: Path, start: str, end: str, name: str) -> dict[str, str]:
    """The parts now in the section of ``path``: parts not run this time keep their text."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if start not in text or end not in text:
        return {}
    mine = text.split(start, 1)[1].split(end, 1)[0]
    marked = re.compile(rf"<!-- {re.escape(name)}:part (\w+) -->\n(.*?)\n"
                        rf"<!-- {re.escape(name)}:part-end \1 -->", re.S)
    return {m.group(1): m.group(2) for m in marked.finditer(mine)}


@contextlib.contextmanager
def redis_server() -> Iterator[int]:
    """A redis-server (or valkey-server) on a free loopback port, persisting nothing, in a
    directory of its own, stopped at the end; yields its port. RuntimeError when there is no
    such server or it does not start."""
    exe = shutil.which("redis-server") or shutil.which("valkey-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as workdir:
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", workdir, "--daemonize", "no"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as c:
                        c.sendall(b"PING\r\n")
                        if c.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start (exit code {proc.poll()})")
                time.sleep(0.02)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
