"""The README's promises, executed: the demo's main job and the Python API example."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HANDBOOK, REPO

pytestmark = pytest.mark.slow


def test_demo_script_indexes_and_finds_the_answers(tmp_path):
    env = {**os.environ, "RAGTUNE_DEMO_WS": str(tmp_path / "demo"), "RAGTUNE_BIN": str(Path(sys.executable).parent / "ragtune"),
           "COLUMNS": "200"}
    first = subprocess.run(["bash", "examples/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert "added 8 · updated 0 · unchanged 0" in out
    for fact in ("founded in 1931 by Cornelius Vantreight", "240 credits per night", "18.4 million credits", "KRO-Skyline",
                 "== ragtune ask", "G-114"):
        assert fact in " ".join(out.split()), fact
    assert "sweep handbook-retrieval" in out and "chunks-128" in out and (tmp_path / "demo" / "report.html").stat().st_size > 0
    second = subprocess.run(["bash", "examples/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert "added 0 · updated 0 · unchanged 8" in second.stdout
    assert second.stderr.count("skipped") == 7  # the sweep's finished runs are not run again


def test_readme_python_example_runs(tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    shutil.copytree(HANDBOOK, tmp_path / "docs")
    monkeypatch.chdir(tmp_path)
    printed = []
    exec(compile(code, "README.md", "exec"), {"print": lambda *a: printed.append(a)})
    assert printed and all("/docs/" in str(row[2]) and str(row[2]).endswith(".md") for row in printed)
    assert any("onboarding.md" in str(row[2]) for row in printed)


def test_readme_starts_with_the_two_commands():
    head = (REPO / "README.md").read_text().split("\n\n", 2)[1]
    assert "make demo" in head and "make test" in head
