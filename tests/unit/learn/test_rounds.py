"""Teacher/student rounds: the pool, its leakage rules, pseudo-labels, students, the round choice."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from stpredict.errors import ConfigError, InputError, LeakageError
from stpredict.learn.experiments import job_settings, resolve_experiment
from stpredict.learn.folds import build_manifest, predict_fold, train_fold
from stpredict.learn.pool import (
    audit_pool,
    check_semi_supervised,
    draw_pool,
    mask_labels,
    pool_candidates,
    read_images_table,
    tile_images,
)
from stpredict.learn.rounds import (
    pseudo_label,
    pseudo_labels,
    read_pseudo,
    round_chains,
    student_config,
    student_noise,
    summarise_rounds,
    teacher_dir,
    train_student,
)
from stpredict.learn.splits import audit, audit_fitted

N_SPOTS = 90
SIZE = 16
GENES = [f"G{i}" for i in range(6)]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _sheet() -> pd.DataFrame:
    rows = [
        {"sample_id": s, "patient_id": "P1", "platform": "st", "series": "", "image": f"{s}.jpg"}
        for s in ("A", "B", "C")
    ]
    return pd.DataFrame(rows).set_index("sample_id", drop=False)


def _section(sample: str, level: np.ndarray, seed: int) -> ad.AnnData:
    """Counts whose first genes follow the patches' brightness (a link the CNN can learn)."""
    rng = np.random.default_rng(seed)
    n = len(level)
    mu = np.column_stack([5 + 40 * level * (j < 4) + 5 * (j >= 4) for j in range(len(GENES))])
    counts = rng.poisson(mu).astype(np.float32)
    a = ad.AnnData(sp.csr_matrix(counts))
    a.obs_names = [f"{i % 10}x{i // 10}" for i in range(n)]
    a.var_names = GENES
    a.obs["sample_id"] = sample
    a.obs["keep"] = np.ones(n, bool)
    a.obs["array_row"] = np.arange(n) // 10
    a.obs["array_col"] = np.arange(n) % 10
    a.obsm["spatial"] = np.column_stack([a.obs["array_col"] * 100.0, a.obs["array_row"] * 100.0])
    a.uns["stpredict"] = {"mpp": 1.0, "platform": "st", "sample_id": sample}
    return a


def _store(path, level: np.ndarray, ids, seed: int) -> str:
    rng = np.random.default_rng(seed)
    px = np.clip(
        30 + 200 * level[:, None, None, None] + rng.normal(0, 8, (len(level), SIZE, SIZE, 3)),
        0,
        255,
    )
    np.save(path, px.astype(np.uint8))
    pd.DataFrame({"id": list(ids)}).to_csv(path.with_suffix(".tsv"), sep="\t", index=False)
    return str(path)


