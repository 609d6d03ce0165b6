"""Marker genes of every group at once (engine.analysis.markers) and ``python -m engine markers``."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from engine.__main__ import main
from engine.analysis.de import differential_expression
from engine.analysis.markers import MARKER_COLUMNS, WILCOXON_COLUMNS, MarkerResult, find_markers
from engine.analysis.wilcoxon import wilcoxon
from engine.model.params import RunParams
from engine.runs.fit import fit

CELL_TYPES = ("B cells", "CD14+ Monocytes", "CD4 T cells", "CD8 T cells", "Dendritic cells",
              "FCGR3A+ Monocytes", "Megakaryocytes", "NK cells")  # fmt: skip
QUICK = {"n_samples": 1000, "max_cells_per_group": 200}  # reruns of a few groups: cheaper draws


@pytest.fixture(scope="module")
def kang_small(kang_small_path) -> ad.AnnData:
    adata = ad.read_h5ad(kang_small_path)
    adata.layers["counts"] = adata.X.copy()
    adata.var["display_name"] = adata.var["gene_symbol"].astype(str)
    return adata


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("markers_runs")


@pytest.fixture(scope="module")
def small_run(kang_small, cache_dir):
    """The scVI-style model trained briefly on the 1,145-cell fixture."""
    torch.set_num_threads(1)  # 2-core machines shared with other test processes
    return fit(kang_small, params=RunParams(max_epochs=40, seed=0), cache_dir=cache_dir)


@pytest.fixture(scope="module")
def markers(small_run, kang_small) -> MarkerResult:
    """Markers of the 8 cell types with the default settings."""
    return find_markers(small_run, kang_small, groupby="cell_type")


# ---------------------------------------------------------------- find_markers


def test_marker_table_holds_the_up_genes_of_every_group_ranked(markers, kang_small):
    table = markers.table
    assert tuple(table.columns) == MARKER_COLUMNS + WILCOXON_COLUMNS
    assert markers.groups == CELL_TYPES and markers.skipped == {}
    assert list(table["group"].unique()) == list(CELL_TYPES)  # category order
    assert markers.n_cells == kang_small.obs["cell_type"].value_counts().astype(int).to_dict()
    assert (markers.groupby, markers.top, markers.delta, markers.fdr, markers.seed) == ("cell_type", 10, 0.25, 0.05, 0)
    for group, part in table.groupby("group", sort=False):
        assert part["rank"].tolist() == list(range(1, len(part) + 1)), group
        assert len(part) >= 10, group
        # ranked by proba_de, then lfc_mean, both descending
        keys = list(zip(part["proba_de"], part["lfc_mean"], strict=True))
        assert keys == sorted(keys, reverse=True), group
        assert not part["var_name"].duplicated().any()
    assert (table["lfc_mean"] > 0).all()
    assert (table["frac_expr_group"] >= 0.1).all()
    symbols = kang_small.var.loc[table["var_name"], "gene_symbol"].astype(str).to_numpy()
    assert (table["gene"].to_numpy() == symbols).all()  # display names

    top = markers.top_table()
    assert len(top) == 10 * len(CELL_TYPES) and top["rank"].max() == 10
    assert top.groupby("group", sort=False).size().to_dict() == dict.fromkeys(CELL_TYPES, 10)
    assert len(markers.top_table(3)) == 3 * len(CELL_TYPES)
    # the leaders are up by the decision rule and in mean expression too
    assert (top["bayes_factor"] > 0).all() and (top["mean_norm_group"] > top["mean_norm_rest"]).all(), top
    pd.testing.assert_frame_equal(top, table[table["rank"] <= 10].reset_index(drop=True))
    with pytest.raises(ValueError, match="at least 1"):
        markers.top_table(0)

    b_top = top.loc[top["group"] == "B cells", "gene"].tolist()
    assert "CD79A" in b_top or "CD74" in b_top, b_top
    assert (top.loc[top["group"] == "B cells", "proba_de"] > 0.8).all()


def test_markers_are_the_filtered_de_table_of_each_group_against_the_rest(markers, small_run, kang_small):
    nk = (kang_small.obs["cell_type"] == "NK cells").to_numpy()
    de = differential_expression(small_run, kang_small, group1=nk, group2=~nk, seed=0).table()
    up = de[(de["lfc_mean"] > 0) & (de["frac_expr_1"] >= 0.1)]
    up = up.sort_values(["proba_de", "lfc_mean"], ascending=False)
    part = markers.table[markers.table["group"] == "NK cells"].set_index("var_name")
    assert list(part.index) == list(up.index)
    np.testing.assert_allclose(part["proba_de"], up["proba_de"])
    np.testing.assert_allclose(part["frac_expr_rest"], up["frac_expr_2"])
    np.testing.assert_allclose(part["mean_norm_group"], up["mean_norm_1"])
    test = wilcoxon(kang_small, group1=nk, group2=~nk)
    np.testing.assert_allclose(part["wilcoxon_score"], test.loc[part.index, "score"])
    np.testing.assert_allclose(part["wilcoxon_pvalue_adj"], test.loc[part.index, "pvalue_adj"])


def test_fraction_filter_groups_and_no_wilcoxon(markers, small_run, kang_small):
    strict = find_markers(small_run, kang_small, groupby="cell_type", groups=["NK cells", "B cells"],
                          min_fraction=0.5, wilcoxon=False, top=5, **QUICK)  # fmt: skip
    assert strict.groups == ("B cells", "NK cells")  # category order, not the order asked
    assert set(strict.n_cells) == {"B cells", "NK cells"} and strict.top == 5
    assert tuple(strict.table.columns) == MARKER_COLUMNS
    assert (strict.table["frac_expr_group"] >= 0.5).all()
    for group in strict.groups:
        assert len(strict.table[strict.table["group"] == group]) < len(markers.table[markers.table["group"] == group])
    assert len(strict.top_table()) == 10


def test_same_seed_same_markers_and_progress_is_reported(small_run, kang_small):
    seen: list[float] = []
    kwargs = {"groupby": "cell_type", "groups": ["CD14+ Monocytes", "Megakaryocytes"], **QUICK}
    first = find_markers(small_run, kang_small, on_progress=seen.append, **kwargs)
    assert seen == [0.0, 0.5, 1.0]
    again = find_markers(small_run, kang_small, **kwargs)
    pd.testing.assert_frame_equal(first.table, again.table)
    other = find_markers(small_run, kang_small, seed=1, **kwargs)
    assert other.seed == 1
    assert not np.array_equal(first.table["lfc_mean"].to_numpy()[:20], other.table["lfc_mean"].to_numpy()[:20])


def test_small_groups_are_skipped_and_bad_input_explained(small_run, kang_small):
    adata = kang_small.copy()
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    labels[np.flatnonzero(labels == "B cells")[:2]] = "tiny"
    adata.obs["split"] = pd.Categorical(labels)
    seen: list[float] = []
    result = find_markers(small_run, adata, groupby="split", groups=["tiny", "NK cells"], on_progress=seen.append,
                          **QUICK)  # fmt: skip
    assert result.groups == ("NK cells",)
    assert result.n_cells == {"NK cells": 150, "tiny": 2}
    assert list(result.skipped) == ["tiny"] and "2 cells" in result.skipped["tiny"]
    assert "min_cells=3" in result.skipped["tiny"]
    assert set(result.table["group"]) == {"NK cells"} and seen == [0.0, 1.0]

    with pytest.raises(ValueError, match="no group of 'split' can be analysed") as err:
        find_markers(small_run, adata, groupby="split", groups=["tiny"])
    assert "2 cells" in str(err.value)
    with pytest.raises(ValueError, match="groupby 'celltype' is not a column of adata.obs") as err:
        find_markers(small_run, adata, groupby="celltype")
    assert "available: donor, cell_type, barcode, split" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"cell_type has no group 'T cells'; groups present: 'B cells'"):
        find_markers(small_run, adata, groupby="cell_type", groups=["B cells", "T cells"])
    adata.obs["one"] = "all"
    with pytest.raises(ValueError, match=r"'one' has 1 group\(s\) with at least 3 cells"):
        find_markers(small_run, adata, groupby="one")
    adata.obs["pair"] = pd.Categorical(np.where(np.arange(adata.n_obs) < 2, "a", "b"))
    with pytest.raises(ValueError, match="markers need two or more"):
        find_markers(small_run, adata, groupby="pair")
    for kwargs, message in (({"top": 0}, "top must be"), ({"min_cells": 2}, "min_cells must be"),
                            ({"min_fraction": 1.5}, "min_fraction must")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            find_markers(small_run, adata, groupby="cell_type", **kwargs)


def test_groups_of_a_numeric_column_are_compared_as_text(small_run, kang_small):
    adata = kang_small.copy()
    adata.obs["cluster"] = (adata.obs["cell_type"].cat.codes.to_numpy() % 3).astype(np.int64)
    result = find_markers(small_run, adata, groupby="cluster", groups=["2"], wilcoxon=False, **QUICK)
    assert result.groups == ("2",) and result.n_cells == {"2": int((adata.obs["cluster"] == 2).sum())}


# ---------------------------------------------------------------- python -m engine markers


def _markers_args(path, cache_dir, out, *extra):
    return ["markers", str(path), "--cache-dir", str(cache_dir), "--groupby", "cell_type", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def trained_file(small_run, kang_small, tmp_path_factory):
    """The fixture as an h5ad that names the trained run, as ``python -m engine train`` writes it."""
    adata = kang_small.copy()
    adata.uns["atlas_run"] = {"run_id": small_run.run_id}
    path = tmp_path_factory.mktemp("markers_cli") / "trained.h5ad"
    adata.write_h5ad(path)
    return path


def test_cli_writes_the_top_markers_of_each_group(trained_file, cache_dir, markers, small_run, tmp_path, capsys):
    out = tmp_path / "markers.csv"
    assert main(_markers_args(trained_file, cache_dir, out, "--top", "5", "--groups", "NK cells", "B cells")) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith(f"wrote {out}: 2 groups of 1,145 cells")
    assert "B cells: " in printed[0] and "NK cells: " in printed[0]

    header = dict(line[2:].split(": ", 1) for line in out.read_text().splitlines() if line.startswith("# "))
    assert header["run_id"] == small_run.run_id and header["groupby"] == "cell_type"
    assert (header["groups"], header["top"], header["seed"]) == ("B cells; NK cells", "5", "0")
    assert header["n_cells"] == "B cells=150; NK cells=150" and header["skipped"] == "none"
    assert "torch" in header["versions"] and header["date"].startswith("20")

    written = pd.read_csv(out, comment="#")
    columns = ["group", "rank", "gene", "var_name", "lfc_mean", "proba_de", "bayes_factor", "is_de_fdr",
               "frac_expr_group", "frac_expr_rest", "wilcoxon_score", "wilcoxon_pvalue_adj"]  # fmt: skip
    assert list(written.columns) == columns
    assert written["group"].tolist() == ["B cells"] * 5 + ["NK cells"] * 5
    assert written["rank"].tolist() == [1, 2, 3, 4, 5] * 2
    # the same computation as in Python (each group's DE depends only on the group and the seed)
    expected = markers.top_table(5)
    expected = expected[expected["group"].isin(["B cells", "NK cells"])][columns].reset_index(drop=True)
    pd.testing.assert_frame_equal(written, expected, check_dtype=False, rtol=1e-6)
    assert ", ".join(expected["gene"][:3]) in printed[0]


def test_cli_errors_are_one_line_with_exit_code_2(trained_file, cache_dir, kang_small, tmp_path, capsys):
    out = tmp_path / "x.csv"

    def error(*argv) -> str:
        assert main(list(argv)) == 2
        message = capsys.readouterr().err.strip()
        assert message.startswith("error: ") and "\n" not in message, message
        return message

    assert "not found in" in error(*_markers_args(trained_file, tmp_path / "empty_cache", out))
    assert "missing.h5ad not found" in error(*_markers_args(tmp_path / "missing.h5ad", cache_dir, out))
    untrained = tmp_path / "untrained.h5ad"
    plain = kang_small.copy()
    plain.uns.pop("atlas_run", None)
    plain.write_h5ad(untrained)
    assert "train it first" in error(*_markers_args(untrained, cache_dir, out))

    unknown = _markers_args(trained_file, cache_dir, out)
    unknown[unknown.index("cell_type")] = "celltype"
    assert "available: donor, cell_type, barcode" in error(*unknown)
    assert "no group 'T cells'" in error(*_markers_args(trained_file, cache_dir, out, "--groups", "T cells"))

    tiny = tmp_path / "tiny.h5ad"
    adata = ad.read_h5ad(trained_file)
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    labels[np.flatnonzero(labels == "B cells")[:2]] = "tiny"
    adata.obs["cell_type"] = pd.Categorical(labels)
    adata.write_h5ad(tiny)
    message = error(*_markers_args(tiny, cache_dir, out, "--groups", "tiny"))
    assert "no group of 'cell_type' can be analysed" in message and "2 cells" in message
    assert not out.exists()


# ---------------------------------------------------------------- the 12k sample

KNOWN_MARKERS = {
    "B cells": {"CD79A", "CD74"},
    "CD14+ Monocytes": {"S100A8", "S100A9", "LYZ", "CD14"},
    "NK cells": {"GNLY", "NKG7", "GZMB"},
    "FCGR3A+ Monocytes": {"FCGR3A", "MS4A7"},
}


@pytest.mark.slow
def test_known_markers_lead_on_the_12k_sample(kang_12k_default):
    adata, run = kang_12k_default
    result = find_markers(run, adata, groupby="cell_type")
    top = result.top_table()
    for group in result.groups:
        print(f"{group}: {', '.join(top.loc[top['group'] == group, 'gene'])}")
    assert result.groups == CELL_TYPES and result.skipped == {}
    for group, known in KNOWN_MARKERS.items():
        genes = set(top.loc[top["group"] == group, "gene"])
        assert genes & known, (group, sorted(genes))
