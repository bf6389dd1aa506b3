from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def names(reqs):
    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].strip().lower() for r in reqs}


def test_conda_env_lists_every_dependency():
    py = tomllib.loads((REPO / "pyproject.toml").read_text())
    deps = names(py["project"]["dependencies"])
    env = (REPO / "envs/stpredict.yaml").read_text().lower()
    missing = [d for d in deps if not re.search(rf"-\s+{re.escape(d)}\b", env)]
    assert not missing, f"envs/stpredict.yaml lacks {missing}"


def test_every_dependency_has_a_lower_bound():
    py = tomllib.loads((REPO / "pyproject.toml").read_text())
    for req in py["project"]["dependencies"]:
        assert ">=" in req, f"{req} has no lower bound"


LINTED = ["src", "tests", "workflow/scripts", "benchmarks"]


def _ruff(*args):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, *LINTED], cwd=REPO, capture_output=True, text=True
    )


def test_ruff_lint_is_clean_including_the_complexity_limit():
    py = tomllib.loads((REPO / "pyproject.toml").read_text())
    lint = py["tool"]["ruff"]["lint"]
    assert "C90" in lint["select"] and lint["mccabe"]["max-complexity"] <= 15
    proc = _ruff("check")
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_code_is_ruff_formatted():
    proc = _ruff("format", "--check")
    assert proc.returncode == 0, (
        "run `ruff format " + " ".join(LINTED) + "`:\n" + proc.stdout[-3000:]
    )
