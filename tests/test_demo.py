"""``python -m shoal demo`` end to end: a real subprocess, real servers, real pool workers."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

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


def _alive_in_session(sid: int) -> list[int]:
    """The pids of session ``sid`` that have not ended (zombies, ended but not reaped, excluded)."""
    alive = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            # after the command, which ends with ')': state, ppid, process group, session
            state, _, _, session = stat.read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):
            continue                  # ended meanwhile
        if int(session) == sid and state != "Z":
            alive.append(int(stat.parent.name))
    return alive


@pytest.mark.timeout(300)
@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc")
@pytest.mark.parametrize(("moment", "started"), [("row", 0), ("(b) nested", 2)])
def test_ctrl_c_ends_the_demo_and_every_process_it_started(tmp_path: pathlib.Path, moment: str,
                                                           started: int) -> None:
    # Ctrl-C in a terminal sends SIGINT to the whole process group: here, once the table has
    # printed up to ``moment`` and ``started`` more processes have appeared. ("row": the pool
    # takes on the tasks of (a); "(b) nested", 2: the counting processes of (c) are starting.)
    # It used to kill pool workers holding the pool's queue lock, or counting processes inside
    # their Barrier, and the demo then hung, though not every time: so, 8 times.
    for attempt in range(8):
        with open(tmp_path / f"stderr{attempt}", "w+") as err:
            # Run from a shell in the background, pytest ignores SIGINT, and so would the demo,
            # which then has no KeyboardInterrupt: let it inherit the default instead.
            sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "shoal", "demo", "--start-method", "fork"],
                    stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True,
                    env=dict(os.environ, PYTHONUNBUFFERED="1"))
            finally:
                signal.signal(signal.SIGINT, sigint)
            try:
                assert proc.stdout is not None
                before = 0
                for line in proc.stdout:
                    if line.startswith("row"):          # the servers and the pool are up
                        before = len(_alive_in_session(proc.pid))
                    if line.startswith(moment):
                        break
                deadline = time.monotonic() + 10
                while len(_alive_in_session(proc.pid)) < before + started:
                    assert time.monotonic() < deadline, "the demo started no new processes"
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    pytest.fail(f"attempt {attempt}: the demo still runs 30 s after Ctrl-C")
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                proc.stdout.close()                       # type: ignore[union-attr]
            err.seek(0)
            assert proc.returncode == 130, err.read()
        for _ in range(100):             # the servers and workers end as the demo exits
            left = _alive_in_session(proc.pid)
            if not left:
                break
            time.sleep(0.1)
        assert not left, f"still running after the demo: {left}"
