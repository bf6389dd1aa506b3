from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stpredict.errors import LeakageError, StpredictError
from stpredict.learn.experiments import experiment_samples, resolve_experiment
from stpredict.learn.splits import (
    MANIFEST_COLUMNS,
    audit,
    audit_fitted,
    fold_ids,
    fold_rows,
    fold_test_samples,
    inner_folds,
    leave_one_patient_out,
    outer_folds,
    random_within_section,
    section_imputation,
    spatial_blocks_within_section,
)
from tests.unit.learn.test_folds import sheet


def make_spots(n_patients: int = 5, sections_per_patient: int = 2, n_spots: int = 30):
    rows, meta = [], []
    for p in range(n_patients):
        for s in range(sections_per_patient):
            sid = f"P{p}_S{s}"
            meta.append({"sample_id": sid, "patient_id": f"P{p}", "series": f"B{p}", "order": s})
            for i in range(n_spots):
                # Visium-like: the same barcodes recur in every section
                rows.append({"sample_id": sid, "spot_id": f"BC{i:03d}", "patient_id": f"P{p}"})
    return pd.DataFrame(rows), pd.DataFrame(meta)


@pytest.fixture()
def spots():
    return make_spots()


def test_lopo_structure_and_determinism(spots):
    df, meta = spots
    man = leave_one_patient_out(df, inner_folds=3, seed=1, inner_assignment="random")
    assert list(man.columns) == MANIFEST_COLUMNS
    outer = man[man["inner_fold"] == -1]
    assert sorted(outer["fold"].unique(), key=int) == [str(k) for k in range(5)]
    for k in range(5):
        test = fold_rows(man, k, "test")
        assert set(test["patient_id"]) == {f"P{k}"}
        assert len(fold_rows(man, k, "train")) == len(df) - len(test)  # final retrain: all others
        assert fold_rows(man, k, "val").empty
        inner = man[(man["outer_fold"] == k) & (man["inner_fold"] >= 0)]
        assert inner["inner_fold"].nunique() == 3
        # every training patient is validated exactly once across the inner folds
        val_patients = inner[inner["role"] == "val"].groupby("patient_id")["fold"].nunique()
        assert sorted(val_patients.index) == sorted(f"P{p}" for p in range(5) if p != k)
        assert (val_patients == 1).all()
    audit(man, meta)
    again = leave_one_patient_out(
        df.sample(frac=1.0, random_state=3), inner_folds=3, seed=1, inner_assignment="random"
    )
    pd.testing.assert_frame_equal(man, again)
    other = leave_one_patient_out(df, inner_folds=3, seed=2, inner_assignment="random")
    assert not man.equals(other)


def test_lopo_inner_folds_stride_sorted_patients_as_stnet(spots):
    """ST-Net's cross_validate.py: sorted patients minus the test one, fold f = patients[f::4]."""
    df, meta = spots
    man = leave_one_patient_out(df, inner_folds=2, seed=123)
    patients = sorted(df["patient_id"].unique())
    for k, held in enumerate(patients):
        rest = [p for p in patients if p != held]
        for f in range(2):
            val = fold_rows(man, f"{k}.{f}", "val")
            assert sorted(val["patient_id"].unique()) == sorted(rest[f::2])
    assert man.equals(leave_one_patient_out(df, inner_folds=2, seed=7))  # no randomness
    audit(man, meta)


def test_random_within_section_proportions(spots):
    df, meta = spots
    man = random_within_section(df, n_folds=5, val_frac=0.2, seed=0)
    audit(man, meta)
    for k in range(5):
        f = man[man["fold"] == str(k)]
        share = f["role"].value_counts(normalize=True)
        assert share["test"] == pytest.approx(0.20, abs=0.01)
        assert share["val"] == pytest.approx(0.16, abs=0.02)
        assert share["train"] == pytest.approx(0.64, abs=0.02)
        # every section contributes to every role
        assert (f.groupby("sample_id")["role"].nunique() == 3).all()
    # each spot is tested exactly once across folds
    tested = man[man["role"] == "test"].groupby(["sample_id", "spot_id"]).size()
    assert len(tested) == len(df) and (tested == 1).all()
    pd.testing.assert_frame_equal(man, random_within_section(df, 5, 0.2, seed=0))


def grid_spots(side: int = 20, pitch_px: float = 100.0):
    yy, xx = np.mgrid[0:side, 0:side]
    xy = np.stack([xx.ravel(), yy.ravel()], 1).astype(float) * pitch_px
    df = pd.DataFrame(
        {
            "sample_id": "S1",
            "spot_id": [f"{x}x{y}" for x, y in zip(xx.ravel(), yy.ravel(), strict=True)],
            "patient_id": "P1",
        }
    )
    return df, xy