def _experiment(**semi) -> dict:
    ss = {
        "enabled": True,
        "rounds": 2,
        "n_pseudo": 60,
        "pool": [{"source": "sections", "samples": ["B", "C"]}, {"source": "unlabelled_spots"}],
        "augmentation": "dihedral",
        "dropout": 0.2,
        "epochs": 2,
        "tta": 4,
        **semi,
    }
    return resolve_experiment(
        {
            "sections": {"samples": ["A"]},
            "split": {
                "scheme": "random_within_section",
                "n_folds": 3,
                "val_frac": 0.25,
                "labelled_frac": 0.5,
            },
            "targets": {"transform": "log1p", "genes": {"mode": "top_mean", "n": 6}},
            "model": {"backbone": "tiny", "weights": "none", "tiny_width": 4},
            "train": {"lr": 0.01, "batch_size": 16, "epochs": 3, "augmentation": "dihedral"},
            "tta": 1,
            "semi_supervised": ss,
        },
        {"seed": 3},
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Three sections with stores, a manifest and the teacher of fold 0 (trained for real)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rounds")
    sheet = _sheet()
    sections, stores = {}, {}
    for i, s in enumerate(("A", "B", "C")):
        level = np.random.default_rng(10 + i).uniform(0, 1, N_SPOTS)
        sections[s] = _section(s, level, seed=i)
        (root / s).mkdir()
        stores[s] = _store(root / s / "spots.npy", level, sections[s].obs_names, seed=i)
    exp = _experiment()
    man = build_manifest(exp, {"A": sections["A"]}, sheet, name="t")
    teacher = root / "folds" / "0"
    outs = {
        k: teacher / f
        for k, f in (("model", "model.pt"), ("history", "history.tsv"), ("fitted", "fitted.json"))
    }
    train_fold(exp, "t", "0", man, {"A": sections["A"]}, {"A": stores["A"]}, outs, device="cpu")
    predict_fold(
        exp, "t", "0", man, {"A": sections["A"]}, {"A": stores["A"]}, outs["model"], outs["fitted"],
        teacher / "predictions.h5ad", device="cpu",
    )  # fmt: skip
    pool_inputs = {
        "stores": {"A": stores["A"]},
        "pool_qc": {},
        "pool_stores": {s: stores[s] for s in ("B", "C")},
        "tiles": None,
        "irrelevant_tiles": None,
    }
    for s in ("B", "C"):
        pool_inputs["pool_qc"][s] = str(root / f"{s}_qc.h5ad")
        sections[s].write_h5ad(pool_inputs["pool_qc"][s])
    return {
        "root": root,
        "sheet": sheet,
        "sections": sections,
        "stores": stores,
        "exp": exp,
        "manifest": man,
        "teacher": teacher,
        "pool_inputs": pool_inputs,
    }


def _pseudo(world, control="none", k=1, exp=None, teacher=None, fitted=None, out=None):
    exp = exp or world["exp"]
    teacher = teacher or world["teacher"]
    out = out or world["root"] / f"round{k}" / control / "pseudo.tsv"
    return pseudo_label(
        job_settings(exp, "rounds"), "t", "0", k, control, world["manifest"], {"A": world["sections"]["A"]},
        world["pool_inputs"], teacher / "model.pt", fitted or teacher / "fitted.json",
        world["teacher"] / "fitted.json", out, device="cpu",
    ), out  # fmt: skip


def _student(world, pseudo_tsv, folder, control="none", k=1, exp=None, teacher=None):
    outs = {
        k_: folder / f
        for k_, f in (
            ("model", "model.pt"),
            ("history", "history.tsv"),
            ("fitted", "fitted.json"),
            ("predictions", "predictions.h5ad"),
        )
    }
    allowed = list(world["stores"].values())
    res = train_student(
        job_settings(exp or world["exp"], "rounds"), "t", "0", k, control, world["manifest"], {"A": world["sections"]["A"]},
        {"A": world["stores"]["A"]}, pseudo_tsv, allowed, (teacher or world["teacher"]) / "model.pt",
        world["teacher"] / "fitted.json", outs, device="cpu",
    )  # fmt: skip
    return res, outs


def _keys(df, a="sample_id", b="spot_id"):
    return set(zip(df[a].astype(str), df[b].astype(str), strict=True))


# ------------------------------------------------------------------------------ labelled share
def test_labelled_share_masks_training_spots_only(world):
    man, exp = world["manifest"], world["exp"]
    full = build_manifest({**exp, "split": {**exp["split"], "labelled_frac": 1.0}},
                          {"A": world["sections"]["A"]}, world["sheet"], name="t")  # fmt: skip
    for fold in ("0", "1", "2"):
        m, f = man[man.fold == fold], full[full.fold == fold]
        assert _keys(m[m.role == "val"]) == _keys(f[f.role == "val"])
        assert _keys(m[m.role == "test"]) == _keys(f[f.role == "test"])
        n_train = int((f.role == "train").sum())
        assert int((m.role == "train").sum()) == round(0.5 * n_train)
        assert _keys(m[m.role.isin(["train", "unlabelled"])]) == _keys(f[f.role == "train"])
    audit(man)  # unlabelled is a training-side role
    # anything fitted on an unlabelled spot is a leak, like a fit on held-out spots
    unl = man[(man.fold == "0") & (man.role == "unlabelled")].head(3)
    with pytest.raises(LeakageError):
        audit_fitted(list(zip(unl.sample_id, unl.spot_id, strict=True)), man, "0")
    assert mask_labels(full, 1.0, 0) is full
    with pytest.raises(ConfigError, match="labelled_frac"):
        mask_labels(full, 0.0, 0)


def test_teacher_trains_on_the_labelled_share_only(world):
    fitted = json.loads((world["teacher"] / "fitted.json").read_text())
    man = world["manifest"]
    n_train = int(((man.fold == "0") & (man.role == "train")).sum())
    assert fitted["transform"]["fitted_on"]["n_spots"] == n_train


# ------------------------------------------------------------------------------ the pool
def test_the_pool_never_holds_a_labelled_validation_or_test_spot(world):
    man = world["manifest"]
    for fold in ("0", "1", "2"):
        cands = pool_candidates(world["exp"], fold, man, world["pool_inputs"])
        m = man[man.fold == fold]
        own = cands[cands.source == "unlabelled_spots"]
        assert len(own) and _keys(own, "origin", "id") <= _keys(m[m.role == "unlabelled"])
        assert not _keys(cands, "origin", "id") & _keys(m[m.role.isin(["train", "val", "test"])])
        assert set(cands.source) == {"sections", "unlabelled_spots"}
    # a pool holding one of the fold's validation spots is refused
    val = man[(man.fold == "0") & (man.role == "val")].iloc[0]
    bad = pd.DataFrame(
        [
            {
                "source": "unlabelled_spots",
                "origin": val.sample_id,
                "id": val.spot_id,
                "store": "x",
                "row": 0,
            }
        ]
    )
    with pytest.raises(LeakageError, match="role val"):
        audit_pool(bad, man, "0")


def test_the_draw_is_seeded_and_without_replacement(world):
    cands = pool_candidates(world["exp"], "0", world["manifest"], world["pool_inputs"])
    a, b = draw_pool(cands, 50, 7), draw_pool(cands, 50, 7)
    pd.testing.assert_frame_equal(a, b)
    assert not a.duplicated(["store", "row"]).any() and len(a) == 50
    assert not draw_pool(cands, 50, 8).equals(a)
    assert len(draw_pool(cands, 10_000, 7)) == len(cands)  # a small pool: all of it


def _parse_check(**semi):
    exp = _experiment(**semi)
    check_semi_supervised(exp, _sheet(), ["A"])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"pool": [{"source": "sections", "samples": ["A"]}]}, "of the experiment itself"),
        ({"pool": [{"source": "sections", "samples": ["Z"]}]}, "absent from the sample sheet"),
        (
            {"pool": [{"source": "interspot", "grid": "triangles"}]},
            r"interspot grid 'triangles' does not fit the st .*Fix: use 'squares' \(2 x 2 blocks",
        ),
        ({"pool": [{"source": "interspot", "samples": ["Z"]}]}, "absent from the sample sheet"),
        ({"pool": [{"source": "wsi", "table": "x.tsv"}]}, "wsi slide table does not exist"),
        ({"pool": [{"source": "wsi"}]}, "wsi.slides, and it is empty. Fix: set wsi.slides"),
        ({"pool": []}, "pool is empty"),
        ({"pool": [{"source": "images", "table": "nope.tsv"}]}, "does not exist"),
        ({"controls": ["irrelevant"]}, "semi_supervised.irrelevant is empty"),
    ],
)
def test_unworkable_settings_are_refused_at_parse_time(change, match):
    with pytest.raises(ConfigError, match=match):
        _parse_check(**change)


