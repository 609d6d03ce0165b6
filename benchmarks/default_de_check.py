r"""Check that a candidate default training keeps differential expression as good as the slower one.

    python benchmarks/default_de_check.py --work-dir /tmp/de_check --settings "scvi rule (before)" "fast rule lr3e-3"

Issue 14 asks for a fast default training; issue 20 made DE trustworthy. A default that clusters as
well as scvi-tools' but loses markers in DE would trade one for the other, so every candidate is
checked on the three DE comparisons of ``benchmarks/de_vs_scvi_tools.py``, the way the dashboard
runs them: train with the candidate on the Kang control PBMCs (12,261 cells, batch key ``donor``) and
on the Kang stim/ctrl file (1,556 cells, batch key ``donor`` derived from ``sample``), then the
engine's change-mode DE with the page's defaults (delta 0.25, target FDR 0.05):

1. ``B cells`` vs rest; 2. ``CD14+ Monocytes`` vs rest; 3. ``stim`` vs ``ctrl``.

Reported per setting and seed: training seconds and epochs, genes called, and the rank of each known
marker among the genes UP in group 1, ranked as a biologist reads the table (``proba_de``, then
``lfc_mean``). Settings are those of ``benchmarks/training_defaults.py`` plus epoch *rules* (the epochs
depend on the number of cells, so one setting spans both data sets). Each (setting, seed) result is
kept as JSON in ``--work-dir``; ``--report`` prints the table of what is there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CTRL = DATA / "kang_pbmc_ctrl_12261x1287.h5ad"
STIM = DATA / "kang_pbmc_stim_ctrl_1556x1267.h5ad"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")

#: name -> RunParams options; "max_epochs" may be the name of a rule in engine.model.params.
SETTINGS: dict[str, dict] = {
    "scvi rule (before)": {"max_epochs": "scvi", "lr": 1e-3},
    "fast rule lr3e-3": {"max_epochs": "fast", "lr": 3e-3},
    "fast rule lr1e-3": {"max_epochs": "fast", "lr": 1e-3},
    "1.5x fast rule lr3e-3": {"max_epochs": "fast x1.5", "lr": 3e-3},
}

COMPARISONS = (  # (key, data set, column, group 1, group 2 or "rest", markers)
    ("B cells vs rest", "ctrl", "cell_type", "B cells", "rest", ("CD79A", "CD74", "CD37", "HLA-DRA", "CD79B")),
    ("CD14+ Mono vs rest", "ctrl", "cell_type", "CD14+ Monocytes", "rest", ("S100A8", "S100A9", "LYZ", "CD14", "FCN1")),
    ("stim vs ctrl", "stim", "condition", "stim", "ctrl",
     ("ISG15", "IFI6", "IFIT1", "IFIT2", "IFIT3", "MX1", "ISG20", "LY6E", "IFI44L", "RSAD2")),
)  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=sorted(SETTINGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="only print the table of what --work-dir holds")
    return parser.parse_args()


def epochs_for(rule: int | str, n_cells: int) -> int:
    from engine.model.params import fast_max_epochs, scvi_max_epochs

    if isinstance(rule, int):
        return rule
    if rule == "scvi":
        return scvi_max_epochs(n_cells)
    if rule == "fast":
        return fast_max_epochs(n_cells)
    if rule.startswith("fast x"):
        return round(fast_max_epochs(n_cells) * float(rule.removeprefix("fast x")))
    raise ValueError(f"unknown epoch rule {rule!r}")


def load_data() -> dict:
    import anndata as ad
    import numpy as np

    ctrl = ad.read_h5ad(CTRL)
    ctrl.layers["counts"] = ctrl.X.copy()
    ctrl.var["display_name"] = ctrl.var["gene_symbol"].astype(str)
    stim = ad.read_h5ad(STIM)
    stim.layers["counts"] = stim.X.copy()
    # ``sample`` is confounded with the condition (ctrl101 / stim101); the donor is the batch.
    stim.obs["donor"] = stim.obs["sample"].astype(str).str.replace(r"^(ctrl|stim)", "", regex=True).astype("category")
    stim.var["display_name"] = np.asarray(stim.var_names, dtype=str)
    return {"ctrl": ctrl, "stim": stim}


def check(name: str, seed: int, data: dict) -> dict:
    from engine.analysis.de import differential_expression, groups_from_obs
    from engine.model.params import RunParams
    from engine.runs.fit import fit

    options = dict(SETTINGS[name])
    rule = options.pop("max_epochs")
    result: dict = {"setting": name, "seed": seed, "train": {}, "de": {}}
    runs = {}
    for key, adata in data.items():
        params = RunParams(**options, max_epochs=epochs_for(rule, adata.n_obs), seed=seed)
        start = time.perf_counter()
        runs[key] = fit(adata, params=params, batch_key="donor", cache_dir=None, device="cpu")
        result["train"][key] = {
            "seconds": time.perf_counter() - start,
            "epochs": int(runs[key].metrics["n_epochs_trained"]),
            "elbo_validation": float(runs[key].metrics["elbo_validation"]),
        }
    for title, key, column, group1, group2, markers in COMPARISONS:
        adata = data[key]
        g1, g2 = groups_from_obs(adata, groupby=column, group1=group1, group2=group2)
        start = time.perf_counter()
        table = differential_expression(runs[key], adata, group1=g1, group2=g2, seed=seed).table()
        seconds = time.perf_counter() - start
        symbols = adata.var.loc[table.index, "display_name"].to_numpy()
        table = table.assign(symbol=symbols)
        up = table[table["lfc_mean"] > 0].sort_values(["proba_de", "lfc_mean"], ascending=False)
        ranks = {m: (int(list(up["symbol"]).index(m)) + 1 if m in set(up["symbol"]) else None) for m in markers}
        result["de"][title] = {
            "calls": int(table["is_de_fdr"].sum()),
            "up_calls": int((table["is_de_fdr"] & (table["lfc_mean"] > 0)).sum()),
            "marker_up_ranks": ranks,
            "top10_up": list(up["symbol"].head(10)),
            "seconds": seconds,
        }
    return result


def report(results: list[dict]) -> str:
    import numpy as np

    lines = [
        "| setting | seeds | 12k: epochs, s | 1.5k: epochs, s | comparison | calls (up) "
        "| markers in top 10 up | best marker rank |",
        "|---|--:|--:|--:|---|--:|--:|--:|",
    ]
    for name in SETTINGS:
        rows = [r for r in results if r["setting"] == name]
        if not rows:
            continue
        ctrl, stim = (
            f"{np.mean([r['train'][k]['epochs'] for r in rows]):.0f}, "
            f"{np.mean([r['train'][k]['seconds'] for r in rows]):.1f}"
            for k in ("ctrl", "stim")
        )
        for title, *_rest, markers in COMPARISONS:
            de = [r["de"][title] for r in rows]
            in_top = [sum(1 for v in d["marker_up_ranks"].values() if v is not None and v <= 10) for d in de]
            best = [min((v for v in d["marker_up_ranks"].values() if v is not None), default=999) for d in de]
            lines.append(
                f"| {name} | {len(rows)} | {ctrl} | {stim} | {title} "
                f"| {' / '.join(str(d['calls']) for d in de)} ({' / '.join(str(d['up_calls']) for d in de)}) "
                f"| {' / '.join(f'{n}/{len(markers)}' for n in in_top)} | {' / '.join(map(str, best))} |"
            )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(args.threads)
    sys.path.insert(0, str(ROOT))
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if not args.report:
        import torch

        torch.set_num_threads(args.threads)
        data = load_data()
        for seed in args.seeds:
            for name in args.settings:
                path = args.work_dir / f"{''.join(c if c.isalnum() else '_' for c in name)}_seed{seed}.json"
                if path.exists():
                    continue
                print(f"{name}, seed {seed} ...", flush=True)
                result = check(name, seed, data)
                path.write_text(json.dumps(result, indent=2))
                for title, de in result["de"].items():
                    print(f"  {title}: {de['calls']} calls, up ranks {de['marker_up_ranks']}", flush=True)
                print(f"  trained {result['train']}", flush=True)
    results = [json.loads(p.read_text()) for p in sorted(args.work_dir.glob("*_seed*.json"))]
    print(report(results))


if __name__ == "__main__":
    main()
