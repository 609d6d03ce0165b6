"""benchmarks/make_atlas.py: synthetic atlases keep the real cells' biology, add noise and batches, reproducibly."""

from __future__ import annotations

import importlib.util
import sys

import anndata as ad
import numpy as np
import pytest

from .conftest import REPO, kang_small_path  # noqa: F401 - the fixture

_spec = importlib.util.spec_from_file_location("make_atlas", REPO / "benchmarks" / "make_atlas.py")
make_atlas_module = importlib.util.module_from_spec(_spec)
sys.modules["make_atlas"] = make_atlas_module  # (its dataclass looks its module up there)
_spec.loader.exec_module(make_atlas_module)


@pytest.fixture(scope="module")
def source(kang_small_path):  # noqa: F811 - the conftest fixture
    return ad.read_h5ad(kang_small_path)


def test_same_seed_same_atlas_and_counts_stay_integers(source):
    one = make_atlas_module.make_atlas(source, n_cells=3000, n_batches=6, seed=3)
    two = make_atlas_module.make_atlas(source, n_cells=3000, n_batches=6, seed=3)
    other = make_atlas_module.make_atlas(source, n_cells=3000, n_batches=6, seed=4)
    assert one.shape == (3000, source.n_vars) and (one.var_names == source.var_names).all()
    assert (one.X != two.X).nnz == 0 and (one.X != other.X).nnz > 0
    assert np.array_equal(one.X.data, np.round(one.X.data)) and one.X.data.min() >= 1
    assert one.obs["batch"].value_counts().tolist() == [500] * 6  # equal shares


def test_cells_are_noisy_copies_of_real_cells_with_their_labels(source):
    atlas = make_atlas_module.make_atlas(source, n_cells=4000, n_batches=4, seed=0)
    picked = atlas.obs["source_cell"].to_numpy()
    assert (atlas.obs["cell_type"].to_numpy() == source.obs["cell_type"].to_numpy()[picked]).all()
    # depth follows the copied cell (library factor sd 0.25, batch effects sd 0.3 per gene) ...
    totals = np.asarray(atlas.X.sum(axis=1)).ravel()
    real = np.asarray(source.X.sum(axis=1)).ravel()[picked]
    assert 0.8 < np.median(totals / real) < 1.25 and np.corrcoef(np.log1p(totals), np.log1p(real))[0, 1] > 0.8
    # ... but no copy equals its real cell: there is count noise
    first = np.flatnonzero(picked == picked[0])
    assert (atlas.X[first[0]] != source.X[picked[0]]).nnz > 0
    # no gene is switched on that the real cell did not express (sparsity stays real)
    assert atlas.X.nnz <= source.X[picked].nnz


def test_batches_shift_genes_the_same_way_for_every_cell_of_a_batch(source):
    atlas = make_atlas_module.make_atlas(source, n_cells=8000, n_batches=2, seed=1)
    x = atlas.X.toarray()
    per_cell = x / x.sum(axis=1, keepdims=True)
    b0 = (atlas.obs["batch"] == "batch00").to_numpy()
    expressed = (x > 0).mean(axis=0) > 0.3
    ratio = per_cell[b0][:, expressed].mean(axis=0) / per_cell[~b0][:, expressed].mean(axis=0)
    assert np.abs(np.log(ratio)).mean() > 0.15  # a log-normal effect of sd 0.3 on each side, not noise


def test_bad_sizes_are_refused(source):
    with pytest.raises(ValueError, match="must be positive"):
        make_atlas_module.make_atlas(source, n_cells=0)
