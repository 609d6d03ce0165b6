"""Bayesian differential expression (engine.analysis.de) and the Wilcoxon reference (engine.analysis.wilcoxon)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

from engine.analysis.de import (
    DEResult,
    check_groups,
    differential_expression,
    estimate_pseudocount,
    explain_calls,
    fdr_calls,
    groups_from_obs,
    summarize_lfc,
    why_few_calls,
    write_de_csv,
)
from engine.analysis.wilcoxon import concordance, wilcoxon
from engine.model.params import RunParams
from engine.runs.fit import fit
from tests.conftest import shared_file


@pytest.fixture(scope="module")
def kang_small(kang_small_path) -> ad.AnnData:
    adata = ad.read_h5ad(kang_small_path)
    adata.layers["counts"] = adata.X.copy()
    return adata


# ---------------------------------------------------------------- decisions from LFC samples


def test_fdr_calls_follow_the_posterior_expected_fdr():
    proba = np.array([0.99, 0.5, 0.97, 0.9, 0.2])
    # Sorted: 0.99, 0.97, 0.9, 0.5, 0.2 -> running mean of 1 - p: 0.01, 0.02, 0.047, 0.16, 0.29.
    assert fdr_calls(proba, fdr=0.05).tolist() == [True, False, True, True, False]
    assert fdr_calls(proba, fdr=0.015).tolist() == [True, False, False, False, False]
    assert not fdr_calls(proba, fdr=0.005).any()


def _synthetic_result(mode: str, *, fold: float = 4.0, sigma: float = 0.3, seed: int = 0) -> DEResult:
    """Two groups of log-normal draws: gene 0 is ``fold`` times higher in group 1, genes 1-3 equal."""
    rng = np.random.default_rng(seed)
    n_draws, n_genes = 4000, 4
    base = np.array([100.0, 50.0, 200.0, 80.0])
    draws2 = base * np.exp(sigma * rng.standard_normal((n_draws, n_genes)))
    draws1 = base * np.exp(sigma * rng.standard_normal((n_draws, n_genes)))
    draws1[:, 0] *= fold
    none = np.zeros(n_genes, dtype=bool)
    summary = summarize_lfc(
        [draws1.astype(np.float32)],
        [draws2.astype(np.float32)],
        not_expressed_1=none,
        not_expressed_2=none,
        n_pairs_per_batch=20000,
        credible_level=0.9,
        rng=rng,
    )
    per_gene = np.zeros(n_genes)
    return DEResult(
        var_names=pd.Index([f"g{i}" for i in range(n_genes)]),
        gene=np.array([f"G{i}" for i in range(n_genes)]),
        mode=mode,
        delta=0.25,
        fdr=0.05,
        lfc_sorted=summary.lfc_sorted,
        lfc_mean=summary.lfc_mean,
        lfc_median=summary.lfc_median,
        lfc_std=summary.lfc_std,
        lfc_low=summary.lfc_low,
        lfc_high=summary.lfc_high,
        credible_level=0.9,
        mean_norm_1=draws1.mean(0),
        mean_norm_2=draws2.mean(0),
        mean_counts_1=per_gene,
        mean_counts_2=per_gene,
        frac_expr_1=per_gene,
        frac_expr_2=per_gene,
        n_cells_1=100,
        n_cells_2=100,
        n_sampled_1=100,
        n_sampled_2=100,
        pseudocount=summary.pseudocount,
        n_samples=n_draws,
        n_pairs=20000,
        batch_correction=False,
        seed=seed,
    )


def test_lfc_distribution_matches_the_lognormal_reference():
    result = _synthetic_result("change")
    # log2 rho ~ N(., (sigma / ln 2)^2) in each group, so the LFC is normal with sd sqrt(2) sigma / ln 2.
    sd = np.sqrt(2) * 0.3 / np.log(2)
    assert result.pseudocount == pytest.approx(1e-6)  # no unexpressed gene: scvi-tools' floor, per 10k
    assert result.lfc_mean[0] == pytest.approx(2.0, abs=0.03)
    assert np.abs(result.lfc_mean[1:]).max() < 0.03
    assert result.lfc_std == pytest.approx(np.full(4, sd), rel=0.05)
    z90 = scipy.stats.norm.ppf(0.95)
    assert result.lfc_low[0] == pytest.approx(2.0 - z90 * sd, abs=0.05)
    assert result.lfc_high[0] == pytest.approx(2.0 + z90 * sd, abs=0.05)
    assert np.all(np.diff(result.lfc_sorted, axis=1) >= 0)
    assert result.lfc_sorted.shape == (4, 1000) and result.lfc_sorted.dtype == np.float32

    for delta in (0.25, 1.0, 2.0):
        table = result.table(delta=delta).loc[[f"g{i}" for i in range(4)]]
        # proba_de = max(P(LFC >= delta), P(LFC < -delta)) for a normal LFC.
        up = scipy.stats.norm.sf(delta, loc=[2.0, 0, 0, 0], scale=sd)
        down = scipy.stats.norm.cdf(-delta, loc=[2.0, 0, 0, 0], scale=sd)
        assert table["proba_de"].to_numpy() == pytest.approx(np.maximum(up, down), abs=0.02)
    table = result.table(delta=0.25)
    assert table.index[0] == "g0" and table.loc["g0", "bayes_factor"] > 3
    assert table["is_de_fdr"].tolist() == [True, False, False, False]
    assert list(table.columns) == [
        "gene", "lfc_mean", "lfc_median", "lfc_std", "lfc_low", "lfc_high", "proba_de",
        "bayes_factor", "is_de_fdr", "mean_norm_1", "mean_norm_2", "mean_counts_1",
        "mean_counts_2", "frac_expr_1", "frac_expr_2",
    ]  # fmt: skip


def test_vanilla_mode_is_the_probability_of_the_favoured_direction():
    result = _synthetic_result("vanilla", fold=1.2)
    table = result.table().loc[["g0", "g1"]]
    sd = np.sqrt(2) * 0.3 / np.log(2)
    p_up = scipy.stats.norm.sf(0, loc=np.log2(1.2), scale=sd)
    assert table.loc["g0", "proba_de"] == pytest.approx(p_up, abs=0.02)
    assert table.loc["g0", "bayes_factor"] == pytest.approx(np.log(p_up / (1 - p_up)), abs=0.1)
    assert table.loc["g1", "proba_de"] == pytest.approx(0.5, abs=0.03)
    # delta plays no part in vanilla mode
    pd.testing.assert_frame_equal(result.table(delta=0.0), result.table(delta=3.0))


def test_higher_delta_calls_fewer_genes():
    result = _synthetic_result("change", fold=1.6, sigma=0.1)
    calls = [int(result.table(delta=d, fdr=0.05)["is_de_fdr"].sum()) for d in (0.0, 0.25, 1.0, 3.0)]
    assert calls == sorted(calls, reverse=True)
    assert calls[0] >= 1 and calls[-1] == 0


def _why(result: DEResult, **options) -> list[str]:
    """why_few_calls with the table it is given on the page, thresholded as asked."""
    return why_few_calls(result, result.table(delta=options["delta"], fdr=options["fdr"]), **options)


def test_the_page_explains_p_de_and_says_why_few_genes_pass():
    text = explain_calls("change", delta=0.25, fdr=0.05)
    assert "1.19-fold" in text and "5%" in text and "false calls" in text
    assert "more highly expressed" in explain_calls("vanilla", delta=0.25, fdr=0.1)
    strong = _synthetic_result("change")  # one gene changes 4-fold, 100 cells per group
    assert _why(strong, delta=0.25, fdr=0.05, few=1) == []  # enough genes called
    reasons = _why(strong, delta=3.0, fdr=0.05, n_epochs_trained=8)
    assert any("only 8 epochs" in r for r in reasons)
    assert any("delta is 3" in r and "8.0-fold" in r for r in reasons)
    assert any("No gene reaches P(DE) 0.95" in r for r in reasons)
    assert not any("smaller group" in r for r in reasons)  # 100 cells each is enough
    # the highest P(DE) is never rounded up to the threshold it misses
    near = _why(strong, delta=1.97, fdr=0.05)
    best = strong.table(delta=1.97)["proba_de"].max()
    if best < 0.95:
        assert f"the highest is {np.floor(best * 1000) / 1000:.3f}" in " ".join(near)
    flat = _synthetic_result("change", fold=1.0)  # nothing changes
    assert any("may hardly differ" in r for r in _why(flat, delta=0.25, fdr=0.05, n_epochs_trained=400))


def test_table_refuses_bad_thresholds():
    result = _synthetic_result("change")
    with pytest.raises(ValueError, match="delta"):
        result.table(delta=-0.1)
    with pytest.raises(ValueError, match="fdr"):
        result.table(fdr=1.5)


def test_pseudocount_is_the_quantile_of_unexpressed_genes_maxima_over_the_gene_count():
    draws1 = np.array([[0.5, 0.01, 30.0], [2.0, 0.02, 10.0]])
    draws2 = np.array([[0.1, 0.3, 30.0], [0.2, 0.4, 10.0]])
    # Group 1 does not express gene 0 (max 2.0); group 2 does not express genes 0 and 1 (0.2, 0.4).
    value = estimate_pseudocount(
        draws1, draws2, np.array([True, False, False]), np.array([True, True, False]), quantile=0.9
    )
    assert value == pytest.approx(2.0 / 3)
    none = np.zeros(3, dtype=bool)
    assert estimate_pseudocount(draws1, draws2, none, none) == pytest.approx(1e-6)  # 1e-10 of 1e4


def _fixed_scales() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """40 posterior draws x 30 genes per group, as fractions of the library (scvi-tools' ``scale``)."""
    n_draws, n_genes = 40, 30
    d = np.arange(n_draws)[:, None]
    g = np.arange(n_genes)[None, :]
    raw1 = (1.0 + np.sin(0.7 * d + 1.3 * g) ** 2) * np.exp(-0.15 * g)
    raw2 = (1.0 + np.cos(0.4 * d + 0.9 * g) ** 2) * np.exp(-0.1 * (n_genes - g))
    scale1 = raw1 / raw1.sum(1, keepdims=True)
    scale2 = raw2 / raw2.sum(1, keepdims=True)
    return scale1, scale2, np.arange(n_genes) % 3 == 0, np.arange(n_genes) >= 20


def test_pseudocount_reproduces_scvi_tools():
    # Reference values: scvi-tools 1.4.2, scvi.model.base._differential.estimate_pseudocounts_offset
    # on these arrays (scales_a, scales_b, where_zero_a, where_zero_b, quantile=0.9).
    scale1, scale2, zero1, zero2 = _fixed_scales()
    none = np.zeros_like(zero1)
    assert estimate_pseudocount(scale1, scale2, zero1, zero2, library_size=1.0) == pytest.approx(
        0.004176086115706033, rel=1e-12
    )
    assert estimate_pseudocount(scale1, scale2, none, none, library_size=1.0) == pytest.approx(1e-10)
    # The same draws per 10,000 counts give the same pseudocount per 10,000 counts.
    assert estimate_pseudocount(1e4 * scale1, 1e4 * scale2, zero1, zero2) == pytest.approx(41.76086115706033)


# ---------------------------------------------------------------- groups


def test_groups_from_obs_rest_and_within(kang_small):
    sizes = kang_small.obs["cell_type"].value_counts()
    g1, g2 = groups_from_obs(kang_small, groupby="cell_type", group1="B cells", group2="rest")
    assert g1.dtype == bool and g1.sum() == sizes["B cells"] and g2.sum() == kang_small.n_obs - sizes["B cells"]
    assert not (g1 & g2).any()
    g1, g2 = groups_from_obs(kang_small, groupby="cell_type", group1="B cells", group2="NK cells")
    assert (g1.sum(), g2.sum()) == (sizes["B cells"], sizes["NK cells"])

    donor = str(kang_small.obs["donor"].iloc[0])
    in_donor = (kang_small.obs["donor"].astype(str) == donor).to_numpy()
    g1, g2 = groups_from_obs(
        kang_small, groupby="cell_type", group1="B cells", group2="rest", within=("donor", donor)
    )
    b_cells = (kang_small.obs["cell_type"] == "B cells").to_numpy()
    assert np.array_equal(g1, b_cells & in_donor)
    assert np.array_equal(g2, ~b_cells & in_donor)


@pytest.mark.parametrize("kind", ["categorical numbers", "numbers", "text with a missing value"])
def test_groups_from_obs_compares_labels_as_text(kind):
    from engine.checks import as_text

    values = np.array([3, 1, 3, 2, 1, 3] * 5)
    missing = pd.Series(np.where(values == 2, None, values.astype(str)), dtype=object)
    column = {"categorical numbers": pd.Series(pd.Categorical(values)), "numbers": pd.Series(values),
              "text with a missing value": missing}[kind]
    column.index = [f"c{i}" for i in range(len(values))]
    adata = ad.AnnData(obs=pd.DataFrame({"leiden": column}))
    text = as_text(adata.obs["leiden"])
    assert isinstance(text.dtype, pd.CategoricalDtype)
    assert text.astype(str).tolist() == adata.obs["leiden"].astype(str).tolist()  # as astype(str) writes them
    g1, g2 = groups_from_obs(adata, groupby="leiden", group1="3", group2="rest")
    assert np.array_equal(g1, values == 3) and np.array_equal(g2, values != 3)
    other = "None" if kind.startswith("text") else "2"
    g1, g2 = groups_from_obs(adata, groupby="leiden", group1="1", group2=other)
    assert np.array_equal(g1, values == 1) and np.array_equal(g2, values == 2)
    with pytest.raises(ValueError, match="no value '4'; values present: '1', "):
        groups_from_obs(adata, groupby="leiden", group1="4", group2="rest")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"groupby": "nope", "group1": "B cells", "group2": "rest"},
         "'nope' is not a column of adata.obs; available: .*cell_type"),
        ({"groupby": "cell_type", "group1": "B cels", "group2": "rest"}, "no value 'B cels'.*'B cells'"),
        ({"groupby": "cell_type", "group1": "B cells", "group2": "Plasma"}, "no value 'Plasma'"),
        ({"groupby": "cell_type", "group1": "B cells", "group2": "B cells"}, "two different groups"),
        ({"groupby": "cell_type", "group1": "B cells", "group2": "rest", "within": ("donor", "x")},
         "donor has no value 'x'"),
    ],
)  # fmt: skip
def test_groups_from_obs_errors(kang_small, kwargs, message):
    with pytest.raises(ValueError, match=message):
        groups_from_obs(kang_small, **kwargs)