def test_schemes_without_validation_and_clusters_are_refused():
    exp = _experiment()
    sheet = _sheet()
    check_semi_supervised(exp, sheet, ["A"])  # the fixture's settings pass
    lopo = {**exp, "split": {**exp["split"], "scheme": "leave_one_patient_out"}}
    with pytest.raises(ConfigError, match="leave_one_patient_out"):
        check_semi_supervised(lopo, sheet, ["A"])
    with pytest.raises(ConfigError, match="val_frac is 0"):
        check_semi_supervised({**exp, "split": {**exp["split"], "val_frac": 0.0}}, sheet, ["A"])
    with pytest.raises(ConfigError, match="task clusters"):
        check_semi_supervised({**exp, "task": "clusters"}, sheet, ["A"])
    full = {**exp, "split": {**exp["split"], "labelled_frac": 1.0}}
    with pytest.raises(ConfigError, match="labelled_frac is 1"):
        check_semi_supervised(full, sheet, ["A"])
    off = {**exp, "semi_supervised": {**exp["semi_supervised"], "enabled": False, "pool": []}}
    check_semi_supervised(off, sheet, ["A"])  # disabled: nothing is checked


def test_image_tiles_use_the_one_extractor(tmp_path):
    from PIL import Image

    from stpredict.patches.geometry import PatchSpec

    rng = np.random.default_rng(0)
    img = rng.integers(0, 180, size=(100, 130, 3), dtype=np.uint8)
    img[:, 100:] = 255  # a white margin: its tiles are not usable
    Image.fromarray(img).save(tmp_path / "u.png")
    table = tmp_path / "images.tsv"
    pd.DataFrame({"image_id": ["U"], "image": [str(tmp_path / "u.png")], "mpp": [2.0]}).to_csv(
        table, sep="\t", index=False
    )
    spec = PatchSpec(fov_um=40.0, size_px=8)  # 20 px crops: a 5 x 6 grid
    out = tile_images([table], spec, tmp_path / "t.npy", tmp_path / "t.tsv", tmp_path / "t.json")
    store = np.load(tmp_path / "t.npy")
    assert store.shape == (30, 8, 8, 3) and len(out) == 30
    assert out["id"].iloc[0] == "U:0" and set(out["image_id"]) == {"U"}
    right = out["x"] > 100
    assert not out.loc[right, "usable"].any() and out.loc[~right, "usable"].sum() > 10
    meta = json.loads((tmp_path / "t.json").read_text())
    assert meta["size_px"] == 8 and meta["images"]["U"]["shape"] == [100, 130]
    pd.DataFrame({"image_id": ["U"], "image": ["u.png"]}).to_csv(table, sep="\t", index=False)
    with pytest.raises(InputError, match="lacks column"):
        read_images_table(table)


