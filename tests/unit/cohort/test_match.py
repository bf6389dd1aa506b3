"""Gene matching and the refusals of a cohort section (genes, µm/px)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from stpredict.cohort.match import (
    check_gene_match,
    check_section_mpp,
    match_genes,
    matched_section,
)
from stpredict.errors import GeometryError, InputError

MODEL = ["ESR1", "ERBB2", "KRT5", "CD74"]


def _var(names, ids=None):
    var = pd.DataFrame(index=pd.Index(names))
    if ids is not None:
        var["gene_ids"] = ids
    return var


def test_genes_match_by_name_then_by_id():
    var = _var(["ESR1", "ENSG00000141736", "GAPDH"], ["ENSG00000091831", "ERBB2", "ENSG1"])
    m = match_genes(MODEL, var)
    assert m["matched"] == {"ESR1": "ESR1", "ERBB2": "ENSG00000141736"}
    assert (m["by_name"], m["by_id"]) == (1, 1)
    assert m["missing"] == ["KRT5", "CD74"]
    assert m["share"] == pytest.approx(0.5)


def test_a_model_trained_on_ids_matches_a_section_read_with_symbols():
    var = _var(["ESR1", "KRT5"], ["ENSG00000091831", "ENSG00000186081"])
    m = match_genes(["ENSG00000091831", "ENSG00000186081", "ENSG0000000X"], var)
    assert m["matched"] == {"ENSG00000091831": "ESR1", "ENSG00000186081": "KRT5"}


def test_a_renamed_symbol_matches_on_the_cards_gene_id():
    # the training sections called it HER2 (an older symbol), the cohort ERBB2: same Ensembl id
    var = _var(["ERBB2", "ESR1"], ["ENSG00000141736", "ENSG00000091831"])
    ids = {"HER2": "ENSG00000141736", "ESR1": "ENSG00000091831", "KRT5": ""}
    m = match_genes(["HER2", "ESR1", "KRT5"], var, ids)
    assert m["matched"] == {"HER2": "ERBB2", "ESR1": "ESR1"} and m["missing"] == ["KRT5"]
    assert match_genes(["HER2", "ESR1", "KRT5"], var)["missing"] == ["HER2", "KRT5"]


def test_enough_genes_pass_and_too_few_are_refused_in_one_line():
    good = match_genes(MODEL, _var(["ESR1", "ERBB2", "KRT5"]))
    check_gene_match(good, 0.5, file="c.tsv", sample="S1")  # 75 % >= 50 %
    few = match_genes(MODEL, _var(["ESR1", "GAPDH"]))
    with pytest.raises(InputError) as exc:
        check_gene_match(few, 0.5, file="c.tsv", sample="S1", section_genes=["ESR1", "GAPDH"])
    msg = str(exc.value)
    assert "\n" not in msg and "1 of the model's 4 genes" in msg and "S1" in msg
    assert "c.tsv" in msg and "reading.gene_map" in msg


def test_no_shared_gene_is_refused_whatever_the_share():
    none = match_genes(MODEL, _var(["ENSG00000091831", "ENSG00000141736"]))
    assert none["share"] == 0.0
    with pytest.raises(InputError, match="0 of the model's 4 genes"):
        check_gene_match(none, 0.01, sample="S1")


def test_an_image_coarser_than_the_model_is_refused():
    check_section_mpp(2.5, 3.4375, 0.1)  # finer: cut and down-sampled
    check_section_mpp(3.7, 3.4375, 0.1)  # within the tolerance
    with pytest.raises(GeometryError) as exc:
        check_section_mpp(5.0, 3.4375, 0.1, file="he.jpg", sample="S2")
    msg = str(exc.value)
    assert "\n" not in msg and "5 µm/px" in msg and "3.438" in msg and "S2" in msg
    with pytest.raises(GeometryError):
        check_section_mpp(0.0, 3.4375, 0.1)


def test_matched_section_renames_id_matched_genes_to_the_models_names():
    a = ad.AnnData(
        X=np.ones((2, 3), np.float32),
        var=_var(["ESR1", "ENSG00000141736", "GAPDH"], ["E1", "ERBB2", "E3"]),
    )
    m = match_genes(MODEL, a.var)
    b = matched_section(a, m)
    assert list(b.var_names) == ["ESR1", "ERBB2", "GAPDH"]
    assert list(a.var_names) == ["ESR1", "ENSG00000141736", "GAPDH"]  # a copy


def test_versioned_ensembl_ids_match_the_cards_unversioned_ids():
    # GENCODE-style counts (ENSG....14) against a card read from Space Ranger's ids: matched,
    # not refused as "0 of the model's genes"
    var = _var(["ENSG00000091831.24", "ENSG00000141736.14"])
    ids = {"ESR1": "ENSG00000091831", "ERBB2": "ENSG00000141736", "KRT5": "", "CD74": ""}
    m = match_genes(MODEL, var.assign(gene_ids=list(var.index)), ids)
    assert m["matched"] == {"ESR1": "ENSG00000091831.24", "ERBB2": "ENSG00000141736.14"}
    assert m["by_id"] == 2
    m = match_genes(["ENSG00000091831"], _var(["ESR1"], ["ENSG00000091831.3"]))
    assert m["matched"] == {"ENSG00000091831": "ESR1"}
