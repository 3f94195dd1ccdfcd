"""Pruning structures: what one pruned *unit* is (a single weight, a conv filter, a weight under N:M).

Each structure is one class registered in :data:`REGISTRY` under its kind. It parses its
``structure=`` strings, picks the weights it applies to, turns them into units, reads their
current keep-masks and scores (through a :class:`~pruning_core.criteria.Criterion`), may
constrain the scores (N:M), and installs the new keep-masks. :func:`pruning_core.prune` does
the rest (validation, exact global/layerwise selection) the same way for all of them. Adding a
structure is a subclass decorated with :func:`register`.
"""
from __future__ import annotations

import re
from typing import Iterable

import torch
from torch import nn

from .compaction import filter_keep, filter_units
from .criteria import Criterion
from .masks import CONV_TYPES, PrunableWeight, prunable_weights


class Structure:
    """A pruning structure, parsed from the user's ``structure`` string (kept as ``spec``).

    The default methods prune single weights; subclasses override what differs.
    """

    kind: str = ""
    args: tuple | None = None  # what the string parametrises (N:M's ``(n, m)``), None if nothing
    needs_example_inputs: bool = False  # whether prune() must trace the model on a batch it takes

    def __init__(self, spec: str):
        self.spec = spec

    @classmethod
    def parse(cls, spec: str) -> Structure | None:
        """The structure ``spec`` names if it is of this kind, else None (``ValueError`` if it is of
        this kind but malformed)."""
        return cls(spec) if spec == cls.kind else None

    @property
    def max_sparsity(self) -> float | None:
        """The highest sparsity this structure allows, or None if any below 1."""
        return None

    def check(self, sparsity: float, example_inputs) -> None:
        """``ValueError`` if :func:`prune`'s arguments do not suit this structure."""

    def weights_in_scope(self, weights: list[PrunableWeight]) -> list[PrunableWeight]:
        """The weights (of those in scope) this structure prunes; ``ValueError`` if one cannot be."""
        return weights

    def units(self, model: nn.Module, weights: list[PrunableWeight], example_inputs) -> list:
        """The units to prune, rooted at ``weights``."""
        return weights

    def keep(self, unit: PrunableWeight) -> torch.Tensor:
        """The unit's current keep-mask (True = kept), one entry per prunable element."""
        return weight_keep(unit)

    def scores(self, unit: PrunableWeight, criterion: Criterion, norm: float) -> torch.Tensor:
        """One score per entry of :meth:`keep` under ``criterion``; low is pruned first."""
        return criterion.weight_scores(unit)

    def constrain(self, unit: PrunableWeight, score: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``score`` with +inf where the structure forbids pruning (default: nothing forbidden)."""
        return score

    def install(self, unit: PrunableWeight, keep: torch.Tensor) -> torch.Tensor:
        """Install the unit's new (flat) keep-mask, zeroing what it prunes; returns a copy of the
        resulting weight mask."""
        unit.set_mask(keep.reshape(unit.weight.shape))
        return unit.mask.clone()


REGISTRY: dict[str, type[Structure]] = {}


def register(cls: type[Structure]) -> type[Structure]:
    """Class decorator: add the structure ``cls`` to :data:`REGISTRY` under ``cls.kind``."""
    REGISTRY[cls.kind] = cls
    return cls


def weight_keep(unit: PrunableWeight) -> torch.Tensor:
    """The keep-mask of one weight (its shape), all True while it has no mask."""
    mask = unit.mask
    return torch.ones(unit.weight.shape, dtype=torch.bool, device=unit.weight.device) if mask is None else mask


@register
class Unstructured(Structure):
    """Single weights: any weight may go."""

    kind = "unstructured"


@register
class Filters(Structure):
    """Whole conv output channels (filter units, see :mod:`pruning_core.compaction`), scored by the
    ``norm``-norm of their weights' criterion values."""

    kind = "filters"
    needs_example_inputs = True

    def check(self, sparsity: float, example_inputs) -> None:
        """Filters need ``example_inputs`` to trace the model's channel dependencies."""
        if example_inputs is None:
            raise ValueError("structure 'filters' needs example_inputs (a batch the model takes): the dependency "
                             "graph traced on it tells which convolutions' channels are tied together")

    def weights_in_scope(self, weights: list[PrunableWeight]) -> list[PrunableWeight]:
        """Only convolutions have filters."""
        return [w for w in weights if isinstance(w.module, CONV_TYPES)]

    def units(self, model: nn.Module, weights: list[PrunableWeight], example_inputs) -> list:
        """The filter units rooted at ``weights`` (see :func:`pruning_core.filter_units`)."""
        return filter_units(model, weights, example_inputs)[0]

    def keep(self, unit) -> torch.Tensor:
        """Which of the unit's channels still have a weight."""
        return filter_keep(unit)

    def scores(self, unit, criterion: Criterion, norm: float) -> torch.Tensor:
        """One score per channel."""
        return criterion.filter_scores(unit, norm)

    def install(self, unit, keep: torch.Tensor) -> torch.Tensor:
        """Prune the dropped channels in every layer of the unit; returns the root conv's mask."""
        unit.set_keep(keep)
        return unit.root.mask.clone()


_NM = re.compile(r"([0-9]+):([0-9]+)")


@register
class NM(Structure):
    """Single weights under an N:M pattern (``"2:4"``): in every group of M consecutive weights
    along the input dimension at most M - N are pruned."""

    kind = "n:m"

    def __init__(self, spec: str, n: int, m: int):
        super().__init__(spec)
        self.n, self.m = n, m
        self.args = (n, m)

    @classmethod
    def parse(cls, spec: str) -> Structure | None:
        """``"N:M"`` (surrounding spaces allowed) with ``0 < N < M``."""
        match = _NM.fullmatch(spec.strip())
        if not match:
            return None
        n, m = int(match.group(1)), int(match.group(2))
        if not 0 < n < m:
            raise ValueError(f"structure {spec!r}: N:M needs 0 < N < M (keep N of every M weights)")
        return cls(spec, n, m)

    @property
    def max_sparsity(self) -> float:
        """``1 - N/M``: every group keeps exactly N."""
        return 1.0 - self.n / self.m

    def check(self, sparsity: float, example_inputs) -> None:
        """The sparsity may be at most ``1 - N/M``."""
        if sparsity > self.max_sparsity + 1e-9:
            raise ValueError(f"structure {self.spec!r} keeps {self.n} of every {self.m} weights, so sparsity is "
                             f"at most {self.max_sparsity:g}; got {sparsity}")

    def weights_in_scope(self, weights: list[PrunableWeight]) -> list[PrunableWeight]:
        """All of them; ``ValueError`` for one whose input dimension is not a multiple of M."""
        for unit in weights:
            inputs = unit.weight.shape[1]
            if inputs % self.m:
                raise ValueError(f"structure '{self.n}:{self.m}': layer {unit.name!r} has input dimension {inputs}, "
                                 f"not a multiple of {self.m}; exclude it")
        return weights

    def constrain(self, unit: PrunableWeight, score: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``score`` where a weight may still go, +inf where it may not: in every group of M weights
        along the input dimension only the ``M - N`` lowest (pruned ones included) may."""
        n, m = self.n, self.m
        shape = unit.weight.shape
        rows, kept = _groups(score, m), _groups(keep, m)
        order = torch.argsort(torch.where(kept, rows, -torch.inf), dim=1, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(m, device=order.device).expand_as(order))
        pruned = m - kept.sum(dim=1)
        if bool((pruned > m - n).any()):
            raise ValueError(f"structure '{n}:{m}': layer {unit.name!r} already has more than {m - n} of "
                             f"{m} weights pruned in a group (pruned before without N:M)")
        return _ungroup(torch.where(kept & (rank < m - n), rows, torch.inf), shape)


def _groups(t: torch.Tensor, m: int) -> torch.Tensor:
    """``t`` (a weight's shape) as rows of ``m`` consecutive entries along the input dimension."""
    return t.movedim(1, -1).reshape(-1, m)


def _ungroup(rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    moved = (shape[0], *shape[2:], shape[1])
    return rows.reshape(moved).movedim(-1, 1)


STRUCTURES = tuple(REGISTRY)


def get_structure(structure: str) -> Structure:
    """The :class:`Structure` a ``structure`` string names; ``ValueError`` if it names none."""
    if isinstance(structure, str):
        for cls in REGISTRY.values():
            parsed = cls.parse(structure)
            if parsed is not None:
                return parsed
    raise ValueError(f"structure must be unstructured, filters or N:M such as \"2:4\"; got {structure!r}")


def needs_example_inputs(structure: str) -> bool:
    """Whether :func:`pruning_core.prune` with this ``structure`` needs ``example_inputs`` (a batch
    the model takes, to trace which layers' channels are tied together)."""
    return get_structure(structure).needs_example_inputs


def parse_structure(structure: str) -> tuple[str, tuple[int, int] | None]:
    """``("unstructured" | "filters", None)``, or ``("n:m", (n, m))`` for a string like ``"2:4"``."""
    parsed = get_structure(structure)
    return parsed.kind, parsed.args


def nm_sparsity(structure: str) -> float | None:
    """The sparsity an N:M ``structure`` fixes every layer at (``1 - n/m``); None for other structures."""
    return get_structure(structure).max_sparsity


def weights_in_scope(
    model: nn.Module, structure: Structure, include: Iterable[str] | None, exclude: Iterable[str] | None,
) -> list[PrunableWeight]:
    """The prunable weights ``structure`` prunes; ``ValueError`` if there are none or one cannot be."""
    weights = structure.weights_in_scope(prunable_weights(model, include, exclude))
    if not weights:
        raise ValueError(f"no prunable layers in scope (structure={structure.spec!r}, include={include}, "
                         f"exclude={exclude})")
    return weights


def units_in_scope(
    model: nn.Module,
    structure: str = "unstructured",
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> list[PrunableWeight]:
    """The weights :func:`prune` prunes with these arguments; ``ValueError`` if there are none, or if
    the structure cannot apply to one of them (N:M on a layer whose input is not a multiple of M)."""
    return weights_in_scope(model, get_structure(structure), include, exclude)
