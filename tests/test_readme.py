"""The README's code runs as printed: its snippets are extracted and run in a fresh interpreter."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def snippet(name: str) -> str:
    match = re.search(rf"<!-- snippet: {re.escape(name)} -->\n```python\n(.*?)\n```", README.read_text(), re.S)
    assert match, f"README has no snippet '{name}'"
    return match.group(1)


def run(code: str, tmp_path: Path) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert "make demo" in text and "make test" in text


@pytest.mark.slow
def test_add_to_flower_app_snippet_runs_and_every_node_complies(tmp_path):
    out = run(snippet("add-to-flower-app"), tmp_path)
    rows = [line for line in out.splitlines() if "forget-3" in line]
    assert len(rows) == 3 and all("compliant" in r for r in rows), out


@pytest.mark.slow
def test_custom_cheat_snippet_is_caught(tmp_path):
    out = run(snippet("custom-cheat"), tmp_path)
    assert "reason='kkt-violation'" in out, out
