"""Wall-clock estimates of the full ST-Net and DeepSpaCE protocols on one device, from measured rates.

    python benchmarks/protocols.py [--rates benchmarks/results/training.tsv]
                                   [--out benchmarks/results/protocols.tsv]

A protocol is a list of :class:`Stage` (groups of identical trainings); :func:`estimate` turns it
and a device's :class:`Rates` into hours. The rates come from ``bench_training.py`` rows
(:func:`rates_from_table`): the training rate of the protocol's backbone at its batch size (the
fastest precision / channels_last / compile setting measured), the inference rate at each TTA the
protocol uses (same setting when measured) and the checkpoint write time of that backbone. The
trainings run one after the other on the one device.

Counted: every training image of every epoch (augmented, forward, backward, optimiser step),
every validation patch of every epoch (forward passes with the protocol's validation TTA), every
prediction after training (test spots, pseudo-labels, super-resolution centres) and one
checkpoint per epoch. Not counted: job start-up (Python, ``import torch``, model build: ~5-15 s
per job), reading patch stores into the page cache, ``best.pt`` writes, evaluation, figures and
the CPU-only jobs (ingest, patches, QC, baselines), which run beside the GPU jobs.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import tables

__all__ = [
    "Stage",
    "Protocol",
    "Rates",
    "stnet_protocol",
    "deepspace_protocol",
    "estimate",
    "rates_from_table",
    "estimate_table",
]


@dataclass(frozen=True)
class Stage:
    """A group of identical trainings of a protocol.

    Attributes
    ----------
    name
        What the trainings are (e.g. ``inner folds``).
    trainings
        How many.
    train_spots
        Training images per epoch of one training.
    val_spots
        Validation patches predicted after every epoch (0: no validation).
    epochs
        Epochs of one training (an upper bound where early stopping may end it sooner).
    val_tta
        Dihedral transforms averaged per validation patch.
    predict_spots
        Patches predicted once after one training (test spots, pseudo-labels, ...).
    predict_tta
        Dihedral transforms averaged per predicted patch.
    """

    name: str
    trainings: int
    train_spots: float
    val_spots: float
    epochs: int
    val_tta: int
    predict_spots: float
    predict_tta: int


@dataclass(frozen=True)
class Protocol:
    """A whole protocol: its backbone, its training batch size, its stages and its assumptions."""

    name: str
    backbone: str
    batch: int
    stages: tuple[Stage, ...]
    assumptions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rates:
    """Measured rates of one backbone on one device.

    Attributes
    ----------
    train
        Training images per second (the full path: loader, augmentation, step).
    infer
        Predicted patches per second by TTA count (each patch through ``tta`` transforms).
    checkpoint_s
        Seconds to write one epoch's checkpoint (model and optimiser state).
    """

    train: float
    infer: Mapping[int, float] = field(default_factory=dict)
    checkpoint_s: float = 0.0

    def infer_rate(self, tta: int) -> float:
        """Patches per second at ``tta`` transforms: measured, else scaled from another TTA.

        An unmeasured TTA count is scaled from the nearest measured one as ``rate * t / tta``
        (the forward passes dominate); with no inference rate at all, NaN.
        """
        if tta in self.infer:
            return float(self.infer[tta])
        if not self.infer:
            return math.nan
        t = min(self.infer, key=lambda k: abs(k - tta))
        return float(self.infer[t]) * t / tta


def stnet_protocol(
    n_patients: int = 23,
    n_spots: int = 30_612,
    inner_folds: int = 4,
    epochs: int = 50,
    tta: int = 8,
    batch: int = 32,
) -> Protocol:
    """ST-Net (He et al. 2020) as ``config/stnet.yaml`` runs it: LOPO with inner folds and a retrain.

    For each of the ``n_patients`` held-out patients, ``inner_folds`` inner trainings on
    ``(inner_folds - 1) / inner_folds`` of the other patients' spots, each validated every epoch
    on the rest with ``tta`` transforms (the epoch choice), then one retrain on all the other
    patients' spots for ``epochs`` epochs (the chosen count is at most ``epochs``) that predicts
    the held-out patient's spots with ``tta`` transforms. Defaults: the paper's 23 patients and
    30,612 spots, 4 inner folds, 50 epochs, batch 32, 8-fold TTA. Patients are taken as equal in
    size (the mean, 30,612 / 23 = 1,331 spots).

    With the defaults: 23 x 4 + 23 = 115 trainings of 50 epochs; 200 x 22 x 30,612 =
    134,692,800 training images; 50 x 22 x 30,612 = 33,673,200 validation patches at TTA 8;
    30,612 test patches at TTA 8.
    """
    pool = n_spots * (n_patients - 1) / n_patients  # spots of the other patients
    inner_train = pool * (inner_folds - 1) / inner_folds
    return Protocol(
        name="ST-Net",
        backbone="densenet121",
        batch=batch,
        stages=(
            Stage(
                "inner folds",
                n_patients * inner_folds,
                inner_train,
                pool - inner_train,
                epochs,
                tta,
                0.0,
                tta,
            ),
            Stage("retrain", n_patients, pool, 0.0, epochs, tta, n_spots / n_patients, tta),
        ),
        assumptions=(
            f"{n_patients} patients, {n_spots:,} spots (paper), patients of equal size",
            f"leave-one-patient-out, {inner_folds} inner folds choosing the epoch, then a retrain",
            f"{epochs} epochs per training (the retrain's chosen count is at most that)",
            f"validation every epoch and test predictions with {tta}-fold dihedral TTA",
            f"DenseNet-121, batch {batch}, dihedral augmentation (config/stnet.yaml)",
        ),
    )


def deepspace_protocol(
    n_sections: int = 6,
    spots_per_section: int = 2_200,
    n_folds: int = 5,
    epochs: int = 50,
    train_frac: float = 0.64,
    val_frac: float = 0.16,
    superres_spots: int = 4_400,
    imputation_train_sections: int = 2,
    imputation_val_frac: float = 0.2,
    rounds: int = 5,
    chains: int = 3,
    n_pseudo: int = 4_000,
    batch: int = 128,
) -> Protocol:
    """DeepSpaCE (Monjo et al. 2022) as ``config/deepspace.yaml`` runs it.

    * ``deepspace_cv``: ``n_folds``-fold cross-validation within each of ``n_sections`` sections
      (64 / 16 / 20 % train / validation / test of its spots), each fold model predicting its
      test spots and the section's ``superres_spots`` inter-spot centres;
    * ``deepspace_imputation``: a teacher on ``imputation_train_sections`` sections (80 / 20 %
      train / validation) predicting the imputed section, then ``rounds`` noisy-student rounds in
      each of ``chains`` chains (the preset: pseudo-labels, and the permuted and random
      controls); each student trains on the teacher's training spots plus ``n_pseudo``
      pseudo-labelled patches (labelled by its teacher first) and predicts the imputed section.

    Every training runs ``epochs`` epochs (50 in the paper; early stopping with patience 5 can
    end it sooner, so the estimate is an upper bound). Validation and predictions have no TTA.
    Defaults: the paper's six sections (A-C, D1-D3); it states 2,238 spots for section C and
    2,168 for D2, so 2,200 per section is assumed, and ~4,400 inter-spot centres per section
    (C: 4,495, D2: 4,455 new centres).

    With the defaults: 30 + 1 + 15 = 46 trainings of 50 epochs; 7,928,000 training images;
    1,232,000 validation patches; 240,400 predicted patches.
    """
    s = spots_per_section
    imp_spots = imputation_train_sections * s
    imp_train = imp_spots * (1 - imputation_val_frac)
    imp_val = imp_spots * imputation_val_frac
    test_frac = 1 - train_frac - val_frac
    return Protocol(
        name="DeepSpaCE",
        backbone="vgg16",
        batch=batch,
        stages=(
            Stage(
                "cv folds",
                n_sections * n_folds,
                s * train_frac,
                s * val_frac,
                epochs,
                1,
                s * test_frac + superres_spots,
                1,
            ),
            Stage("imputation teacher", 1, imp_train, imp_val, epochs, 1, s, 1),
            Stage(
                "students",
                rounds * chains,
                imp_train + n_pseudo,
                imp_val,
                epochs,
                1,
                n_pseudo + s,
                1,
            ),
        ),
        assumptions=(
            f"{n_sections} sections x {s:,} spots (paper: C 2,238, D2 2,168; others assumed)",
            f"{n_folds}-fold CV within each section, {train_frac:.0%}/{val_frac:.0%}/"
            f"{test_frac:.0%} train/val/test, ~{superres_spots:,} super-resolution centres per fold",
            f"imputation from {imputation_train_sections} sections, {rounds} student rounds x "
            f"{chains} chains (pseudo-labels + 2 controls), {n_pseudo:,} pseudo-labels per round",
            f"{epochs} epochs per training (no early stop: an upper bound)",
            f"VGG16, batch {batch}, DeepSpaCE augmentation, no TTA (config/deepspace.yaml)",
        ),
    )


def estimate(protocol: Protocol, rates: Rates) -> dict[str, float]:
    """Estimate the protocol's wall-clock on one device, trainings run one after another.

    Returns
    -------
    dict
        ``trainings``, ``epochs`` (all trainings' epochs), ``train_images``, ``val_patches``,
        ``predict_patches``, and the hours ``train_h`` (images / ``rates.train``), ``val_h`` and
        ``predict_h`` (patches / the inference rate at their TTA), ``checkpoint_h`` (epochs x
        ``rates.checkpoint_s``) and ``total_h`` (their sum).
    """
    out = dict.fromkeys(
        ("trainings", "epochs", "train_images", "val_patches", "predict_patches"), 0.0
    )
    secs = dict.fromkeys(("train_h", "val_h", "predict_h", "checkpoint_h"), 0.0)
    for st in protocol.stages:
        epochs = st.trainings * st.epochs
        out["trainings"] += st.trainings
        out["epochs"] += epochs
        out["train_images"] += epochs * st.train_spots
        out["val_patches"] += epochs * st.val_spots
        out["predict_patches"] += st.trainings * st.predict_spots
        secs["train_h"] += epochs * st.train_spots / rates.train
        if st.val_spots:
            secs["val_h"] += epochs * st.val_spots / rates.infer_rate(st.val_tta)
        if st.predict_spots:
            secs["predict_h"] += st.trainings * st.predict_spots / rates.infer_rate(st.predict_tta)
        secs["checkpoint_h"] += epochs * rates.checkpoint_s
    hours = {k: v / 3600 for k, v in secs.items()}
    hours["total_h"] = sum(hours.values())
    return {**out, **hours}


# ---------------------------------------------------------------------------------- from rows

_SETTING = ["precision", "channels_last", "compile"]


def _best_train(rows: pd.DataFrame, protocol: Protocol) -> pd.Series | None:
    train = rows[(rows["mode"] == "train") & (rows["backbone"] == protocol.backbone)]
    if train.empty:
        return None
    at_batch = train[train["batch"] == protocol.batch]
    pick = at_batch if not at_batch.empty else train
    return pick.loc[pick["img_per_s"].idxmax()]


def rates_from_table(rows: pd.DataFrame, protocol: Protocol) -> tuple[Rates, pd.Series] | None:
    """Pick a protocol's rates from ``bench_training.py`` rows of one machine and device.

    The training row: the protocol's backbone at its batch size (any batch when none was
    measured), the fastest setting (precision, channels_last, compile). Inference rates per TTA:
    rows of the same setting when measured, else the fastest of that TTA. ``None`` when the
    backbone was not trained.
    """
    best = _best_train(rows, protocol)
    if best is None:
        return None
    infer = rows[(rows["mode"] == "infer") & (rows["backbone"] == protocol.backbone)]
    rates: dict[int, float] = {}
    for tta, grp in infer.groupby("tta"):
        same = grp
        for col in _SETTING:
            same = same[same[col].astype(str) == str(best[col])]
        pick = same if not same.empty else grp
        rates[int(tta)] = float(pick["img_per_s"].max())
    ck = best.get("checkpoint_s", 0.0)
    ck = 0.0 if ck is None or not math.isfinite(float(ck)) else float(ck)
    return Rates(train=float(best["img_per_s"]), infer=rates, checkpoint_s=ck), best


def _fmt_rate(rates: Rates, tta: int) -> float:
    r = rates.infer_rate(tta)
    return round(r, 1) if math.isfinite(r) else math.nan


def estimate_table(
    rows: pd.DataFrame, protocols: tuple[Protocol, ...] | None = None
) -> pd.DataFrame:
    """One row per (machine, device, protocol) that the rows have rates for."""
    protocols = protocols or (stnet_protocol(), deepspace_protocol())
    out = []
    for (machine, device), grp in rows.groupby(["machine", "device"], sort=False):
        for p in protocols:
            picked = rates_from_table(grp, p)
            if picked is None:
                continue
            rates, best = picked
            ttas = sorted({st.val_tta for st in p.stages} | {st.predict_tta for st in p.stages})
            est = estimate(p, rates)
            out.append(
                {
                    "machine": machine,
                    "device": device,
                    "protocol": p.name,
                    "backbone": p.backbone,
                    "batch": int(best["batch"]),
                    **{c: best[c] for c in _SETTING},
                    "train_img_per_s": round(rates.train, 2),
                    "infer_per_s": "; ".join(f"tta{t}: {_fmt_rate(rates, t)}" for t in ttas),
                    "checkpoint_s": round(rates.checkpoint_s, 3),
                    **{k: int(round(v)) for k, v in est.items() if not k.endswith("_h")},
                    **{k: round(v, 2) for k, v in est.items() if k.endswith("_h")},
                    "assumptions": "; ".join(p.assumptions),
                }
            )
    return pd.DataFrame(out)


def write_estimates(rows: pd.DataFrame, out: str | Path) -> pd.DataFrame:
    """Estimate from ``rows`` and write ``out`` (rows of other machines/devices are kept)."""
    return tables.merge_rows(estimate_table(rows), out, ["machine", "device"])


def markdown(df: pd.DataFrame) -> str:
    """The protocol table as Markdown (without the assumptions column)."""
    cols = [
        "machine",
        "device",
        "protocol",
        "batch",
        "precision",
        "train_img_per_s",
        "infer_per_s",
        "checkpoint_s",
        "train_h",
        "val_h",
        "predict_h",
        "checkpoint_h",
        "total_h",
    ]
    return tables.markdown(df, cols, "(no protocol: neither densenet121 nor vgg16 was trained)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="benchmarks/results/training.tsv")
    ap.add_argument("--out", default="benchmarks/results/protocols.tsv")
    args = ap.parse_args()
    df = write_estimates(pd.read_csv(args.rates, sep="\t"), args.out)
    print(markdown(df))
    for p in (stnet_protocol(), deepspace_protocol()):
        print(f"\n{p.name} assumptions:\n- " + "\n- ".join(p.assumptions))


if __name__ == "__main__":
    main()
