"""The command line: every command's --help, bench, and the errors of bad arguments."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from .test_network import _keyfile

COMMANDS = ["demo", "serve", "inspect", "bench"]


def shoal(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", COMMANDS)
def test_help_says_what_it_does_with_an_example(command: str) -> None:
    out = shoal(command, "--help")
    assert out.returncode == 0
    assert "example:" in out.stdout and f"python -m shoal {command}" in out.stdout


@pytest.mark.timeout(60)
def test_the_console_script_is_the_same_command() -> None:
    script = pathlib.Path(sys.executable).with_name("shoal")
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    for command in COMMANDS:
        assert command in out.stdout


@pytest.mark.timeout(120)
def test_bench_quick_prints_a_table_and_writes_the_png(tmp_path: pathlib.Path) -> None:
    png, js = tmp_path / "bench.png", tmp_path / "bench.json"
    out = shoal("bench", "--quick", "--png", str(png), "--json", str(js), timeout=100)
    assert out.returncode == 0, out.stderr
    assert "| d[k] = v |" in out.stdout and "Manager / shoal" in out.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Manager" in js.read_text()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["a file", "a path under a file"])
def test_serve_names_a_persistence_directory_it_cannot_use(tmp_path: pathlib.Path,
                                                           where: str) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    persist = afile if where == "a file" else afile / "sub"
    out = shoal("serve", "--address", "127.0.0.1:0", "--authkey-file", str(_keyfile(tmp_path)),
                "--persist", str(persist), timeout=30)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"shoal serve: cannot use the persistence directory "
                                 f"'{persist}': "), out.stderr