def test_glass_tiles_of_a_half_glass_image_are_not_usable(tmp_path):
    """The whiteness threshold is relative to the image: on half glass it passes glass tiles."""
    from PIL import Image

    from stpredict.patches.geometry import PatchSpec

    rng = np.random.default_rng(1)
    img = np.full((100, 200, 3), 240, dtype=np.uint8)  # glass (mean RGB >= 220) ...
    img[:, 100:] += rng.integers(0, 10, size=(100, 100, 3), dtype=np.uint8)
    img[:, :100] = rng.integers(60, 180, size=(100, 100, 3), dtype=np.uint8)  # ... and tissue
    Image.fromarray(img).save(tmp_path / "half.png")
    table = tmp_path / "images.tsv"
    pd.DataFrame({"image_id": ["H"], "image": [str(tmp_path / "half.png")], "mpp": [2.0]}).to_csv(
        table, sep="\t", index=False
    )
    spec = PatchSpec(fov_um=40.0, size_px=8)  # 20 px crops: a 5 x 10 grid
    args = ([table], spec, tmp_path / "t.npy", tmp_path / "t.tsv", tmp_path / "t.json")
    out = tile_images(*args, percentile=80.0, max_white_frac=0.5)
    glass = out["x"] > 100
    assert (out.loc[glass, "background_frac"] > 0.5).all()
    assert not out.loc[glass, "usable"].any() and out.loc[~glass, "usable"].all()
    loose = tile_images(*args, background_rgb=256.0)  # no pixel is background: glass passes
    assert loose.loc[glass, "usable"].any(), "the whiteness rule alone should pass some glass"


# ------------------------------------------------------------------------------ pseudo-labels
def test_pseudo_labels_come_from_the_folds_own_teacher(world, tmp_path):
    fitted = json.loads((world["teacher"] / "fitted.json").read_text())
    other = tmp_path / "fitted.json"
    other.write_text(json.dumps({**fitted, "fold": "1"}))
    with pytest.raises(LeakageError, match="same fold"):
        _pseudo(world, fitted=other, out=tmp_path / "p.tsv")
    # round 2 must be labelled by student 1 of the same chain, not by the round-0 teacher
    with pytest.raises(LeakageError, match="round 1"):
        _pseudo(world, k=2, out=tmp_path / "p2.tsv")
    assert teacher_dir("t", 1, "none", "0") == "results/experiments/t/folds/0"
    assert teacher_dir("t", 3, "random", "0") == "results/experiments/t/round2/random/folds/0"


def test_pseudo_labels_are_the_teachers_predictions_in_the_folds_target_space(world):
    from stpredict.learn.predict import load_model, predict

    table, path = _pseudo(world)
    from stpredict.learn.targets import from_dict

    fitted = json.loads((world["teacher"] / "fitted.json").read_text())
    genes = [str(g) for g in from_dict(fitted["genes"]).genes_]
    assert list(table.columns[5:]) == genes and len(table) == 60
    back = read_pseudo(path, genes)
    assert np.array_equal(back[genes].to_numpy(np.float32), table[genes].to_numpy(np.float32))
    model, _ = load_model(world["teacher"] / "model.pt")
    stores = list(dict.fromkeys(table["store"]))
    rows = [table.loc[table.store == s, "row"].to_numpy() for s in stores]
    preds, _ = predict(model, stores, rows, tta=4, device="cpu")
    assert np.allclose(preds, table[genes].to_numpy(), atol=1e-6)
    assert not _keys(table, "origin", "id") & _keys(
        world["manifest"][
            (world["manifest"].fold == "0") & (world["manifest"].role != "unlabelled")
        ]
    )


def test_controls(world):
    none, _ = _pseudo(world, "none")
    perm, _ = _pseudo(world, "permuted")
    rand, _ = _pseudo(world, "random")
    genes = GENES_OF(none)
    a, p, r = (t[genes].to_numpy() for t in (none, perm, rand))
    assert none[["store", "row"]].equals(perm[["store", "row"]])  # the same draw in every chain
    assert sorted(map(tuple, a)) == sorted(map(tuple, p)) and not np.array_equal(a, p)
    # random: each value is a training target of its gene (the fold's fit), not a prediction
    from stpredict.learn.targets import from_dict

    fitted = json.loads((world["teacher"] / "fitted.json").read_text())
    man = world["manifest"]
    train = man[(man.fold == "0") & (man.role == "train")]
    y = from_dict(fitted["transform"]).transform(world["sections"]["A"][train.spot_id.tolist()])
    for j in range(len(genes)):
        assert set(np.round(r[:, j], 5)) <= set(np.round(y[:, j], 5))
    assert abs(np.corrcoef(r[:, 0], a[:, 0])[0, 1]) < 0.5
    assert np.array_equal(pseudo_labels(a, "irrelevant", 0), a)
    assert round_chains(
        {"semi_supervised": {"control": "none", "controls": ["random", "none"]}}
    ) == [
        "none",
        "random",
    ]


