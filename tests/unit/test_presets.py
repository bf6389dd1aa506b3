"""The paper presets hold the settings docs/PROTOCOLS.md lists for them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from stpredict.learn.experiments import expand_experiments

REPO = Path(__file__).resolve().parents[2]


def preset(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text())


def visium_sheet() -> pd.DataFrame:
    rows = [
        {"sample_id": s, "patient_id": "P1", "platform": "visium", "series": "B", "order": str(i)}
        for i, s in enumerate(["P1_D1", "P1_D2", "P1_D3"], 1)
    ]
    return pd.DataFrame(rows).set_index("sample_id", drop=False)


def test_stnet_preset_matches_the_protocol():
    cfg = preset("stnet.yaml")
    assert cfg["qc"]["min_umi"] == 0 and cfg["qc"]["min_genes"] == 0
    assert cfg["qc"]["whiteness"]["enabled"] is False
    assert cfg["patches"]["fov_px"] == 224 and cfg["patches"]["size_px"] == 224
    assert cfg["patches"]["fov_um"] is None
    assert cfg["evaluation"]["alpha"] == 0.05
    exp = cfg["experiments"]["stnet"]
    assert exp["split"] == {"scheme": "leave_one_patient_out", "inner_folds": 4}
    assert exp["targets"]["transform"] == "log_proportion"
    genes = exp["targets"]["genes"]
    assert (genes["mode"], genes["n"], genes["rank_by"]) == ("top_mean", 250, "counts")
    assert exp["model"] == {"backbone": "densenet121", "weights": "imagenet"}
    t = exp["train"]
    assert (t["loss"], t["loss_reduction"], t["optimiser"]) == ("mse", "stnet", "sgd")
    assert (t["lr"], t["momentum"], t["weight_decay"]) == (1e-6, 0.9, 0.0)
    assert (t["batch_size"], t["epochs"], t["patience"]) == (32, 50, None)
    assert (t["augmentation"], t["head_init"], t["val_tta"]) == ("dihedral", "zero", 8)
    assert exp["tta"] == 8
    # unset keys the protocol relies on take these defaults
    (resolved,) = expand_experiments(
        cfg["experiments"], cfg, visium_sheet().assign(platform="st")
    ).values()
    assert resolved["split"]["inner_assignment"] == "stride"
    assert resolved["train"]["precision"] == "auto"


def test_deepspace_preset_matches_the_protocol():
    cfg = preset("deepspace.yaml")
    assert cfg["reading"]["gene_map"] == ""  # never a demo file in a paper preset
    assert cfg["qc"]["min_umi"] == 1000 and cfg["qc"]["min_genes"] == 1000
    w = cfg["qc"]["whiteness"]
    assert (w["enabled"], w["percentile"], w["max_white_frac"]) == (True, 80, 0.5)
    assert cfg["patches"]["fov_um"] == 137.5 and cfg["patches"]["size_px"] == 224
    exps = cfg["experiments"]
    for name in ("deepspace_cv", "deepspace_clusters"):
        e = exps[name]
        assert e["sections"].get("each") is True, name  # trained and tested within one section
        assert e["split"] == {"scheme": "random_within_section", "n_folds": 5, "val_frac": 0.2}
    assert exps["deepspace_imputation"]["split"]["scheme"] == "section_imputation"
    assert exps["deepspace_clusters"]["task"] == "clusters"
    for name, e in exps.items():
        assert e["model"] == {"backbone": "vgg16", "weights": "imagenet"}, name
        t = e["train"]
        assert (t["optimiser"], t["lr"], t["weight_decay"]) == ("adam", 1e-4, 1e-4), name
        assert (t["batch_size"], t["epochs"], t["patience"]) == (128, 50, 5), name
        assert t["augmentation"] == "deepspace", name
        assert t["loss"] == ("cross_entropy" if name == "deepspace_clusters" else "smoothl1"), name
        assert e["tta"] == 1, name
        if name != "deepspace_clusters":
            assert e["targets"]["transform"] == "pearson_minmax"
            assert e["targets"]["genes"]["panel"] == "deepspace_21"
    resolved = expand_experiments(exps, cfg, visium_sheet())
    assert sorted(resolved) == sorted(
        [f"deepspace_cv.{s}" for s in visium_sheet().index]
        + [f"deepspace_clusters.{s}" for s in visium_sheet().index]
        + ["deepspace_imputation"]
    )


def test_protocols_document_names_every_preset_key_we_check():
    text = (REPO / "docs" / "PROTOCOLS.md").read_text()
    for key in (
        "loss_reduction: stnet",
        "val_tta: 8",
        "rank_by: counts",
        "inner_assignment: stride",
        "sections.each: true",
        "evaluation.alpha",
        "augmentation: deepspace",
        "fov_um: 137.5",
        "fov_px: 224",
        "patience: 5",
        "head_init: zero",
        "tta: 8",
        "tta: 1",
    ):
        assert key in text, key