def test_groups_from_obs_refuses_an_empty_group_inside_within(kang_small):
    donor = str(kang_small.obs["donor"].iloc[0])
    in_donor = (kang_small.obs["donor"].astype(str) == donor).to_numpy()
    no_b_cells_there = kang_small[~(in_donor & (kang_small.obs["cell_type"] == "B cells").to_numpy())]
    with pytest.raises(ValueError, match="group1 .*has no cells inside donor"):
        groups_from_obs(
            no_b_cells_there, groupby="cell_type", group1="B cells", group2="rest", within=("donor", donor)
        )


def test_check_groups_validation(kang_small):
    n = kang_small.n_obs
    first = np.zeros(n, dtype=bool)
    first[:20] = True
    second = np.zeros(n, dtype=bool)
    second[15:40] = True
    with pytest.raises(ValueError, match="share 5 cells"):
        check_groups(kang_small, group1=first, group2=second)
    with pytest.raises(ValueError, match="boolean mask"):
        check_groups(kang_small, group1=np.arange(20), group2=np.arange(20, 40))
    tiny = np.zeros(n, dtype=bool)
    tiny[100:102] = True
    with pytest.raises(ValueError, match="group2 has 2 cells.*at least 3"):
        check_groups(kang_small, group1=first, group2=tiny)
    few = np.zeros(n, dtype=bool)
    few[100:107] = True
    _, _, notes = check_groups(kang_small, group1=first, group2=few)
    assert len(notes) == 1 and notes[0].startswith("group2 has only 7 cells")


