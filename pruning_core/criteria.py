"""Pruning criteria: how a weight, or a conv filter, is scored (low scores are pruned first).

Each criterion is one class registered in :data:`REGISTRY` under its name, which configs and
:func:`pruning_core.prune` use. A criterion says whether it reads gradients, and scores single
weights (unstructured and N:M pruning) and whole filters (filter pruning). Adding one is a
subclass decorated with :func:`register`.
"""
from __future__ import annotations

import torch

from .compaction import FilterUnit
from .masks import PrunableWeight


class Criterion:
    """A pruning criterion; subclasses set ``name`` (and ``needs_gradients``) and score units."""

    name: str = ""
    needs_gradients: bool = False  # whether prune() reads .grad (see accumulate_gradients)

    def weight_scores(self, unit: PrunableWeight) -> torch.Tensor:
        """Per-weight scores of one weight (its shape); low is pruned first."""
        raise NotImplementedError

    def filter_scores(self, unit: FilterUnit, norm: float) -> torch.Tensor:
        """One score per channel of a filter unit; low is pruned first."""
        raise NotImplementedError


REGISTRY: dict[str, Criterion] = {}


def register(cls: type[Criterion]) -> type[Criterion]:
    """Class decorator: add an instance of the criterion ``cls`` to :data:`REGISTRY` under ``cls.name``."""
    REGISTRY[cls.name] = cls()
    return cls


def get_criterion(name: str) -> Criterion:
    """The registered criterion called ``name``; ``ValueError`` naming the allowed ones otherwise."""
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"criterion must be one of {', '.join(REGISTRY)}; got {name!r}")
    return REGISTRY[name]


def needs_gradients(name: str) -> bool:
    """Whether criterion ``name`` reads gradients, so they must be accumulated before :func:`prune`
    (see :func:`accumulate_gradients`); ``ValueError`` for an unknown criterion."""
    return get_criterion(name).needs_gradients


def _score_dtype(weight: torch.Tensor) -> torch.dtype:
    """Scores are ranked in float32, or float64 for a float64 model (never in half precision)."""
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


class SignedCriterion(Criterion):
    """A criterion whose score is the magnitude of a signed value per weight (:meth:`signed`);
    a filter's score is the ``norm``-norm of those values over its weights in every conv of its unit."""

    def signed(self, unit: PrunableWeight, weight: torch.Tensor) -> torch.Tensor:
        """The signed value per weight of ``unit``; ``weight`` is its weight in the score dtype."""
        raise NotImplementedError

    def _signed(self, unit: PrunableWeight) -> torch.Tensor:
        weight = unit.weight
        return self.signed(unit, weight.to(_score_dtype(weight)))

    def gradient(self, unit: PrunableWeight, dtype: torch.dtype) -> torch.Tensor:
        """``dL/dw`` of ``unit`` in ``dtype``; ``ValueError`` if it has no ``.grad``."""
        grad = unit.parameter.grad
        if grad is None:
            raise ValueError(
                f"criterion {self.name!r} needs gradients, but layer {unit.name!r} has no .grad: "
                "run loss.backward() on one or more batches before prune()"
            )
        grad = grad.detach()
        return (grad if unit.rows is None else grad[unit.rows]).to(dtype)

    def weight_scores(self, unit: PrunableWeight) -> torch.Tensor:
        """``|signed value|`` per weight (never in place: for float32 it may be the weight itself)."""
        return self._signed(unit).abs()

    def filter_scores(self, unit: FilterUnit, norm: float) -> torch.Tensor:
        """The ``norm``-norm of each channel's signed values in all the unit's convs."""
        channels = unit.channels
        values = torch.cat([self._signed(PrunableWeight(unit.name, conv))[rows].reshape(channels, -1)
                            for conv, rows in unit.convs], dim=1)
        return torch.linalg.vector_norm(values, ord=norm, dim=1)


@register
class Magnitude(SignedCriterion):
    """``|w|``: the smallest weights go first."""

    name = "magnitude"

    def signed(self, unit: PrunableWeight, weight: torch.Tensor) -> torch.Tensor:
        """The weight itself."""
        return weight


@register
class Gradient(SignedCriterion):
    """``|dL/dw|``: the weights the loss is least sensitive to go first."""

    name = "gradient"
    needs_gradients = True

    def signed(self, unit: PrunableWeight, weight: torch.Tensor) -> torch.Tensor:
        """The accumulated gradient."""
        return self.gradient(unit, weight.dtype)


@register
class MagnitudeGradient(SignedCriterion):
    """``|w * dL/dw|``: the first-order Taylor estimate of the loss change from removing a weight."""

    name = "magnitude_gradient"
    needs_gradients = True

    def signed(self, unit: PrunableWeight, weight: torch.Tensor) -> torch.Tensor:
        """Weight times gradient."""
        return weight * self.gradient(unit, weight.dtype)


@register
class Random(Criterion):
    """Uniform random scores from torch's global generator (seed it for reproducibility)."""

    name = "random"

    def weight_scores(self, unit: PrunableWeight) -> torch.Tensor:
        """One ``torch.rand`` draw per weight."""
        return torch.rand(unit.weight.shape, device=unit.weight.device)

    def filter_scores(self, unit: FilterUnit, norm: float) -> torch.Tensor:
        """One ``torch.rand`` draw per channel."""
        return torch.rand(unit.channels, device=unit.root.module.weight.device)


CRITERIA = tuple(REGISTRY)