def test_spatial_blocks_keep_blocks_together_and_buffer():
    df, xy = grid_spots()
    mpp = 1.0  # 100 µm pitch
    man = spatial_blocks_within_section(df, xy, block_um=500, mpp=mpp, n_folds=4, seed=0)
    audit(man)
    key = dict(zip(df["spot_id"], map(tuple, np.floor(xy / 500).astype(int)), strict=True))
    for k in range(4):
        test = fold_rows(man, k, "test")
        train = fold_rows(man, k, "train")
        assert not test.empty
        assert {key[s] for s in test["spot_id"]}.isdisjoint({key[s] for s in train["spot_id"]})
    buffered = spatial_blocks_within_section(
        df, xy, block_um=500, mpp={"S1": mpp}, n_folds=4, seed=0, buffer_um=150
    )
    audit(buffered)
    pos = dict(zip(df["spot_id"], map(tuple, xy), strict=True))
    for k in range(4):
        test = np.array([pos[s] for s in fold_rows(buffered, k, "test")["spot_id"]])
        train = np.array([pos[s] for s in fold_rows(buffered, k, "train")["spot_id"]])
        d = np.sqrt(((train[:, None, :] - test[None, :, :]) ** 2).sum(-1)).min(1)
        assert d.min() >= 150
        # the buffer only removes non-test spots
        assert len(fold_rows(buffered, k, "test")) == len(fold_rows(man, k, "test"))
        assert len(fold_rows(buffered, k, "train")) < len(fold_rows(man, k, "train"))


def test_section_imputation(spots):
    df, meta = spots
    man = section_imputation(df, ["P0_S0", "P0_S1"], "P1_S0", val_frac=0.25, seed=0)
    assert set(man["sample_id"]) == {"P0_S0", "P0_S1", "P1_S0"}
    assert set(fold_rows(man, 0, "test")["sample_id"]) == {"P1_S0"}
    assert len(fold_rows(man, 0, "val")) == round(0.25 * 30) * 2
    audit(man, meta)
    with pytest.raises(LeakageError):
        section_imputation(df, ["P0_S0"], "P0_S0")


def test_imputation_within_series_is_allowed_but_patient_split_is_not(spots):
    df, meta = spots
    # D1 + D3 -> D2 style: sections of one series on both sides is the intent here
    man = section_imputation(df, ["P0_S0"], "P0_S1", seed=0)
    audit(man, meta)
    with pytest.raises(LeakageError, match="series 'B0'"):
        audit(man, meta, allow_series_split=False)


# ------------------------------------------------------------------ planted leaks


def test_leak_patient_on_both_sides(spots):
    df, meta = spots
    man = leave_one_patient_out(df, inner_folds=0, seed=0)
    # move one section of the test patient of fold 0 into training
    bad = man.copy()
    sel = (bad["fold"] == "0") & (bad["sample_id"] == "P0_S1")
    bad.loc[sel, "role"] = "train"
    with pytest.raises(LeakageError, match="fold 0: patient 'P0'"):
        audit(bad, meta)


def test_leak_patient_in_train_and_val_of_inner_fold(spots):
    df, meta = spots
    man = leave_one_patient_out(df, inner_folds=2, seed=0)
    bad = man.copy()
    val = bad[(bad["fold"] == "0.0") & (bad["role"] == "val")]
    sample = val["sample_id"].iloc[0]
    bad.loc[(bad["fold"] == "0.0") & (bad["sample_id"] == sample), "role"] = "val"
    bad.loc[val.index[:3], "role"] = "train"
    with pytest.raises(LeakageError, match="train or in val"):
        audit(bad, meta)


def test_leak_mislabelled_patient_is_caught_through_sheet(spots):
    df, meta = spots
    # the spot table wrongly gives section P0_S1 to a new patient "PX": a naive split would put
    # P0_S0 and P0_S1 on different sides; the sheet's patient ids reveal it
    wrong = df.copy()
    wrong.loc[wrong["sample_id"] == "P0_S1", "patient_id"] = "PX"
    man = leave_one_patient_out(wrong, inner_folds=0, seed=0)
    with pytest.raises(LeakageError, match="patient 'P0'"):
        audit(man, meta)


def test_leak_series_split_in_patient_level_split(spots):
    df, meta = spots
    # series B0 spans two sections that the sheet (wrongly or not) gives to two patients
    meta2 = meta.copy()
    meta2.loc[meta2["sample_id"] == "P0_S1", "patient_id"] = "PX"
    df2 = df.copy()
    df2.loc[df2["sample_id"] == "P0_S1", "patient_id"] = "PX"
    man = leave_one_patient_out(df2, inner_folds=0, seed=0)
    with pytest.raises(LeakageError, match="series 'B0'"):
        audit(man, meta2)


