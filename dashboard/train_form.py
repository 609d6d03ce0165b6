"""The Train page's form, generated from :class:`engine.model.params.RunParams`, and how runs are listed.

The form's labels, bounds, help and defaults live in :class:`~engine.model.params.RunParams`, once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from engine.model.calibration import SpeedCalibration
from engine.model.params import Option, RunParams, choices, options, value_type


@dataclass(frozen=True)
class TrainForm:
    """The user's choices on the Train page: the batch key, the gene selection and the model's options.

    The options are any :class:`RunParams` fields; the rest keep their defaults.
    """

    batch_key: str | None = None
    n_top_genes: int = 0  # 0: all genes
    options: Mapping[str, Any] = field(default_factory=dict)

    def params(self) -> RunParams:
        """The engine's parameters; raises ValueError listing what is allowed."""
        return RunParams(**self.options)


def option_inputs(columns: Sequence, group: str, chosen: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Widgets for the :class:`RunParams` options of one ``group`` ("main", "model", "training").

    They are spread over ``columns``, each labelled, bounded and explained by its :class:`Option`;
    returns the chosen values by field name. An option that only matters with some value of another
    (``Option.shown_with``, e.g. K with the mixture prior) is asked only then; ``chosen`` holds the
    values picked in earlier groups.
    """
    picked: dict[str, Any] = {}
    fields = [(name, f, o) for name, (f, o) in options().items() if o.group == group]
    shown = 0
    for name, f, option in fields:
        if option.shown_with is not None:
            other, values = option.shown_with
            current = {**(chosen or {}), **picked}.get(other, options()[other][0].default)
            if current not in values:
                continue  # keeps its default, which the run ignores
        picked[name] = _input(columns[shown % len(columns)], name, f.default, option)
        shown += 1
    return picked


def _input(box, name: str, default: Any, option: Option) -> Any:
    kind = value_type(name)
    if choices(name):
        values = list(choices(name))
        labels = option.choice_labels or {}
        return box.selectbox(option.label, values, index=values.index(default),
                             format_func=lambda v: labels.get(v, v), help=option.help)
    if kind is bool:
        return box.checkbox(option.label, value=default, help=option.help)
    if default is None:  # automatic unless the user says otherwise
        auto = box.checkbox(f"{option.label}: automatic", True, help=f"{option.help} Automatic: {option.auto}.")
        number = _number(box, f"{option.label} (if not automatic)", kind, option, option.suggested)
        return None if auto else number
    return _number(box, option.label, kind, option, default)


def _number(box, label: str, kind: type, option: Option, value: Any) -> Any:
    lo, hi = kind(option.minimum), kind(option.maximum)
    if option.widget == "slider":
        step = kind(option.step) if option.step is not None else None
        return box.slider(label, lo, hi, kind(value), step, help=option.help)
    fmt = "%g" if kind is float else None
    return box.number_input(label, lo, hi, kind(value), format=fmt, help=option.help)


def expected_duration(form: TrainForm, filtered, calibration: SpeedCalibration | None) -> str:
    """One line for under the Train button: how long these settings will train on this server."""
    if calibration is None:
        return "Measuring this server's training speed (a few seconds after it starts)..."
    try:
        params = form.params()
    except ValueError:
        return ""  # the settings are refused when Train is pressed, with the reason
    n_genes = form.n_top_genes if 0 < form.n_top_genes < filtered.n_vars else filtered.n_vars
    estimate = calibration.expected(n_cells=filtered.n_obs, n_genes=n_genes, params=params)
    text = (f"Expected on this server: about {duration_text(estimate.seconds)} "
            f"({estimate.epochs:,} epochs of {filtered.n_obs:,} cells x {n_genes:,} genes")
    return text + (", early stopping may end it sooner)." if estimate.early_stopping else ").")


def duration_text(seconds: float) -> str:
    """``"40 s"``, ``"4 min"``, ``"1 h 20 min"``: a duration as people say it."""
    if seconds < 60:
        return f"{max(round(seconds), 1)} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min" if minutes % 60 else f"{minutes // 60} h"


def history_frame(history: list) -> pd.DataFrame:
    """EpochReports as a DataFrame, one row per epoch."""
    return pd.DataFrame([dataclasses.asdict(r) for r in history])


def run_label(run) -> str:
    """A short label for ``run``: the start of its id, likelihood, latent size and batch key."""
    p = run.params
    if p is None:  # imported from a file: no model
        representation = run.metrics.get("imported", {}).get("representation")
        return f"{run.run_id[:8]} · opened from a file ({representation}, no model)"
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
            "likelihood": (r.params.likelihood.upper() if r.params is not None
                           else f"none: {r.metrics.get('imported', {}).get('representation')} from the file"),
            "latent": r.params.n_latent if r.params is not None else r.metrics.get("n_latent"),
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
