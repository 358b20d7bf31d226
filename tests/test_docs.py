"""Every Python example in the README and in docs/ runs (``python fragment`` blocks, which need
a server elsewhere, are compiled)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```python( fragment)?\n(.*?)^```", re.S | re.M)


def examples() -> list[tuple[str, bool, str]]:
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, m in enumerate(FENCE.finditer(path.read_text())):
            found.append((f"{path.relative_to(ROOT)}#{i + 1}", bool(m.group(1)), m.group(2)))
    return found


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name,fragment,code", examples(), ids=[e[0] for e in examples()])
def test_example(name: str, fragment: bool, code: str, tmp_path: pathlib.Path) -> None:
    if fragment:
        compile(code, name, "exec")
        return
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=100)
    assert out.returncode == 0, f"{name} failed:\n{out.stderr}"


def test_there_are_examples() -> None:
    assert len(examples()) >= 3
