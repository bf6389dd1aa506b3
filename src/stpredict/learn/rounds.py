"""DeepSpaCE's noisy-student rounds: pseudo-labels, students, and the choice of the best round.

Round 0 is the teacher: the experiment's fold models (``folds/{fold}/model.pt``). For
``k = 1..K`` (``semi_supervised.rounds``), per outer fold and chain (a ``control``):

1. :func:`pseudo_label` (rule ``pseudo_label``): teacher ``k - 1`` of the fold predicts
   ``n_pseudo`` patches drawn, with a seed of (experiment, fold, round), from the fold's pool
   (:mod:`stpredict.learn.pool`), batched, with ``semi_supervised.tta`` dihedral transforms, in
   the fold's target space (no rescaling: the targets stay the fold's training-side fit) ->
   ``round{k}/{control}/folds/{fold}/pseudo.tsv``.
2. :func:`train_student` (rule ``train_student``): student ``k`` trains on the fold's labelled
   training spots plus the pseudo-labelled patches with noise (the students' strong
   ``augmentation``, ``dropout`` on the embeddings before the head, ``stochastic_depth`` where
   the backbone has it), initialised from the teacher's weights (``student_init: teacher``) or
   as the experiment's model (``scratch``); it validates and early-stops on the fold's labelled
   validation spots only, and predicts the fold's test spots. Student ``k`` is teacher ``k + 1``.

Chains: ``control`` (the method: ``none``) and each of ``controls`` share the teachers of round 0,
the pool draws and the seeds; ``permuted`` shuffles the pseudo-labels across patches, ``random``
draws them per gene from the fold's training targets, ``irrelevant`` pseudo-labels tiles of the
irrelevant images instead of the pool.

:func:`summarise_rounds` (rule ``summarise_rounds``) scores every round on the same held-out test
spots and chooses each chain's best round on the validation loss pooled over folds (``chosen``):
``rounds.tsv``. Departures from DeepSpaCE's code (docs/ORIGINAL_CODE.md B5): pseudo-labels never
enter validation (the original re-split labelled + pseudo-labelled rows); students start from the
teacher by default (the original restarted from ImageNet); each round's teacher labels a fresh
draw (the original kept older teachers' labels, cumulatively); pseudo-labels are not min-max
rescaled over the pool (that would be a fit on the pool).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stpredict.errors import InputError, LeakageError
from stpredict.io import read_json, read_table, write_json, write_table
from stpredict.learn.pool import (
    POOL_COLUMNS,
    POOL_COUNT_COLUMNS,
    audit_pool,
    check_stores,
    draw_pool,
    pool_candidates_counted,
    pool_counts,
)

__all__ = [
    "round_dir",
    "teacher_dir",
    "round_chains",
    "student_noise",
    "student_config",
    "pseudo_labels",
    "pseudo_label",
    "read_pseudo",
    "train_student",
    "summarise_rounds",
    "summarise_pools",
    "ROUND_COLUMNS",
    "POOL_SUMMARY_COLUMNS",
]

log = logging.getLogger(__name__)

#: columns of ``rounds.tsv``
ROUND_COLUMNS = [
    "control",
    "round",
    "model",
    "gene",
    "pearson",
    "spearman",
    "rmse",
    "pearson_fold_mean",
    "pearson_fold_sd",
    "n_spots",
    "n_units",
    "val_loss",
    "val_n",
    "pool_n",
    "pseudo_n",
    "chosen",
]
#: columns of ``pool_summary.tsv`` (:func:`summarise_pools`)
POOL_SUMMARY_COLUMNS = ["control", "round", "fold", *POOL_COUNT_COLUMNS]


# ------------------------------------------------------------------------------ layout
def round_dir(name: str, k: int | str, control: str, fold: str) -> str:
    """Folder of round ``k`` >= 1 of a chain and fold."""
    return f"results/experiments/{name}/round{int(k)}/{control}/folds/{fold}"


def teacher_dir(name: str, k: int | str, control: str, fold: str) -> str:
    """Folder of the teacher of round ``k``: the fold model for ``k`` = 1, else student ``k - 1``."""
    k = int(k)
    if k < 1:
        raise InputError(f"round {k}: rounds start at 1 (round 0 is the teacher)")
    return (
        f"results/experiments/{name}/folds/{fold}"
        if k == 1
        else round_dir(name, k - 1, control, fold)
    )


def round_chains(exp: Mapping[str, Any]) -> list[str]:
    """List the chains of an experiment: ``control`` first, then the further ``controls``."""
    ss = exp["semi_supervised"]
    out = [str(ss["control"])]
    out += [str(c) for c in ss.get("controls", []) or [] if str(c) not in out]
    return out


def _seed(exp: Mapping[str, Any], name: str, *parts: Any) -> int:
    from stpredict.learn.folds import _seed as fold_seed

    return fold_seed(exp, name, *[str(p) for p in parts])


# ------------------------------------------------------------------------------ noise, config
def student_noise(dropout: float, stochastic_depth: float | None) -> Any:
    """Return a ``model_hook`` for :func:`stpredict.learn.train.train` adding the students' noise.

    ``dropout``: dropout on the embeddings before the head, active in training only (a forward
    pre-hook: the weights and ``model.pt`` keep the plain layout). ``stochastic_depth``: the drop
    probability of every torchvision ``StochasticDepth`` layer (EfficientNet, ConvNeXt, Swin...);
    backbones without them (VGG keeps its own classifier dropout, the tiny CNN has none) are left
    as they are.
    """

    def hook(model: Any) -> None:
        import torch.nn.functional as F

        if dropout > 0:

            def pre(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
                return (F.dropout(args[0], p=float(dropout), training=module.training), *args[1:])

            model.head.register_forward_pre_hook(pre)
        if stochastic_depth is not None:
            n = 0
            try:
                from torchvision.ops import StochasticDepth
            except ImportError:  # pragma: no cover - torchvision is a dependency
                StochasticDepth = ()  # noqa: N806
            for m in model.modules():
                if StochasticDepth and isinstance(m, StochasticDepth):
                    m.p = float(stochastic_depth)
                    n += 1
            log.info("stochastic depth %.2f on %d layer(s)", float(stochastic_depth), n)

    return hook


def student_config(
    exp: Mapping[str, Any],
    name: str,
    fold: str,
    k: int,
    teacher_model: str | os.PathLike[str],
    num_workers: int = 0,
) -> Any:
    """Build the training config of student ``k`` of a fold: the experiment's, with the students'.

    ``augmentation``, ``epochs`` and ``lr`` from ``semi_supervised`` (null: the experiment's);
    ``student_init: teacher`` initialises from ``teacher_model`` (its digest enters the resume
    signature) without ``head_init``; the seed depends on (experiment, fold, round), not on the
    chain, so the chains of a round differ only in their pseudo-labels.
    """
    from stpredict.learn.train import TrainConfig

    ss = exp["semi_supervised"]
    cfg = TrainConfig.from_experiment(
        exp, _seed(exp, name, "student", fold, f"round{k}"), num_workers=num_workers
    ).to_dict()
    cfg["augmentation"] = str(ss["augmentation"])
    if ss.get("epochs"):
        cfg["epochs"] = int(ss["epochs"])
    if ss.get("lr"):
        cfg["lr"] = float(ss["lr"])
    if ss["student_init"] == "teacher":
        cfg["weights"] = str(teacher_model)
        cfg["head_init"] = None
    return TrainConfig.from_dict(cfg)


# ------------------------------------------------------------------------------ pseudo-labels
def _check_teacher(
    fitted: Mapping[str, Any], name: str, fold: str, k: int, control: str, path: str
) -> None:
    """Pseudo-labels come from the fold's own teacher (same experiment, fold, previous round)."""
    want_round = k - 1
    got = (
        str(fitted.get("experiment")),
        str(fitted.get("fold")),
        int(fitted.get("round", 0) or 0),
        str(fitted.get("control", control)) if want_round else control,
    )
    if got != (name, str(fold), want_round, control):
        raise LeakageError(
            f"the teacher of round {k}, fold {fold} ({control}) must be the model of round "
            f"{want_round} of the same fold and chain, but {path} is experiment '{got[0]}', "
            f"fold {got[1]}, round {got[2]} ({got[3]})",
            file=path,
            fix="rerun the pseudo_label job with the fold's own teacher",
        )


def _training_targets(
    manifest: pd.DataFrame, fold: str, sections: Mapping[str, Any], transform: Any
) -> np.ndarray:
    from stpredict.learn.folds import _fold_part, _subsets

    tr_ads, _, _ = _subsets(_fold_part(manifest, fold, "train"), sections)
    return np.concatenate([transform.transform(a) for a in tr_ads]).astype(np.float32)


def pseudo_labels(
    predictions: np.ndarray, control: str, seed: int, train_targets: np.ndarray | None = None
) -> np.ndarray:
    """Apply a chain's control to the teacher's predictions ``(n, genes)``.

    ``none`` and ``irrelevant``: the predictions; ``permuted``: their rows shuffled across
    patches (each patch gets another patch's whole label vector); ``random``: each gene's
    values drawn with replacement from the fold's training targets of that gene, independently
    per gene and patch (the targets' distribution without the image).
    """
    pred = np.asarray(predictions, dtype=np.float32)
    rng = np.random.default_rng(int(seed))
    if control in ("none", "irrelevant"):
        return pred
    if control == "permuted":
        return pred[rng.permutation(len(pred))]
    if control == "random":
        if train_targets is None or not len(train_targets):
            raise InputError("the random control needs the fold's training targets")
        t = np.asarray(train_targets, dtype=np.float32)
        idx = rng.integers(0, len(t), size=pred.shape)
        return t[idx, np.arange(pred.shape[1])[None, :]]
    raise InputError(f"unknown control '{control}'")


def pseudo_label(
    exp: Mapping[str, Any],
    name: str,
    fold: str,
    k: int,
    control: str,
    manifest: pd.DataFrame,
    sections: Mapping[str, Any],
    pool_inputs: Mapping[str, Any],
    teacher_model: str | os.PathLike[str],
    teacher_fitted: str | os.PathLike[str],
    fold_fitted: str | os.PathLike[str],
    out_tsv: str | os.PathLike[str],
    device: str | None = None,
    num_workers: int = 0,
    batch_size: int = 128,
    out_pool: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Draw the round's pool patches and label them with the fold's teacher; write ``pseudo.tsv``.

    ``pseudo.tsv``: one row per patch, :data:`stpredict.learn.pool.POOL_COLUMNS` (``source``,
    ``origin`` — section, image or slide —, ``id``, ``store``, ``row``) and one float32 column
    per gene of the fold, in the fold's target space. ``out_pool``: the pool's size per source
    (:func:`stpredict.learn.pool.pool_counts`: candidates after the interspot overlap rule, left
    out by it, drawn), when given.
    """
    from stpredict.learn.predict import load_model, predict
    from stpredict.learn.targets import from_dict

    ss = exp["semi_supervised"]
    _check_teacher(read_json(teacher_fitted), name, fold, k, control, str(teacher_fitted))
    fitted = read_json(fold_fitted)
    genes = [str(g) for g in from_dict(fitted["genes"]).genes_]
    clash = sorted(set(genes) & set(POOL_COLUMNS))
    if clash:
        raise InputError(f"gene name(s) {clash} clash with the columns of pseudo.tsv")
    cands, counts = pool_candidates_counted(
        exp, fold, manifest, pool_inputs, irrelevant=control == "irrelevant"
    )
    drawn = draw_pool(cands, int(ss["n_pseudo"]), _seed(exp, name, "pool", fold, f"round{k}"))
    if out_pool is not None:
        write_table(pool_counts(counts, drawn), out_pool)
    model, meta = load_model(teacher_model, device=device or "cpu")
    if [str(g) for g in meta.get("genes") or []] != genes:
        raise InputError(
            "the teacher predicts other genes than the fold's fitted gene set",
            file=str(teacher_model),
            fix="rerun the fold's train_fold and the rounds after it",
        )
    stores = list(dict.fromkeys(drawn["store"].astype(str)))
    rows = [drawn.loc[drawn["store"] == s, "row"].to_numpy(np.int64) for s in stores]
    preds, _ = predict(
        model,
        stores,
        rows,
        batch_size=batch_size,
        tta=int(ss["tta"]),
        device=device,
        num_workers=num_workers,
        precision=str(exp["train"]["precision"]),
    )
    train_targets = None
    if control == "random":
        train_targets = _training_targets(manifest, fold, sections, from_dict(fitted["transform"]))
    labels = pseudo_labels(
        preds, control, _seed(exp, name, "control", control, fold, f"round{k}"), train_targets
    )
    out = drawn[POOL_COLUMNS].copy()
    out = pd.concat([out, pd.DataFrame(labels, columns=genes)], axis=1)
    write_table(out, out_tsv)
    log.info(
        "fold %s round %d (%s): %d pseudo-labels (%s) from %s",
        fold,
        k,
        control,
        len(out),
        ", ".join(f"{s} {n}" for s, n in out["source"].value_counts().items()),
        teacher_model,
    )
    return out


def read_pseudo(path: str | os.PathLike[str], genes: Sequence[str]) -> pd.DataFrame:
    """Read ``pseudo.tsv``; its gene columns must be the fold's genes, in order, finite."""
    table = read_table(path, dtype={"origin": str, "id": str, "store": str, "source": str})
    cols = [c for c in table.columns if c not in POOL_COLUMNS]
    if cols != [str(g) for g in genes]:
        raise InputError(
            "the pseudo-labels are for other genes than the fold's",
            file=str(path),
            fix="rerun the pseudo_label job",
        )
    values = table[cols].to_numpy(dtype=np.float32)
    if not np.isfinite(values).all():
        raise InputError("the pseudo-labels hold NaN or infinite values", file=str(path))
    return table


# ------------------------------------------------------------------------------ students
def _digest(path: str | os.PathLike[str]) -> str:
    from stpredict.learn.train import file_digest

    return "blake2b:" + file_digest(path)


def train_student(
    exp: Mapping[str, Any],
    name: str,
    fold: str,
    k: int,
    control: str,
    manifest: pd.DataFrame,
    sections: Mapping[str, Any],
    stores: Mapping[str, str],
    pseudo_tsv: str | os.PathLike[str],
    pool_stores: Sequence[str],
    teacher_model: str | os.PathLike[str],
    fold_fitted: str | os.PathLike[str],
    outputs: Mapping[str, str | os.PathLike[str]],
    device: str | None = None,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Train student ``k`` of a fold and chain, then predict the fold's test spots.

    Training set: the fold's labelled ``train`` spots (targets from the fold's fitted transform)
    followed by the pseudo-labelled patches; validation: the fold's labelled ``val`` spots only
    (never a pseudo-labelled patch: the pool is audited against the manifest again here).
    Writes ``outputs["model"]``, ``["history"]``, ``["predictions"]`` (as ``predict_fold``) and
    ``["fitted"]``: the fold's fitted targets (unchanged: the training-side fit) with the round,
    the chain, the teacher and a record of the pseudo-labels and of the data trained on.
    """
    from stpredict.learn.folds import _fold_part, _subsets, check_gene_coverage, predict_fold
    from stpredict.learn.splits import audit_fitted
    from stpredict.learn.targets import from_dict
    from stpredict.learn.train import PatchDataset, train

    ss = exp["semi_supervised"]
    fitted = read_json(fold_fitted)
    if str(fitted.get("fold")) != str(fold) or str(fitted.get("experiment")) != name:
        raise LeakageError(
            f"fold {fold}: the fitted targets {fold_fitted} belong to another fold or experiment",
            file=str(fold_fitted),
        )
    transform = from_dict(fitted["transform"])
    genes = [str(g) for g in from_dict(fitted["genes"]).genes_]
    audit_fitted(transform.fitted_on, manifest, fold, name="target transform")
    tr_ads, tr_samples, tr_rows = _subsets(_fold_part(manifest, fold, "train"), sections)
    va_ads, va_samples, va_rows = _subsets(_fold_part(manifest, fold, "val"), sections)
    check_gene_coverage(tr_ads + va_ads, genes, exp["targets"]["genes"])
    pseudo = read_pseudo(pseudo_tsv, genes)
    audit_pool(pseudo, manifest, fold)
    check_stores(pseudo, pool_stores, str(pseudo_tsv))
    ps_stores = list(dict.fromkeys(pseudo["store"].astype(str)))
    ps_rows = [pseudo.loc[pseudo["store"] == s, "row"].to_numpy(np.int64) for s in ps_stores]
    ps_y = np.concatenate(
        [pseudo.loc[pseudo["store"] == s, genes].to_numpy(np.float32) for s in ps_stores]
    )
    y_tr = np.concatenate([transform.transform(a) for a in tr_ads]).astype(np.float32)
    train_ds = PatchDataset(
        [stores[s] for s in tr_samples] + ps_stores,
        tr_rows + ps_rows,
        targets=np.concatenate([y_tr, ps_y]),
    )
    val_ds = None
    if va_ads:
        y_va = np.concatenate([transform.transform(a) for a in va_ads]).astype(np.float32)
        val_ds = PatchDataset([stores[s] for s in va_samples], va_rows, targets=y_va)
    cfg = student_config(exp, name, fold, k, teacher_model, num_workers)
    noise = {"dropout": float(ss["dropout"]), "stochastic_depth": ss["stochastic_depth"]}
    data_sig = {
        "experiment": name,
        "fold": str(fold),
        "round": int(k),
        "control": control,
        "train_spots": [
            f"{s}:{i}" for a, s in zip(tr_ads, tr_samples, strict=True) for i in a.obs_names
        ],
        "val_spots": [
            f"{s}:{i}" for a, s in zip(va_ads, va_samples, strict=True) for i in a.obs_names
        ],
        "pseudo": _digest(pseudo_tsv),
        "teacher": _digest(teacher_model),
        "transform": fitted["transform"],
        "noise": noise,
    }
    model_path = Path(outputs["model"])
    result = train(
        cfg,
        train_ds,
        val_ds,
        model_path.parent,
        genes=genes,
        target_transform=fitted["transform_name"],
        data_signature=data_sig,
        device=device,
        model_path=model_path,
        history_path=outputs["history"],
        model_hook=student_noise(noise["dropout"], noise["stochastic_depth"]),
    )
    predict_fold(
        exp,
        f"{name}/round{k}/{control}",
        fold,
        manifest,
        sections,
        stores,
        model_path,
        fold_fitted,
        outputs["predictions"],
        device=device,
    )
    record = {k_: v for k_, v in fitted.items() if k_ not in ("train_config", "result")}
    record.update(
        {
            "round": int(k),
            "control": control,
            "teacher": {"model": str(teacher_model), "digest": data_sig["teacher"]},
            "student_init": ss["student_init"],
            "noise": {**noise, "augmentation": cfg.augmentation},
            "pseudo": {
                "file": str(pseudo_tsv),
                "digest": data_sig["pseudo"],
                "n": len(pseudo),
                "by_source": {str(s): int(n) for s, n in pseudo["source"].value_counts().items()},
            },
            "data": {
                "train_labelled": len(y_tr),
                "train_pseudo": len(pseudo),
                "val": 0 if val_ds is None else len(val_ds),
            },
            "train_config": {kk: v for kk, v in cfg.to_dict().items() if kk != "num_workers"},
            "result": {kk: (str(v) if isinstance(v, Path) else v) for kk, v in result.items()},
        }
    )
    write_json(record, outputs["fitted"])
    return result


# ------------------------------------------------------------------------------ summary
def _validation(history: str, fitted: str) -> tuple[float, int]:
    """Return the validation loss and spots of a fold model at the epoch its ``model.pt`` keeps."""
    rec = read_json(fitted)
    epoch = int((rec.get("result") or {}).get("epoch", 0))
    h = read_table(history)
    row = h[h["epoch"].astype(int) == epoch]
    if row.empty:
        raise InputError(
            f"the history has no row for the model's epoch {epoch}",
            file=history,
            fix="rerun the fold's training job",
        )
    return float(row["val_loss"].iloc[-1]), int(row["val_n"].iloc[-1])


def _by_section(a: Any, genes: Sequence[str], **extra: str) -> list[pd.DataFrame]:
    """Per-gene metrics of each section of a prediction AnnData (columns ``unit`` and ``extra``)."""
    from stpredict.evaluate.metrics import gene_metrics

    out = []
    samples = a.obs["sample_id"].astype(str)
    for s in sorted(samples.unique()):
        sub = a[(samples == s).to_numpy(), list(genes)]
        out.append(gene_metrics(sub.X, sub.layers["predicted"], genes).assign(unit=s, **extra))
    return out


def _score_round(files: Sequence[Mapping[str, str]]) -> tuple[pd.DataFrame, list[str]]:
    """Per-gene test metrics of one round (its folds' predictions) and the test spot keys."""
    import anndata as ad

    from stpredict.io import read_h5ad

    parts = [read_h5ad(f["predictions"]) for f in files]
    genes = [str(g) for g in parts[0].var_names if all(g in p.var_names for p in parts[1:])]
    keys = sorted(str(i) for p in parts for i in p.obs_names)
    folds = [
        t for f, a in zip(files, parts, strict=True) for t in _by_section(a, genes, fold=f["fold"])
    ]
    joined = ad.concat([p[:, genes] for p in parts], join="inner")
    units = pd.concat(_by_section(joined, genes)).reset_index()
    out = units.groupby("gene", sort=False).agg(
        pearson=("pearson", "median"),
        spearman=("spearman", "median"),
        rmse=("rmse", "median"),
        n_spots=("n_spots", "sum"),
        n_units=("unit", "nunique"),
    )
    fm = pd.concat(folds).reset_index().groupby("gene", sort=False)["pearson"]
    out["pearson_fold_mean"] = fm.mean()
    out["pearson_fold_sd"] = fm.std(ddof=1)
    return out.reset_index(), keys


def summarise_pools(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Join the round jobs' pool summaries (``pool.tsv``) into one table.

    Parameters
    ----------
    records
        One per (chain, round >= 1, fold): ``control``, ``round``, ``fold`` and ``pool`` (the
        job's ``pool.tsv``).

    Returns
    -------
    pandas.DataFrame
        :data:`POOL_SUMMARY_COLUMNS`: per chain, round, fold and source the pool's
        ``candidates`` (after the interspot overlap rule), ``left_out`` (by it) and ``drawn``;
        each job's ``total`` row included.
    """
    parts = [
        read_table(r["pool"], dtype={"source": str}).assign(
            control=str(r["control"]), round=int(r["round"]), fold=str(r["fold"])
        )
        for r in records
    ]
    if not parts:
        return pd.DataFrame(columns=POOL_SUMMARY_COLUMNS)
    return pd.concat(parts, ignore_index=True)[POOL_SUMMARY_COLUMNS]


def _pool_sizes(pools: pd.DataFrame | None, control: str, k: int) -> tuple[int, int]:
    """Pool candidates and drawn patches of a round, summed over folds (0, 0 for the teacher)."""
    if pools is None or pools.empty or int(k) == 0:
        return 0, 0
    t = pools[
        (pools["control"] == control) & (pools["round"] == int(k)) & (pools["source"] == "total")
    ]
    return int(t["candidates"].sum()), int(t["drawn"].sum())


def summarise_rounds(
    records: Sequence[Mapping[str, Any]], pools: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Score every round of every chain on the same test spots; choose each chain's best round.

    Parameters
    ----------
    records
        One per (chain, round, fold): ``control``, ``round`` (0 = the teacher, the fold model),
        ``fold``, and the files ``predictions`` (the fold's test predictions), ``history`` and
        ``fitted`` (``fitted.json``, whose ``result.epoch`` names the epoch the model kept).

    Returns
    -------
    pandas.DataFrame
        :data:`ROUND_COLUMNS`: per chain, round and gene the test metrics (``pearson``,
        ``spearman``, ``rmse``: median over the held-out sections of the correlation over each
        section's test spots, pooled over folds; ``pearson_fold_mean`` / ``_sd`` over folds and
        sections), ``val_loss`` (the per-spot validation loss pooled over the folds' labelled
        validation spots: the mean weighted by ``val_n``), ``pool_n`` and ``pseudo_n`` (the
        round's unlabelled pool after the interspot overlap rule and the patches drawn from it,
        summed over folds, from ``pools`` = :func:`summarise_pools`; 0 for the teacher) and
        ``chosen`` (per chain, the round with the smallest ``val_loss``; ties go to the earlier
        round). Test metrics never enter the choice.
    """
    df = pd.DataFrame(list(records))
    if df.empty:
        raise InputError("no round to summarise")
    tables, reference = [], None
    for (control, k), g in df.groupby(["control", "round"], sort=True):
        g = g.sort_values("fold")
        scores, keys = _score_round(g.to_dict("records"))
        if reference is None:
            reference = keys
        elif keys != reference:
            raise InputError(
                f"round {k} ({control}) was tested on other spots than round 0",
                file=str(g["predictions"].iloc[0]),
                fix="rerun snakemake: every round must predict the folds' test spots",
            )
        vals = [_validation(r["history"], r["fitted"]) for r in g.to_dict("records")]
        n = np.array([v[1] for v in vals], dtype=float)
        loss = np.array([v[0] for v in vals], dtype=float)
        ok = np.isfinite(loss) & (n > 0)
        pooled = float((loss[ok] * n[ok]).sum() / n[ok].sum()) if ok.any() else float("nan")
        pool_n, pseudo_n = _pool_sizes(pools, str(control), int(k))
        scores = scores.assign(
            pool_n=pool_n,
            pseudo_n=pseudo_n,
            control=control,
            round=int(k),
            model="teacher" if int(k) == 0 else f"student {int(k)}",
            val_loss=pooled,
            val_n=int(n[ok].sum()),
        )
        tables.append(scores)
    out = pd.concat(tables, ignore_index=True)
    out["chosen"] = False
    for control, g in out.groupby("control", sort=False):
        per_round = g.groupby("round")["val_loss"].first()
        finite = per_round[np.isfinite(per_round)]
        if finite.empty:
            log.warning("chain %s: no finite validation loss, no round chosen", control)
            continue
        best = int(finite.index[np.argmin(finite.to_numpy())])
        out.loc[(out["control"] == control) & (out["round"] == best), "chosen"] = True
    order = {c: i for i, c in enumerate(dict.fromkeys(df["control"]))}
    out = out.sort_values(
        ["control", "round", "gene"], key=lambda s: s.map(order) if s.name == "control" else s
    )
    return out[ROUND_COLUMNS].reset_index(drop=True)


def round_records(
    name: str, folds: Sequence[str], chains: Sequence[str], rounds: int
) -> list[dict[str, Any]]:
    """List the (chain, round, fold) records of :func:`summarise_rounds` with their file paths."""
    out = []
    for control in chains:
        for k in range(rounds + 1):
            for fold in folds:
                base = (
                    f"results/experiments/{name}/folds/{fold}"
                    if k == 0
                    else round_dir(name, k, control, fold)
                )
                out.append(
                    {
                        "control": control,
                        "round": k,
                        "fold": str(fold),
                        "predictions": f"{base}/predictions.h5ad",
                        "history": f"{base}/history.tsv",
                        "fitted": f"{base}/fitted.json",
                        "pool": "" if k == 0 else f"{base}/pool.tsv",
                    }
                )
    return out