# ---------------------------------------------------------------- CSV


def test_write_de_csv_round_trips_with_provenance(tmp_path):
    table = _synthetic_result("change").table()
    path = tmp_path / "de.csv"
    write_de_csv(table, path, provenance={"run_id": "abc123", "group1": "B cells", "mode": "change"})
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert header[:3] == ["# run_id: abc123", "# group1: B cells", "# mode: change"]
    assert header[3].startswith("# date: 20") and "numpy" in header[4]
    back = pd.read_csv(path, comment="#", index_col=0)
    pd.testing.assert_frame_equal(back, table, check_dtype=False, rtol=1e-6)
    with pytest.raises(ValueError, match="newline"):
        write_de_csv(table, path, provenance={"note": "two\nlines"})


# ---------------------------------------------------------------- Wilcoxon


def test_wilcoxon_matches_scipy_mannwhitneyu(kang_small):
    g1, g2 = groups_from_obs(kang_small, groupby="cell_type", group1="B cells", group2="rest")
    table = wilcoxon(kang_small, group1=g1, group2=g2)
    counts = np.asarray(kang_small.layers["counts"].todense(), dtype=np.float64)
    logn = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)
    genes = list(table.index[:3]) + list(table.index[600:603]) + list(table.index[-3:])
    for gene in genes:
        column = logn[:, kang_small.var_names.get_loc(gene)]
        reference = scipy.stats.mannwhitneyu(column[g1], column[g2], method="asymptotic")
        assert table.loc[gene, "pvalue"] == pytest.approx(reference.pvalue, rel=1e-6, abs=1e-300)
        # score > 0 when group 1 ranks higher: U1 above its null mean n1 n2 / 2
        excess = reference.statistic - g1.sum() * g2.sum() / 2
        if abs(excess) > 0.5:  # else the continuity correction makes the score 0
            assert np.sign(table.loc[gene, "score"]) == np.sign(excess)
        if 1e-300 < reference.pvalue < 1:
            assert abs(table.loc[gene, "score"]) == pytest.approx(scipy.stats.norm.isf(reference.pvalue / 2), rel=1e-5)
    # Benjamini-Hochberg by hand
    p = table["pvalue"].to_numpy()
    order = np.argsort(p)
    bh = np.minimum.accumulate((p[order] * len(p) / np.arange(1, len(p) + 1))[::-1])[::-1]
    assert table["pvalue_adj"].to_numpy()[order] == pytest.approx(np.minimum(bh, 1.0))
    symbols = kang_small.var.loc[table.index[:10], "gene_symbol"].tolist()
    assert "CD79A" in symbols


