"""Training speed and fit of our engine against scvi-tools on the 12k-cell Kang PBMC control data.

    python benchmarks/vs_scvi_tools.py --scvi-python /work/scvi-venv/bin/python

scvi-tools is not a project dependency: it runs in its own venv (benchmarks/README.md says how to
build it) through ``benchmarks/scvi_side.py``, started here as a subprocess; ``--scvi-python``
defaults to ``$SCVI_PYTHON``. Both tools train the same model (ZINB, gene dispersion, 1 x 128
hidden, 10 latent, dropout 0.1, batch ``donor`` in encoder and decoder) for ``--epochs`` epochs of
minibatches of 128 on the SAME seeded 90/10 train/validation split, without early stopping, on
``--threads`` CPU threads. Our engine is trained twice: with scvi-tools' KL warm-up (linear over
400 epochs, so the KL weight only reaches 29/400 in a 30-epoch run: the like-for-like row) and with
our default warm-up (half of the epochs).

``--repeats N`` trains scvi-tools and our like-for-like model N times, alternately, and reports
the throughput ratio of each pair and their median: a shared VM's speed drifts by up to 30 % over
minutes, so only runs close in time compare (both tools are deterministic: the ELBOs repeat exactly).

Reported per model: seconds per epoch (training wall time / epochs; scvi-tools: ``train()``, ours:
the whole ``fit()``), the first epoch alone, the validation ELBO per cell with its reconstruction and
KL parts (real ELBO: higher is better), and ARI / NMI of Leiden clusters (resolution 0.5, on a
15-nearest-neighbour graph of the latent, the same scanpy code for every latent) against
``obs["cell_type"]``. Throughput is scvi-tools' seconds per epoch over ours.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "kang_pbmc_ctrl_12261x1287.h5ad"
SCVI_SIDE = Path(__file__).resolve().parent / "scvi_side.py"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
#: scvi-tools' default ``n_epochs_kl_warmup`` (checked against what scvi_side.py reports).
SCVI_KL_WARMUP = 400


@dataclass(frozen=True)
class Row:
    """One trained model's line of the table (ELBO numbers per validation cell, real ELBO sign)."""

    tool: str
    kl_warmup: str
    seconds_per_epoch: float
    first_epoch_seconds: float
    median_epoch_seconds: float
    train_seconds: float
    elbo_validation: float
    reconstruction_validation: float
    kl_validation: float
    ari: float
    nmi: float
    n_clusters: int


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scvi-python",
        default=os.environ.get("SCVI_PYTHON"),
        help="python of the scvi-tools venv (default: $SCVI_PYTHON), e.g. /work/scvi-venv/bin/python",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--batch-key", default="donor")
    parser.add_argument("--label-key", default="cell_type")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resolution", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=1, help="scvi-tools / engine pairs, run alternately")
    parser.add_argument("--no-leiden", action="store_true",
                        help="skip the Leiden clusterings (timing only, e.g. on a 100k-cell atlas)")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="where to keep latents and JSON results (default: a temp folder)"
    )
    args = parser.parse_args()
    if not args.scvi_python:
        parser.error(
            "no scvi-tools python given: pass --scvi-python /path/to/venv/bin/python or set SCVI_PYTHON "
            "(benchmarks/README.md shows how to build that venv)"
        )
    if not Path(args.scvi_python).exists():
        parser.error(f"--scvi-python {args.scvi_python} does not exist: build the venv as in benchmarks/README.md")
    if not args.data.exists():
        parser.error(f"--data {args.data} does not exist (the shared data folder sits beside the repository)")
    return args


