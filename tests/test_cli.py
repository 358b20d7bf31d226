"""The command line: every command's --help, bench, and the errors of bad arguments."""

from __future__ import annotations

import os
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


@pytest.mark.timeout(60)
@pytest.mark.parametrize("outputs", [["--json", "{tmp}", "--png", "{tmp}/b.png"],
                                     ["--png", "{tmp}/no/b.png", "--json", "{tmp}/b.json"]])
def test_bench_refuses_an_output_it_cannot_write_before_it_runs(tmp_path: pathlib.Path,
                                                                outputs: list[str]) -> None:
    out = shoal("bench", "--quick", *(a.format(tmp=tmp_path) for a in outputs), timeout=50)
    assert out.returncode == 2 and out.stdout == ""          # no table: nothing ran
    assert out.stderr.startswith("shoal bench: cannot write the ")
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert not (tmp_path / "b.png").exists() and not (tmp_path / "b.json").exists()


@pytest.mark.timeout(120)
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_bench_writes_each_output_on_its_own(tmp_path: pathlib.Path) -> None:
    png = tmp_path / "bench.png"
    out = shoal("bench", "--quick", "--json", "/dev/full", "--png", str(png), timeout=100)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.splitlines()[-1] == ("shoal bench: cannot write the JSON to '/dev/full': "
                                           "No space left on device")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("url", ["redis://127.0.0.1:1", "notaurl", "redis://127.0.0.1:x"])
def test_bench_says_in_one_line_when_it_cannot_use_redis(url: str) -> None:
    out = shoal("bench", "--quick", "--redis", url, timeout=50)
    assert out.returncode in (1, 2) and out.stdout == ""
    assert out.stderr.startswith("shoal bench: ") and len(out.stderr.splitlines()) == 1, out.stderr
