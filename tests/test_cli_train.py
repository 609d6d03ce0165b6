"""``python -m engine train`` end to end on the fixture, and its one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from engine.__main__ import main

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """In a fresh interpreter, as a user runs it (slow: imports torch; used once)."""
    return subprocess.run(
        [sys.executable, "-m", "engine", "train", *args],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
    )


@pytest.mark.slow
def test_train_writes_h5ad_and_second_call_uses_cache(kang_small_path, tmp_path, capsys):
    out = tmp_path / "out.h5ad"
    args = [str(kang_small_path), "--likelihood", "nb", "--n-latent", "4", "--batch-key", "donor",
            "--max-epochs", "2", "--seed", "1", "--cache-dir", str(tmp_path / "runs"), "--out", str(out)]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("epoch ") == 2  # not a terminal: one progress line per epoch
    adata = ad.read_h5ad(out)
    assert adata.obsm["X_scVI"].shape == (adata.n_obs, 4)
    info = adata.uns["atlas_run"]
    assert info["params"]["likelihood"] == "nb" and info["params"]["seed"] == 1
    assert info["batch_key"] == "donor" and info["metrics"]["n_epochs_trained"] == 2
    assert main(["train", *args]) == 0  # in-process: same code path, no second interpreter start
    second = capsys.readouterr()
    assert "epoch " not in second.err and "from cache" in second.out
    np.testing.assert_array_equal(ad.read_h5ad(out).obsm["X_scVI"], adata.obsm["X_scVI"])


def test_bad_input_exits_2_with_one_line(kang_small_path, tmp_path, capsys):
    cases = [
        ([str(kang_small_path), "--batch-key", "nope"], "nope"),
        ([str(tmp_path / "missing.h5ad")], "does not exist"),
        ([str(kang_small_path), "--likelihood", "zinb", "--n-latent", "0"], "n_latent"),
    ]
    for args, needle in cases:
        assert main(["train", *args, "--out", str(tmp_path / "o.h5ad"), "--max-epochs", "1"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]


def test_log_transformed_input_is_refused(kang_small_path, tmp_path, capsys):
    adata = ad.read_h5ad(kang_small_path)[:200].copy()
    adata.X = adata.X.log1p()
    path = tmp_path / "log.h5ad"
    adata.write_h5ad(path)
    assert main(["train", str(path), "--out", str(tmp_path / "o.h5ad"), "--max-epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "counts" in err and len(err.strip().splitlines()) == 1


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("--likelihood", "--n-latent", "--batch-key", "--max-epochs", "--seed", "--cache-dir",
                   "--out", "--dispersion", "--library", "--prior", "--kl-warmup-epochs", "--patience"):
        assert option in text