def test_wilcoxon_handles_dense_counts_and_refuses_overlap(kang_small):
    dense = kang_small.copy()
    dense.layers["counts"] = np.asarray(dense.layers["counts"].todense())
    g1, g2 = groups_from_obs(kang_small, groupby="cell_type", group1="NK cells", group2="CD8 T cells")
    pd.testing.assert_frame_equal(
        wilcoxon(dense, group1=g1, group2=g2), wilcoxon(kang_small, group1=g1, group2=g2)
    )
    with pytest.raises(ValueError, match="share"):
        wilcoxon(kang_small, group1=g1, group2=g1)


@pytest.mark.parametrize("threads", [1, 3])
def test_wilcoxon_matches_scipy_on_a_wide_matrix_with_many_ties(monkeypatch, threads):
    """Every gene of a wide sparse matrix whose cells share a few totals, so values tie often.

    With 3 threads the rows and the genes are split in uneven parts (180 cells, 3,000 genes), and
    the genes are written and sorted in blocks of 7.
    """
    monkeypatch.setattr("engine.analysis.wilcoxon.available_cores", lambda: threads)
    if threads > 1:
        monkeypatch.setattr("engine.analysis.wilcoxon._GENE_BLOCK", 7)
    monkeypatch.setattr("engine.analysis.wilcoxon._ROWS_PER_THREAD", 1)
    monkeypatch.setattr("engine.analysis.wilcoxon._KEYS_PER_THREAD", 1)
    rng = np.random.default_rng(7)
    n_cells, n_genes = 180, 3000
    group1 = rng.random(n_cells) < 0.3
    group2 = ~group1 & (rng.random(n_cells) < 0.9)  # some cells in neither group
    counts = rng.poisson(rng.gamma(0.3, 1.0, n_genes), size=(n_cells, n_genes)).astype(np.float32)
    counts[:, 0] = 0  # never expressed
    counts[:, 1] = rng.integers(1, 4, n_cells)  # expressed in every cell
    counts[:, 2] = 0
    counts[np.flatnonzero(group2)[0], 2] = 2  # in one cell
    # A last gene tops every cell up to one of three totals: equal counts give equal values.
    totals = rng.choice([4096, 8192, 16384], n_cells)  # exact scale factors, as in the reference below
    counts[:, -1] = totals - counts[:, :-1].sum(axis=1)
    assert (counts[:, -1] > 0).all()
    adata = ad.AnnData(X=scipy.sparse.csr_matrix(counts))
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    table = wilcoxon(adata, group1=group1, group2=group2).loc[adata.var_names]

    logn = np.log1p(counts.astype(np.float64) / counts.sum(axis=1, keepdims=True) * 1e4)
    reference = scipy.stats.mannwhitneyu(logn[group1], logn[group2], method="asymptotic", axis=0)
    constant = np.ptp(logn[group1 | group2], axis=0) == 0  # all tied: score 0, p-value 1
    assert constant[0] and not constant[1:3].any()
    assert (table["score"].to_numpy()[constant] == 0).all() and (table["pvalue"].to_numpy()[constant] == 1).all()
    np.testing.assert_allclose(table["pvalue"].to_numpy()[~constant], reference.pvalue[~constant], rtol=1e-9, atol=0)
    excess = reference.statistic - group1.sum() * group2.sum() / 2
    clear = ~constant & (np.abs(excess) > 0.5)
    assert (np.sign(table["score"].to_numpy()[clear]) == np.sign(excess[clear])).all()
    mean1, mean2 = logn[group1].mean(axis=0), logn[group2].mean(axis=0)
    np.testing.assert_allclose(
        table["logfoldchange"], np.log2((np.expm1(mean1) + 1e-9) / (np.expm1(mean2) + 1e-9)), rtol=1e-9, atol=1e-9
    )


