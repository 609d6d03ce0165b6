"""What the Train page's form holds and how runs are shown: plain data, no Streamlit calls."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from engine.model.params import RunParams

LIKELIHOOD_HELP = {
    "zinb": "zero-inflated negative binomial (scVI's default)",
    "nb": "negative binomial, overdispersed counts",
    "poisson": "Poisson, no overdispersion (baseline)",
    "zip": "zero-inflated Poisson",
    "gaussian": "Gaussian on log1p-normalised counts",
}


@dataclass(frozen=True)
class TrainForm:
    """The user's choices on the Train page."""

    likelihood: str = "zinb"
    n_latent: int = 10
    batch_key: str | None = None
    n_hidden: int = 128
    n_layers: int = 1
    dropout: float = 0.1
    dispersion: str = "gene"
    library: str = "observed"
    prior: str = "normal"
    n_components: int = 10
    max_epochs: int | None = None
    early_stopping: bool = True
    lr: float = 1e-3
    seed: int = 0
    n_top_genes: int = 0  # 0: all genes

    def params(self) -> RunParams:
        """The engine's parameters; raises ValueError listing what is allowed."""
        return RunParams(
            likelihood=self.likelihood, n_latent=int(self.n_latent), n_hidden=int(self.n_hidden),
            n_layers=int(self.n_layers), dropout=float(self.dropout), dispersion=self.dispersion,
            library=self.library, prior=self.prior, n_components=int(self.n_components),
            max_epochs=None if self.max_epochs is None else int(self.max_epochs),
            early_stopping=bool(self.early_stopping), lr=float(self.lr), seed=int(self.seed))


def history_frame(history: list) -> pd.DataFrame:
    """EpochReports as a DataFrame, one row per epoch."""
    return pd.DataFrame([dataclasses.asdict(r) for r in history])


def run_label(run) -> str:
    p = run.params
    batch = f", batch {run.batch_key}" if run.batch_key else ""
    return f"{run.run_id[:8]} · {p.likelihood.upper()}, latent {p.n_latent}{batch}"


def runs_table(runs: list, *, active: str | None) -> pd.DataFrame:
    """One row per cached run for the history table."""
    rows = []
    for r in runs:
        m = r.metrics
        rows.append({
            "active": "●" if r.run_id == active else "",
            "run": r.run_id[:10],
            "likelihood": r.params.likelihood.upper(),
            "latent": r.params.n_latent,
            "batch key": r.batch_key or "",
            "genes": m.get("n_genes"),
            "epochs": m.get("n_epochs_trained"),
            "validation ELBO": m.get("elbo_validation"),
            "train time (s)": round(float(m.get("train_seconds", 0.0)), 1),
            "date": _date(r.created),
        })
    return pd.DataFrame(rows)


def _date(created) -> str:
    try:
        return datetime.fromisoformat(str(created)).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return str(created)
