"""Parse time: experiments resolved from the schema's defaults, expanded per section, refused early."""

from __future__ import annotations

import pytest

from stpredict.errors import ConfigError, InputError
from stpredict.learn.experiments import experiment_samples, job_settings, resolve_experiment
from stpredict.learn.folds import build_manifest
from stpredict.learn.splits import (
    outer_folds,
)
from tests.unit.learn.test_folds import section, sheet, visium_sheet


def test_sections_each_makes_one_experiment_per_section():
    from stpredict.learn.experiments import expand_experiments

    raw = {
        "cv": {
            "sections": {"platform": "visium", "each": True},
            "split": {"scheme": "random_within_section", "n_folds": 5},
        }
    }
    out = expand_experiments(raw, {}, visium_sheet())
    assert list(out) == ["cv.D1", "cv.D2", "cv.D3"]
    for name, exp in out.items():
        assert experiment_samples(exp, visium_sheet()) == [name.split(".")[1]]
        assert outer_folds(exp, visium_sheet()) == [str(k) for k in range(5)]
    with pytest.raises(ConfigError, match="within-section split"):
        expand_experiments(
            {"x": {"sections": {"each": True}, "split": {"scheme": "leave_one_patient_out"}}},
            {},
            visium_sheet(),
        )


def test_clusters_across_sections_need_harmonised_labels(tmp_path):
    from stpredict.learn.experiments import expand_experiments

    pooled = {
        "cl": {
            "task": "clusters",
            "sections": {"platform": "visium"},
            "split": {"scheme": "random_within_section"},
        }
    }
    with pytest.raises(ConfigError, match="numbers its clusters per section"):
        expand_experiments(pooled, {}, visium_sheet())
    each = {
        "cl": {
            "task": "clusters",
            "sections": {"platform": "visium", "each": True},
            "split": {"scheme": "random_within_section"},
        }
    }
    assert len(expand_experiments(each, {}, visium_sheet())) == 3
    cmap = tmp_path / "map.tsv"
    cmap.write_text(
        "sample_id\tcluster\tlabel\nD1\t1\ttumour\nD1\t2\tstroma\nD1\t3\t\n"
        "D2\t1\tstroma\nD2\t2\ttumour\nD2\t3\tstroma\n"
    )
    mapped = {
        "cl": {**pooled["cl"], "cluster_map": str(cmap), "sections": {"samples": ["D1", "D2"]}}
    }
    (exp,) = expand_experiments(mapped, {}, visium_sheet()).values()
    from stpredict.learn.folds import apply_cluster_map

    secs = {"D1": section("D1"), "D2": section("D2")}
    apply_cluster_map(exp, secs)
    assert list(secs["D1"].obs["cluster"][:3]) == ["tumour", "stroma", ""]
    assert list(secs["D2"].obs["cluster"][:3]) == ["stroma", "tumour", "stroma"]
    man = build_manifest(
        job_settings(exp, "split"), {"D1": section("D1"), "D2": section("D2")}, visium_sheet()
    )
    d1 = section("D1")
    assert not (d1.obs.loc[man[man.sample_id == "D1"].spot_id.unique(), "cluster"] == "3").any()
    cmap.write_text("sample_id\tcluster\tlabel\nD1\t1\ttumour\n")
    with pytest.raises(InputError, match=r"cluster\(s\) \['2', '3'\]"):
        apply_cluster_map(exp, {"D1": section("D1")})


def test_per_experiment_nuclear_settings_are_refused():
    from stpredict.learn.experiments import expand_experiments

    with pytest.raises(ConfigError, match="computed once per section"):
        expand_experiments(
            {"e": {"sections": {"platform": "st"}, "evaluation": {"nuclear": {"fov_um": 50}}}},
            {},
            sheet(),
        )


def test_experiment_train_defaults():
    exp = resolve_experiment({}, {})
    t = exp["train"]
    assert (t["loss_reduction"], t["precision"], t["val_tta"]) == ("mean", "auto", 1)
    from stpredict.learn.train import TrainConfig

    TrainConfig.from_experiment(exp, seed=0)  # every default is a valid training setting
    # a clusters experiment without `train` must not turn the defaults' loss into cross_entropy
    assert resolve_experiment({"task": "clusters"}, {})["train"]["loss"] == "cross_entropy"
    assert resolve_experiment({}, {})["train"]["loss"] == "mse"


@pytest.mark.parametrize(
    "split",
    [
        {"scheme": "random_within_section", "val_frac": 0.0},
        {"scheme": "leave_one_patient_out", "inner_folds": 0},
    ],
)
def test_early_stopping_without_validation_spots_is_refused(split):
    from stpredict.learn.experiments import expand_experiments

    with pytest.raises(ConfigError, match="train.patience 3 .* no validation spots"):
        expand_experiments(
            {"e": {"sections": {"platform": "st"}, "split": split, "train": {"patience": 3}}},
            {},
            sheet(),
        )


def test_job_settings_hold_what_each_job_depends_on():
    exp = resolve_experiment(
        {
            "split": {"scheme": "random_within_section", "n_folds": 2, "val_frac": 0.2},
            "semi_supervised": {"enabled": True, "rounds": 3, "controls": ["random"]},
        },
        {"seed": 5},
    )
    train = job_settings(exp, "train")
    assert {"split", "targets", "model", "train", "seed"} <= set(train)
    assert "evaluation" not in train and "tta" not in train and "semi_supervised" not in train
    rounds = job_settings(exp, "rounds")
    # a chain's round k is the same job whatever follows it or runs beside it
    assert not {"rounds", "control", "controls"} & set(rounds["semi_supervised"])
    assert rounds["semi_supervised"]["n_pseudo"] == exp["semi_supervised"]["n_pseudo"]
    more = {**exp, "semi_supervised": {**exp["semi_supervised"], "rounds": 1, "controls": []}}
    assert job_settings(more, "rounds") == rounds
    base = job_settings(exp, "baseline")
    assert base == {
        "seed": 5,
        "evaluation": {
            "random_forest": exp["evaluation"]["random_forest"],
            "nmf": exp["evaluation"]["nmf"],
        },
    }
    # the figures' settings change no baseline
    maps = {**exp, "evaluation": {**exp["evaluation"], "maps": {"n_sections": 1}}}
    assert job_settings(maps, "baseline") == base