def test_leak_duplicated_spot(spots):
    df, meta = spots
    man = random_within_section(df, n_folds=5, seed=0)
    row = man[(man["fold"] == "2") & (man["role"] == "test")].iloc[[0]].copy()
    row["role"] = "train"
    bad = pd.concat([man, row], ignore_index=True)
    with pytest.raises(LeakageError, match="appears more than once"):
        audit(bad, meta)
    with pytest.raises(LeakageError, match="more than once"):
        leave_one_patient_out(pd.concat([df, df.iloc[[0]]]))


def test_leak_section_on_both_sides_of_imputation(spots):
    df, meta = spots
    man = section_imputation(df, ["P0_S0"], "P1_S0", seed=0)
    bad = man.copy()
    bad.loc[bad.index[(bad["sample_id"] == "P1_S0")][:2], "role"] = "train"
    with pytest.raises(LeakageError, match="section 'P1_S0'"):
        audit(bad, meta)


def test_audit_fitted(spots):
    df, meta = spots
    lopo = leave_one_patient_out(df, inner_folds=2, seed=0)
    train_samples = sorted(fold_rows(lopo, 0, "train")["sample_id"].unique())
    n_train = len(fold_rows(lopo, 0, "train"))
    audit_fitted({"samples": train_samples, "n_spots": n_train}, lopo, 0)
    with pytest.raises(LeakageError, match="held-out section"):
        audit_fitted({"samples": train_samples + ["P0_S0"], "n_spots": n_train + 30}, lopo, 0)
    # in inner fold 0.0 the val patients' sections are held out too
    val_samples = sorted(fold_rows(lopo, "0.0", "val")["sample_id"].unique())
    with pytest.raises(LeakageError, match="held-out section"):
        audit_fitted({"samples": train_samples, "n_spots": n_train}, lopo, "0.0")
    inner_train = fold_rows(lopo, "0.0", "train")
    audit_fitted(
        {"samples": sorted(inner_train["sample_id"].unique()), "n_spots": len(inner_train)},
        lopo,
        "0.0",
    )
    assert val_samples

    # within-section split: the same samples hold train and test spots, so n_spots decides
    rnd = random_within_section(df, n_folds=5, seed=0)
    tr = fold_rows(rnd, 1, "train")
    samples = sorted(tr["sample_id"].unique())
    audit_fitted({"samples": samples, "n_spots": len(tr)}, rnd, 1)
    with pytest.raises(LeakageError, match="only"):
        audit_fitted({"samples": samples, "n_spots": len(df)}, rnd, 1)

    # spot lists: pairs are exact
    pairs = list(zip(tr["sample_id"], tr["spot_id"], strict=True))
    audit_fitted(pairs, rnd, 1)
    te = fold_rows(rnd, 1, "test")
    with pytest.raises(LeakageError, match="held-out spot"):
        audit_fitted(pairs + [(te["sample_id"][0], te["spot_id"][0])], rnd, 1)
    # plain ids: unique ids work, ids shared across sections are reported as ambiguous
    one = rnd[rnd["sample_id"] == "P0_S0"]
    audit_fitted(list(fold_rows(one, 1, "train")["spot_id"]), one, 1)
    with pytest.raises(LeakageError, match="held-out spot"):
        audit_fitted(list(fold_rows(one, 1, "test")["spot_id"][:1]), one, 1)
    with pytest.raises(LeakageError, match="pairs"):
        audit_fitted(list(tr["spot_id"]), rnd, 1)
    with pytest.raises(StpredictError, match="not in the manifest"):
        audit_fitted([], rnd, 99)


def test_lopo_folds_and_inner_folds_known_before_running():
    exp = resolve_experiment(
        {
            "sections": {"platform": "st"},
            "split": {"scheme": "leave_one_patient_out", "inner_folds": 2},
        },
        {"seed": 1},
    )
    s = sheet()
    assert experiment_samples(exp, s) == ["PA_0", "PA_1", "PB_0", "PB_1", "PC_0", "PD_0"]
    assert outer_folds(exp, s) == ["0", "1", "2", "3"]
    assert inner_folds(exp, s, "0") == ["0.0", "0.1"] and inner_folds(exp, s, "0.1") == []
    assert fold_ids(exp, s)[:3] == ["0.0", "0.1", "0"]
    assert fold_test_samples(exp, s, "1") == ["PB_0", "PB_1"]
