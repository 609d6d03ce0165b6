"""Bayesian differential expression of our engine against scvi-tools, on the same models' settings.

    python benchmarks/de_vs_scvi_tools.py --scvi-python /work/scvi-venv/bin/python --work-dir /tmp/de_vs_scvi

scvi-tools is not a project dependency: it runs in its own venv (benchmarks/README.md says how to
build it) through ``benchmarks/scvi_de_side.py``, started here as a subprocess once per (data set,
seed); ``--scvi-python`` defaults to ``$SCVI_PYTHON``. Both tools train the same model: ZINB, gene
dispersion, 1 x 128 hidden, 10 latent, dropout 0.1, batch size 128, the batch in the decoder only
(scvi-tools' default ``encode_covariates=False``; ours is set to match), scvi-tools' KL warm-up
(linear over 400 epochs whatever the number of epochs), no early stopping, the same number of
epochs, on the training cells of the same seeded 90/10 split (``engine.model.training.split_cells``).
Then each tool runs its change-mode DE (``delta=0.25``, target FDR 0.05, no batch correction, its
own defaults otherwise) on the SAME boolean cell masks:

1. ``B cells`` vs rest, Kang control PBMCs (12,261 cells), batch key ``donor``;
2. ``CD14+ Monocytes`` vs rest, same model;
3. ``stim`` vs ``ctrl`` (obs ``condition``), Kang stim/ctrl file (1,556 cells), batch key ``donor``
   derived from ``sample`` (``ctrl101`` -> ``101``: ``sample`` itself is confounded with the
   condition, and a decoder told the condition would explain the interferon response away).

A second scvi-tools model per data set (``--reference-seed``, its own split) gives the level of
agreement between two scvi-tools models: the "scvi-tools vs scvi-tools" reference rows.

Reported per pair of models and comparison: genes called at FDR 0.05 by each (ours:
``table()["is_de_fdr"]``; scvi-tools: ``is_de_fdr_0.05``), the overlap of their top-50 genes (each
tool's table in its own order: scvi-tools sorts by ``proba_de``, ours by ``proba_de`` then
``|lfc_mean|``), the Spearman correlation of ``lfc_mean`` over all genes, and the 1-based rank of
known markers in each table. ``--work-dir`` keeps every DE table (CSV), the logs of the scvi-tools
runs, the cell masks and splits, and ``results.json`` (the table's numbers plus diagnostics:
pseudocounts on scvi-tools' unit scale, ``proba_de`` distributions, ties at the top).

``--jobs N`` runs up to N trainings at once (scvi-tools subprocesses beside our in-process
trainings), each on ``--threads`` threads; the DE numbers do not depend on it, only wall time does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DEFAULT_CTRL = DATA / "kang_pbmc_ctrl_12261x1287.h5ad"
DEFAULT_STIM = DATA / "kang_pbmc_stim_ctrl_1556x1267.h5ad"
SCVI_SIDE = Path(__file__).resolve().parent / "scvi_de_side.py"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
#: scvi-tools' default ``n_epochs_kl_warmup`` (checked against what scvi_de_side.py reports).
SCVI_KL_WARMUP = 400
DELTA = 0.25
FDR = 0.05
SCVI_CALLS = f"is_de_fdr_{FDR}"


@dataclass(frozen=True)
class Comparison:
    key: str  # file-name safe
    title: str
    dataset: str  # "ctrl" or "stim"
    column: str
    group1: str
    group2: str  # "rest": every other cell
    markers: tuple[str, ...]


COMPARISONS = (
    Comparison("b_cells", "B cells vs rest", "ctrl", "cell_type", "B cells", "rest",
               ("CD79A", "CD79B", "CD74", "MS4A1", "CD37", "HLA-DRA")),
    Comparison("cd14_mono", "CD14+ Monocytes vs rest", "ctrl", "cell_type", "CD14+ Monocytes", "rest",
               ("S100A8", "S100A9", "LYZ", "CD14", "FCN1")),
    Comparison("stim", "stim vs ctrl", "stim", "condition", "stim", "ctrl",
               ("ISG15", "IFI6", "IFIT1", "IFIT2", "IFIT3", "MX1", "ISG20", "LY6E", "IFI44L", "RSAD2")),
)  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scvi-python",
        default=os.environ.get("SCVI_PYTHON"),
        help="python of the scvi-tools venv (default: $SCVI_PYTHON), e.g. /work/scvi-venv/bin/python",
    )
    parser.add_argument("--ctrl-data", type=Path, default=DEFAULT_CTRL, help="Kang control PBMCs (12k cells)")
    parser.add_argument("--stim-data", type=Path, default=DEFAULT_STIM, help="Kang stim/ctrl PBMCs (1.5k cells)")
    parser.add_argument("--ctrl-epochs", type=int, default=100, help="epochs on the 12k file (default 100)")
    parser.add_argument(
        "--stim-epochs", type=int, default=None,
        help="epochs on the 1.5k file (default: scvi-tools' rule min(round(20000 / n * 400), 400) = 400)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of our model and of the compared scvi-tools model")
    parser.add_argument("--reference-seed", type=int, default=1, help="seed of the second scvi-tools model")
    parser.add_argument("--top", type=int, default=50, help="size of the top-gene lists compared")
    parser.add_argument("--threads", type=int, default=1, help="threads per training")
    parser.add_argument("--jobs", type=int, default=1, help="trainings run at once (default 1: one after another)")
    parser.add_argument(
        "--work-dir", type=Path, default=None,
        help="where to keep tables, logs and results.json (default: a temp folder)",
    )
    args = parser.parse_args()
    if not args.scvi_python:
        parser.error(
            "no scvi-tools python given: pass --scvi-python /path/to/venv/bin/python or set SCVI_PYTHON "
            "(benchmarks/README.md shows how to build that venv)"
        )
    if not Path(args.scvi_python).exists():
        parser.error(f"--scvi-python {args.scvi_python} does not exist: build the venv as in benchmarks/README.md")
    for path in (args.ctrl_data, args.stim_data):
        if not path.exists():
            parser.error(f"{path} does not exist (the shared data folder sits beside the repository)")
    if args.seed == args.reference_seed:
        parser.error("--reference-seed must differ from --seed")
    if args.jobs < 1 or args.threads < 1:
        parser.error("--jobs and --threads must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    # Thread limits must be in the environment before torch/numba start their pools, here and in
    # the scvi-tools subprocesses alike.
    for name in THREAD_VARIABLES:
        os.environ[name] = str(args.threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.path.insert(0, str(ROOT))  # run as a script from a checkout: the engine is not installed

    import anndata as ad
    import numpy as np
    import pandas as pd
    import torch

    from engine.model.params import scvi_max_epochs
    from engine.model.training import split_cells

    torch.set_num_threads(args.threads)
    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="de_vs_scvi_tools_"))).resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    # --- the two data sets, with symbols, batch keys and the cell masks of each comparison
    ctrl = ad.read_h5ad(args.ctrl_data)
    ctrl.var["display_name"] = ctrl.var["gene_symbol"].astype(str)  # var_names are Ensembl ids
    stim = ad.read_h5ad(args.stim_data)
    samples = stim.obs["sample"].astype(str)
    stim.obs["donor"] = samples.str.replace(r"^(ctrl|stim)", "", regex=True).astype("category")
    if not (stim.obs["donor"].astype(str) != samples).all():
        raise RuntimeError(f"sample names no longer start with ctrl/stim: {sorted(set(samples))}")
    stim.var["display_name"] = np.asarray(stim.var_names, dtype=str)
    stim_path = work / "kang_stim_ctrl_with_donor.h5ad"
    stim.write_h5ad(stim_path)  # scvi-tools reads the same cells and the derived donor column
    datasets = {
        "ctrl": {"adata": ctrl, "path": args.ctrl_data, "batch_key": "donor", "epochs": args.ctrl_epochs},
        "stim": {
            "adata": stim,
            "path": stim_path,
            "batch_key": "donor",
            "epochs": args.stim_epochs or scvi_max_epochs(stim.n_obs),
        },
    }
    masks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for comparison in COMPARISONS:
        adata = datasets[comparison.dataset]["adata"]
        labels = adata.obs[comparison.column].astype(str).to_numpy()
        for group in (comparison.group1, comparison.group2):
            if group != "rest" and group not in set(labels):
                raise RuntimeError(f"{comparison.column} has no {group!r}; values: {sorted(set(labels))}")
        mask1 = labels == comparison.group1
        mask2 = ~mask1 if comparison.group2 == "rest" else labels == comparison.group2
        masks[comparison.key] = (mask1, mask2)
    for name, spec in datasets.items():
        keys = [c.key for c in COMPARISONS if c.dataset == name]
        np.savez(work / f"groups_{name}.npz", **{f"{k}__{i + 1}": masks[k][i] for k in keys for i in (0, 1)})
        for seed in (args.seed, args.reference_seed):
            train, validation = split_cells(spec["adata"].n_obs, 0.1, seed)
            np.savez(work / f"split_{name}_seed{seed}.npz", train=train, validation=validation)

    # --- training and DE: scvi-tools subprocesses (two seeds per data set) and our engine
    scvi_jobs = [(name, seed) for name in datasets for seed in (args.seed, args.reference_seed)]
    print(f"work dir {work}; {len(scvi_jobs)} scvi-tools trainings + {len(datasets)} of ours, "
          f"{args.jobs} at a time, {args.threads} thread(s) each", flush=True)  # fmt: skip
    ours: dict[str, dict] = {}
    if args.jobs == 1:
        scvi_runs = [run_scvi(args, work, name, datasets[name], seed) for name, seed in scvi_jobs]
        for name, spec in datasets.items():
            ours.update(run_ours(args, work, name, spec, masks))
    else:
        with ThreadPoolExecutor(max_workers=max(args.jobs - 1, 1)) as pool:
            futures = [pool.submit(run_scvi, args, work, name, datasets[name], seed) for name, seed in scvi_jobs]
            for name, spec in datasets.items():
                ours.update(run_ours(args, work, name, spec, masks))
            scvi_runs = [future.result() for future in futures]
    for run in scvi_runs:
        if run["kl_warmup_epochs"] != SCVI_KL_WARMUP:
            raise RuntimeError(
                f"scvi-tools' KL warm-up is {run['kl_warmup_epochs']}, not {SCVI_KL_WARMUP}: update this script"
            )

    # --- tables in a common form, then the comparisons
    rows = []
    diagnostics = {}
    tables: dict[tuple[str, str], pd.DataFrame] = {}
    for comparison in COMPARISONS:
        adata = datasets[comparison.dataset]["adata"]
        symbols = pd.Series(adata.var["display_name"].to_numpy(), index=adata.var_names)
        tables[(comparison.key, "ours")] = ours[comparison.key]["table"]
        for seed in (args.seed, args.reference_seed):
            raw = pd.read_csv(work / f"scvi_{comparison.dataset}_seed{seed}_de_{comparison.key}.csv", index_col=0)
            tables[(comparison.key, f"scvi{seed}")] = common_form(
                raw, symbols, called=raw[SCVI_CALLS].astype(bool), pseudocount=raw["pseudocounts"].iloc[0]
            )
        ours_name, scvi_name, ref_name = "ours", f"scvi{args.seed}", f"scvi{args.reference_seed}"
        labels = {
            ours_name: f"engine seed {args.seed}",
            scvi_name: f"scvi-tools seed {args.seed}",
            ref_name: f"scvi-tools seed {args.reference_seed}",
        }
        for a, b, kind in ((ours_name, scvi_name, "ours vs scvi-tools"),
                           (ref_name, scvi_name, "scvi-tools vs scvi-tools (reference)"),
                           (ours_name, ref_name, "ours vs scvi-tools (2nd seed)")):  # fmt: skip
            ta, tb = tables[(comparison.key, a)], tables[(comparison.key, b)]
            rows.append({
                "comparison": comparison.title,
                "dataset": comparison.dataset,
                "epochs": datasets[comparison.dataset]["epochs"],
                "kind": kind,
                "a": labels[a],
                "b": labels[b],
                **pair_metrics(ta, tb, args.top),
                "markers_a": marker_ranks(ta, comparison.markers),
                "markers_b": marker_ranks(tb, comparison.markers),
            })  # fmt: skip
        diagnostics[comparison.key] = {
            labels[name]: describe(tables[(comparison.key, name)], args.top)
            for name in (ours_name, scvi_name, ref_name)
        }
        mask1, mask2 = masks[comparison.key]
        diagnostics[comparison.key]["n_cells"] = [int(mask1.sum()), int(mask2.sum())]

    elapsed = time.perf_counter() - started
    results = {
        "settings": {
            "delta": DELTA, "fdr": FDR, "top": args.top, "seed": args.seed, "reference_seed": args.reference_seed,
            "threads": args.threads, "jobs": args.jobs,
            "epochs": {name: spec["epochs"] for name, spec in datasets.items()},
            "kl_warmup_epochs": SCVI_KL_WARMUP,
        },
        "rows": rows,
        "diagnostics": diagnostics,
        "training_seconds": {
            **{f"engine {name}": ours[f"_train_{name}"] for name in datasets},
            **{f"scvi-tools {r['dataset']} seed {r['seed']}": r["train_seconds"] for r in scvi_runs},
        },
        "scvi": scvi_runs,
        "wall_seconds": elapsed,
    }  # fmt: skip
    (work / "results.json").write_text(json.dumps(results, indent=2, default=float))
    print()
    print(table(rows))
    print()
    print(targets(rows))
    print(
        f"epochs: {datasets['ctrl']['epochs']} (12k ctrl, batch donor), {datasets['stim']['epochs']} (1.5k stim/ctrl, "
        f"batch donor from sample); KL warm-up {SCVI_KL_WARMUP} epochs; delta {DELTA}, FDR {FDR}; "
        f"{args.threads} thread(s) per training, {args.jobs} at once; {elapsed / 60:.1f} min. "
        f"Tables and results: {work}"
    )


def run_scvi(args: argparse.Namespace, work: Path, name: str, spec: dict, seed: int) -> dict:
    """Train scvi-tools on one data set with one seed and run its DEs; returns its JSON (plus the data set)."""
    tag = f"scvi_{name}_seed{seed}"
    command = [
        args.scvi_python,
        str(SCVI_SIDE),
        "--data", str(spec["path"]),
        "--batch-key", spec["batch_key"],
        "--split", str(work / f"split_{name}_seed{seed}.npz"),
        "--groups", str(work / f"groups_{name}.npz"),
        "--out", str(work),
        "--tag", tag,
        "--epochs", str(spec["epochs"]),
        "--seed", str(seed),
        "--threads", str(args.threads),
        "--delta", str(DELTA),
        "--fdr", str(FDR),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the scvi venv sees none of ours
    print(f"  scvi-tools {name}, seed {seed}, {spec['epochs']} epochs ...", flush=True)
    with open(work / "logs" / f"{tag}.log", "w") as log:
        done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, check=False)
    if done.returncode != 0:
        tail = (work / "logs" / f"{tag}.log").read_text()[-4000:]
        raise RuntimeError(f"scvi_de_side.py failed for {tag} (exit {done.returncode}):\n{tail}")
    result = json.loads((work / f"{tag}_scvi.json").read_text())
    print(f"  scvi-tools {name}, seed {seed}: trained in {result['train_seconds']:.0f} s", flush=True)
    return {**result, "dataset": name}


def run_ours(args: argparse.Namespace, work: Path, name: str, spec: dict, masks: dict) -> dict:
    """Train our engine on one data set (scvi-tools' settings) and run its DEs, in this process."""
    import pandas as pd

    from engine.analysis.de import differential_expression
    from engine.model.params import RunParams
    from engine.runs.fit import fit

    params = RunParams(
        likelihood="zinb",
        n_latent=10,
        n_hidden=128,
        n_layers=1,
        dropout=0.1,
        dispersion="gene",
        encode_covariates=False,  # scvi-tools' default SCVI: the batch enters the decoder only
        max_epochs=spec["epochs"],
        batch_size=128,
        kl_warmup_epochs=SCVI_KL_WARMUP,  # scvi-tools': 400 epochs whatever max_epochs is
        early_stopping=False,
        validation_fraction=0.1,
        seed=args.seed,
    )
    adata = spec["adata"]
    print(f"  engine {name}, seed {args.seed}, {spec['epochs']} epochs ...", flush=True)
    start = time.perf_counter()
    run = fit(adata, params=params, batch_key=spec["batch_key"], cache_dir=None, device="cpu")
    train_seconds = time.perf_counter() - start
    print(f"  engine {name}: trained in {train_seconds:.0f} s", flush=True)
    symbols = pd.Series(adata.var["display_name"].to_numpy(), index=adata.var_names)
    out: dict = {f"_train_{name}": train_seconds}
    for key, (mask1, mask2) in masks.items():
        if not any(c.key == key and c.dataset == name for c in COMPARISONS):
            continue
        result = differential_expression(run, adata, group1=mask1, group2=mask2, mode="change", delta=DELTA, fdr=FDR)
        raw = result.table()
        raw.to_csv(work / f"engine_{name}_seed{args.seed}_de_{key}.csv")
        # our pseudocount is per 10,000 counts; scvi-tools' is on the unit scale (scale sums to 1)
        out[key] = {
            "table": common_form(
                raw, symbols, called=raw["is_de_fdr"].astype(bool), pseudocount=result.pseudocount / 1e4
            )
        }
    return out


def common_form(raw, symbols, *, called, pseudocount: float):
    """One tool's DE table in its own row order: symbol, lfc_mean, proba_de, called, rank (1-based)."""
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame(
        {
            "symbol": symbols.reindex(raw.index).to_numpy(),
            "lfc_mean": raw["lfc_mean"].to_numpy(dtype=float),
            "proba_de": raw["proba_de"].to_numpy(dtype=float),
            "called": np.asarray(called, dtype=bool),
            "rank": np.arange(1, len(raw) + 1),
        },
        index=pd.Index(raw.index.astype(str), name="var_name"),
    )
    frame.attrs["pseudocount"] = float(pseudocount)
    return frame


def pair_metrics(a, b, top: int) -> dict:
    """Calls, top-``top`` overlap (each in its own order) and Spearman of lfc_mean between two tables."""
    from scipy.stats import spearmanr

    if set(a.index) != set(b.index):
        raise RuntimeError("the two DE tables do not have the same genes")
    b_lfc = b["lfc_mean"].reindex(a.index)
    overlap = len(set(a.index[:top]) & set(b.index[:top]))
    # the same, both ranked by proba_de then |lfc_mean| (ties at proba_de = 1 broken alike)
    tied = len(set(tie_broken(a).index[:top]) & set(tie_broken(b).index[:top]))
    return {
        "calls_a": int(a["called"].sum()),
        "calls_b": int(b["called"].sum()),
        "calls_both": int((a["called"] & b["called"].reindex(a.index)).sum()),
        "top_overlap": overlap,
        "top_overlap_lfc_tiebreak": tied,
        "spearman_lfc": float(spearmanr(a["lfc_mean"].to_numpy(), b_lfc.to_numpy()).statistic),
    }


def tie_broken(frame):
    import numpy as np

    order = np.lexsort((-np.abs(frame["lfc_mean"].to_numpy()), -frame["proba_de"].to_numpy()))
    return frame.iloc[order]


def marker_ranks(frame, markers: tuple[str, ...]) -> dict[str, int | None]:
    """1-based rank of each marker in a table (None: not among the data set's genes)."""
    ranks = dict(zip(frame["symbol"], frame["rank"], strict=True))
    return {m: (int(ranks[m]) if m in ranks else None) for m in markers}


def describe(frame, top: int) -> dict:
    """Diagnostics of one DE table: pseudocount, proba_de distribution, ties at the top."""
    import numpy as np

    proba = frame["proba_de"].to_numpy()
    return {
        "calls": int(frame["called"].sum()),
        "pseudocount_unit_scale": frame.attrs["pseudocount"],
        "n_proba_de_1": int((proba >= 1.0).sum()),
        "n_proba_de_ge_0.95": int((proba >= 0.95).sum()),
        "n_proba_de_ge_0.8": int((proba >= 0.8).sum()),
        "proba_de_quantiles_10_50_90": [float(q) for q in np.quantile(proba, [0.1, 0.5, 0.9])],
        f"proba_de_at_rank_{top}": float(proba[top - 1]),
        "n_up_called": int((frame["called"] & (frame["lfc_mean"] > 0)).sum()),
        "median_abs_lfc_called": (
            float(np.median(np.abs(frame.loc[frame["called"], "lfc_mean"]))) if frame["called"].any() else None
        ),
        "top10": frame["symbol"].head(10).tolist(),
    }  # fmt: skip


def format_ranks(ranks: dict[str, int | None]) -> str:
    return ", ".join(f"{m} {r}" for m, r in ranks.items() if r is not None) or "-"


def table(rows: list[dict]) -> str:
    """Markdown table, one line per (comparison, pair of models)."""
    lines = [
        (
            "| comparison | epochs | A vs B | calls A | calls B | A / B | top-50 overlap | top-50, ties by abs LFC "
            "| Spearman LFC | marker ranks in A | marker ranks in B |"
        ),
        "|---|--:|---|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    for r in rows:
        ratio = r["calls_a"] / r["calls_b"] if r["calls_b"] else float("nan")
        lines.append(
            f"| {r['comparison']} | {r['epochs']} | {r['a']} vs {r['b']} | {r['calls_a']} | {r['calls_b']} "
            f"| {ratio:.2f} | {r['top_overlap']} | {r['top_overlap_lfc_tiebreak']} | {r['spearman_lfc']:.3f} "
            f"| {format_ranks(r['markers_a'])} | {format_ranks(r['markers_b'])} |"
        )
    return "\n".join(lines)


def targets(rows: list[dict]) -> str:
    """Issue 20's targets, met or not, per comparison (ours vs scvi-tools with the same seed)."""
    lines = []
    for r in rows:
        if r["kind"] != "ours vs scvi-tools":
            continue
        ratio = r["calls_a"] / r["calls_b"] if r["calls_b"] else float("inf")
        checks = [
            ("top-50 overlap >= 35", r["top_overlap"] >= 35),
            ("calls within 1.5x", 1 / 1.5 <= ratio <= 1.5),
        ]
        if r["dataset"] == "stim":
            checks.append(("ours >= 20 calls", r["calls_a"] >= 20))
            top_markers = [m for m, rank in r["markers_a"].items() if rank is not None and rank <= 50]
            checks.append((f"interferon markers in our top 50: {len(top_markers)}/{len(r['markers_a'])}", None))
        text = "; ".join(f"{name}: {'met' if ok else 'MISSED'}" if ok is not None else name for name, ok in checks)
        lines.append(f"{r['comparison']}: {text}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
