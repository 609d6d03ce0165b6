"""Every option of a training run, validated once, in one frozen dataclass."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

__all__ = [
    "Dispersion", "Library", "Likelihood", "LrSchedule", "Option", "Prior", "RunParams", "Schedule",
    "fast_max_epochs", "options", "scvi_max_epochs",
]

Likelihood = Literal["zinb", "nb", "poisson", "zip", "gaussian"]
Dispersion = Literal["gene", "gene-batch", "gene-cell"]
Library = Literal["observed", "learned"]
Prior = Literal["normal", "mixture"]
LrSchedule = Literal["constant", "cosine"]
Schedule = Literal["fast", "thorough"]

#: Likelihoods that model raw counts (and so refuse non-integer data).
COUNT_LIKELIHOODS: tuple[str, ...] = ("zinb", "nb", "poisson", "zip")
#: Likelihoods with an inverse dispersion ``theta``.
DISPERSED_LIKELIHOODS: tuple[str, ...] = ("zinb", "nb")


def scvi_max_epochs(n_cells: int) -> int:
    """scvi-tools' default: ``min(round(20000 / n_cells * 400), 400)`` (the thorough schedule)."""
    return max(1, min(round(20000 / max(n_cells, 1) * 400), 400))


#: Cells seen in a fast training: 40 epochs of the 12k-cell sample (BENCHMARKS.md, "Training defaults").
FAST_CELL_PASSES = 490_000


def fast_max_epochs(n_cells: int) -> int:
    """The fast schedule: a budget of :data:`FAST_CELL_PASSES` cell passes, never more than scvi-tools' rule."""
    return max(1, min(scvi_max_epochs(n_cells), round(FAST_CELL_PASSES / max(n_cells, 1))))


#: What ``schedule`` means when ``max_epochs`` or ``lr`` are left automatic (None).
SCHEDULES: Mapping[str, tuple[Callable[[int], int], float]] = MappingProxyType({
    "fast": (fast_max_epochs, 3e-3),
    "thorough": (scvi_max_epochs, 1e-3),
})


@dataclass(frozen=True)
class Option:
    """How one :class:`RunParams` field is presented: the form, the command line and the docs read it.

    ``group`` is where the Train form shows it ("main" above the fold, "model"/"training" under
    Advanced); ``minimum``/``maximum``/``step`` bound numeric inputs; ``choice_labels`` describe the
    values of a ``Literal``; ``auto`` says what ``None`` means for an optional number; ``widget``
    asks for a slider instead of a number box.
    """

    label: str
    group: Literal["main", "model", "training"]
    help: str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choice_labels: Mapping[str, str] | None = None
    auto: str | None = None
    suggested: float | None = None  # the form's number when "automatic" is unticked
    widget: Literal["input", "slider"] = "input"
    shown_with: tuple[str, tuple[Any, ...]] | None = None  # (field, values): asked only when it has one of them


def _option(default: Any, label: str, group: Literal["main", "model", "training"], help: str, **kw: Any) -> Any:
    return dataclasses.field(default=default, metadata={"option": Option(label, group, help, **kw)})


