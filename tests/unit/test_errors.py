"""Every exception lives in stpredict.errors, and bad input never surfaces as a bare ValueError.

The workflow reports a :class:`~stpredict.errors.StpredictError` as one line (problem, file,
sample, fix) and anything else as a bug with a traceback (:func:`stpredict.workflow.script_logging`).
So library code raises the concrete kinds (``InputError``, ``ConfigError``, ``GeometryError``,
``LeakageError``) for whatever user input can cause; ``ValueError`` / ``TypeError`` /
``KeyError`` are left only where no user input reaches, listed below with the reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import stpredict.errors as errors
from stpredict.errors import InputError, StpredictError, format_message

SRC = Path(__file__).resolve().parents[2] / "src" / "stpredict"

#: exceptions that must not be raised in library code (the base class included: say which kind)
FORBIDDEN = {"ValueError", "TypeError", "KeyError", "StpredictError"}

#: (module, function, exception) -> why no user input reaches the raise: programming-error checks
#: of arguments the library itself passes
ALLOWED: dict[tuple[str, str, str], str] = {
    # the demo generator: its own arguments, fixed by make_demo
    ("demo/formats.py", "write_10x_h5", "ValueError"): "shapes made by the demo generator",
    ("demo/formats.py", "write_st_spots", "ValueError"): "spot-file style chosen by make_demo",
    ("demo/tissue.py", "render", "ValueError"): "stain chosen by make_demo",
    # io: internal signals inside checked_read, which turns them into a one-line InputError;
    # json.dumps requires `default` to raise TypeError
    ("io.py", "_check_table_complete", "ValueError"): "raised inside checked_read -> InputError",
    ("io.py", "load_npy", "ValueError"): "raised inside checked_read -> InputError",
    ("io.py", "_json_default", "TypeError"): "json.dumps' protocol for `default`",
    # the callers build the categories from every label they write (folds.predict_fold,
    # folds.collect_predictions)
    ("outputs.py", "categorical_clusters", "ValueError"): "categories hold every written label",
    # geometry: the readers refuse non-integer, duplicated or mismatched array coordinates and
    # unknown platforms (sheet schema) before these helpers see them; latent re-raises as
    # InputError
    ("ingest/geometry.py", "_int_coords", "ValueError"): "readers check array coordinates",
    ("ingest/geometry.py", "offset_neighbors", "ValueError"): "readers refuse shared positions",
    ("ingest/geometry.py", "square_neighbors", "ValueError"): "connectivity is 4 or 8 in the code",
    (
        "ingest/geometry.py",
        "spot_neighbors",
        "ValueError",
    ): "platform validated by the sheet schema",
    ("ingest/geometry.py", "estimate_mpp_from_pitch", "ValueError"): "platform fixed by the reader",
    ("ingest/geometry.py", "_xy", "ValueError"): "coordinates built by the readers",
    ("ingest/geometry.py", "orient_xy", "ValueError"): "orientation names from ORIENTATIONS",
    # augmentation / TTA: images come from patch stores (square uint8, PatchSpec), the TTA count
    # and the group list are validated by the schema and parse_augmentation
    ("learn/augment.py", "random_dihedral", "ValueError"): "patches are square by construction",
    (
        "learn/augment.py",
        "DeepSpaceAugment.__init__",
        "TypeError",
    ): "groups from parse_augmentation",
    ("learn/augment.py", "DeepSpaceAugment.forward", "ValueError"): "float batches of the loop",
    ("learn/augment.py", "_elements", "ValueError"): "tta / val_tta: schema enum 1, 4, 8",
    ("learn/augment.py", "tta_predict", "ValueError"): "PatchModel always has features and head",
    # metrics: the rules pass the files the workflow wrote, never an empty list; units, shapes and
    # classes are set by predict_fold / collect_predictions
    ("evaluate/metrics.py", "smooth_measurements", "ValueError"): "platform and spots of one file",
    ("evaluate/metrics.py", "pearson_columns", "ValueError"): "callers pass matching arrays",
    ("evaluate/metrics.py", "gene_metrics", "ValueError"): "callers pass matching arrays",
    ("evaluate/metrics.py", "_genes", "ValueError"): "empty list: the rules give >= 1 file",
    ("evaluate/metrics.py", "_shared_genes", "ValueError"): "empty list: the rules give >= 1 file",
    (
        "evaluate/metrics.py",
        "score_units",
        "ValueError",
    ): "unit from get_evaluation_unit; >= 1 file",
    ("evaluate/metrics.py", "score_cluster_units", "ValueError"): "empty list: >= 1 file",
    ("evaluate/metrics.py", "_classes", "ValueError"): "classes written by predict_fold",
    ("evaluate/metrics.py", "_check_proba", "ValueError"): "columns checked against the classes",
    (
        "evaluate/metrics.py",
        "cluster_metrics",
        "ValueError",
    ): "score_cluster_units skips empty units",
    ("evaluate/metrics.py", "confusion_table", "ValueError"): "columns of one prediction table",
    ("evaluate/ols.py", "ols_inputs", "ValueError"): "empty list: the rule gives >= 1 file",
    ("evaluate/ols.py", "_matrix", "ValueError"): "genes are the files' shared genes",
    ("evaluate/ols.py", "ols_table", "ValueError"): "inputs are ols_inputs' aligned tables",
    ("evaluate/baselines.py", "fit_predict", "ValueError"): "run_baseline passes the oracle's data",
    # figures: arguments assembled by the plotting scripts from the run's own tables
    ("plot/latent.py", "plot_umap", "ValueError"): "labels of the embedded spots",
    ("plot/latent.py", "plot_ig_overlays", "ValueError"): "one attribution map per patch",
    (
        "plot/maps.py",
        "plot_expression_maps",
        "ValueError",
    ): "sections and genes chosen by the script",
    ("plot/scores.py", "plot_method_scatter", "ValueError"): "the comparison table always has cnn",
}


def _raises(path: Path) -> list[tuple[str, str, int]]:
    """``(function qualname, exception name, line)`` of every ``raise X(...)`` in a module."""
    out = []

    def walk(node: ast.AST, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                walk(child, [*scope, child.name])
                continue
            if isinstance(child, ast.Raise) and child.exc is not None:
                exc = child.exc.func if isinstance(child.exc, ast.Call) else child.exc
                name = exc.id if isinstance(exc, ast.Name) else getattr(exc, "attr", "")
                out.append((".".join(scope), name, child.lineno))
            walk(child, scope)

    walk(ast.parse(path.read_text()), [])
    return out


def test_library_code_raises_no_bare_value_errors_on_user_input():
    found, used = [], set()
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for func, exc, line in _raises(path):
            if exc not in FORBIDDEN:
                continue
            key = (rel, func, exc)
            if key in ALLOWED:
                used.add(key)
            else:
                found.append(f"{rel}:{line} {func}: raise {exc}")
    assert not found, (
        "raise InputError / ConfigError / GeometryError (problem, file=, sample=, "
        "fix=) instead, or add the site to ALLOWED with the reason no user input "
        "reaches it:\n" + "\n".join(found)
    )
    assert not set(ALLOWED) - used, f"stale ALLOWED entries: {sorted(set(ALLOWED) - used)}"


def test_every_exception_class_lives_in_errors():
    defined = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                getattr(b, "id", getattr(b, "attr", "")).endswith(
                    ("Error", "Exception", "Interrupted")
                )
                for b in node.bases
            ):
                defined.append((path.relative_to(SRC).as_posix(), node.name))
    assert defined and all(f == "errors.py" for f, _ in defined), defined
    names = {n for _, n in defined}
    assert {
        "StpredictError",
        "InputError",
        "GeometryError",
        "ConfigError",
        "LeakageError",
        "TrainingInterrupted",
    } <= names
    assert set(errors.__all__) >= names


@pytest.mark.parametrize(
    "cls", [errors.InputError, errors.ConfigError, errors.GeometryError, errors.LeakageError]
)
def test_every_kind_is_a_one_line_stpredict_error(cls):
    err = cls("the thing is\nbroken", file="a/b.tsv", sample="S1", fix="do this")
    assert isinstance(err, StpredictError)
    assert str(err) == format_message(
        "the thing is broken", file="a/b.tsv", sample="S1", fix="do this"
    )
    assert "\n" not in str(err) and (err.file, err.sample, err.fix) == ("a/b.tsv", "S1", "do this")


def test_converted_sites_name_the_sample_and_the_fix():
    """A prediction file set that mixes runs is bad input, reported with sample and fix."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    from stpredict.evaluate.metrics import score_units

    def pred(sample, genes):
        a = ad.AnnData(
            np.zeros((4, len(genes)), np.float32),
            obs=pd.DataFrame(
                {
                    "sample_id": sample,
                    "patient_id": "P1",
                    "fold": "0",
                    "array_row": [0, 0, 1, 1],
                    "array_col": [0, 2, 1, 3],
                },
                index=[f"{sample}:{i}" for i in range(4)],
            ),
            var=pd.DataFrame(index=genes),
        )
        a.layers["predicted"] = a.X.copy()
        a.uns["stpredict"] = {"sample_id": sample, "platform": "visium"}
        return a

    with pytest.raises(InputError) as info:
        score_units(
            [pred("S1", ["G1", "G2"]), pred("S2", ["G1", "G3"])], "visium", unit="patient_id"
        )
    assert "differ in their genes" in str(info.value) and "Fix: rerun snakemake" in str(info.value)
