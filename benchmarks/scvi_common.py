"""What every scvi-tools side script shares (they run in the scvi-tools venv, beside this file).

:func:`prepare` seeds scvi-tools, sets the threads, makes the output folder and reads the shared
train/validation split; :func:`train` runs ``model.train`` on that split on the CPU and returns its
wall seconds; :func:`versions` and :func:`kl_warmup_default` describe the run for the results JSON.
"""

from __future__ import annotations

import argparse
import inspect
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every side script takes: data, batch key, split, output folder, seed, threads."""
    parser.add_argument("--data", required=True, help="h5ad with raw counts in X")
    parser.add_argument("--batch-key", required=True)
    parser.add_argument("--split", required=True, help=".npz with int arrays 'train' and 'validation'")
    parser.add_argument("--out", required=True, help="folder for what the script writes")
    parser.add_argument("--seed", type=int, default=0)


def prepare(args: argparse.Namespace, *, threads: int) -> tuple[Path, np.ndarray, np.ndarray]:
    """Seed scvi-tools (torch, numpy, random), load data in-process, set threads; the folder and split."""
    import scvi
    import torch

    scvi.settings.seed = args.seed
    scvi.settings.dl_num_workers = 0  # data loading in the main process, as our engine does
    torch.set_num_threads(threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    split = np.load(args.split)
    return out, np.asarray(split["train"], dtype=np.int64), np.asarray(split["validation"], dtype=np.int64)


def train(model: Any, *, epochs: int, train_idx: np.ndarray, val_idx: np.ndarray, **options: Any) -> float:
    """``model.train`` for ``epochs`` on the given split (CPU, no progress bar); wall seconds."""
    start = time.perf_counter()
    model.train(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        # the same cells as our engine trains and validates on
        datasplitter_kwargs={"external_indexing": [train_idx, val_idx]},
        enable_progress_bar=False,
        **options,
    )
    return time.perf_counter() - start


def versions() -> dict[str, str]:
    """Versions of scvi-tools and what it runs on."""
    import lightning.pytorch as pl
    import scvi
    import torch

    return {"scvi-tools": scvi.__version__, "torch": torch.__version__, "lightning": pl.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def kl_warmup_default() -> int:
    """scvi-tools' default KL warm-up (epochs), whatever ``max_epochs`` is."""
    import scvi

    return inspect.signature(scvi.train.TrainingPlan).parameters["n_epochs_kl_warmup"].default