@dataclass(frozen=True)
class RunParams:
    """Options of one training run (model, optimisation, seed).

    ``schedule`` picks what ``max_epochs=None`` and ``lr=None`` mean (:data:`SCHEDULES`). "fast", the
    default, trains a fixed budget of cell passes (:func:`fast_max_epochs`: 40 epochs of 12k cells) at
    learning rate 3e-3; "thorough" is scvi-tools' schedule (:func:`scvi_max_epochs`, lr 1e-3), about ten
    times longer. Both were measured on the 12k sample: the fast one matches scvi-tools' default model
    on validation ELBO, clustering and DE markers (BENCHMARKS.md, "Training defaults").

    ``kl_warmup_epochs``: the KL weight of z grows linearly from 0 to 1 over this many epochs.
    scvi-tools uses 400 epochs whatever ``max_epochs`` is, so a 400-epoch run ends with a KL weight of
    0.9975 and a short run never sees the real objective: the model it returns does not maximise the
    ELBO it is judged by. ``None`` (the default) keeps scvi-tools' 400 epochs but never more than
    half of the epochs actually trained, so the second half always optimises the true ELBO. Pass
    ``kl_warmup_epochs=400`` to reproduce scvi-tools exactly, ``0`` for no warm-up.

    ``encode_covariates``: whether the encoders see the batch, q(z | x, s) as in the paper, or only
    the counts, q(z | x), as scvi-tools' default (``encode_covariates=False``). The decoder always
    sees the batch. It has no effect without a batch key. The default (True) was chosen by measurement:
    the two tie on held-out ELBO and clustering, and True mixes batches slightly better
    (BENCHMARKS.md, "Encoder covariates").

    ``early_stopping`` stops when the validation ELBO has not improved for ``patience`` epochs and
    keeps the weights of the best epoch (needs ``validation_fraction > 0``).
    """

    likelihood: Likelihood = _option(
        "zinb", "Likelihood", "main",
        "How the model explains each count. ZINB: zero-inflated negative binomial, scVI's default. "
        "NB: negative binomial, for overdispersed counts. Poisson: no overdispersion, a baseline. "
        "ZIP: zero-inflated Poisson. Gaussian: on log1p-normalised counts. Compare runs on the "
        "Train page to choose.",
        choice_labels={
            "zinb": "ZINB (scVI's default)",
            "nb": "NB (negative binomial)",
            "poisson": "Poisson",
            "zip": "ZIP (zero-inflated Poisson)",
            "gaussian": "Gaussian (log-normalised)",
        },
    )
    n_latent: int = _option(10, "Latent size", "main", "Dimensions of the learned cell representation.",
                            minimum=2, maximum=64, widget="slider")
    n_hidden: int = _option(128, "Hidden units", "model", "Units per hidden layer of the encoder and decoder.",
                            minimum=8, maximum=1024)
    n_layers: int = _option(1, "Hidden layers", "model", "Hidden layers of the encoder and decoder.",
                            minimum=1, maximum=5)
    dropout: float = _option(0.1, "Dropout", "model", "Dropout rate of the encoder's hidden layers.",
                             minimum=0.0, maximum=0.5, step=0.05, widget="slider")
    dispersion: Dispersion = _option(
        "gene", "Dispersion", "model",
        "Inverse dispersion per gene, per gene and batch, or per gene and cell (NB and ZINB only).",
        shown_with=("likelihood", DISPERSED_LIKELIHOODS),
    )
    library: Library = _option(
        "observed", "Library size", "model",
        "Observed: each cell's total counts. Learned: a latent variable with a per-batch log-normal prior.",
    )
    prior: Prior = _option("normal", "Prior on z", "model",
                           "Normal: N(0, I). Mixture: a Gaussian mixture with K components (GMVAE).")
    n_components: int = _option(10, "Mixture components K", "model",
                                "Components of the mixture prior (used with the mixture prior only).",
                                minimum=2, maximum=50, shown_with=("prior", ("mixture",)))
    encode_covariates: bool = _option(
        True, "Encoder sees the batch", "model",
        "The encoder gets the batch as well as the counts, q(z | x, s) as in the scVI paper; "
        "scvi-tools' default leaves it out. No effect without a batch key.",
    )
    schedule: Schedule = _option(
        "fast", "Training", "main",
        "Fast: a fixed budget of passes over the cells at a higher learning rate, as good as scvi-tools' "
        "default on the 12k sample in a tenth of the time. Thorough: scvi-tools' own schedule (up to 400 "
        "epochs at learning rate 0.001), for a final analysis. Epochs and learning rate under Advanced "
        "override it.",
        choice_labels={"fast": "Fast (default)", "thorough": "Thorough (scvi-tools' schedule, ~10x longer)"},
    )
    max_epochs: int | None = _option(
        None, "Epochs", "training", "Passes over the data.", minimum=1, maximum=1000,
        auto="from the schedule: fast, 490,000 cells' worth (40 epochs of 12k cells); thorough, scvi-tools' "
             "min(round(20000 / cells x 400), 400)",
        suggested=50,
    )
    batch_size: int = _option(128, "Batch size", "training", "Cells per minibatch.", minimum=16, maximum=4096)
    lr: float | None = _option(None, "Learning rate", "training", "Adam's learning rate.", minimum=1e-5,
                               maximum=1e-1, auto="from the schedule: 0.003 fast, 0.001 thorough", suggested=1e-3)
    lr_schedule: LrSchedule = _option(
        "constant", "Learning-rate schedule", "training",
        "Constant: the learning rate throughout. Cosine: it decays from the learning rate to 0 along a "
        "half cosine over the epochs.",
        choice_labels={"constant": "Constant", "cosine": "Cosine decay to 0"},
    )
    kl_warmup_epochs: int | None = _option(
        None, "KL warm-up epochs", "training",
        "Epochs over which the weight of the KL term grows from 0 to 1.", minimum=0, maximum=1000,
        auto="400, but never more than half of the epochs trained", suggested=20,
    )
    early_stopping: bool = _option(
        True, "Early stopping", "training",
        "Stop when the validation ELBO has not improved for `patience` epochs; keep the best epoch.",
    )
    patience: int = _option(45, "Patience", "training",
                            "Epochs without improvement of the validation ELBO before early stopping.",
                            minimum=1, maximum=1000, shown_with=("early_stopping", (True,)))
    min_improvement: float = _option(
        0.0, "Early-stopping tolerance", "training",
        "Relative gain of the validation ELBO that counts as an improvement for early stopping: stop when "
        "it has not risen by more than this fraction (0.001 = 0.1 %) for `patience` epochs.",
        minimum=0.0, maximum=0.1, step=0.0005, shown_with=("early_stopping", (True,)),
    )
    validation_fraction: float = _option(0.1, "Validation fraction", "training",
                                         "Share of the cells held out to score the model and stop early.",
                                         minimum=0.0, maximum=0.5, step=0.05)
    seed: int = _option(0, "Seed", "training", "Seeds initialisation, minibatches and the validation split.",
                        minimum=0, maximum=2**31 - 1)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            allowed = typing.get_args(hints[field.name])
            value = getattr(self, field.name)
            if typing.get_origin(hints[field.name]) is Literal and value not in allowed:
                raise ValueError(
                    f"RunParams.{field.name}={value!r} is not allowed; choose one of "
                    + ", ".join(repr(a) for a in allowed)
                )
        positive = {
            "n_latent": self.n_latent,
            "n_hidden": self.n_hidden,
            "n_layers": self.n_layers,
            "n_components": self.n_components,
            "batch_size": self.batch_size,
            "patience": self.patience,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"RunParams.{name} must be a positive integer, got {value!r}")
        if self.max_epochs is not None and (not isinstance(self.max_epochs, int) or self.max_epochs < 1):
            raise ValueError(f"RunParams.max_epochs must be None or a positive integer, got {self.max_epochs!r}")
        if self.kl_warmup_epochs is not None and (
            not isinstance(self.kl_warmup_epochs, int) or self.kl_warmup_epochs < 0
        ):
            raise ValueError(
                f"RunParams.kl_warmup_epochs must be None or an integer >= 0, got {self.kl_warmup_epochs!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"RunParams.dropout must be in [0, 1), got {self.dropout!r}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(
                f"RunParams.validation_fraction must be in [0, 1), got {self.validation_fraction!r}"
            )
        if not 0.0 <= self.min_improvement < 1.0:
            raise ValueError(f"RunParams.min_improvement must be in [0, 1), got {self.min_improvement!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"RunParams.lr must be > 0 (or None: the schedule's), got {self.lr!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"RunParams.seed must be an integer >= 0, got {self.seed!r}")
        if self.likelihood == "gaussian" and self.library == "learned":
            raise ValueError(
                "RunParams.library='learned' needs a count likelihood (zinb, nb, poisson, zip); the "
                "gaussian likelihood works on library-normalised data: use library='observed'"
            )
        if self.early_stopping and self.validation_fraction == 0.0:
            raise ValueError(
                "RunParams.early_stopping=True monitors the validation ELBO and needs "
                "validation_fraction > 0; set early_stopping=False to train on every cell"
            )

    def resolved_max_epochs(self, n_cells: int) -> int:
        """``max_epochs``, or the schedule's number for ``n_cells`` cells when it is None."""
        return self.max_epochs if self.max_epochs is not None else SCHEDULES[self.schedule][0](n_cells)

    def resolved_lr(self) -> float:
        """``lr``, or the schedule's learning rate when it is None."""
        return self.lr if self.lr is not None else SCHEDULES[self.schedule][1]

    def resolved_kl_warmup_epochs(self, n_epochs: int) -> int:
        """Warm-up length for a run of ``n_epochs`` epochs (see the class docstring)."""
        if self.kl_warmup_epochs is not None:
            return self.kl_warmup_epochs
        return min(400, n_epochs // 2)

    def relevant(self, *, has_batch: bool) -> dict[str, Any]:
        """The options that change the trained model (the run cache's key).

        Those the chosen model ignores are left out, so changing them does not make a new run.
        """
        values = self.to_dict()
        if self.likelihood not in DISPERSED_LIKELIHOODS:
            values.pop("dispersion")
        if self.prior != "mixture":
            values.pop("n_components")
        if not self.early_stopping:
            values.pop("patience")
            values.pop("min_improvement")
        if not has_batch:
            values.pop("encode_covariates")
        if self.max_epochs is not None and self.lr is not None:
            values.pop("schedule")  # both set by hand: the schedule changes nothing
        return values

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of every option."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunParams:
        """Inverse of :meth:`to_dict`; unknown keys are an error (they would be silently ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown RunParams option(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**values)


def options() -> dict[str, tuple[dataclasses.Field, Option]]:
    """Every :class:`RunParams` field with its :class:`Option`, in declaration order."""
    return {f.name: (f, f.metadata["option"]) for f in dataclasses.fields(RunParams)}


def choices(name: str) -> tuple[Any, ...]:
    """The allowed values of a ``Literal`` option (empty for other types)."""
    hint = typing.get_type_hints(RunParams)[name]
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else ()


def value_type(name: str) -> type:
    """``bool``, ``int``, ``float`` or ``str`` (for Literals): the type of an option's values."""
    hint = typing.get_type_hints(RunParams)[name]
    if typing.get_origin(hint) is Literal:
        return str
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return args[0]
