from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from stpredict.errors import ConfigError, InputError, LeakageError
from stpredict.learn.experiments import experiment_samples, job_settings, resolve_experiment
from stpredict.learn.folds import build_manifest, choose_epochs
from stpredict.learn.splits import (
    audit_fitted,
    fold_ids,
    fold_test_samples,
    outer_folds,
)


def sheet() -> pd.DataFrame:
    rows = []
    for p, n in (("PA", 2), ("PB", 2), ("PC", 1), ("PD", 1)):
        for i in range(n):
            rows.append({"sample_id": f"{p}_{i}", "patient_id": p, "platform": "st", "series": ""})
    rows.append({"sample_id": "V1", "patient_id": "PV", "platform": "visium", "series": ""})
    df = pd.DataFrame(rows)
    return df.set_index("sample_id", drop=False)


def section(sample: str, n: int = 30, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    a = ad.AnnData(sp.csr_matrix(rng.poisson(3, (n, 40)).astype(np.float32)))
    a.obs_names = [f"{i}x{j}" for i, j in zip(range(n), range(n), strict=True)]
    a.var_names = [f"G{i}" for i in range(40)]
    a.obs["sample_id"] = sample
    a.obs["keep"] = np.arange(n) % 10 != 0  # every 10th spot fails QC
    a.obs["cluster"] = [str(1 + i % 3) for i in range(n)]
    a.obs["array_row"] = np.arange(n) // 6
    a.obs["array_col"] = np.arange(n) % 6
    a.obsm["spatial"] = rng.uniform(0, 1000, (n, 2))
    a.uns["stpredict"] = {"mpp": 1.0, "platform": "st", "sample_id": sample}
    return a


def test_manifest_matches_parse_time_folds_and_excludes_failed_spots():
    exp = resolve_experiment(
        {
            "sections": {"platform": "st"},
            "split": {"scheme": "leave_one_patient_out", "inner_folds": 2},
        },
        {},
    )
    s = sheet()
    sections = {x: section(x, seed=i) for i, x in enumerate(experiment_samples(exp, s))}
    man = build_manifest(job_settings(exp, "split"), sections, s, name="t")
    assert set(man["fold"]) == set(fold_ids(exp, s))
    for k in outer_folds(exp, s):
        test = man[(man.fold == k) & (man.role == "test")]
        assert sorted(test.sample_id.unique()) == fold_test_samples(exp, s, k)
    # QC-failed spots never enter a split
    failed = {(x, n) for x, a in sections.items() for n in a.obs_names[~a.obs["keep"]]}
    assert not failed & set(zip(man.sample_id, man.spot_id, strict=False))


def test_fitting_on_a_test_section_is_caught():
    exp = resolve_experiment({"sections": {"platform": "st"}}, {})
    s = sheet()
    sections = {x: section(x) for x in experiment_samples(exp, s)}
    man = build_manifest(job_settings(exp, "split"), sections, s)
    with pytest.raises(LeakageError):
        audit_fitted(
            {"samples": ["PA_0", "PB_0"], "n_spots": 10}, man, "0"
        )  # PA is fold 0's test patient


def test_clusters_exclude_labels():
    exp = resolve_experiment(
        {
            "task": "clusters",
            "sections": {"samples": ["V1"]},
            "exclude_clusters": [2],
            "split": {"scheme": "random_within_section", "n_folds": 3},
        },
        {},
    )
    assert exp["train"]["loss"] == "cross_entropy"
    s = sheet()
    man = build_manifest(job_settings(exp, "split"), {"V1": section("V1")}, s)
    a = section("V1")
    kept = a.obs.loc[man.spot_id.unique(), "cluster"]
    assert "2" not in set(kept)


def test_imputation_and_bad_names():
    s = sheet()
    exp = resolve_experiment(
        {
            "split": {
                "scheme": "section_imputation",
                "train_sections": ["PA_0", "PA_1"],
                "test_section": "PB_0",
            }
        },
        {},
    )
    assert outer_folds(exp, s) == ["0"] and fold_test_samples(exp, s, "0") == ["PB_0"]
    bad = resolve_experiment(
        {
            "split": {
                "scheme": "section_imputation",
                "train_sections": ["NOPE"],
                "test_section": "PB_0",
            }
        },
        {},
    )
    with pytest.raises(ConfigError, match="NOPE"):
        experiment_samples(bad, s)


def test_choose_epochs_averages_inner_folds(tmp_path):
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    pd.DataFrame({"epoch": [1, 2, 3], "val_loss": [1.0, 0.4, 0.5]}).to_csv(a, sep="\t", index=False)
    pd.DataFrame({"epoch": [1, 2, 3], "val_loss": [1.0, 0.7, 0.3]}).to_csv(b, sep="\t", index=False)
    assert choose_epochs([a, b]) == 3  # mean 1.0, 0.55, 0.4
    assert choose_epochs([a]) == 2


def visium_sheet() -> pd.DataFrame:
    rows = [
        {"sample_id": f"D{i}", "patient_id": "P1", "platform": "visium", "series": ""}
        for i in (1, 2, 3)
    ]
    return pd.DataFrame(rows).set_index("sample_id", drop=False)


def test_section_lacking_most_selected_genes_is_refused(caplog):
    from stpredict.learn.folds import check_gene_coverage

    genes = [f"G{i}" for i in range(10)]
    ok = section("A")
    ids = section("B")
    ids.var_names = [f"ENSG{i:011d}" for i in range(40)]
    with pytest.raises(InputError, match="lacks 10 of the 10 selected genes .*Ensembl ids"):
        check_gene_coverage([ok, ids], genes, {"min_coverage": 0.5})
    partial = section("C")[:, [f"G{i}" for i in range(3, 40)]].copy()  # 3 of 10 absent
    check_gene_coverage([ok, partial], genes, {"min_coverage": 0.5})
    assert "lacks 3 of the 10" in caplog.text
    with pytest.raises(InputError):
        check_gene_coverage([partial], genes, {"min_coverage": 0.9})


def test_top_mean_ranks_by_raw_counts_when_asked():
    """ST-Net's 250 genes are those of highest mean raw count; log1p ranking can differ."""
    from stpredict.learn.folds import _fit_targets

    rng = np.random.default_rng(0)
    n = 200
    deep = rng.random(n) < 0.1  # a few very deep spots carry gene A
    X = np.column_stack([np.where(deep, 400, 0), rng.poisson(8, n), rng.poisson(30, n) + 50 * deep])
    a = ad.AnnData(sp.csr_matrix(X.astype(np.float32)))
    a.var_names = ["A", "B", "FILL"]
    a.obs_names = [str(i) for i in range(n)]
    a.obs["sample_id"] = "S"
    by = {}
    for rank_by in ("counts", "log1p"):
        exp = resolve_experiment(
            {
                "targets": {
                    "transform": "log_proportion",
                    "genes": {
                        "mode": "top_mean",
                        "n": 1,
                        "panel": "",
                        "min_frac": 0.1,
                        "rank_by": rank_by,
                    },
                }
            },
            {},
        )
        selector, _ = _fit_targets(exp, [a])
        by[rank_by] = selector.genes_
    raw_mean = X.mean(0)
    assert by["counts"] == [a.var_names[int(np.argmax(raw_mean))]]
    assert by["counts"] != by["log1p"]


def _history(path, val_loss, val_sse=None, val_n=None):
    df = pd.DataFrame({"epoch": np.arange(1, len(val_loss) + 1), "val_loss": val_loss})
    if val_sse is not None:
        df["val_sse"], df["val_n"] = val_sse, val_n
    df.to_csv(path, sep="\t", index=False)
    return path


def test_choose_epochs_pools_squared_errors_over_inner_folds(tmp_path):
    # fold a: 100 spots, fold b: 10 spots, 2 outputs. Mean of the per-fold means prefers
    # epoch 1 (0.5, 0.7); the pooled SSE (ST-Net's cross_validate.py) prefers epoch 2 (110, 100)
    a = _history(tmp_path / "a.tsv", [0.5, 0.4, 0.6], [100.0, 80.0, 120.0], 100)
    b = _history(tmp_path / "b.tsv", [0.5, 1.0, 0.9], [10.0, 20.0, 18.0], 10)
    assert choose_epochs([a, b]) == 2
    mean_of_means = np.mean([[0.5, 0.4, 0.6], [0.5, 1.0, 0.9]], axis=0)
    assert int(np.argmin(mean_of_means)) + 1 == 1  # the old rule disagrees
    # only the epochs every fold has: c stopped after epoch 1
    c = _history(tmp_path / "c.tsv", [0.1], [1.0], 5)
    assert choose_epochs([a, b, c]) == 1
    # classification (no SSE): the mean validation loss
    ca = _history(tmp_path / "ca.tsv", [0.5, 0.4, 0.6], [np.nan] * 3, 100)
    cb = _history(tmp_path / "cb.tsv", [0.5, 1.0, 0.9], [np.nan] * 3, 10)
    assert choose_epochs([ca, cb]) == 1
    empty = tmp_path / "e.tsv"
    pd.DataFrame({"epoch": [], "val_loss": []}).to_csv(empty, sep="\t", index=False)
    with pytest.raises(InputError, match="empty training history"):
        choose_epochs([a, empty])
    nan = _history(tmp_path / "n.tsv", [np.nan, np.nan, np.nan])
    with pytest.raises(InputError, match="no finite"):
        choose_epochs([nan])


def test_train_fold_retrains_after_a_target_change(tmp_path, caplog, monkeypatch):
    """Changing targets.transform after a run retrains from scratch (never the old weights)."""
    import torch

    from stpredict.errors import TrainingInterrupted
    from stpredict.learn.folds import train_fold

    torch.set_num_threads(1)
    s = sheet()
    rng = np.random.default_rng(0)

    def experiment(transform):
        return resolve_experiment(
            {
                "sections": {"samples": ["PA_0", "PB_0", "PC_0"]},
                "split": {"scheme": "leave_one_patient_out", "inner_folds": 0},
                "targets": {
                    "transform": transform,
                    "genes": {"mode": "top_mean", "n": 5, "panel": "", "min_frac": 0.1},
                },
                "model": {"backbone": "tiny", "weights": "none", "tiny_width": 4},
                "train": {"optimiser": "adam", "lr": 1e-3, "batch_size": 16, "epochs": 2},
                "tta": 1,
            },
            {"seed": 0},
        )

    exp = experiment("log1p")
    sections = {x: section(x, seed=i) for i, x in enumerate(experiment_samples(exp, s))}
    stores = {}
    for x, a in sections.items():
        stores[x] = str(tmp_path / f"{x}.npy")
        np.save(stores[x], rng.integers(0, 256, size=(a.n_obs, 16, 16, 3), dtype=np.uint8))
    man = build_manifest(job_settings(exp, "split"), sections, s, name="t")
    man = man[man.fold == "0"]
    out = tmp_path / "fold0"

    def outputs(folder):
        return {
            k: folder / f
            for k, f in (
                ("model", "model.pt"),
                ("history", "history.tsv"),
                ("fitted", "fitted.json"),
            )
        }

    from stpredict.learn import train as training

    orig = training.train
    with monkeypatch.context() as mp:  # an interrupted run (killed after epoch 1)
        mp.setattr(training, "train", lambda *a, **k: orig(*a, **k, stop_after_epoch=1))
        with pytest.raises(TrainingInterrupted):
            train_fold(
                job_settings(exp, "train"),
                "t",
                "0",
                man,
                sections,
                stores,
                outputs(out),
                device="cpu",
            )
    assert (out / "checkpoint.pt").exists()
    with caplog.at_level("WARNING", logger="stpredict.learn.train"):
        res = train_fold(
            job_settings(experiment("log_proportion"), "train"),
            "t",
            "0",
            man,
            sections,
            stores,
            outputs(out),
            device="cpu",
        )
    assert res["resumed_from"] == 0
    assert 'target_transform "log1p" -> "log_proportion"' in caplog.text
    hist = pd.read_csv(out / "history.tsv", sep="\t")
    assert hist["epoch"].tolist() == [1, 2]
    ref = train_fold(
        job_settings(experiment("log_proportion"), "train"),
        "t",
        "0",
        man,
        sections,
        stores,
        outputs(tmp_path / "ref"),
        device="cpu",
    )
    a = torch.load(out / "model.pt", weights_only=True)
    b = torch.load(ref["model"], weights_only=True)
    assert a["target_transform"] == "log_proportion"
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    # prediction takes the experiment's precision (explicit bf16 works on the CPU)
    from stpredict.learn.folds import predict_fold

    bf16 = experiment("log_proportion")
    bf16["train"]["precision"] = "bf16"
    pred = predict_fold(
        job_settings(bf16, "predict"),
        "t",
        "0",
        man,
        sections,
        stores,
        out / "model.pt",
        out / "fitted.json",
        tmp_path / "pred.h5ad",
        device="cpu",
    )
    assert (
        pred.n_obs == int((man.role == "test").sum())
        and pred.uns["stpredict"]["model"]["precision"] == "fp32"
    )
    assert np.isfinite(pred.layers["predicted"]).all()


def test_exclude_clusters_naming_an_absent_cluster_is_refused():
    exp = resolve_experiment(
        {
            "task": "clusters",
            "sections": {"samples": ["V1"]},
            "exclude_clusters": [8],
            "split": {"scheme": "random_within_section", "n_folds": 3},
        },
        {},
    )
    with pytest.raises(
        ConfigError, match=r"exclude_clusters names cluster\(s\) \['8'\] that no section"
    ):
        build_manifest(job_settings(exp, "split"), {"V1": section("V1")}, sheet(), name="t")


def test_a_fold_without_test_or_training_spots_is_refused():
    exp = resolve_experiment(
        {
            "sections": {"samples": ["V1"]},
            "split": {"scheme": "random_within_section", "n_folds": 5},
        },
        {},
    )
    tiny = section("V1", n=5)  # 4 kept spots (every 10th fails QC) for 5 folds
    with pytest.raises(InputError, match="fold 4 has no test spots.*V1 4.*lower split.n_folds"):
        build_manifest(job_settings(exp, "split"), {"V1": tiny}, sheet(), name="t")