def GENES_OF(table):  # noqa: N802 - a helper named like a constant list
    return [c for c in table.columns if c not in ("source", "origin", "id", "store", "row")]


# ------------------------------------------------------------------------------ students
def test_student_trains_on_labelled_and_pseudo_labelled_patches_and_validates_on_labels_only(
    world, caplog
):
    _, pseudo_tsv = _pseudo(world)
    folder = world["root"] / "round1" / "none" / "folds" / "0"
    with caplog.at_level("INFO", logger="stpredict.learn.models"):
        res, outs = _student(world, pseudo_tsv, folder)
    assert "loaded" in caplog.text and str(world["teacher"] / "model.pt") in caplog.text
    man = world["manifest"]
    m = man[man.fold == "0"]
    rec = json.loads(outs["fitted"].read_text())
    assert rec["round"] == 1 and rec["control"] == "none" and rec["fold"] == "0"
    assert rec["data"] == {
        "train_labelled": int((m.role == "train").sum()),
        "train_pseudo": 60,
        "val": int((m.role == "val").sum()),
    }
    teacher = json.loads((world["teacher"] / "fitted.json").read_text())
    assert rec["transform"] == teacher["transform"]  # the fold's training-side fit, unchanged
    hist = pd.read_csv(outs["history"], sep="\t")
    assert (hist["val_n"] == int((m.role == "val").sum())).all()
    pred = ad.read_h5ad(outs["predictions"])
    assert set(pred.obs["spot_id"]) == set(m.loc[m.role == "test", "spot_id"])
    assert pred.uns["stpredict"]["experiment"] == "t/round1/none"
    assert res["resumed_from"] == 0 and np.isfinite(pred.layers["predicted"]).all()
    model = torch.load(outs["model"], weights_only=True)
    assert model["config"]["weights"] == str(world["teacher"] / "model.pt")


def test_a_tampered_pseudo_label_file_with_a_test_spot_is_refused(world, tmp_path):
    table, _ = _pseudo(world, out=tmp_path / "p.tsv")
    man = world["manifest"]
    test = man[(man.fold == "0") & (man.role == "test")].iloc[0]
    table.loc[0, ["source", "origin", "id"]] = ["unlabelled_spots", test.sample_id, test.spot_id]
    table.to_csv(tmp_path / "bad.tsv", sep="\t", index=False)
    with pytest.raises(LeakageError, match="role test"):
        _student(world, tmp_path / "bad.tsv", tmp_path / "s")


def test_student_whose_pseudo_labels_changed_starts_afresh(world, tmp_path, monkeypatch, caplog):
    from stpredict.errors import TrainingInterrupted
    from stpredict.learn import train as training

    table, path = _pseudo(world, out=tmp_path / "pseudo.tsv")
    folder = tmp_path / "student"
    orig = training.train

    def interrupted():
        with monkeypatch.context() as mp:
            mp.setattr(training, "train", lambda *a, **k: orig(*a, **k, stop_after_epoch=1))
            with pytest.raises(TrainingInterrupted):
                _student(world, path, folder)
        assert (folder / "checkpoint.pt").exists()

    interrupted()
    res, _ = _student(world, path, folder)  # the same pseudo-labels: resumed
    assert res["resumed_from"] == 1
    interrupted()
    genes = GENES_OF(table)
    table[genes] = table[genes].to_numpy()[::-1]  # another teacher's labels, same patches
    table.to_csv(path, sep="\t", index=False)
    with caplog.at_level("WARNING", logger="stpredict.learn.train"):
        res, _ = _student(world, path, folder)
    assert res["resumed_from"] == 0
    assert "train.targets changed" in caplog.text and "extra.pseudo changed" in caplog.text


def test_student_config_and_noise(world):
    exp = world["exp"]
    cfg = student_config(exp, "t", "0", 1, "teacher.pt")
    assert cfg.weights == "teacher.pt" and cfg.head_init is None and cfg.epochs == 2
    assert cfg.augmentation == "dihedral"
    assert cfg.seed == student_config(exp, "t", "0", 1, "other.pt").seed
    assert cfg.seed != student_config(exp, "t", "0", 2, "teacher.pt").seed
    scratch = {**exp, "semi_supervised": {**exp["semi_supervised"], "student_init": "scratch"}}
    assert student_config(scratch, "t", "0", 1, "teacher.pt").weights == "none"
    from stpredict.learn.models import build_model

    m = build_model("tiny", 3, tiny_width=4)
    student_noise(0.9, None)(m)
    x = torch.randn(64, 3, 8, 8)
    m.eval()
    assert torch.equal(m(x), m(x))  # no dropout in evaluation
    m.train()
    torch.manual_seed(0)
    assert not torch.equal(m(x), m(x))  # dropout on the embeddings in training
    from torchvision.ops import StochasticDepth

    net = torch.nn.Sequential(StochasticDepth(0.1, "row"))
    holder = build_model("tiny", 2, tiny_width=4)
    holder.backbone.extra = net
    student_noise(0.0, 0.4)(holder)
    assert net[0].p == pytest.approx(0.4)