def main() -> None:
    args = parse_args()
    # Thread limits must be in the environment before torch/numba start their pools, here and in
    # the scvi-tools subprocess alike.
    for name in THREAD_VARIABLES:
        os.environ[name] = str(args.threads)
    sys.path.insert(0, str(ROOT))  # run as a script from a checkout: the engine is not installed

    import anndata as ad
    import numpy as np
    import torch

    from engine.model.inference import heldout_elbo
    from engine.model.params import RunParams
    from engine.model.training import split_cells
    from engine.runs.fit import fit

    torch.set_num_threads(args.threads)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="vs_scvi_tools_"))
    work.mkdir(parents=True, exist_ok=True)

    adata = ad.read_h5ad(args.data)
    labels = adata.obs[args.label_key].astype(str).to_numpy()
    validation_fraction = RunParams().validation_fraction
    train_idx, val_idx = split_cells(adata.n_obs, validation_fraction, args.seed)
    np.savez(work / "split.npz", train=train_idx, validation=val_idx)

    def engine_row(warmup: int | None, description: str) -> Row:
        params = RunParams(
            likelihood="zinb",
            n_latent=10,
            n_hidden=128,
            n_layers=1,
            dropout=0.1,
            dispersion="gene",
            max_epochs=args.epochs,
            batch_size=args.batch_size,
            kl_warmup_epochs=warmup,
            early_stopping=False,
            validation_fraction=validation_fraction,
            seed=args.seed,
        )
        print(f"engine, KL warm-up {description} ...", flush=True)
        start = time.perf_counter()
        run = fit(adata, params=params, batch_key=args.batch_key, cache_dir=None, device="cpu")
        seconds = time.perf_counter() - start
        held_out = heldout_elbo(run, adata, indices=val_idx)
        epoch_seconds = run.history["seconds"].to_numpy()
        np.save(work / f"engine_latent_warmup_{warmup}.npy", run.latent)
        return Row(
            tool="engine (ours)",
            kl_warmup=description,
            seconds_per_epoch=seconds / len(epoch_seconds),
            first_epoch_seconds=float(epoch_seconds[0]),
            median_epoch_seconds=float(np.median(epoch_seconds)),
            train_seconds=seconds,
            elbo_validation=held_out.elbo,
            reconstruction_validation=held_out.reconstruction,
            kl_validation=held_out.kl,
            **clusters(run.latent, labels, args),
        )

    rows: list[Row] = []
    pairs: list[tuple[Row, Row]] = []
    for repeat in range(args.repeats):
        print(f"scvi-tools ({args.scvi_python}), run {repeat + 1} of {args.repeats} ...", flush=True)
        scvi = run_scvi(args, work)
        if scvi["kl_warmup_epochs"] != SCVI_KL_WARMUP:
            raise RuntimeError(f"scvi-tools' KL warm-up is {scvi['kl_warmup_epochs']} epochs, not {SCVI_KL_WARMUP}: "
                               "update this script")
        reference = Row(
            tool=f"scvi-tools {scvi['versions']['scvi-tools']}",
            kl_warmup=f"{SCVI_KL_WARMUP} epochs (scvi-tools default)",
            seconds_per_epoch=scvi["train_seconds"] / scvi["n_epochs"],
            first_epoch_seconds=scvi["epoch_seconds"][0],
            median_epoch_seconds=float(np.median(scvi["epoch_seconds"])),
            train_seconds=scvi["train_seconds"],
            elbo_validation=scvi["elbo_validation"],
            reconstruction_validation=scvi["reconstruction_validation"],
            kl_validation=scvi["kl_validation"],
            **clusters(np.load(work / "scvi_latent.npy"), labels, args),
        )
        pairs.append((reference, engine_row(SCVI_KL_WARMUP, f"{SCVI_KL_WARMUP} epochs (as scvi-tools)")))
        rows += pairs[-1]
    rows.append(engine_row(None, "default (half the epochs)"))
    ratios = [scvi_row.seconds_per_epoch / ours.seconds_per_epoch for scvi_row, ours in pairs]

    (work / "results.json").write_text(json.dumps({"scvi": scvi, "rows": [asdict(r) for r in rows]}, indent=2))
    print()
    print(table(rows))
    print()
    if len(pairs) > 1:
        print(f"like-for-like throughput ratio per pair: {', '.join(f'{r:.2f}x' for r in ratios)}; "
              f"median {float(np.median(ratios)):.2f}x")  # fmt: skip
    print(
        f"{adata.n_obs:,} cells x {adata.n_vars:,} genes, batch key {args.batch_key!r}, {args.epochs} epochs, "
        f"batch size {args.batch_size}, seed {args.seed}, {args.threads} threads; the same {len(train_idx):,} "
        f"training / {len(val_idx):,} validation cells for every model. Results and latents: {work}"
    )


def run_scvi(args: argparse.Namespace, work: Path) -> dict:
    """Train scvi-tools in its own venv; its results (ours sign convention) from scvi_results.json."""
    command = [
        args.scvi_python,
        str(SCVI_SIDE),
        "--data", str(args.data),
        "--batch-key", args.batch_key,
        "--split", str(work / "split.npz"),
        "--out", str(work),
        "--epochs", str(args.epochs),
        "--batch-size", str(args.batch_size),
        "--seed", str(args.seed),
        "--threads", str(args.threads),
    ]  # fmt: skip
    done = subprocess.run(command, env=dict(os.environ), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"scvi_side.py failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads((work / "scvi_results.json").read_text())


def clusters(latent, labels, args: argparse.Namespace) -> dict:
    """ARI, NMI and number of Leiden clusters of ``latent`` against ``labels`` (NaN with ``--no-leiden``)."""
    if args.no_leiden:
        return {"ari": float("nan"), "nmi": float("nan"), "n_clusters": 0}
    import anndata as ad
    import numpy as np
    import scanpy as sc
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    holder = ad.AnnData(obs={"label": labels}, obsm={"latent": np.asarray(latent, dtype=np.float32)})
    sc.pp.neighbors(holder, use_rep="latent", n_neighbors=15, random_state=args.seed)
    sc.tl.leiden(
        holder, resolution=args.resolution, flavor="igraph", n_iterations=2, random_state=args.seed
    )
    found = holder.obs["leiden"].to_numpy()
    return {
        "ari": float(adjusted_rand_score(labels, found)),
        "nmi": float(normalized_mutual_info_score(labels, found)),
        "n_clusters": int(len(set(found))),
    }


def table(rows: list[Row]) -> str:
    """Markdown table; throughput is relative to the nearest scvi-tools row above."""
    reference = rows[0].seconds_per_epoch
    lines = [
        "| tool | KL warm-up | s / epoch | first epoch s | median epoch s | train s | validation ELBO "
        "| reconstruction | KL | Leiden ARI | Leiden NMI | clusters | throughput vs scvi-tools |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        if r.tool.startswith("scvi-tools"):
            reference = r.seconds_per_epoch
        lines.append(
            f"| {r.tool} | {r.kl_warmup} | {r.seconds_per_epoch:.2f} | {r.first_epoch_seconds:.2f} "
            f"| {r.median_epoch_seconds:.2f} | {r.train_seconds:.1f} | {r.elbo_validation:.2f} "
            f"| {r.reconstruction_validation:.2f} | {r.kl_validation:.2f} | {r.ari:.3f} | {r.nmi:.3f} "
            f"| {r.n_clusters} | {reference / r.seconds_per_epoch:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