def test_concordance_of_identical_and_reversed_rankings():
    table = pd.DataFrame({"x": np.arange(100)}, index=[f"g{i}" for i in range(100)])
    same = concordance(table, table, top_n=10)
    assert (same.spearman, same.overlap, same.overlap_fraction) == (pytest.approx(1.0), 10, 1.0)
    reverse = concordance(table, table.iloc[::-1], top_n=10)
    assert reverse.spearman == pytest.approx(-1.0) and reverse.overlap == 0
    shifted = concordance(table, pd.concat([table.iloc[5:], table.iloc[:5]]), top_n=10)
    assert shifted.overlap == 5 and shifted.overlap_fraction == 0.5
    with pytest.raises(ValueError, match="different genes"):
        concordance(table, table.iloc[:50])



def test_wilcoxon_matches_scipy_on_unsorted_sparse_counts_with_stored_zeros():
    """Stored zeros, a cell without counts and unsorted indices: every gene as mannwhitneyu's."""
    rng = np.random.default_rng(11)
    n_cells, n_genes = 240, 1300  # more genes than one column block of the gene-major copy
    counts = rng.poisson(rng.gamma(0.4, 1.0, n_genes), size=(n_cells, n_genes)).astype(np.float32)
    counts[5] = 0  # a cell without counts: all its values are zeros
    csr = scipy.sparse.csr_matrix(counts)
    csr.data[::7] = 0  # stored zeros are zeros
    dense = csr.toarray()
    # each row's genes in reverse order: not canonical CSR
    order = np.concatenate([np.arange(a, b)[::-1] for a, b in zip(csr.indptr[:-1], csr.indptr[1:], strict=True)])
    unsorted = scipy.sparse.csr_matrix((csr.data[order], csr.indices[order], csr.indptr), shape=csr.shape)
    assert not unsorted.has_sorted_indices
    group1 = rng.random(n_cells) < 0.35
    group2 = ~group1 & (rng.random(n_cells) < 0.8)
    group1[5], group2[5] = True, False
    names = [f"g{i}" for i in range(n_genes)]

    def table(matrix) -> pd.DataFrame:
        adata = ad.AnnData(X=matrix)
        adata.var_names = names
        return wilcoxon(adata, group1=group1, group2=group2)

    result = table(unsorted)
    pd.testing.assert_frame_equal(result, table(csr))
    pd.testing.assert_frame_equal(result, table(dense))
    pd.testing.assert_frame_equal(result, table(scipy.sparse.csc_matrix(csr)))
    totals = dense.astype(np.float64).sum(axis=1, keepdims=True)
    scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)  # as the engine: count * scale
    logn = np.log1p(dense.astype(np.float64) * scale)
    reference = scipy.stats.mannwhitneyu(logn[group1], logn[group2], method="asymptotic", axis=0)
    varies = np.ptp(logn[group1 | group2], axis=0) > 0
    result = result.loc[names]
    np.testing.assert_allclose(result["pvalue"].to_numpy()[varies], reference.pvalue[varies], rtol=1e-9, atol=0)
    assert (result["pvalue"].to_numpy()[~varies] == 1).all()