# ------------------------------------------------------------------------------ round choice
def _round_files(tmp_path, key, truth, pred, val_loss):
    d = tmp_path / key
    d.mkdir(parents=True)
    a = ad.AnnData(X=truth.astype(np.float32))
    a.obs_names = [f"A:{i}" for i in range(len(truth))]
    a.obs["sample_id"] = "A"
    a.var_names = ["g1", "g2"]
    a.layers["predicted"] = pred.astype(np.float32)
    a.write_h5ad(d / "predictions.h5ad")
    pd.DataFrame({"epoch": [1, 2], "val_loss": [9.0, val_loss], "val_n": [20, 20]}).to_csv(
        d / "history.tsv", sep="\t", index=False
    )
    (d / "fitted.json").write_text(json.dumps({"result": {"epoch": 2}}))
    return {
        k: str(d / f)
        for k, f in (
            ("predictions", "predictions.h5ad"),
            ("history", "history.tsv"),
            ("fitted", "fitted.json"),
        )
    }


def test_the_best_round_is_chosen_on_validation_never_on_test(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(40, 2))
    noise = rng.normal(size=(40, 2))
    rounds = {  # round: (test prediction quality, validation loss)
        0: (truth + 2.0 * noise, 0.50),
        1: (truth + 1.0 * noise, 0.30),  # best on validation
        2: (truth + 0.1 * noise, 0.40),  # best on test
    }
    records = [
        {"control": "none", "round": k, "fold": "0", **_round_files(tmp_path, f"r{k}", truth, p, v)}
        for k, (p, v) in rounds.items()
    ]
    table = summarise_rounds(records)
    chosen = table.loc[table.chosen, "round"].unique().tolist()
    assert chosen == [1]
    r = table.groupby("round")["pearson"].median()
    assert r.idxmax() == 2  # the test metric would have chosen round 2
    assert table.loc[table["round"] == 1, "val_loss"].iloc[0] == pytest.approx(0.30)
    assert set(table["model"]) == {"teacher", "student 1", "student 2"}
    # every round must be tested on the same spots
    other = _round_files(tmp_path, "short", truth[:30], rounds[2][0][:30], 0.1)
    with pytest.raises(InputError, match="other spots"):
        summarise_rounds(records[:2] + [{"control": "none", "round": 2, "fold": "0", **other}])


def test_a_sections_source_without_samples_takes_the_sheets_other_sections():
    from stpredict.learn.pool import pool_sections, resolve_pool

    sheet = _sheet()
    sheet.loc["C", "image"] = ""  # no image, no patches: not in the pool
    exp = resolve_pool(_experiment(pool=[{"source": "sections"}]), sheet, ["A"])
    assert pool_sections(exp) == ["B"]
    check_semi_supervised(exp, sheet, ["A"])
    with pytest.raises(ConfigError, match="there are none"):
        check_semi_supervised(_experiment(pool=[{"source": "sections"}]), sheet.loc[["A"]], ["A"])


