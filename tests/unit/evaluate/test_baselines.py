from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from stpredict.errors import ConfigError
from stpredict.evaluate.baselines import fit_predict, run_baseline
from stpredict.learn.targets import GeneSelector, make_transform

GENES = [f"G{i}" for i in range(6)]


def section(
    sample: str, patient: str, n_side: int = 6, seed: int = 0, annotate: bool = True
) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    rows, cols = np.divmod(np.arange(n_side * n_side), n_side)
    tumour = cols >= n_side // 2
    lam = np.where(tumour[:, None], [40, 5, 10, 10, 10, 10], [5, 40, 10, 10, 10, 10])
    a = ad.AnnData(sp.csr_matrix(rng.poisson(lam).astype(np.float32)))
    a.obs_names = [f"{c}x{r}" for r, c in zip(rows, cols, strict=True)]
    a.var_names = GENES
    a.obs["sample_id"] = sample
    a.obs["patient_id"] = patient
    a.obs["array_row"] = rows
    a.obs["array_col"] = cols
    a.obs["annotation"] = np.where(tumour, "tumor", "non") if annotate else ""
    a.obs["total_counts"] = np.asarray(a.X.sum(1)).ravel()
    a.obsm["spatial"] = np.column_stack([cols * 100.0, rows * 100.0])
    return a


def manifest(sections: dict[str, ad.AnnData]) -> pd.DataFrame:
    """Leave-one-patient-out over three sections of three patients (val = one spot in five)."""
    rows = []
    samples = sorted(sections)
    for k, test in enumerate(samples):
        for s in samples:
            for i, spot in enumerate(sections[s].obs_names):
                role = "test" if s == test else ("val" if i % 5 == 0 else "train")
                rows.append(
                    {"sample_id": s, "spot_id": spot, "patient_id": s, "fold": str(k), "role": role}
                )
    return pd.DataFrame(rows)


def fitted_files(tmp_path, sections, man) -> dict[str, str]:
    out = {}
    for fold in sorted(man["fold"].unique()):
        train = man[(man["fold"] == fold) & (man["role"] == "train")]
        ads = [sections[s][g["spot_id"].to_numpy()].copy() for s, g in train.groupby("sample_id")]
        sel = GeneSelector(mode="top_mean", n=6).fit(ads)
        tr = make_transform("log1p_normalized", genes=list(sel.genes_)).fit(ads)
        path = tmp_path / f"fitted_{fold}.json"
        path.write_text(
            json.dumps(
                {
                    "task": "regression",
                    "genes": sel.to_dict(),
                    "transform": tr.to_dict(),
                    "transform_name": "log1p",
                }
            )
        )
        out[fold] = str(path)
    return out


@pytest.fixture
def cohort(tmp_path):
    sections = {f"S{i}": section(f"S{i}", f"S{i}", seed=i) for i in range(3)}
    man = manifest(sections)
    return sections, man, fitted_files(tmp_path, sections, man)


def test_mean_uses_the_training_side_only(cohort):
    sections, man, fitted = cohort
    # plant absurd counts in S0: folds that test S0 must not see them in their training mean
    sections["S0"].X = sp.csr_matrix(sections["S0"].X.toarray() * 0 + 1000)
    out = {a.obs["sample_id"].iloc[0]: a for a in run_baseline("mean", man, sections, fitted)}
    from stpredict.learn.targets import from_dict

    tr = from_dict(json.loads(Path(fitted["0"]).read_text())["transform"])
    side = man[(man["fold"] == "0") & (man["role"] != "test")]
    expected = np.concatenate(
        [tr.transform(sections[s][g["spot_id"].to_numpy()]) for s, g in side.groupby("sample_id")]
    ).mean(0)
    genes = list(out["S0"].var_names)
    np.testing.assert_allclose(
        out["S0"].layers["predicted"][0],
        expected[[list(tr.genes).index(g) for g in genes]],
        rtol=1e-5,
    )
    # measured values are the fold's transform of the test spots
    np.testing.assert_allclose(
        out["S0"].X,
        tr.transform(sections["S0"])[:, [list(tr.genes).index(g) for g in genes]],
        rtol=1e-5,
    )
    assert set(out) == {"S0", "S1", "S2"} and all(a.n_obs == 36 for a in out.values())


