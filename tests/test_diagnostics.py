"""Run diagnostics follow the run's genes, whatever order the data holds them in."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

from dashboard.figures import ppc_scatter
from engine.analysis.diagnostics import diagnose, posterior_predictive_check
from engine.model.params import RunParams
from engine.runs.fit import fit


@pytest.fixture(scope="module")
def trained(kang_small_path, tmp_path_factory):
    adata = ad.read_h5ad(kang_small_path)
    adata.layers["counts"] = adata.X.copy()
    adata.var["display_name"] = [f"sym{i}" for i in range(adata.n_vars)]
    subset = adata[:, adata.var_names[:300]].copy()  # a run on a gene subset, as after HVG selection
    torch.set_num_threads(1)
    run = fit(subset, params=RunParams(max_epochs=3, seed=0), cache_dir=tmp_path_factory.mktemp("runs"))
    return adata, run


def test_predictive_check_pairs_observed_and_sampled_values_of_the_same_gene(trained):
    adata, run = trained
    reordered = adata[:, run.var_names[::-1]].copy()  # the run's genes, in reverse order
    check = posterior_predictive_check(run, reordered, n_cells=200, seed=0)
    expected = [f"sym{i}" for i in range(300)]  # the run's order, not the data's
    assert list(check.genes) == expected
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(reordered.n_obs, 200, replace=False))
    counts = adata.layers["counts"][:, :300][idx].toarray()
    np.testing.assert_allclose(check.observed_mean, counts.mean(axis=0), rtol=1e-5)
    # the sampled means track the observed ones gene by gene (a mismatched order would not)
    assert np.corrcoef(np.log1p(check.observed_mean), np.log1p(check.sampled_mean))[0, 1] > 0.8


def test_diagnose_and_the_comparison_figure_take_runs_on_different_genes(trained):
    adata, run = trained
    d = diagnose(run, adata[:, run.var_names].copy(), n_cells=100)
    other = (np.array([0.1, 0.5]), np.array([0.2, 0.4]), np.array(["A", "B"]))
    fig = ppc_scatter({"run 1": (d.check.observed_zero_fraction, d.check.sampled_zero_fraction, d.check.genes),
                       "run 2": other}, title="zeros", axis="fraction of zeros")
    first, second = fig.data[0], fig.data[1]
    assert len(first.x) == 300 and list(first.text[:2]) == ["sym0", "sym1"]
    assert list(second.x) == [0.1, 0.5] and list(second.text) == ["A", "B"]
