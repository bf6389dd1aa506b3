"""Shared test fixtures: repository paths, real-format fixtures, and the demo workflow run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# small real files written by others (never copied into the repo); STPREDICT_REAL_FIXTURES
# points elsewhere (e.g. from a git worktree)
REAL = Path(os.environ.get("STPREDICT_REAL_FIXTURES", REPO.parent / "shared" / "fixtures" / "real"))


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        # pytest -n 2 --dist loadgroup (the README's command): the tests of one session-scoped
        # run share a worker, so it runs once
        for fixture, group in SHARED_RUNS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(group))
    # the long runs first (the live Slurm mostly waits; the demo keeps 2 cores busy), so the
    # other worker takes the many short tests meanwhile; stable otherwise
    items.sort(key=lambda it: 0 if SHARED_RUNS.keys() & set(getattr(it, "fixturenames", ())) else 1)


#: session/module fixtures that run a workflow, and the xdist group of the tests that use them
SHARED_RUNS = {"slurm": "slurm", "demo_run": "demo"}


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def real_fixtures() -> Path:
    if not REAL.is_dir():
        pytest.skip("real-format fixtures (../shared/fixtures/real) are absent")
    return REAL


WORKFLOW_FILES = ("Snakefile", "config.yaml", "config", "workflow", "resources", "profiles", "envs")


def copy_workflow(dest: Path) -> Path:
    """Copy what a run needs (not results/) into ``dest``; return it."""
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    (dest / "src").symlink_to(REPO / "src")  # the workflow puts <workdir>/src on PYTHONPATH
    return dest


#: torch hub file names of the presets' ImageNet weights (checked at parse time)
PRESET_WEIGHTS = ("densenet121-a639ec97.pth", "vgg16-397923af.pth")


def placeholder_imagenet_cache(root: Path) -> dict[str, str]:
    """A TORCH_HOME whose hub cache holds (empty) files of the presets' ImageNet weights.

    Enough for dry runs of the paper presets, which check at parse time that the weights are
    there (no job loads them in a dry run).
    """
    cache = root / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    for name in PRESET_WEIGHTS:
        (cache / name).touch()
    return {"TORCH_HOME": str(root / "torch_home")}


def run_snakemake(
    workdir: Path,
    *args: str,
    check: bool = True,
    timeout: int = 1500,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run the real snakemake CLI in ``workdir``; return the completed process."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """The demo workflow run for real up to the QC summary and patch stores (shared by the workflow tests)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("demo_run"))
    run_snakemake(workdir, "all")
    return workdir


def train_config(**settings):
    """A ``TrainConfig`` built as the workflow builds it: the schema's defaults, then ``settings``.

    ``backbone``, ``weights`` and ``tiny_width`` go to the experiment's ``model``, ``seed`` is the
    fold seed, everything else goes to its ``train`` section.
    """
    from stpredict.learn.experiments import resolve_experiment
    from stpredict.learn.train import TrainConfig

    model = {k: settings.pop(k) for k in ("backbone", "weights", "tiny_width") if k in settings}
    seed = settings.pop("seed", 0)
    workers = settings.pop("num_workers", 0)  # a resource of the job, not a config key
    exp = resolve_experiment({"model": model, "train": settings}, {})
    return TrainConfig.from_experiment(exp, seed, num_workers=workers)