def test_labels_baseline_predicts_the_class_means(cohort):
    sections, man, fitted = cohort
    (a,) = [
        x
        for x in run_baseline("labels", man, sections, fitted)
        if x.obs["sample_id"].iloc[0] == "S1"
    ]
    tum = a.obs["annotation"].to_numpy() == "tumor"
    g0 = list(a.var_names).index("G0")
    # G0 is a tumour gene: predicted higher in tumour spots, constant within a class
    assert a.layers["predicted"][tum, g0].min() > a.layers["predicted"][~tum, g0].max()
    assert np.ptp(a.layers["predicted"][tum, g0]) == 0
    assert np.corrcoef(a.X[:, g0], a.layers["predicted"][:, g0])[0, 1] > 0.5


def test_labels_without_annotations_is_a_clear_error(tmp_path):
    sections = {f"S{i}": section(f"S{i}", f"S{i}", seed=i, annotate=False) for i in range(3)}
    man = manifest(sections)
    with pytest.raises(ConfigError, match="annotations"):
        run_baseline("labels", man, sections, fitted_files(tmp_path, sections, man), experiment="e")


def test_neighbours_oracle_is_the_mean_of_adjacent_spots(cohort):
    sections, man, fitted = cohort
    (a,) = [
        x
        for x in run_baseline(
            "neighbours", man, sections, fitted, platforms={"S0": "st", "S1": "st", "S2": "st"}
        )
        if x.obs["sample_id"].iloc[0] == "S2"
    ]
    pos = {
        (r, c): i
        for i, (r, c) in enumerate(zip(a.obs["array_row"], a.obs["array_col"], strict=True))
    }
    i = pos[(2, 2)]
    nb = [pos[(1, 2)], pos[(3, 2)], pos[(2, 1)], pos[(2, 3)]]
    np.testing.assert_allclose(a.layers["predicted"][i], a.X[nb].mean(0), rtol=1e-6)
    corner = pos[(0, 0)]
    np.testing.assert_allclose(
        a.layers["predicted"][corner], a.X[[pos[(1, 0)], pos[(0, 1)]]].mean(0), rtol=1e-6
    )


def test_random_forest_baselines_learn_from_features(cohort):
    sections, man, fitted = cohort
    features = {}
    for s, a in sections.items():
        tum = (a.obs["annotation"] == "tumor").to_numpy(float)
        rng = np.random.default_rng(len(features))
        features[s] = pd.DataFrame(
            {"f0": tum + rng.normal(0, 0.1, a.n_obs), "f1": rng.normal(size=a.n_obs)},
            index=a.obs_names,
        )
    for method in ("nuclear_rf", "nmf_rf"):
        outs = run_baseline(
            method,
            man,
            sections,
            fitted,
            features=features,
            params={"n_estimators": 20, "n_factors": 3},
            seed=1,
        )
        again = run_baseline(
            method,
            man,
            sections,
            fitted,
            features=features,
            params={"n_estimators": 20, "n_factors": 3},
            seed=1,
        )
        for a, b in zip(outs, again, strict=True):
            np.testing.assert_array_equal(a.layers["predicted"], b.layers["predicted"])
        a = outs[0]
        g0 = list(a.var_names).index("G0")
        assert np.corrcoef(a.X[:, g0], a.layers["predicted"][:, g0])[0, 1] > 0.5, method
    bad = {s: t.iloc[1:] for s, t in features.items()}
    with pytest.raises(Exception, match="no nuclear features"):
        run_baseline("nuclear_rf", man, sections, fitted, features=bad)


