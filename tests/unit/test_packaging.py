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


def test_ruff_is_clean():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "src", "tests", "workflow/scripts", "benchmarks"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
