"""Every program in examples/ runs as written and exits cleanly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .cluster_support import HANG_GUARD

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(example: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(example)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        cwd=example.parent.parent,
    )
    assert result.returncode == 0, (
        f"{example.name} exited {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )
    assert result.stdout.strip(), f"{example.name} printed nothing"


def test_readme_example_runs(tmp_path: Path) -> None:
    """The program under "What it looks like" in README.md runs as written."""
    import re

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    found = re.search(r"## What it looks like\n\n```python\n(.*?)```", readme, re.S)
    assert found, "README.md lost its example"
    script = tmp_path / "readme_example.py"
    script.write_text(found.group(1))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=HANG_GUARD
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().startswith("["), result.stdout


def test_the_fault_harness_docs_show_the_example_as_it_is() -> None:
    """docs/faults.md shows examples/faults.py (from ``import actorcore`` on) and the
    README an excerpt of it, word for word: what they show is what
    ``test_example_runs`` runs."""
    import re

    root = Path(__file__).parent.parent
    example = (root / "examples" / "faults.py").read_text()
    program = example[example.index("import actorcore\n"):]
    page = (root / "docs" / "faults.md").read_text()
    shown = re.search(r"## A small example\n.*?```python\n(.*?)```", page, re.S)
    assert shown, "docs/faults.md lost its example"
    assert shown.group(1) == program, "docs/faults.md no longer shows examples/faults.py"
    readme = (root / "README.md").read_text()
    excerpt = re.search(r"### Fault injection\n.*?```python\n(.*?)```", readme, re.S)
    assert excerpt, "README.md lost its fault-injection example"
    assert excerpt.group(1) in program, "README.md's excerpt is not in examples/faults.py"