def test_fit_predict_mean_and_unknown():
    y = np.arange(12, dtype=float).reshape(4, 3)
    test = [ad.AnnData(np.zeros((2, 3), np.float32))]
    np.testing.assert_allclose(fit_predict("mean", y, test), np.tile(y.mean(0), (2, 1)))
    with pytest.raises(ConfigError, match="unknown baseline"):
        fit_predict("magic", y, test)


def within_section_manifest(sections: dict[str, ad.AnnData], n_folds: int = 5) -> pd.DataFrame:
    """DeepSpaCE-style random folds inside one section: test = every n_folds-th spot."""
    from stpredict.learn.splits import random_within_section

    spots = pd.concat(
        [
            pd.DataFrame({"sample_id": s, "spot_id": a.obs_names, "patient_id": s})
            for s, a in sections.items()
        ]
    )
    return random_within_section(spots, n_folds=n_folds, val_frac=0.2, seed=3)


def test_neighbours_oracle_under_within_section_split_uses_all_neighbours(tmp_path):
    """Under a random within-section split most neighbours of a test spot are training spots."""
    sections = {
        "S0": section("S0", "S0", n_side=8, seed=5),
        "S1": section("S1", "S1", n_side=8, seed=6),
    }
    man = within_section_manifest(sections)
    fitted = fitted_files(tmp_path, sections, man)
    outs = run_baseline("neighbours", man, sections, fitted, platforms={"S0": "st", "S1": "st"})
    (a,) = [x for x in outs if x.obs["sample_id"].iloc[0] == "S0"]
    from stpredict.learn.targets import from_dict

    full = sections["S0"]
    pos = {
        (r, c): i
        for i, (r, c) in enumerate(zip(full.obs["array_row"], full.obs["array_col"], strict=True))
    }
    n_checked = 0
    for fold in sorted(man["fold"].unique()):
        tr = from_dict(json.loads(Path(fitted[fold]).read_text())["transform"])
        y = tr.transform(full)
        genes = list(a.var_names)
        cols = [list(tr.genes).index(g) for g in genes]
        test = a.obs["fold"].to_numpy() == fold
        for k in np.flatnonzero(test):
            r, c = int(a.obs["array_row"].iloc[k]), int(a.obs["array_col"].iloc[k])
            nb = [pos[q] for q in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)) if q in pos]
            np.testing.assert_allclose(a.layers["predicted"][k], y[nb][:, cols].mean(0), rtol=1e-5)
            n_checked += 1
    assert n_checked == 64
    # not the collapsed version: predictions vary within the section and follow the tumour side
    g0 = list(a.var_names).index("G0")
    assert np.corrcoef(a.X[:, g0], a.layers["predicted"][:, g0])[0, 1] > 0.5


def test_smoothed_measurements_come_from_the_whole_section(tmp_path):
    from stpredict.evaluate.metrics import smooth_measurements
    from stpredict.learn.targets import from_dict

    sections = {"S0": section("S0", "S0", n_side=8, seed=5)}
    man = within_section_manifest(sections)
    fitted = fitted_files(tmp_path, sections, man)
    (a,) = run_baseline("mean", man, sections, fitted, platforms={"S0": "st"})
    full = sections["S0"]
    for fold in sorted(man["fold"].unique()):
        tr = from_dict(json.loads(Path(fitted[fold]).read_text())["transform"])
        sm = smooth_measurements(
            tr.transform(full), full.obs["array_row"], full.obs["array_col"], "st"
        )
        sel = a.obs["fold"].to_numpy() == fold
        rows = full.obs_names.get_indexer(a.obs_names[sel])
        cols = [list(tr.genes).index(g) for g in a.var_names]
        np.testing.assert_allclose(a.layers["measured_smoothed"][sel], sm[rows][:, cols], rtol=1e-5)