# ------------------------------------------------------------------------------ interspot pool
def _grid_store(world, tmp_path, fov_px: float, white_row: int = 0):
    """Section A's 2x2-block centres as a grid store beside a spot store with centres (x, y)."""
    a = world["sections"]["A"]
    folder = tmp_path / "A"
    folder.mkdir(parents=True)
    xy = pd.DataFrame(a.obsm["spatial"], index=a.obs_names, columns=["x", "y"])
    xy.rename_axis("id").reset_index().to_csv(folder / "spots.tsv", sep="\t", index=False)
    centres = pd.DataFrame(
        [
            {"id": f"sq_{r}_{c}", "x": c * 100.0 + 50, "y": r * 100.0 + 50}
            for r in range(N_SPOTS // 10 - 1)
            for c in range(9)
        ]
    )
    centres["pad_frac"] = 0.0
    centres["white"] = np.arange(len(centres)) == white_row
    centres.to_csv(folder / "squares.tsv", sep="\t", index=False)
    (folder / "squares.json").write_text(json.dumps({"fov_px": fov_px}))
    np.save(folder / "squares.npy", np.zeros((len(centres), SIZE, SIZE, 3), np.uint8))
    return str(folder / "squares.npy"), centres, xy


def test_interspot_crops_never_overlap_a_held_out_spot(world, tmp_path):
    store, centres, xy = _grid_store(world, tmp_path, fov_px=60)
    exp = _experiment(pool=[{"source": "interspot"}])
    inputs = {**world["pool_inputs"], "interspot_stores": {"A": store}}
    man = world["manifest"]
    for fold in ("0", "1", "2"):
        cands = pool_candidates(exp, fold, man, inputs)
        assert set(cands.source) == {"interspot"} and len(cands)
        m = man[man.fold == fold]
        held = set(m.loc[m.role.isin(["val", "test"]), "spot_id"])
        # brute force: a centre is kept iff none of its 4 corner spots (60-px crops overlap
        # the crops 50 px away on both axes) is held out, and it is not white
        expect = []
        for _, c in centres.iterrows():
            corners = xy[(abs(xy.x - c.x) < 60) & (abs(xy.y - c.y) < 60)].index
            assert len(corners) == 4
            if not c.white and not held & set(corners):
                expect.append(c.id)
        assert sorted(cands["id"]) == sorted(expect)
        assert 0 < len(expect) < len(centres) - 1  # some left out, some kept
    # smaller crops (40 px) overlap no spot crop 50 px away: every usable centre is kept
    store40, centres40, _ = _grid_store(world, tmp_path / "small", fov_px=40)
    inputs40 = {**world["pool_inputs"], "interspot_stores": {"A": store40}}
    assert len(pool_candidates(exp, "0", man, inputs40)) == len(centres40) - 1


def test_a_tampered_pool_with_an_overlapping_interspot_crop_is_refused(world, tmp_path):
    store, centres, xy = _grid_store(world, tmp_path, fov_px=60)
    man = world["manifest"]
    m = man[man.fold == "0"]
    test_spot = m[m.role == "test"].iloc[0].spot_id
    sx, sy = xy.loc[test_spot]
    row = int(np.flatnonzero((abs(centres.x - sx) < 60) & (abs(centres.y - sy) < 60))[0])
    bad = pd.DataFrame(
        [{"source": "interspot", "origin": "A", "id": centres.id[row], "store": store, "row": row}]
    )
    with pytest.raises(LeakageError, match="overlap the crop of a validation or test spot"):
        audit_pool(bad, man, "0")


def test_interspot_grids_resolve_per_platform():
    from stpredict.learn.pool import interspot_grids, resolve_pool

    sheet = _sheet()
    exp = resolve_pool(_experiment(pool=[{"source": "interspot"}]), sheet, ["A"])
    check_semi_supervised(exp, sheet, ["A"])
    assert interspot_grids(exp, sheet) == [("A", "squares")]  # ST: 2x2 blocks
    sheet.loc["B", "platform"] = "visium"
    exp = resolve_pool(
        _experiment(pool=[{"source": "interspot", "samples": ["A", "B"]}]), sheet, ["A"]
    )
    assert interspot_grids(exp, sheet) == [("A", "squares"), ("B", "triangles")]


def test_the_pool_size_after_the_overlap_rule_is_counted(world, tmp_path):
    from stpredict.learn.pool import pool_candidates_counted, pool_counts

    store, centres, _ = _grid_store(world, tmp_path, fov_px=60)
    exp = _experiment(pool=[{"source": "sections", "samples": ["B"]}, {"source": "interspot"}])
    inputs = {**world["pool_inputs"], "interspot_stores": {"A": store}}
    cands, counts = pool_candidates_counted(exp, "0", world["manifest"], inputs)
    by = counts.set_index("source")
    kept = int((cands.source == "interspot").sum())
    usable = int((~centres.white).sum())
    assert by.loc["interspot", "candidates"] == kept and 0 < kept < usable
    assert by.loc["interspot", "left_out"] == usable - kept  # the overlap rule's share
    assert by.loc["sections", "candidates"] == N_SPOTS and by.loc["sections", "left_out"] == 0
    drawn = draw_pool(cands, 30, 1)
    table = pool_counts(counts, drawn).set_index("source")
    assert table.loc["total", "drawn"] == 30 == table.drop("total")["drawn"].sum()
    assert table.loc["total", "candidates"] == len(cands)


def _wsi_store(root, fov_um=16.0):
    """A pool slide (tissue ellipse on glass) tiled at a 16 px patch geometry."""
    from stpredict.wsi.pool import tile_pool_slide
    from tests.unit.wsi.helpers import tissue_image, write_png

    root.mkdir(parents=True, exist_ok=True)
    spec = {"fov_um": fov_um, "fov_px": None, "size_px": SIZE, "pad_value": 255}
    (root / "spots.json").write_text(json.dumps({**spec, "spec": spec, "mpp": 1.0}))
    image = write_png(root / "S1.png", tissue_image(160, 200))
    prefix = root / "pool" / "S1" / "tiles"
    table = tile_pool_slide(
        image, 1.0, "S1", {"A": root / "spots.json"}, prefix, 220, 0.5, 0.1, experiment="t"
    )
    return str(prefix.with_suffix(".npy")), table


def test_wsi_tiles_are_drawn_and_background_tiles_never(world, tmp_path):
    """The wsi source: kept tiles of the slide enter the pool (source wsi, origin the slide),
    tiles dropped by the background rule never; the spot audit still holds for the rest."""
    store, table = _wsi_store(tmp_path)
    keep = table["keep"].to_numpy(bool)
    assert 0 < keep.sum() < len(table)  # the slide has glass
    exp = _experiment(
        pool=[{"source": "sections", "samples": ["B"]}, {"source": "wsi", "table": "x.tsv"}],
        n_pseudo=10_000,  # more than the pool: everything is drawn
    )
    inputs = {**world["pool_inputs"], "wsi_stores": {"S1": store}}
    pool_tsv, out = tmp_path / "pool.tsv", tmp_path / "pseudo.tsv"
    pseudo = pseudo_label(
        job_settings(exp, "rounds"), "t", "0", 1, "none", world["manifest"],
        {"A": world["sections"]["A"]}, inputs, world["teacher"] / "model.pt",
        world["teacher"] / "fitted.json", world["teacher"] / "fitted.json", out, device="cpu",
        out_pool=pool_tsv,
    )  # fmt: skip
    tiles = pseudo[pseudo.source == "wsi"]
    assert set(tiles.origin) == {"S1"} and set(tiles.store) == {store}
    assert sorted(tiles.row) == list(np.flatnonzero(keep))  # every kept tile, no background one
    assert list(tiles.id) == list(table.loc[tiles.row, "id"])
    assert set(pseudo.source) == {"sections", "wsi"}
    counts = pd.read_csv(pool_tsv, sep="\t").set_index("source")
    assert counts.loc["wsi", "candidates"] == keep.sum() == counts.loc["wsi", "drawn"]
    # the student trains on them and validates / tests on labelled spots only
    m = world["manifest"][world["manifest"].fold == "0"]
    folder = tmp_path / "student"
    outs = {k: folder / f for k, f in (("model", "model.pt"), ("history", "history.tsv"),
                                        ("fitted", "fitted.json"), ("predictions", "predictions.h5ad"))}  # fmt: skip
    train_student(
        job_settings(exp, "rounds"), "t", "0", 1, "none", world["manifest"],
        {"A": world["sections"]["A"]}, {"A": world["stores"]["A"]}, out,
        [*world["stores"].values(), store], world["teacher"] / "model.pt",
        world["teacher"] / "fitted.json", outs, device="cpu",
    )  # fmt: skip
    rec = json.loads(outs["fitted"].read_text())
    assert rec["data"]["val"] == int((m.role == "val").sum())
    assert rec["data"]["train_labelled"] == int((m.role == "train").sum())
    pred = ad.read_h5ad(outs["predictions"])
    assert set(pred.obs["spot_id"]) == set(m.loc[m.role == "test", "spot_id"])
    # a store the job was not given is refused
    with pytest.raises(InputError, match="not inputs of this job"):
        train_student(
            job_settings(exp, "rounds"), "t", "0", 1, "none", world["manifest"],
            {"A": world["sections"]["A"]}, {"A": world["stores"]["A"]}, out,
            list(world["stores"].values()), world["teacher"] / "model.pt",
            world["teacher"] / "fitted.json", outs, device="cpu",
        )  # fmt: skip


def test_wsi_sources_resolve_to_the_slide_table():
    from stpredict.learn.pool import pool_slides, resolve_pool

    sheet = _sheet()
    exp = _experiment(
        pool=[{"source": "wsi"}, {"source": "wsi", "table": "b.tsv", "slides": ["Y"]}]
    )
    exp = resolve_pool(exp, sheet, ["A"], wsi_slides="a.tsv")
    assert [e["table"] for e in exp["semi_supervised"]["pool"]] == ["a.tsv", "b.tsv"]
    tables = {
        "a.tsv": pd.DataFrame({"slide_id": ["X", "Y"], "image": ["x.tif", "y.tif"], "mpp": "1"}),
        "b.tsv": pd.DataFrame({"slide_id": ["Y", "Z"], "image": ["y.tif", "z.tif"], "mpp": "1"}),
    }
    slides = pool_slides(exp, tables.__getitem__)
    assert list(slides.slide_id) == ["X", "Y"]  # Y once: the same image in both tables
    bad = resolve_pool(
        _experiment(pool=[{"source": "wsi", "slides": ["Q"]}]), sheet, ["A"], "a.tsv"
    )
    with pytest.raises(ConfigError, match=r"slide\(s\) \['Q'\], absent from the slide table"):
        pool_slides(bad, tables.__getitem__)
    tables["b.tsv"].loc[0, "image"] = "other.tif"
    with pytest.raises(ConfigError, match="slide 'Y' is in two slide tables"):
        pool_slides(exp, tables.__getitem__)
