"""``python -m shoal demo`` end to end: a real subprocess, real servers, real pool workers."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True,
                          text=True, timeout=timeout)


def _row(output: str, tag: str) -> tuple[int, int | None]:
    """The numbers in a table row: (Manager's, shoal's); None where Manager has no number."""
    for line in output.splitlines():
        if line.startswith(tag):
            label, manager, shoal = (cell.strip() for cell in line.split("|"))
            m = re.match(r"(\d+) ", manager)
            s = re.match(r"(\d+) ", shoal)
            assert s is not None, line
            return (int(m.group(1)) if m else None), int(s.group(1))  # type: ignore[return-value]
    raise AssertionError(f"no row starting with {tag!r} in:\n{output}")


@pytest.mark.timeout(120)
def test_demo_shows_manager_failures_and_shoal_results() -> None:
    proc = _run("demo", timeout=110)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr

    manager_nested, shoal_nested = _row(out, "(b) nested")
    assert manager_nested == 0          # Manager writes into a copy of the inner dict
    assert shoal_nested == 100

    manager_count, shoal_count = _row(out, "(c) counter")
    assert shoal_count == 2000          # d.incr is atomic
    assert manager_count is not None and manager_count <= 2000

    assert _row(out, "(a) fill") == (100, 100)
    assert _row(out, "(d) Lock + copy-back") == (100, 100)
    assert _row(out, "(d) nested write, no lock")[1] == 100
    assert _row(out, "(d) counter with the Lock") == (2000, 2000)
    assert "Verdicts:" in out
    assert "Manager kept 0 of 100 nested writes, shoal kept 100" in out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args", [["--help"], ["demo", "--help"]])
def test_help_says_what_and_gives_an_example(args: list[str]) -> None:
    proc = _run(*args, timeout=50)
    assert proc.returncode == 0, proc.stderr
    assert "example:" in proc.stdout
    assert "python -m shoal demo" in proc.stdout


@pytest.mark.timeout(60)
def test_no_command_prints_usage_and_fails() -> None:
    proc = _run(timeout=50)
    assert proc.returncode == 2
    assert "demo" in proc.stderr
