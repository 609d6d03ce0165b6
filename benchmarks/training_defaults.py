r"""Default training settings chosen by measurement: time, validation ELBO and clustering of candidate settings.

    python benchmarks/training_defaults.py --work-dir /tmp/training_defaults \\
        --scvi-python /work/scvi-venv/bin/python

Trains our engine on the 12k-cell Kang PBMC control sample (batch key ``donor``) with each candidate
setting in ``SETTINGS`` (epochs, batch size and learning rate, learning-rate schedule, KL warm-up,
early stopping) for every seed in ``--seeds`` (0, 1, 2), and scvi-tools' own default ``SCVI`` model
(400 epochs, batch in the decoder only, batch size 128, KL warm-up 400, no early stopping) for the
same seeds through ``benchmarks/scvi_default_side.py`` in the scvi-tools venv (``--scvi-python``,
default ``$SCVI_PYTHON``; benchmarks/README.md says how to build it; ``--no-scvi`` skips it). Every
model of one seed trains on the same 90/10 split, ``engine.model.training.split_cells(n, 0.1, seed)``.

Reported per run: wall seconds of ``fit()`` (scvi-tools: its ``train()`` call) and, for our engine,
the CPU seconds of the process during ``fit()`` (on 1 thread: about the wall time on an idle core,
whatever the load of a shared machine), epochs trained,
validation ELBO per cell (``run.metrics["elbo_validation"]``; scvi-tools: ``get_elbo`` on the same
cells, higher is better), and ARI / NMI against ``obs[--label-key]`` of Leiden clusters computed as
the dashboard's Explore page does: ``engine.analysis.neighbors.neighbors`` (15 neighbours) on the
latent, ``engine.analysis.clustering.leiden`` at ``--resolution`` (1.0, the page's default) with
seed 0. The table gives the mean (± sd) over seeds per setting.

Each run's result is kept as JSON in ``--work-dir`` and skipped when it is already there, so the
grid can be split over processes (``--settings``, ``--seeds``, ``--no-scvi``) and ``--report``
prints the table of what is there without training. Every process trains on ``--threads`` (1)
CPU threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "kang_pbmc_ctrl_12261x1287.h5ad"
SCVI_SIDE = Path(__file__).resolve().parent / "scvi_default_side.py"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
SCVI_ROW = "scvi-tools default"

#: What every candidate starts from: the training options before this benchmark (scvi-tools' epoch rule
#: with ``max_epochs=None``), spelled out so that the grid does not move when RunParams' defaults do.
#: Model options keep RunParams' defaults (ZINB, 1 x 128 hidden, 10 latent, batch in the encoder).
BASE: dict = {
    "schedule": "thorough", "max_epochs": None, "batch_size": 128, "lr": 1e-3, "lr_schedule": "constant",
    "kl_warmup_epochs": None,
    "early_stopping": True, "patience": 45, "min_improvement": 0.0, "validation_fraction": 0.1,
}
#: Candidate settings: overrides of ``BASE``. ``kl_warmup_epochs`` None = half of the epochs (at most
#: 400); lr scaled by about sqrt(batch size / 128) for larger batches.
SETTINGS: dict[str, dict] = {
    "before (scvi rule: 400 ep, patience 45)": {},
    "20 ep": {"max_epochs": 20},
    "40 ep": {"max_epochs": 40},
    "60 ep": {"max_epochs": 60},
    "100 ep": {"max_epochs": 100},
    "40 ep lr3e-3": {"max_epochs": 40, "lr": 3e-3},
    "60 ep lr3e-3": {"max_epochs": 60, "lr": 3e-3},
    "30 ep lr3e-3": {"max_epochs": 30, "lr": 3e-3},
    "40 ep lr6e-3": {"max_epochs": 40, "lr": 6e-3},
    "40 ep cosine": {"max_epochs": 40, "lr_schedule": "cosine"},
    "60 ep cosine": {"max_epochs": 60, "lr_schedule": "cosine"},
    "60 ep bs256 lr1.4e-3": {"max_epochs": 60, "batch_size": 256, "lr": 1.41e-3},
    "60 ep bs256 lr1.4e-3 cosine": {"max_epochs": 60, "batch_size": 256, "lr": 1.41e-3, "lr_schedule": "cosine"},
    "100 ep bs512 lr2e-3 cosine": {"max_epochs": 100, "batch_size": 512, "lr": 2e-3, "lr_schedule": "cosine"},
    "40 ep bs256 lr2e-3 cosine": {"max_epochs": 40, "batch_size": 256, "lr": 2e-3, "lr_schedule": "cosine"},
    "100 ep warm-up 20, stop < 0.1 % / 10 ep": {
        "max_epochs": 100, "kl_warmup_epochs": 20, "patience": 10, "min_improvement": 1e-3,
    },
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, required=True, help="per-run JSON results (reused when present)")
    parser.add_argument("--scvi-python", default=os.environ.get("SCVI_PYTHON"),
                        help="python of the scvi-tools venv (default: $SCVI_PYTHON)")
    parser.add_argument("--no-scvi", action="store_true", help="skip scvi-tools' default model")
    parser.add_argument("--scvi-epochs", type=int, default=400)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--batch-key", default="donor")
    parser.add_argument("--label-key", default="cell_type")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=None, choices=sorted(SETTINGS),
                        help="candidate settings to train (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resolution", type=float, default=1.0, help="Leiden resolution (the Explore page's default)")
    parser.add_argument("--report", action="store_true", help="only print the table of the results in --work-dir")
    args = parser.parse_args()
    if not args.report and not args.no_scvi and not (args.scvi_python and Path(args.scvi_python).exists()):
        parser.error("pass --scvi-python /path/to/venv/bin/python (or set SCVI_PYTHON), or --no-scvi")
    if not args.data.exists():
        parser.error(f"--data {args.data} does not exist (the shared data folder sits beside the repository)")
    return args


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def main() -> None:
    args = parse_args()
    for name in THREAD_VARIABLES:  # before torch / numba start their thread pools, here and in scvi's process
        os.environ[name] = str(args.threads)
    sys.path.insert(0, str(ROOT))
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if not args.report:
        train_all(args)
    print(table(load_results(args.work_dir)))


def train_all(args: argparse.Namespace) -> None:
    import anndata as ad
    import numpy as np
    import torch

    from engine.model.params import RunParams
    from engine.model.training import split_cells
    from engine.runs.fit import fit

    torch.set_num_threads(args.threads)
    adata = ad.read_h5ad(args.data)
    labels = adata.obs[args.label_key].astype(str).to_numpy()
    validation_fraction = BASE["validation_fraction"]
    for seed in args.seeds:
        for name in args.settings or list(SETTINGS):
            path = args.work_dir / f"engine_{slug(name)}_seed{seed}.json"
            if path.exists():
                continue
            params = RunParams(**{**BASE, **SETTINGS[name]}, seed=seed)
            print(f"{name}, seed {seed} ...", flush=True)
            start, cpu_start = time.perf_counter(), time.process_time()
            run = fit(adata, params=params, batch_key=args.batch_key, cache_dir=None, device="cpu")
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            result = {
                "setting": name, "seed": seed, "params": params.to_dict(), "seconds": seconds,
                "cpu_seconds": cpu_seconds, "epochs": int(run.metrics["n_epochs_trained"]),
                "best_epoch": int(run.metrics["best_epoch"]),
                "elbo_validation": float(run.metrics["elbo_validation"]), "threads": args.threads,
                **clusters(run.latent, labels, args.resolution),
            }
            path.write_text(json.dumps(result, indent=2))
            print(f"  {seconds:.1f} s, {result['epochs']} epochs, ELBO {result['elbo_validation']:.2f}, "
                  f"ARI {result['ari']:.3f}, NMI {result['nmi']:.3f}", flush=True)
        if args.no_scvi:
            continue
        path = args.work_dir / f"scvi_default_seed{seed}.json"
        if path.exists():
            continue
        out = args.work_dir / f"scvi_seed{seed}"
        out.mkdir(exist_ok=True)
        train_idx, val_idx = split_cells(adata.n_obs, validation_fraction, seed)
        np.savez(out / "split.npz", train=train_idx, validation=val_idx)
        print(f"{SCVI_ROW}, seed {seed} ...", flush=True)
        done = out / "scvi_default_results.json"
        side = json.loads(done.read_text()) if done.exists() else run_scvi(args, out, seed)
        result = {
            "setting": SCVI_ROW, "seed": seed, "seconds": side["train_seconds"], "epochs": side["n_epochs"],
            "elbo_validation": side["elbo_validation"], "threads": side["threads"], "versions": side["versions"],
            **clusters(np.load(out / "scvi_default_latent.npy"), labels, args.resolution),
        }
        path.write_text(json.dumps(result, indent=2))


def run_scvi(args: argparse.Namespace, out: Path, seed: int) -> dict:
    """scvi-tools' default SCVI in its own venv; its results from scvi_default_results.json."""
    command = [
        args.scvi_python, str(SCVI_SIDE), "--data", str(args.data), "--batch-key", args.batch_key,
        "--split", str(out / "split.npz"), "--out", str(out), "--epochs", str(args.scvi_epochs),
        "--seed", str(seed), "--threads", str(args.threads),
    ]
    done = subprocess.run(command, env=dict(os.environ), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"scvi_default_side.py failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads((out / "scvi_default_results.json").read_text())


def clusters(latent, labels, resolution: float) -> dict:
    """ARI, NMI and number of Leiden clusters of ``latent`` against ``labels`` (the Explore page's code path)."""
    import anndata as ad
    import numpy as np
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from engine.analysis.clustering import leiden
    from engine.analysis.neighbors import neighbors

    holder = ad.AnnData(obs={"label": labels}, obsm={"X_scVI": np.asarray(latent, dtype=np.float32)})
    neighbors(holder, use_rep="X_scVI", n_neighbors=15, seed=0)
    leiden(holder, resolution=resolution, seed=0)
    found = holder.obs["leiden"].to_numpy()
    return {
        "ari": float(adjusted_rand_score(labels, found)),
        "nmi": float(normalized_mutual_info_score(labels, found)),
        "n_clusters": int(len(set(found))),
    }


def load_results(work: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(work.glob("*_seed*.json"))]


def table(results: list[dict]) -> str:
    """Markdown table, one row per setting (mean over seeds, ± sample sd), in ``SETTINGS`` order."""
    import numpy as np

    order = [SCVI_ROW, *SETTINGS]
    names = sorted({r["setting"] for r in results}, key=lambda n: order.index(n) if n in order else len(order))
    lines = [
        "| setting | seeds | epochs trained | s (fit, wall) | CPU s (fit) | val ELBO | ARI | NMI | clusters |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]

    def cell(values: list[float], digits: int) -> str:
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        return f"{np.mean(values):.{digits}f} ± {sd:.{digits}f}"

    for name in names:
        rows = [r for r in results if r["setting"] == name]
        cpu = f"{np.mean([r['cpu_seconds'] for r in rows]):.1f}" if all("cpu_seconds" in r for r in rows) else "-"
        lines.append(
            f"| {name} | {len(rows)} | {np.mean([r['epochs'] for r in rows]):.0f} "
            f"| {np.mean([r['seconds'] for r in rows]):.1f} | {cpu} | {cell([r['elbo_validation'] for r in rows], 2)} "
            f"| {cell([r['ari'] for r in rows], 3)} | {cell([r['nmi'] for r in rows], 3)} "
            f"| {np.mean([r['n_clusters'] for r in rows]):.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
