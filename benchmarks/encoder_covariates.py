"""Encoder covariates on or off: held-out ELBO, clustering and batch mixing (choosing the default).

    python benchmarks/encoder_covariates.py [--datasets pancreas kang] [--seeds 0 1 2]
        [--max-epochs kang=100] [--threads 1] [--work-dir DIR]

``RunParams.encode_covariates`` decides whether the encoder sees the batch, q(z | x, s) as in the
scVI paper (True), or only the counts, q(z | x), as scvi-tools' default (False); the decoder always
sees the batch. For each data set x setting x seed this trains
``engine.fit(adata, params=RunParams(encode_covariates=..., seed=...), batch_key=...)`` with every
other option at its default (ZINB, early stopping on the validation ELBO, scvi-tools' epoch rule)
and scores the latent ``obsm["X_scVI"]``:

- **validation ELBO** per cell (``run.metrics["elbo_validation"]``: higher is better; both settings
  of one seed hold out the same cells, since the split depends on the seed only);
- **Leiden ARI / NMI** against ``obs["cell_type"]``: the dashboard's own graph and clustering
  (``engine.analysis.neighbors.neighbors``, 15 neighbours, then ``engine.analysis.clustering.leiden``, resolution
  1.0, seed 0), scores from scikit-learn;
- **batch mixing** of the latent (``engine.analysis.batch_metrics.batch_mixing``, 30 neighbours, labels
  ``cell_type``): batch entropy, scaled iLISI and batch silhouette (1 = batches perfectly mixed,
  0 = separated) and the label silhouette (1 = cell types compact and apart).

The uncorrected PCA (``engine.analysis.embedding.pca_uncorrected``, 50 components) is scored the same way
once per data set, as the "before correction" reference.

Data sets (``--data-dir``, default ``../shared/data``): ``pancreas`` = pancreas_2tech_3514x1194
(batch key ``tech``: inDrop vs Smart-seq2), ``kang`` = kang_pbmc_ctrl_12261x1287 (batch key
``donor``, 8 donors). ``--max-epochs`` caps training for all data sets (``--max-epochs 100``) or for
one (``--max-epochs kang=100``); a cap is applied identically to both settings, and it also shortens
the default KL warm-up (half the epochs trained, at most 400). Runs alternate between the settings
seed by seed, so drift in a shared machine's load affects both alike.

Prints one row per run and a mean +- sd table over seeds per data set and setting; writes
``results.json`` to ``--work-dir`` after every run (default a temp folder). ``--resume`` skips the
runs already in that file. Training runs on ``--threads`` CPU threads (default 1) with
``OMP_WAIT_POLICY=PASSIVE`` (set here unless already set).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.analysis.batch_metrics import batch_mixing
from engine.analysis.clustering import leiden
from engine.analysis.embedding import pca_uncorrected
from engine.analysis.neighbors import neighbors
from engine.model.params import RunParams
from engine.runs.fit import fit

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = {
    "pancreas": ("pancreas_2tech_3514x1194.h5ad", "tech"),
    "kang": ("kang_pbmc_ctrl_12261x1287.h5ad", "donor"),
}
LABEL_KEY = "cell_type"
SETTINGS = (True, False)  # encode_covariates; True first = the current default
METRICS = (
    ("elbo_validation", "val ELBO", "{:.2f}"),
    ("ari", "ARI", "{:.3f}"),
    ("nmi", "NMI", "{:.3f}"),
    ("batch_entropy", "batch entropy", "{:.3f}"),
    ("ilisi", "iLISI", "{:.3f}"),
    ("batch_silhouette", "batch silh.", "{:.3f}"),
    ("label_silhouette", "label silh.", "{:.3f}"),
    ("n_clusters", "clusters", "{:.1f}"),
    ("n_epochs_trained", "epochs", "{:.0f}"),
    ("train_seconds", "train s", "{:.0f}"),
)


def parse_max_epochs(values: list[str], names: list[str]) -> dict[str, int | None]:
    """``["100"]`` -> every data set 100; ``["kang=100"]`` -> kang 100, the others uncapped."""
    caps: dict[str, int | None] = {name: None for name in names}
    for value in values:
        name, _, number = value.rpartition("=")
        targets = [name] if name else names
        for target in targets:
            if target not in caps:
                raise SystemExit(f"--max-epochs {value}: unknown data set {target!r} (have {', '.join(names)})")
            caps[target] = int(number)
    return caps


def score(adata: ad.AnnData, rep: str, batch_key: str, resolution: float, n_neighbors: int) -> dict:
    """Leiden ARI/NMI against the labels and batch-mixing scores of ``obsm[rep]``."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    start = time.perf_counter()
    neighbors(adata, use_rep=rep, n_neighbors=n_neighbors, seed=0)
    leiden(adata, resolution=resolution, seed=0)
    truth = adata.obs[LABEL_KEY].astype(str).to_numpy()
    clusters = adata.obs["leiden"].astype(str).to_numpy()
    mixing = batch_mixing(adata, rep=rep, batch_key=batch_key, label_key=LABEL_KEY)
    return {
        "ari": float(adjusted_rand_score(truth, clusters)),
        "nmi": float(normalized_mutual_info_score(truth, clusters)),
        "n_clusters": int(adata.uns["leiden"]["n_clusters"]),
        "batch_entropy": mixing.batch_entropy,
        "ilisi": mixing.ilisi,
        "batch_silhouette": mixing.batch_silhouette,
        "label_silhouette": mixing.label_silhouette,
        "score_seconds": time.perf_counter() - start,
    }


