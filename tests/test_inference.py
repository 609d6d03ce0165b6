"""Inference API on a trained run: shapes, batches, genes, ELBO and samples."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

from engine.model import inference as inf
from engine.model.params import RunParams
from engine.runs.fit import fit

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(kang_small_path):
    adata = ad.read_h5ad(kang_small_path)[::3].copy()
    run = fit(adata, params=RunParams(max_epochs=3, n_latent=6), batch_key="donor", device="cpu")
    return run, adata


def test_latent_mean_and_samples(trained):
    run, adata = trained
    mean = inf.latent_mean(run, adata)
    assert mean.shape == (adata.n_obs, 6) and mean.dtype == np.float32
    np.testing.assert_allclose(mean, run.latent, rtol=1e-5, atol=1e-6)
    samples = inf.sample_latent(run, adata, n_samples=4, seed=1)
    assert samples.shape == (4, adata.n_obs, 6)
    np.testing.assert_array_equal(samples, inf.sample_latent(run, adata, n_samples=4, seed=1))
    assert np.abs(samples.mean(0) - mean).mean() < np.abs(samples[0] - mean).mean()
    activity = inf.latent_activity(run, adata)
    np.testing.assert_allclose(activity, mean.var(axis=0), rtol=1e-5)


def test_normalized_expression_shapes_and_transform_batch(trained):
    run, adata = trained
    idx = np.array([5, 0, 17])
    one = inf.normalized_expression(run, adata, indices=idx)
    assert one.shape == (1, 3, adata.n_vars) and one.dtype == np.float32
    np.testing.assert_allclose(one.sum(-1), 1e4, rtol=1e-4)
    many = inf.normalized_expression(run, adata, indices=idx, n_samples=5, library_size=1.0, seed=2)
    assert many.shape == (5, 3, adata.n_vars)
    np.testing.assert_allclose(many.sum(-1), 1.0, rtol=1e-4)
    mask = np.zeros(adata.n_obs, dtype=bool)
    mask[[0, 5, 17]] = True
    assert inf.normalized_expression(run, adata, indices=mask).shape == (1, 3, adata.n_vars)
    donors = run.batch_categories
    own = inf.normalized_expression(run, adata, n_samples=2, seed=0)
    as_first = inf.normalized_expression(run, adata, n_samples=2, seed=0, transform_batch=donors[0])
    in_first = (adata.obs["donor"].astype(str) == donors[0]).to_numpy()
    # same z draws: cells already in that batch are unchanged, the others move
    np.testing.assert_allclose(as_first[:, in_first], own[:, in_first], rtol=1e-5, atol=1e-6)
    assert not np.allclose(as_first[:, ~in_first], own[:, ~in_first])
    with pytest.raises(ValueError, match="not seen in training"):
        inf.normalized_expression(run, adata, transform_batch="no-such-donor")


def test_heldout_elbo_matches_validation_metric(trained):
    run, adata = trained
    from engine.model.training import split_cells

    _, val = split_cells(adata.n_obs, run.params.validation_fraction, run.params.seed)
    parts = inf.heldout_elbo(run, adata, indices=val)
    assert parts.elbo == pytest.approx(run.metrics["elbo_validation"], rel=1e-4)
    assert parts.elbo == pytest.approx(parts.reconstruction - parts.kl, rel=1e-6)
    assert parts.kl > 0


def test_posterior_predictive_gives_counts(trained):
    run, adata = trained
    samples = inf.posterior_predictive(run, adata, indices=np.arange(20), n_samples=3, seed=0)
    assert samples.shape == (3, 20, adata.n_vars)
    assert (samples >= 0).all() and np.array_equal(samples, np.round(samples))
    observed = adata.X[:20].sum(1).A1
    # the model's library is the observed one: simulated totals are in the same range
    ratio = samples.sum(-1).mean(0) / observed
    assert 0.5 < np.median(ratio) < 2.0
    np.testing.assert_array_equal(samples,
                                  inf.posterior_predictive(run, adata, indices=np.arange(20), n_samples=3, seed=0))


def test_wrong_genes_or_batches_are_clear_errors(trained):
    run, adata = trained
    reordered = adata[:, adata.var_names[::-1]].copy()
    np.testing.assert_allclose(inf.latent_mean(run, reordered), inf.latent_mean(run, adata), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="genes differ"):
        inf.latent_mean(run, adata[:, :100].copy())
    unknown = adata.copy()
    unknown.obs["donor"] = unknown.obs["donor"].astype(str)
    unknown.obs.iloc[0, unknown.obs.columns.get_loc("donor")] = "martian"
    with pytest.raises(ValueError, match="martian"):
        inf.latent_mean(run, unknown)
    missing = adata.copy()
    del missing.obs["donor"]
    with pytest.raises(ValueError, match="batch_key='donor'"):
        inf.latent_mean(run, missing)


def test_gene_decoder_gives_one_genes_expression_as_a_full_decode_does(trained):
    run, adata = trained
    decoder = inf.gene_decoder(run, adata)
    assert decoder.hidden.shape == (adata.n_obs, run.params.n_hidden)
    # the full decoder at the posterior mean, every gene, as reference
    counts, codes = inf.run_inputs(run, adata)
    module = run.module.eval()
    with torch.no_grad():
        mbs = list(inf.iterate_minibatches(counts, codes, np.arange(adata.n_obs), 4096))
        q = module.inference(mbs[0], sample=False)
        gen = module.generative(q.qz_mean, torch.zeros(adata.n_obs), mbs[0].batch_index)
        full = (torch.softmax(gen.logits.double(), dim=-1) * 1e4).numpy()
    for gene in (run.var_names[0], run.var_names[500], run.var_names[-1]):
        g = run.var_names.index(gene)
        np.testing.assert_allclose(decoder.expression(gene), full[:, g], rtol=1e-4)
    # it is the model's mean: close to the average of posterior draws
    draws = inf.normalized_expression(run, adata, n_samples=20, seed=0)[:, :, 500].mean(axis=0)
    assert np.corrcoef(np.log1p(draws), np.log1p(decoder.expression(run.var_names[500])))[0, 1] > 0.95
    with pytest.raises(ValueError, match="not trained on gene"):
        decoder.expression("NOT_A_GENE")
