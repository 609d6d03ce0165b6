"""Every option of a training run, validated once, in one frozen dataclass."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Likelihood", "Dispersion", "Library", "Prior", "RunParams", "default_max_epochs"]

Likelihood = Literal["zinb", "nb", "poisson", "zip", "gaussian"]
Dispersion = Literal["gene", "gene-batch", "gene-cell"]
Library = Literal["observed", "learned"]
Prior = Literal["normal", "mixture"]

#: Likelihoods that model raw counts (and so refuse non-integer data).
COUNT_LIKELIHOODS: tuple[str, ...] = ("zinb", "nb", "poisson", "zip")
#: Likelihoods with an inverse dispersion ``theta``.
DISPERSED_LIKELIHOODS: tuple[str, ...] = ("zinb", "nb")


def default_max_epochs(n_cells: int) -> int:
    """scvi-tools' default: ``min(round(20000 / n_cells * 400), 400)``."""
    return max(1, min(round(20000 / max(n_cells, 1) * 400), 400))


@dataclass(frozen=True)
class RunParams:
    """Options of one training run (model, optimisation, seed).

    ``max_epochs=None`` uses scvi-tools' rule :func:`default_max_epochs`.

    ``kl_warmup_epochs``: the KL weight of z grows linearly from 0 to 1 over this many epochs.
    scvi-tools uses 400 epochs whatever ``max_epochs`` is, so a 400-epoch run ends with a KL weight of
    0.9975 and a short run never sees the real objective: the model it returns does not maximise the
    ELBO it is judged by. ``None`` (the default) keeps scvi-tools' 400 epochs but never more than
    half of the epochs actually trained, so the second half always optimises the true ELBO. Pass
    ``kl_warmup_epochs=400`` to reproduce scvi-tools exactly, ``0`` for no warm-up.

    ``encode_covariates``: whether the encoders see the batch, q(z | x, s) as in the paper, or only
    the counts, q(z | x), as scvi-tools' default (``encode_covariates=False``). The decoder always
    sees the batch. It has no effect without a batch key.

    ``early_stopping`` stops when the validation ELBO has not improved for ``patience`` epochs and
    keeps the weights of the best epoch (needs ``validation_fraction > 0``).
    """

    likelihood: Likelihood = "zinb"
    n_latent: int = 10
    n_hidden: int = 128
    n_layers: int = 1
    dropout: float = 0.1
    dispersion: Dispersion = "gene"
    library: Library = "observed"
    prior: Prior = "normal"
    n_components: int = 10
    encode_covariates: bool = True
    max_epochs: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    kl_warmup_epochs: int | None = None
    early_stopping: bool = True
    patience: int = 45
    validation_fraction: float = 0.1
    seed: int = 0

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
        if not self.lr > 0:
            raise ValueError(f"RunParams.lr must be > 0, got {self.lr!r}")
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
        """``max_epochs``, or scvi-tools' default for ``n_cells`` cells when it is None."""
        return self.max_epochs if self.max_epochs is not None else default_max_epochs(n_cells)

    def resolved_kl_warmup_epochs(self, n_epochs: int) -> int:
        """Warm-up length for a run of ``n_epochs`` epochs (see the class docstring)."""
        if self.kl_warmup_epochs is not None:
            return self.kl_warmup_epochs
        return min(400, n_epochs // 2)

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
