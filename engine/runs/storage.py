"""Writing and reading a run's weights: the half of the run cache that needs torch.

:func:`save_run` writes ``cache_dir/<run_id>/`` atomically (a temporary folder renamed into place);
:func:`load_run` reads it back with ``torch.load(..., weights_only=True)``, so a weights file can
never run code. Everything else about runs (ids, listing, locks) is in :mod:`engine.runs.records`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from engine.model.params import RunParams
from engine.model.vae import VAE
from engine.runs.imported import load_imported
from engine.runs.records import (
    MODEL_FORMAT_VERSION,
    TMP_PREFIX,
    CorruptRunError,
    Run,
    read_info,
)

logger = logging.getLogger(__name__)

__all__ = ["load_run", "save_run"]


def save_run(run: Run, cache_dir: str | os.PathLike[str], *, data_hash_: str) -> Path:
    """Write ``run`` atomically to ``cache_dir/<run_id>/`` (replacing a previous folder) and return it."""
    if run.module is None or run.params is None:
        raise ValueError(f"run {run.run_id} has no model to save: imported runs are written by "
                         "engine.runs.imported.import_run")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / run.run_id
    tmp = cache_dir / f"{TMP_PREFIX}{run.run_id}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        torch.save(run.module.state_dict(), tmp / "model.pt")
        np.save(tmp / "latent.npy", run.latent)
        run.history.to_csv(tmp / "history.csv", index=False)
        info = {
            "format_version": MODEL_FORMAT_VERSION,
            "run_id": run.run_id,
            "data_hash": data_hash_,
            "params": run.params.to_dict(),
            "metrics": run.metrics,
            "batch_key": run.batch_key,
            "batch_categories": run.batch_categories,
            "var_names": run.var_names,
        }
        # run.json last: its presence in a complete folder is what makes a run
        (tmp / "run.json").write_text(json.dumps(info, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    run.path = final
    logger.info("run %s saved to %s", run.run_id, final)
    return final


def load_run(cache_dir: str | os.PathLike[str], run_id: str) -> Run | None:
    """Load a cached run, or None when there is none. Raises :class:`CorruptRunError` when unreadable.

    A run imported from a file (:mod:`engine.runs.imported`) comes back without a model.
    """
    path = Path(cache_dir) / run_id
    if not path.is_dir():
        return None
    info = read_info(path)
    if info.get("model", True) is False:
        return load_imported(cache_dir, run_id, info)
    try:
        params = RunParams.from_dict(info["params"])
        state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
        categories = info["batch_categories"]
        module = VAE(len(info["var_names"]), len(categories) if categories else 1, params)
        module.load_state_dict(state)
        module.eval()
        latent = np.load(path / "latent.npy")
        history = pd.read_csv(path / "history.csv")
    except CorruptRunError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to read means the folder is unusable
        raise CorruptRunError(
            f"run {run_id} in {path} is corrupt ({type(err).__name__}: {err}); delete it with "
            "engine.runs.records.delete_run or train again (fit replaces it)"
        ) from err
    return Run(
        run_id=run_id,
        params=params,
        batch_key=info["batch_key"],
        batch_categories=categories,
        var_names=info["var_names"],
        metrics=info["metrics"],
        history=history,
        latent=latent,
        module=module,
        path=path,
    )


