"""Checked readers of the workflow's intermediates and the atomic writer (real files, no mocks)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from stpredict.errors import InputError
from stpredict.io import (
    atomic_path,
    is_intermediate,
    load_npy,
    load_torch,
    read_h5ad,
    read_json,
    read_table,
    write_h5ad,
    write_json,
    write_table,
)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A fresh working directory (the workflow's results/ lives in it)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STPREDICT_RESULTS", raising=False)
    return tmp_path


def _truncate(path: Path, frac: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * frac)])


def _adata(n: int = 30) -> ad.AnnData:
    rng = np.random.default_rng(0)
    a = ad.AnnData(X=sp.csr_matrix(rng.poisson(2, (n, 12)).astype(np.float32)))
    a.obs_names = [f"s{i}" for i in range(n)]
    a.var_names = [f"g{i}" for i in range(12)]
    a.obsm["spatial"] = rng.random((n, 2))
    return a


def test_is_intermediate_only_inside_workflow_folders(workdir):
    assert is_intermediate("results/sections/A.h5ad")
    assert is_intermediate(workdir / "results/experiments/e/folds/0/model.pt")
    assert not is_intermediate("results/demo/visium/A/outs/filtered_feature_bc_matrix.h5")
    assert not is_intermediate("results/bad_input/x.tsv")
    assert not is_intermediate("data/A.h5ad")
    assert not is_intermediate("results")


@pytest.mark.parametrize("frac", [0.0, 0.3, 0.9])
def test_truncated_h5ad_in_results_is_removed_with_one_line_error(workdir, frac):
    p = workdir / "results/sections/A.h5ad"
    write_h5ad(_adata(), p)
    assert read_h5ad(p).n_obs == 30
    _truncate(p, frac)
    with pytest.raises(InputError) as info:
        read_h5ad(p)
    msg = str(info.value)
    assert "\n" not in msg
    assert "sample 'A'" in msg and "results/sections/A.h5ad" in msg
    assert "truncated or corrupt" in msg and "it was removed" in msg
    assert "Fix: rerun snakemake, which rebuilds it" in msg
    assert not p.exists()


def test_corrupt_input_outside_results_is_never_removed(workdir):
    p = workdir / "data/A.h5ad"
    write_h5ad(_adata(), p)
    _truncate(p)
    with pytest.raises(InputError) as info:
        read_h5ad(p)
    assert p.exists()
    assert "replace it" in str(info.value) and "removed" not in str(info.value)
    demo = workdir / "results/demo/x.tsv"
    demo.parent.mkdir(parents=True)
    demo.write_text("a\tb\n1\t")
    with pytest.raises(InputError):
        read_table(demo)
    assert demo.exists()


def test_missing_intermediate_says_rerun(workdir):
    with pytest.raises(InputError, match="does not exist.*rerun snakemake"):
        read_table("results/experiments/e/splits.tsv")


def test_table_cut_mid_line_is_truncated(workdir):
    p = workdir / "results/experiments/e/splits.tsv"
    df = pd.DataFrame(
        {
            "sample_id": ["A"] * 50,
            "spot_id": [f"s{i}" for i in range(50)],
            "fold": ["0"] * 50,
            "role": ["train"] * 50,
        }
    )
    write_table(df, p)
    assert len(read_table(p, dtype=str)) == 50
    text = p.read_text()
    # cut inside the last line: pandas alone reads 50 rows, one with a missing cell
    p.write_text(text[: text.rstrip("\n").rfind("\t")] + "\n")
    assert len(pd.read_csv(p, sep="\t")) == 50  # what the unchecked read did: silently short
    with pytest.raises(InputError, match="last line has 3 fields, the header 4"):
        read_table(p)
    assert not p.exists()
    write_table(df, p)
    p.write_text(p.read_text()[:-7])  # no final newline
    with pytest.raises(InputError, match="cut off"):
        read_table(p)
    write_table(df, p)
    p.write_text("")
    with pytest.raises(InputError, match="empty"):
        read_table(p)


def test_index_written_tables_and_headers_only_are_complete(workdir):
    p = workdir / "results/qc/A.tsv"
    write_table(pd.DataFrame({"x": [1, 2]}, index=["a", "b"]), p, index=True)
    assert list(read_table(p, index_col=0)["x"]) == [1, 2]
    write_table(pd.DataFrame(columns=["a", "b"]), p)
    assert read_table(p).empty


def test_truncated_json_and_npy(workdir):
    j = workdir / "results/patches/A/spots.json"
    write_json({"a": list(range(100))}, j)
    assert read_json(j)["a"][-1] == 99
    _truncate(j)
    with pytest.raises(InputError, match="sample 'A'.*JSONDecodeError"):
        read_json(j)
    assert not j.exists()

    n = workdir / "results/patches/A/spots.npy"
    arr = np.arange(10 * 4 * 4 * 3, dtype=np.uint8).reshape(10, 4, 4, 3)
    np.save(n, arr)
    assert np.array_equal(load_npy(n), arr)
    for frac in (0.9, 0.2):  # inside the data, inside the header
        np.save(n, arr)
        _truncate(n, frac)
        with pytest.raises(InputError, match="truncated or corrupt"):
            load_npy(n)
        assert not n.exists()
    np.save(n, arr)
    with open(n, "ab") as fh:
        fh.write(b"\0" * 10)  # trailing bytes: not what np.save wrote
    with pytest.raises(InputError, match="header promises"):
        load_npy(n)


def test_corrupt_model_is_removed_even_when_write_protected(workdir):
    import torch

    p = workdir / "results/experiments/e/folds/0/model.pt"
    p.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(3)}, "backbone": "tiny"}, p)
    assert load_torch(p)["backbone"] == "tiny"
    _truncate(p)
    os.chmod(p, 0o444)  # as Snakemake's protected() leaves it
    with pytest.raises(InputError, match="it was removed"):
        load_torch(p)
    assert not p.exists()


def test_inference_load_model_removes_a_corrupt_model(workdir):
    from stpredict.learn.predict import load_model

    p = workdir / "results/experiments/e/folds/0/model.pt"
    p.parent.mkdir(parents=True)
    p.write_bytes(b"PK\x03\x04 not a zip archive")
    with pytest.raises(InputError, match="rerun snakemake"):
        load_model(p)
    assert not p.exists()


def test_corrupt_fitted_json_takes_the_protected_model_with_it(workdir):
    d = workdir / "results/experiments/e/folds/0"
    d.mkdir(parents=True)
    (d / "model.pt").write_bytes(b"model")
    os.chmod(d / "model.pt", 0o444)
    (d / "fitted.json").write_text('{"genes": [')
    (d / "history.tsv").write_text("epoch\tloss\n1\t0.5\n")
    with pytest.raises(InputError, match="model.pt.*write-protected"):
        read_json(d / "fitted.json")
    assert not (d / "fitted.json").exists() and not (d / "model.pt").exists()
    assert (d / "history.tsv").exists()


def test_atomic_outputs_honour_the_umask(workdir):
    old = os.umask(0o022)
    try:
        write_table(pd.DataFrame({"a": [1]}), "results/qc/x.tsv")
        write_json({"a": 1}, "results/run/x.json")
        with atomic_path("results/x.bin") as tmp:
            tmp.write_bytes(b"x")
        for f in ("results/qc/x.tsv", "results/run/x.json", "results/x.bin"):
            assert stat.S_IMODE(Path(f).stat().st_mode) == 0o644, f
        os.umask(0o077)
        write_table(pd.DataFrame({"a": [1]}), "results/qc/y.tsv")
        assert stat.S_IMODE(Path("results/qc/y.tsv").stat().st_mode) == 0o600
        os.umask(0o002)
        write_h5ad(_adata(), "results/qc/z.h5ad")
        assert stat.S_IMODE(Path("results/qc/z.h5ad").stat().st_mode) == 0o664
    finally:
        os.umask(old)
    assert not list(Path("results").rglob(".*.tmp*"))


def test_failed_write_leaves_no_file(workdir):
    with pytest.raises(RuntimeError), atomic_path("results/qc/x.tsv") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert not Path("results/qc/x.tsv").exists()
    assert not list(Path("results/qc").iterdir())


def test_script_logging_keeps_bug_for_bugs_only(workdir, capsys):
    from stpredict.workflow import script_logging

    log = workdir / "results/logs/x.log"
    with pytest.raises(SystemExit), script_logging(log):
        read_json("results/run/missing.json")
    text = log.read_text()
    assert "a bug" not in text and "does not exist" in text
    with pytest.raises(SystemExit), script_logging(log):
        raise OSError(28, "No space left on device", "results/qc/x.h5ad")  # ENOSPC
    assert "no space left to write" in log.read_text()
    with pytest.raises(KeyError), script_logging(log):
        raise KeyError("real bug")
    assert "a bug: please report it" in log.read_text()


def test_json_roundtrip_unchanged(workdir):
    write_json({"x": np.float32(1.5), "y": np.arange(3)}, "results/run/a.json")
    assert json.loads(Path("results/run/a.json").read_text()) == {"x": 1.5, "y": [0, 1, 2]}


def test_a_lock_failure_is_not_taken_for_corruption(workdir):
    from stpredict.io import checked_read

    p = workdir / "results/sections/A.h5ad"
    write_h5ad(_adata(), p)
    with pytest.raises(InputError, match="HDF5_USE_FILE_LOCKING"), checked_read(p):
        raise OSError("Unable to synchronously open file (unable to lock file, errno = 38)")
    assert p.exists()  # a valid file on a file system without locks is never removed


def test_write_h5ad_copies_the_sections_images_as_stored(tmp_path):
    import h5py

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)
    section = ad.AnnData(X=np.zeros((3, 2), np.float32))
    section.uns["spatial"] = {
        "S1": {
            "images": {"hires": img, "lowres": img[::4, ::4].copy()},
            "scalefactors": {"tissue_hires_scalef": 0.5, "spot_diameter_fullres": 20.0},
            "metadata": {"source_image_path": "S1.tif"},
        }
    }
    write_h5ad(section, tmp_path / "sections" / "S1.h5ad")
    result = ad.AnnData(X=np.ones((3, 2), np.float32))
    result.uns["spatial"] = {"S1": {"images": {}, "scalefactors": {}}}  # replaced by the copy
    out = tmp_path / "experiments" / "S1.h5ad"
    write_h5ad(result, out, spatial_from={"S1": tmp_path / "sections" / "S1.h5ad"})
    back = read_h5ad(out)
    np.testing.assert_array_equal(back.uns["spatial"]["S1"]["images"]["hires"], img)
    assert back.uns["spatial"]["S1"]["scalefactors"]["spot_diameter_fullres"] == 20.0
    assert back.uns["spatial"]["S1"]["metadata"] == {"source_image_path": "S1.tif"}
    np.testing.assert_array_equal(back.X, result.X)
    with h5py.File(out) as f:  # the stored (compressed) dataset, not a re-encoded one
        assert f["uns/spatial/S1/images/hires"].compression == "gzip"
    light = read_h5ad(out, images=False)  # what the scoring jobs read: no pixels decoded
    assert "images" not in light.uns["spatial"]["S1"]
    assert light.uns["spatial"]["S1"]["scalefactors"] == back.uns["spatial"]["S1"]["scalefactors"]
    np.testing.assert_array_equal(light.X, back.X)
    assert list(light.obs_names) == list(back.obs_names)
    bare = tmp_path / "sections" / "S2.h5ad"
    write_h5ad(ad.AnnData(X=np.zeros((1, 1), np.float32)), bare)
    with pytest.raises(InputError, match="no uns\\['spatial'\\] entry"):
        write_h5ad(result, tmp_path / "x.h5ad", spatial_from={"S2": bare})
    assert not (tmp_path / "x.h5ad").exists()  # atomic: nothing under the final name
