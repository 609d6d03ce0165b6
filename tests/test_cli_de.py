"""``python -m engine de``: the CSV it writes and its one-line errors."""

from __future__ import annotations

import anndata as ad
import pandas as pd
import pytest
import torch

from engine.__main__ import main
from engine.analysis.de import differential_expression, groups_from_obs
from engine.cli.de import parse_within
from engine.model.params import RunParams
from engine.runs.fit import fit
from engine.runs.storage import load_run


@pytest.fixture(scope="module")
def trained(kang_small_path, tmp_path_factory):
    """A run trained briefly on the fixture, and the AnnData file that names it (as train writes)."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("cli_de")
    adata = ad.read_h5ad(kang_small_path)
    adata.layers["counts"] = adata.X.copy()
    fit(adata, params=RunParams(max_epochs=5, seed=0), cache_dir=folder / "runs")
    path = folder / "trained.h5ad"
    adata.write_h5ad(path)
    return path, folder / "runs", adata


def _de_args(path, cache_dir, out, *extra):
    return ["de", str(path), "--cache-dir", str(cache_dir), "--groupby", "cell_type",
            "--group1", "B cells", "--group2", "rest", "--out", str(out), *extra]  # fmt: skip


def test_cli_writes_the_table_of_differential_expression(trained, tmp_path, capsys):
    path, cache_dir, adata = trained
    out = tmp_path / "de.csv"
    assert main(_de_args(path, cache_dir, out, "--delta", "0.5", "--fdr", "0.1")) == 0
    assert "wrote" in capsys.readouterr().out

    header = dict(
        line[2:].split(": ", 1) for line in out.read_text().splitlines() if line.startswith("# ")
    )
    run_id = adata.uns["atlas_run"]["run_id"]
    assert header["run_id"] == run_id
    assert (header["groupby"], header["group1"], header["group2"]) == ("cell_type", "B cells", "rest")
    assert (header["mode"], header["delta"], header["fdr"]) == ("change", "0.5", "0.1")
    assert header["n_cells_1"] == str(int((adata.obs["cell_type"] == "B cells").sum()))
    assert "torch" in header["versions"] and header["date"].startswith("20")

    # The CSV is the table of the same computation done in Python.
    written = pd.read_csv(out, comment="#", index_col=0)
    b_cells, rest = groups_from_obs(adata, groupby="cell_type", group1="B cells", group2="rest")
    run = load_run(cache_dir, run_id)
    expected = differential_expression(run, adata, group1=b_cells, group2=rest, delta=0.5, fdr=0.1).table()
    pd.testing.assert_frame_equal(written, expected, check_dtype=False, rtol=1e-6)


def test_cli_within_restricts_both_groups(trained, tmp_path):
    path, cache_dir, adata = trained
    donor = str(adata.obs["donor"].iloc[0])
    out = tmp_path / "within.csv"
    assert main(_de_args(path, cache_dir, out, "--within", f"donor={donor}", "--mode", "vanilla")) == 0
    header = [line for line in out.read_text().splitlines() if line.startswith("#")]
    in_donor = adata.obs["donor"].astype(str) == donor
    n_b = int(((adata.obs["cell_type"] == "B cells") & in_donor).sum())
    assert f"# within: donor={donor}" in header and f"# n_cells_1: {n_b}" in header
    assert f"# n_cells_2: {int(in_donor.sum()) - n_b}" in header
    assert "# mode: vanilla" in header


def test_cli_errors_are_one_line_with_exit_code_2(trained, tmp_path, capsys):
    path, cache_dir, adata = trained
    out = tmp_path / "x.csv"
    assert main(_de_args(path, tmp_path / "empty_cache", out)) == 2
    message = capsys.readouterr().err.strip()
    assert "not found in" in message and "python -m engine train" in message and "\n" not in message

    untrained = tmp_path / "untrained.h5ad"
    plain = adata.copy()
    del plain.uns["atlas_run"]
    plain.write_h5ad(untrained)
    assert main(_de_args(untrained, cache_dir, out)) == 2
    assert "train it first" in capsys.readouterr().err

    assert main(_de_args(path, cache_dir, out, "--within", "donor")) == 2
    assert "COL=VALUE" in capsys.readouterr().err
    bad_group = _de_args(path, cache_dir, out)
    bad_group[bad_group.index("B cells")] = "T cells"
    assert main(bad_group) == 2
    assert "no value 'T cells'" in capsys.readouterr().err
    assert main(_de_args(path, cache_dir, out, "--fdr", "2")) == 2
    assert "fdr must lie" in capsys.readouterr().err
    assert not out.exists()


def test_parse_within():
    assert parse_within("leiden=3") == ("leiden", "3")
    assert parse_within("cell_type=CD4 T cells=x") == ("cell_type", "CD4 T cells=x")
    assert parse_within(None) is None
    for text in ("leiden", "=3", "leiden="):
        with pytest.raises(ValueError, match="COL=VALUE"):
            parse_within(text)

