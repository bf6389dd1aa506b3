"""What the config and the sheet already show is refused at parse time; QC that removes every spot
fails with a clear line (real files, no mocks)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

from stpredict.config import (
    check_config_schema,
    check_run_config,
    load_schema,
    read_sheet,
    validate_sheet,
)
from stpredict.errors import ConfigError, InputError
from stpredict.learn.experiments import check_experiment, resolve_experiment, section_gene_names
from stpredict.patches.qc import QCConfig, apply_qc

REPO = Path(__file__).resolve().parents[2]
SHEET_SCHEMA = load_schema(REPO / "workflow/schemas/samples.schema.yaml")
CONFIG_SCHEMA = load_schema(REPO / "workflow/schemas/config.schema.yaml")
COLUMNS = [
    "sample_id",
    "patient_id",
    "platform",
    "raw",
    "spots",
    "image",
    "annotation",
    "clusters",
    "ihc_image",
    "ihc_gene",
    "series",
    "order",
    "mpp",
]


def sheet_of(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame([{c: r.get(c, "") for c in COLUMNS} for r in rows])
    return df.set_index("sample_id", drop=False)


def visium_outs(root: Path, genes: list[str], clusters: bool = True, h5: bool = True) -> Path:
    outs = root / "outs"
    outs.mkdir(parents=True)
    if h5:
        with h5py.File(outs / "filtered_feature_bc_matrix.h5", "w") as f:
            feats = f.create_group("matrix/features")
            feats["name"] = np.array([g.encode() for g in genes])
            feats["id"] = np.array([f"ENSG{i:011d}".encode() for i in range(len(genes))])
    else:
        mtx = outs / "filtered_feature_bc_matrix"
        mtx.mkdir()
        with gzip.open(mtx / "features.tsv.gz", "wt") as fh:
            for i, g in enumerate(genes):
                fh.write(f"ENSG{i:011d}\t{g}\tGene Expression\n")
    if clusters:
        c = outs / "analysis/clustering/gene_expression_graphclust/clusters.csv"
        c.parent.mkdir(parents=True)
        c.write_text("Barcode,Cluster\nAAAC-1,1\n")
    return outs


def st_counts(path: Path, ids: list[str]) -> Path:
    with gzip.open(path, "wt") as fh:
        fh.write("\t" + "\t".join(ids) + "\n")
        fh.write("1x1\t" + "\t".join("0" for _ in ids) + "\n")
    return path


# ------------------------------------------------------------------------------ global config
def test_fov_both_or_neither_is_refused():
    check_run_config({"patches": {"fov_um": 110, "fov_px": None}})
    check_run_config({"patches": {"fov_um": None, "fov_px": 224}})
    with pytest.raises(ConfigError, match="both set.*Fix: set one of them to null"):
        check_run_config({"patches": {"fov_um": 110, "fov_px": 224}}, file="my.yaml")
    with pytest.raises(ConfigError, match="neither patches.fov_um nor patches.fov_px"):
        check_run_config({"patches": {"fov_um": None, "fov_px": None}})


def test_schema_errors_name_the_key_in_one_line():
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    check_config_schema(cfg, CONFIG_SCHEMA)
    bad = json.loads(json.dumps(cfg))
    bad["experiments"]["demo_stnet"]["tta"] = 3
    with pytest.raises(ConfigError) as info:
        check_config_schema(bad, CONFIG_SCHEMA, file="config.yaml")
    msg = str(info.value)
    assert (
        "experiments.demo_stnet.tta" in msg and "Fix: use one of 1, 4, 8" in msg and "\n" not in msg
    )
    for value in (0, 1.5):  # a numeric range: the fix gives it
        bad = json.loads(json.dumps(cfg))
        bad["experiments"]["demo_rounds"]["split"]["labelled_frac"] = value
        with pytest.raises(ConfigError) as info:
            check_config_schema(bad, CONFIG_SCHEMA, file="config.yaml")
        msg = str(info.value)
        assert "experiments.demo_rounds.split.labelled_frac" in msg and "\n" not in msg
        assert "Fix: give a value in (0, 1]: share of each fold's training spots" in msg
    bad = json.loads(json.dumps(cfg))
    bad["experiments"]["demo_stnet"]["train"]["epochs"] = 0
    with pytest.raises(ConfigError, match="epochs.*Fix: give a value >= 1: maximum epochs"):
        check_config_schema(bad, CONFIG_SCHEMA)
    bad = json.loads(json.dumps(cfg))
    bad["qc"]["min_umis"] = 3
    with pytest.raises(
        ConfigError, match="'min_umis' was unexpected.*min_genes, min_umi, whiteness"
    ):
        check_config_schema(bad, CONFIG_SCHEMA)
    bad = json.loads(json.dumps(cfg))
    bad["experiments"]["demo_stnet"]["train"]["augmentation"] = "dihedal"
    with pytest.raises(
        ConfigError,
        match="train.augmentation.*'dihedal' is not an accepted value.*dihedral.*deepspace",
    ):
        check_config_schema(bad, CONFIG_SCHEMA)


# ------------------------------------------------------------------------------ sheet
def test_sheet_with_no_rows_is_an_error(tmp_path):
    p = tmp_path / "s.tsv"
    p.write_text("\t".join(COLUMNS) + "\n")
    with pytest.raises(ConfigError, match="header but no rows"):
        read_sheet(p)
    p.write_text("\t".join(COLUMNS) + "\n" + "\t" * (len(COLUMNS) - 1) + "\n")
    with pytest.raises(ConfigError, match="no rows"):
        read_sheet(p)
    p.write_text("")
    with pytest.raises(ConfigError, match="sample sheet is empty"):
        read_sheet(p)


def test_row_with_extra_cells_is_refused_not_shifted(tmp_path):
    p = tmp_path / "s.tsv"
    p.write_text("sample_id\tpatient_id\tplatform\traw\nA\tP\tvisium\ta\textra\tcells\n")
    # what pandas alone makes of it: the extra cells become the index, every value shifts
    assert pd.read_csv(p, sep="\t", dtype=str)["sample_id"].iloc[0] == "visium"
    with pytest.raises(ConfigError, match="sample 'A'.*row 2 has 6 cells but the header 4"):
        read_sheet(p)


def test_trailing_empty_cells_and_bom_are_harmless(tmp_path):
    p = tmp_path / "s.tsv"
    p.write_bytes(
        "\ufeffsample_id\tpatient_id\tplatform\traw\t\nA\tP\tvisium\ta\t\t\nB\tQ\tst\n".encode()
    )
    df = read_sheet(p)
    assert list(df["sample_id"]) == ["A", "B"] and list(df["raw"]) == ["a", ""]
    assert list(df["patient_id"]) == ["P", "Q"]


def test_binary_sheet_is_a_config_error(tmp_path):
    p = tmp_path / "s.tsv"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(ConfigError, match="cannot be parsed"):
        read_sheet(p)


@pytest.mark.parametrize("mpp", ["0", "0.0", "0e3"])
def test_non_positive_mpp_is_refused(tmp_path, mpp):
    p = tmp_path / "s.tsv"
    sheet_of(
        [{"sample_id": "A", "patient_id": "P", "platform": "visium", "raw": "a", "mpp": mpp}]
    ).to_csv(p, sep="\t", index=False)
    with pytest.raises(ConfigError, match="sample 'A'.*column 'mpp'.*must be positive"):
        validate_sheet(read_sheet(p), SHEET_SCHEMA, p)


# ------------------------------------------------------------------------------ experiments
def two_patients() -> pd.DataFrame:
    return sheet_of(
        [
            {"sample_id": "A1", "patient_id": "P1", "platform": "visium", "raw": "nowhere/a"},
            {"sample_id": "A2", "patient_id": "P1", "platform": "visium", "raw": "nowhere/b"},
            {"sample_id": "B1", "patient_id": "P2", "platform": "st", "raw": "nowhere/c.tsv.gz"},
        ]
    )


def exp(**over) -> dict:
    return resolve_experiment(
        over,
        {
            "targets": {
                "transform": "log1p",
                "genes": {"mode": "top_mean", "n": 10, "panel": "", "min_frac": 0.1},
            }
        },
    )


def test_good_experiments_pass():
    s = two_patients()
    check_experiment(exp(split={"scheme": "leave_one_patient_out"}), s)
    check_experiment(
        exp(sections={"samples": ["A1"]}, split={"scheme": "random_within_section"}), s
    )
    check_experiment(
        exp(split={"scheme": "section_imputation", "train_sections": ["A1"], "test_section": "A2"}),
        s,
    )


def test_maps_of_genes_outside_the_panel_are_refused():
    genes = {"mode": "panel", "n": 3, "panel": "deepspace_3", "min_frac": 0.1}
    ok = exp(
        targets={"transform": "log1p", "genes": genes}, evaluation={"maps": {"genes": ["ESR1"]}}
    )
    check_experiment(ok, two_patients(), thorough=False)
    bad = exp(
        targets={"transform": "log1p", "genes": genes},
        evaluation={"maps": {"genes": ["ESR1", "GAPDH"]}, "attributions": {"gene": "ACTB"}},
    )
    with pytest.raises(
        ConfigError, match="name GAPDH, ACTB, which the panel 'deepspace_3' does not predict"
    ):
        check_experiment(bad, two_patients(), thorough=False)


@pytest.mark.parametrize(
    "settings, pattern",
    [
        (
            {"sections": {"patients": ["P1"]}, "split": {"scheme": "leave_one_patient_out"}},
            "needs at least 2 patients.*all come from patient 'P1'",
        ),
        ({"split": {"scheme": "leave_one_patient_out", "inner_folds": 1}}, "inner_folds is 1"),
        (
            {
                "split": {
                    "scheme": "section_imputation",
                    "train_sections": ["A1", "A2"],
                    "test_section": "A2",
                }
            },
            "test section 'A2' is also a training section",
        ),
        (
            {
                "split": {
                    "scheme": "section_imputation",
                    "train_sections": ["A1"],
                    "test_section": "Z9",
                }
            },
            r"names section\(s\) \['Z9'\] that are not in the sample sheet",
        ),
        (
            {"split": {"scheme": "section_imputation", "train_sections": [], "test_section": "A2"}},
            "needs split.train_sections and split.test_section",
        ),
        ({"sections": {"samples": ["A1"], "platform": "st"}}, "selects no section"),
        ({"sections": {"samples": ["NOPE"]}}, r"sections.samples names \['NOPE'\]"),
        ({"sections": {"patients": ["P9"]}}, r"sections.patients names \['P9'\]"),
        (
            {
                "task": "clusters",
                "sections": {"samples": ["B1"]},
                "split": {"scheme": "random_within_section"},
            },
            "ST section 'B1', which has no clusters",
        ),
        (
            {"model": {"weights": "missing/weights.pt"}},
            "model.weights names a file that does not exist",
        ),
        (
            {"model": {"backbone": "densenet12"}},
            "unknown model.backbone 'densenet12' .did you mean densenet121",
        ),
        ({"train": {"loss": "cross_entropy"}}, "cross_entropy is for task: clusters"),
        (
            {
                "targets": {
                    "transform": "log1p",
                    "genes": {"mode": "panel", "n": 5, "panel": "", "min_frac": 0.1},
                }
            },
            "panel is empty",
        ),
        (
            {
                "targets": {
                    "transform": "log1p",
                    "genes": {"mode": "panel", "n": 5, "panel": "no_such_panel", "min_frac": 0.1},
                }
            },
            "neither a file nor a shipped panel",
        ),
    ],
)
def test_bad_experiments_are_refused(settings, pattern):
    with pytest.raises(ConfigError, match=pattern):
        check_experiment(exp(**settings), two_patients())


def test_clusters_on_visium_without_graphclust(tmp_path):
    stub = tmp_path / "stub" / "outs"  # an outs/ not written yet (or a stand-in): no verdict
    stub.mkdir(parents=True)
    e = exp(task="clusters", split={"scheme": "random_within_section"})
    check_experiment(
        e,
        sheet_of([{"sample_id": "A1", "patient_id": "P1", "platform": "visium", "raw": str(stub)}]),
    )
    outs = visium_outs(tmp_path / "A", ["G1"], clusters=False)
    s = sheet_of([{"sample_id": "A1", "patient_id": "P1", "platform": "visium", "raw": str(outs)}])
    e = exp(task="clusters", split={"scheme": "random_within_section"})
    with pytest.raises(ConfigError, match="has no graphclust clusters"):
        check_experiment(e, s)
    s.loc["A1", "clusters"] = str(tmp_path / "my_clusters.csv")
    check_experiment(e, s)
    outs2 = visium_outs(tmp_path / "B", ["G1"], clusters=True)
    check_experiment(
        e,
        sheet_of(
            [{"sample_id": "A1", "patient_id": "P1", "platform": "visium", "raw": str(outs2)}]
        ),
    )


def test_section_gene_names_of_every_layout(tmp_path):
    h5 = visium_outs(tmp_path / "h5", ["ESR1", "ERBB2"])
    mtx = visium_outs(tmp_path / "mtx", ["ESR1", "KRT5"], h5=False)
    st = st_counts(tmp_path / "c.tsv.gz", ["ENSG00000091831", "ENSG00000186081"])
    gmap = tmp_path / "map.tsv"
    gmap.write_text("gene_id\tgene\nENSG00000091831\tESR1\n")
    assert section_gene_names({"platform": "visium", "raw": str(h5)}) == {"ESR1", "ERBB2"}
    assert section_gene_names({"platform": "visium", "raw": str(mtx)}) == {"ESR1", "KRT5"}
    assert section_gene_names({"platform": "st", "raw": str(st)}) == {
        "ENSG00000091831",
        "ENSG00000186081",
    }
    assert section_gene_names({"platform": "st", "raw": str(st)}, gmap) == {
        "ESR1",
        "ENSG00000186081",
    }
    assert section_gene_names({"platform": "visium", "raw": str(tmp_path / "nope")}) is None
    # genes x spots: the header holds spot ids, the genes are not cheap to know
    transposed = tmp_path / "t.tsv"
    transposed.write_text("\t1x1\t1x2\nESR1\t0\t1\n")
    assert section_gene_names({"platform": "st", "raw": str(transposed)}) is None


def test_panel_genes_unknown_to_the_cohort(tmp_path):
    outs = visium_outs(tmp_path / "A", ["ESR1", "ERBB2", "KRT5"])
    st = st_counts(tmp_path / "c.tsv.gz", ["ENSG00000091831", "ENSG00000141736"])
    gmap = tmp_path / "map.tsv"
    gmap.write_text("gene_id\tgene\nENSG00000091831\tESR1\nENSG00000141736\tERBB2\n")
    panel = tmp_path / "panel.txt"
    panel.write_text("ESR1\nERBB2\nNOTAGENE\n")
    s = sheet_of(
        [
            {"sample_id": "A1", "patient_id": "P1", "platform": "visium", "raw": str(outs)},
            {"sample_id": "B1", "patient_id": "P2", "platform": "st", "raw": str(st)},
        ]
    )
    genes = {"mode": "panel", "n": 3, "panel": str(panel), "min_frac": 0.1}
    e = exp(targets={"transform": "log1p", "genes": genes})
    with pytest.raises(
        ConfigError,
        match="1 of the 3 genes of panel .* none of the experiment's sections "
        r"\['A1', 'B1'\]: NOTAGENE.*allow_missing",
    ):
        check_experiment(e, s, gene_map=gmap)
    check_experiment(e, s, gene_map=gmap, thorough=False)  # jobs skip the file reads
    e_ok = exp(targets={"transform": "log1p", "genes": {**genes, "allow_missing": True}})
    check_experiment(e_ok, s, gene_map=gmap)
    panel.write_text("NOTAGENE\nALSONOT\n")
    with pytest.raises(ConfigError, match="2 of the 2 genes"):
        check_experiment(e_ok, s, gene_map=gmap)
    # a section whose genes are not known yet (file not written): no verdict
    s2 = sheet_of(
        [
            {"sample_id": "A1", "patient_id": "P1", "platform": "visium", "raw": str(outs)},
            {"sample_id": "X", "patient_id": "P2", "platform": "visium", "raw": "results/demo/x"},
        ]
    )
    check_experiment(e, s2)
    # ST ids that the gene map turns into symbols: without the map, the symbols are unknown
    panel.write_text("ESR1\nERBB2\n")
    st_only = sheet_of([{"sample_id": "B1", "patient_id": "P2", "platform": "st", "raw": str(st)}])
    e_st = exp(
        sections={"samples": ["B1"]},
        split={"scheme": "random_within_section"},
        targets={"transform": "log1p", "genes": genes},
    )
    check_experiment(e_st, st_only, gene_map=gmap)
    with pytest.raises(ConfigError, match="reading.gene_map"):
        check_experiment(e_st, st_only)


# ------------------------------------------------------------------------------ QC
def section(n: int = 40, umi: int = 3) -> ad.AnnData:
    rng = np.random.default_rng(0)
    a = ad.AnnData(
        X=sp.csr_matrix(rng.poisson(umi, (n, 50)).astype(np.float32)),
        obs=pd.DataFrame({"sample_id": "S1"}, index=[f"s{i}" for i in range(n)]),
    )
    a.uns["stpredict"] = {"sample_id": "S1", "mpp": 1.0}
    return a


def test_qc_removing_every_spot_fails_clearly():
    a = section()
    umi = np.asarray(a.X.sum(axis=1)).ravel()
    out = apply_qc(a, None, QCConfig(min_umi=1, min_genes=1, whiteness=False))
    assert out.obs["keep"].all()
    with pytest.raises(InputError) as info:
        apply_qc(
            a,
            None,
            QCConfig(min_umi=10_000, min_genes=1, whiteness=False),
            section_file="results/sections/S1.h5ad",
        )
    msg = str(info.value)
    assert "sample 'S1'" in msg and "results/sections/S1.h5ad" in msg
    assert "QC removes all 40 spots" in msg and "min_umi 10000 removes 40" in msg
    assert "min_genes 1 removes 0" in msg
    assert f"median UMI per spot is {np.median(umi):g}" in msg
    assert "Fix: lower qc.min_umi below the median" in msg


def test_qc_whiteness_removing_every_spot_points_at_the_image(tmp_path):
    a = section()
    tsv = tmp_path / "spots.tsv"
    pd.DataFrame({"id": a.obs_names, "white": True, "white_frac": 1.0}).to_csv(
        tsv, sep="\t", index=False
    )
    with pytest.raises(InputError, match="whiteness filter removes 40.*check the section's image"):
        apply_qc(a, tsv, QCConfig(min_umi=0, min_genes=0, whiteness=True))


def test_resolving_a_cluster_experiment_leaves_the_defaults_alone():
    from stpredict.learn.experiments import EXPERIMENT_DEFAULTS

    clusters = resolve_experiment({"task": "clusters"}, {})
    regression = resolve_experiment({"split": {"scheme": "random_within_section"}}, {})
    assert clusters["train"]["loss"] == "cross_entropy"
    assert regression["train"]["loss"] == "mse" and EXPERIMENT_DEFAULTS["train"]["loss"] == "mse"


def test_whiteness_flags_a_blank_image():
    from stpredict.patches.store import whiteness

    blank = np.full((6, 8, 8, 3), 255, np.uint8)
    _, flags, threshold = whiteness(blank)
    assert threshold == 255.0 and flags.all()  # was: none flagged
    tissue = np.full((10, 8, 8, 3), 150, np.uint8)
    tissue[:2] = 255  # two glass patches among tissue
    _, flags, _ = whiteness(tissue, percentile=80)
    assert flags.tolist() == [True, True] + [False] * 8


def test_evaluation_genes_unknown_to_the_cohort_are_refused_up_front(tmp_path):
    """top_mean picks genes per fold, but a map / attribution gene no section measures is a typo."""
    outs = visium_outs(tmp_path / "A", ["ESR1", "ERBB2", "KRT5"])
    s = sheet_of(
        [
            {"sample_id": "A1", "patient_id": "P1", "platform": "visium", "raw": str(outs)},
            {"sample_id": "A2", "patient_id": "P2", "platform": "visium", "raw": str(outs)},
        ]
    )
    ok = exp(evaluation={"maps": {"genes": ["ESR1"]}, "attributions": {"gene": "KRT5"}})
    check_experiment(ok, s)
    bad = exp(evaluation={"attributions": {"gene": "FASN"}})
    with pytest.raises(
        ConfigError, match="name FASN, which none of the experiment's sections measures"
    ):
        check_experiment(bad, s)
    check_experiment(bad, s, thorough=False)  # jobs skip the file reads


def test_missing_imagenet_weights_are_refused_before_any_job(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    e = exp(model={"backbone": "vgg16", "weights": "imagenet"})
    with pytest.raises(
        ConfigError,
        match="ImageNet weights for 'vgg16' are not in the torch cache.*vgg16-397923af.pth",
    ):
        check_experiment(e, two_patients())
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "vgg16-397923af.pth").write_bytes(b"")
    check_experiment(e, two_patients())