def mean_sd(values: list[float], fmt: str, sd_fmt: str | None = None) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(np.mean(values))} ± {(sd_fmt or fmt).format(np.std(values, ddof=1))}"


def print_runs(runs: list[dict]) -> None:
    print("| data | encode_covariates | seed | " + " | ".join(label for _, label, _ in METRICS) + " | best epoch |")
    print("|---|---|--:|" + "--:|" * (len(METRICS) + 1))
    for r in runs:
        cells = [fmt.format(r[key]) for key, _, fmt in METRICS]
        head = f"| {r['dataset']} | {r['encode_covariates']} | {r['seed']} | "
        print(head + " | ".join(cells) + f" | {r['best_epoch']} |")


def print_summary(runs: list[dict], references: dict[str, dict]) -> None:
    keys = [m for m in METRICS if m[0] not in ("n_clusters",)]
    print("| data | encode_covariates | n | " + " | ".join(label for _, label, _ in keys) + " |")
    print("|---|---|--:|" + "--:|" * len(keys))
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        for setting in SETTINGS:
            group = [r for r in runs if r["dataset"] == dataset and r["encode_covariates"] == setting]
            if not group:
                continue
            cells = [mean_sd([float(r[key]) for r in group], fmt) for key, _, fmt in keys]
            print(f"| {dataset} | {setting} | {len(group)} | " + " | ".join(cells) + " |")
        ref = references.get(dataset)
        if ref:
            cells = [fmt.format(ref[key]) if key in ref else "-" for key, _, fmt in keys]
            print(f"| {dataset} | uncorrected PCA | - | " + " | ".join(cells) + " |")
    # Paired differences (True - False) per seed: the split and the seed are shared within a pair.
    print()
    print("Paired difference True - False per seed (mean ± sd over seeds; same split within a pair):")
    print()
    print("| data | n pairs | " + " | ".join(f"Δ {label}" for _, label, _ in keys[:7]) + " |")
    print("|---|--:|" + "--:|" * 7)
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        by = {(r["encode_covariates"], r["seed"]): r for r in runs if r["dataset"] == dataset}
        seeds = sorted({s for (_, s) in by if (True, s) in by and (False, s) in by})
        if not seeds:
            continue
        cells = []
        for key, _, fmt in keys[:7]:
            diffs = [float(by[(True, s)][key]) - float(by[(False, s)][key]) for s in seeds]
            cells.append(mean_sd(diffs, "{:+" + fmt[2:], fmt))
        print(f"| {dataset} | {len(seeds)} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--max-epochs", nargs="*", default=[],
                        help="cap on epochs: N for every data set or NAME=N for one (default: none, "
                             "scvi-tools' rule with early stopping)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resolution", type=float, default=1.0, help="Leiden resolution (dashboard default 1.0)")
    parser.add_argument("--n-neighbors", type=int, default=15, help="kNN graph for Leiden (dashboard default 15)")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--work-dir", type=Path, default=None, help="keeps results.json (default a temp folder)")
    parser.add_argument("--resume", action="store_true", help="skip runs already in WORK_DIR/results.json")
    parser.add_argument("--no-reference", action="store_true", help="skip the uncorrected-PCA reference")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    caps = parse_max_epochs(args.max_epochs, args.datasets)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="encoder_covariates_"))
    work.mkdir(parents=True, exist_ok=True)
    out = work / "results.json"
    runs: list[dict] = []
    references: dict[str, dict] = {}
    if args.resume and out.exists():
        previous = json.loads(out.read_text())
        runs = previous.get("runs", [])
        references = previous.get("references", {})
    done = {(r["dataset"], r["encode_covariates"], r["seed"]) for r in runs}
    header = {
        "script": "benchmarks/encoder_covariates.py",
        "argv": sys.argv[1:],
        "threads": args.threads,
        "max_epochs": caps,
        "resolution": args.resolution,
        "n_neighbors": args.n_neighbors,
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
        "torch": str(torch.__version__),
    }

    def save() -> None:
        out.write_text(json.dumps({**header, "runs": runs, "references": references}, indent=1))

    started = time.perf_counter()
    for dataset in args.datasets:
        filename, batch_key = DATASETS[dataset]
        adata = ad.read_h5ad(args.data_dir / filename)
        adata.layers["counts"] = adata.X.copy()
        print(f"\n{dataset}: {adata.n_obs:,} cells x {adata.n_vars:,} genes, batch key {batch_key!r} "
              f"({adata.obs[batch_key].nunique()} batches), max_epochs {caps[dataset] or 'default'}", flush=True)
        if not args.no_reference and dataset not in references:
            pca_uncorrected(adata, layer="counts", seed=0)
            references[dataset] = score(adata, "X_pca", batch_key, args.resolution, args.n_neighbors)
            save()
            print(f"  uncorrected PCA: {references[dataset]}", flush=True)
        for seed in args.seeds:
            for setting in SETTINGS:
                if (dataset, setting, seed) in done:
                    continue
                params = RunParams(encode_covariates=setting, seed=seed, max_epochs=caps[dataset])
                start = time.perf_counter()
                run = fit(adata, params=params, batch_key=batch_key, device="cpu")
                wall = time.perf_counter() - start
                row = {
                    "dataset": dataset,
                    "batch_key": batch_key,
                    "encode_covariates": setting,
                    "seed": seed,
                    "max_epochs": params.resolved_max_epochs(adata.n_obs),
                    "n_epochs_trained": run.metrics["n_epochs_trained"],
                    "best_epoch": run.metrics["best_epoch"],
                    "train_seconds": run.metrics["train_seconds"],
                    "fit_seconds": wall,
                    "seconds_per_epoch": run.metrics["seconds_per_epoch"],
                    "elbo_validation": run.metrics["elbo_validation"],
                    "reconstruction_validation": run.metrics["reconstruction_validation"],
                    "kl_validation": run.metrics["kl_validation"],
                    **score(adata, "X_scVI", batch_key, args.resolution, args.n_neighbors),
                }
                runs.append(row)
                save()
                print(f"  encode_covariates={setting!s:5} seed={seed}: ELBO {row['elbo_validation']:.2f}, "
                      f"{row['n_epochs_trained']} epochs (best {row['best_epoch']}), {row['train_seconds']:.0f} s, "
                      f"ARI {row['ari']:.3f}, NMI {row['nmi']:.3f}, entropy {row['batch_entropy']:.3f}, "
                      f"iLISI {row['ilisi']:.3f}", flush=True)

    print(f"\nTotal wall time of this invocation: {time.perf_counter() - started:.0f} s; results in {out}\n")
    print_runs(runs)
    print()
    print_summary(runs, references)


if __name__ == "__main__":
    main()