def test_group_count_statistics_skip_stored_zeros():
    from engine.analysis.de import _count_statistics

    rng = np.random.default_rng(3)
    counts = scipy.sparse.random(400, 90, density=0.2, format="csr", random_state=4, dtype=np.float32)
    counts.data = np.ceil(counts.data * 6)
    counts.data[::9] = 0
    mask = rng.random(400) < 0.4
    mean, fraction = _count_statistics(counts, mask)
    dense = counts.toarray()[mask].astype(np.float64)
    np.testing.assert_allclose(mean, dense.mean(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(fraction, (dense != 0).mean(axis=0))


# ---------------------------------------------------------------- with a trained model


@pytest.fixture(scope="module")
def small_run(kang_small, tmp_path_factory):
    """The scVI-style model trained briefly on the 1,145-cell fixture."""
    torch.set_num_threads(1)  # 2-core machines shared with other test processes
    # 40 epochs at the thorough schedule's learning rate: brief, and calibrated for these checks
    # (the fast schedule's 3e-3 goes with its 490,000 cell passes, 400 epochs of this fixture)
    params = RunParams(max_epochs=40, lr=1e-3, seed=0)
    return fit(kang_small, params=params, cache_dir=tmp_path_factory.mktemp("runs"))


def _symbols(adata: ad.AnnData, table: pd.DataFrame) -> list[str]:
    return adata.var.loc[table.index, "gene_symbol"].tolist()


def _top_up(adata: ad.AnnData, table: pd.DataFrame, n: int) -> list[str]:
    """Genes up in group 1, ranked as scVI users do: proba_de, then lfc_mean (descending)."""
    up = table[table["lfc_mean"] > 0].sort_values(["proba_de", "lfc_mean"], ascending=False)
    return _symbols(adata, up.head(n))


def test_de_b_cells_vs_rest_on_the_fixture(kang_small, small_run):
    b_cells, rest = groups_from_obs(kang_small, groupby="cell_type", group1="B cells", group2="rest")
    result = differential_expression(small_run, kang_small, group1=b_cells, group2=rest, seed=0)
    table = result.table()
    assert (result.n_cells_1, result.n_cells_2) == (int(b_cells.sum()), int(rest.sum()))
    assert (result.n_sampled_1, result.n_sampled_2) == (int(b_cells.sum()), 500)
    assert result.warnings == []
    top = _top_up(kang_small, table, 10)
    assert "CD79A" in top and "CD37" in top, top
    cd79a = table.loc[kang_small.var_names[kang_small.var["gene_symbol"] == "CD79A"][0]]
    assert cd79a["lfc_mean"] > 1 and cd79a["bayes_factor"] > 0 and cd79a["mean_norm_1"] > cd79a["mean_norm_2"]
    assert cd79a["lfc_low"] < cd79a["lfc_median"] < cd79a["lfc_high"]
    # raw statistics over every cell of each group
    counts = kang_small.layers["counts"]
    gene = kang_small.var_names.get_loc(cd79a.name)
    column = np.asarray(counts[:, gene].todense()).ravel()
    assert cd79a["mean_counts_1"] == pytest.approx(column[b_cells].mean())
    assert cd79a["frac_expr_2"] == pytest.approx((column[rest] > 0).mean())
    # same seed, same result, also when progress is watched: the two draws, then the summary
    seen: list[float] = []
    again = differential_expression(
        small_run, kang_small, group1=b_cells, group2=rest, seed=0, on_progress=seen.append
    ).table()
    pd.testing.assert_frame_equal(again, table)
    assert seen == [0.0, pytest.approx(1 / 3), pytest.approx(2 / 3)]
    # higher delta or a stricter FDR never calls more genes
    calls = [int(result.table(delta=d)["is_de_fdr"].sum()) for d in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert calls == sorted(calls, reverse=True) and calls[0] > calls[-1]
    assert result.table(fdr=0.01)["is_de_fdr"].sum() <= result.table(fdr=0.2)["is_de_fdr"].sum()
    # the Wilcoxon test on the same groups agrees on the ranking
    agreement = concordance(table, wilcoxon(kang_small, group1=b_cells, group2=rest), top_n=50)
    assert agreement.spearman > 0.3 and agreement.overlap >= 15


def test_de_of_a_group_against_itself_finds_almost_nothing(kang_small, small_run):
    cd4 = np.flatnonzero((kang_small.obs["cell_type"] == "CD4 T cells").to_numpy())
    np.random.default_rng(0).shuffle(cd4)
    half1 = np.isin(np.arange(kang_small.n_obs), cd4[: len(cd4) // 2])
    half2 = np.isin(np.arange(kang_small.n_obs), cd4[len(cd4) // 2 :])
    for mode in ("change", "vanilla"):
        table = differential_expression(small_run, kang_small, group1=half1, group2=half2, mode=mode).table()
        assert table["is_de_fdr"].sum() <= 0.01 * len(table), mode
    assert np.abs(table["lfc_median"]).median() < 0.1


def test_de_validation_errors(kang_small, small_run):
    b_cells, rest = groups_from_obs(kang_small, groupby="cell_type", group1="B cells", group2="rest")
    with pytest.raises(ValueError, match="mode must be one of 'vanilla', 'change'"):
        differential_expression(small_run, kang_small, group1=b_cells, group2=rest, mode="fast")
    with pytest.raises(ValueError, match="needs a run trained with a batch key"):
        differential_expression(small_run, kang_small, group1=b_cells, group2=rest, batch_correction=True)
    with pytest.raises(ValueError, match="genes differ"):
        differential_expression(small_run, kang_small[:, :-1], group1=b_cells, group2=rest)
    few = np.zeros(kang_small.n_obs, dtype=bool)
    few[np.flatnonzero(b_cells)[:2]] = True
    with pytest.raises(ValueError, match="group1 has 2 cells"):
        differential_expression(small_run, kang_small, group1=few, group2=rest)
    few[np.flatnonzero(b_cells)[:5]] = True
    result = differential_expression(small_run, kang_small, group1=few, group2=rest, n_samples=500)
    assert result.warnings and "group1 has only 5 cells" in result.warnings[0]


@pytest.mark.slow
def test_de_with_batch_correction_pairs_draws_of_each_batch(kang_small, tmp_path):
    torch.set_num_threads(1)
    run = fit(kang_small, params=RunParams(max_epochs=20, seed=0), batch_key="donor", cache_dir=tmp_path)
    assert run.batch_categories is not None and len(run.batch_categories) > 1
    b_cells, rest = groups_from_obs(kang_small, groupby="cell_type", group1="B cells", group2="rest")
    result = differential_expression(run, kang_small, group1=b_cells, group2=rest, batch_correction=True)
    assert result.batch_correction and result.provenance()["batch_correction"] is True
    n_batches = len(run.batch_categories)
    assert result.lfc_sorted.shape == (kang_small.n_vars, min(1000, (10000 // n_batches) * n_batches))
    assert "CD79A" in _top_up(kang_small, result.table(), 10)


INTERFERON = ("ISG15", "IFI6", "IFIT1", "IFIT2", "IFIT3", "MX1", "ISG20", "LY6E", "IFI44L", "RSAD2")


@pytest.mark.slow
def test_de_stim_vs_ctrl_finds_the_interferon_response():
    """The classic demo (issue 20): with scvi-tools' pseudocount the interferon response leads."""
    adata = ad.read_h5ad(shared_file("kang_pbmc_stim_ctrl_1556x1267.h5ad"))
    adata.layers["counts"] = adata.X.copy()
    torch.set_num_threads(1)
    run = fit(adata, params=RunParams(max_epochs=30, seed=0))
    stim, ctrl = groups_from_obs(adata, groupby="condition", group1="stim", group2="ctrl")
    result = differential_expression(run, adata, group1=stim, group2=ctrl)
    table = result.table(delta=0.25, fdr=0.05)
    top15 = list(table.index[:15])  # var_names are symbols in this file; scvi-tools' order (proba_de)
    assert table["is_de_fdr"].sum() >= 20, table.head(30)
    assert len(set(INTERFERON) & set(top15)) >= 6, top15
    assert (table.loc[list(INTERFERON), "lfc_mean"] > 1).all()  # all up in the stimulated cells
    # the pseudocount is one gene's share of the library, not the largest artefact (issue 20)
    assert result.pseudocount < 1.0


@pytest.mark.slow
def test_de_b_cells_vs_rest_on_the_12k_sample(kang_12k_default):
    """What a user gets with the default training (fast schedule, batch key donor)."""
    adata, run = kang_12k_default
    b_cells, rest = groups_from_obs(adata, groupby="cell_type", group1="B cells", group2="rest")
    table = differential_expression(run, adata, group1=b_cells, group2=rest).table()
    top10 = _top_up(adata, table, 10)
    assert {"CD79A", "CD74"} <= set(top10), top10
    assert table["is_de_fdr"].sum() >= 10
