"""Choosing which weights to prune: scores, exact global/layerwise selection, thresholds."""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from .criteria import CRITERIA, get_criterion, needs_gradients
from .masks import adopt_torch_pruning, arm, attach_optimizer, prunable_weights
from .schedules import check_sparsity
from .structures import (
    STRUCTURES, get_structure, nm_sparsity, parse_structure, units_in_scope, weight_keep, weights_in_scope,
)

SCOPES = ("global", "layerwise")
__all__ = [
    "CRITERIA", "SCOPES", "STRUCTURES", "needs_gradients", "nm_sparsity", "parse_structure", "units_in_scope",
    "kth_smallest", "lowest_k", "prune", "prune_threshold", "accumulate_gradients",
]


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")
    return value


SAMPLED_SELECTION_MIN = 1 << 16
SAMPLE_SIZE = 1 << 12


def kth_smallest(x: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th smallest value of 1-D ``x`` (1-based), exactly; a 0-d tensor on ``x``'s device.

    Large inputs are narrowed first: a strided sample brackets the answer, one pass counts what
    lies below the bracket, and ``torch.kthvalue`` runs only on the few candidates inside it.
    When the bracket misses (an unlucky sample) the whole input is ranked, so the answer is
    always ``torch.kthvalue(x, k)``'s. No random numbers are drawn.
    """
    n = x.numel()
    if n < SAMPLED_SELECTION_MIN:
        return torch.kthvalue(x, k).values
    sample = torch.sort(x[:: n // SAMPLE_SIZE]).values
    m = sample.numel()
    p = (k - 0.5) / n
    rank = p * m
    margin = 4 * math.sqrt(m * p * (1 - p)) + 16  # the sample rank's spread is sqrt(m p (1-p))
    lo_i, hi_i = int(rank - margin), int(rank + margin)
    if lo_i <= 0 and hi_i >= m - 1:
        return torch.kthvalue(x, k).values
    if lo_i <= 0:
        inside, below = x <= sample[hi_i], 0
    else:
        inside = x >= sample[lo_i]
        below = n - int(torch.count_nonzero(inside))
        if hi_i < m - 1:
            inside &= x <= sample[hi_i]
    candidates = x[inside]
    if below < k <= below + candidates.numel():
        return torch.kthvalue(candidates, k - below).values
    return torch.kthvalue(x, k).values


def lowest_k(scores: torch.Tensor, keep: torch.Tensor, k: int, pruned: int | None = None) -> torch.Tensor:
    """New keep-mask that prunes exactly ``k`` entries: all already pruned, then lowest scores.

    Ties at the threshold are broken by position (earlier first), so the count is exact.
    ``pruned``: how many entries ``keep`` already prunes, when the caller knows.
    """
    n = scores.numel()
    kept = n - (_current(keep) if pruned is None else pruned)
    need = k - (n - kept)  # how many of the kept entries go now
    if need <= 0:
        return keep.clone()
    if need >= kept:
        return torch.zeros_like(keep)
    kept_scores = scores if kept == n else scores[keep]
    if kept_scores.device.type == "mps":  # no kthvalue on MPS
        threshold = kth_smallest(kept_scores.cpu(), need).to(scores.device)
    else:
        threshold = kth_smallest(kept_scores, need)
    new_keep = keep & (scores >= threshold)
    missing = int(torch.count_nonzero(new_keep)) - (kept - need)
    if missing > 0:
        ties = new_keep & (scores == threshold)
        if int(torch.count_nonzero(ties)) == missing:  # the usual case: no positions needed
            new_keep &= ~ties
        else:
            new_keep[torch.nonzero(ties).flatten()[:missing]] = False
    return new_keep


def _current(keep: torch.Tensor) -> int:
    return keep.numel() - int(torch.count_nonzero(keep))


def _too_low(sparsity: float, current: int, total: int, where: str) -> ValueError:
    now = current / total
    return ValueError(
        f"sparsity {sparsity} is below the current sparsity {now:.6g} of {where}: pruning is "
        f"cumulative, so the allowed range is [{now:.6g}, 1)"
    )


def prune(
    model: nn.Module,
    sparsity: float,
    *,
    criterion: str = "magnitude",
    scope: str = "global",
    structure: str = "unstructured",
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    norm: float = 1,
    example_inputs=None,
) -> dict[str, torch.Tensor]:
    """Prune ``model`` in place so exactly ``round(sparsity * N)`` units in scope are pruned.

    Units are single weights (``structure="unstructured"``; N = prunable weights in scope, see
    :func:`prunable_weights`: Conv and Linear weights and attention's Q/K/V projections),
    whole conv output channels (``"filters"``, ranked by their ``norm``-norm; N = filters of the
    convs that can lose filters on their own, found by tracing the model on ``example_inputs``:
    convs whose channels meet another layer's in a residual add are left alone, a depthwise conv
    is pruned with the conv feeding it, and a pruned filter's bias and batch-norm scale and shift
    are zeroed too, so :func:`compact` can delete it; Linear layers are left alone), or single
    weights under an N:M pattern (``"2:4"``: in every group of M consecutive weights along the
    input dimension at most M - N are pruned, so ``sparsity`` may be at most ``1 - N/M``, where
    every group keeps exactly N).
    ``scope="global"`` ranks all units together, ``"layerwise"`` prunes each layer to
    ``round(sparsity * N_layer)``. Pruning is cumulative: pruned units stay pruned and a target
    below the current sparsity is a ``ValueError``. Pruned weights stay exactly zero under any
    optimizer; pass an ``optimizer`` that has already stepped (or call :func:`attach_optimizer`)
    so its old momentum cannot move them. Returns ``{weight_name: keep_mask}``.

    Steps: validate, find the structure's units, score them with the criterion, select the
    lowest, install the new keep-masks (criteria: :mod:`pruning_core.criteria`, structures:
    :mod:`pruning_core.structures`).
    """
    sparsity = check_sparsity(sparsity)
    scorer = get_criterion(criterion)
    _choice(scope, SCOPES, "scope")
    shape = get_structure(structure)
    shape.check(sparsity, example_inputs)
    weights = weights_in_scope(model, shape, include, exclude)
    for weight in weights:
        adopt_torch_pruning(weight.module)
    units = shape.units(model, weights, example_inputs)
    keeps = [shape.keep(u) for u in units]
    scores = [shape.scores(u, scorer, norm) for u in units]
    _check_not_nan(units, scores, criterion)
    scores = [shape.constrain(u, s, k) for u, s, k in zip(units, scores, keeps)]
    new_keeps = _select([u.name for u in units], keeps, scores, sparsity, scope)
    result = {u.name: shape.install(u, keep) for u, keep in zip(units, new_keeps)}
    arm(model)
    if optimizer is not None:
        attach_optimizer(model, optimizer)
    return result


def _check_not_nan(units: list, scores: list[torch.Tensor], criterion: str) -> None:
    """``ValueError`` for a unit with a NaN score (a diverged model, or NaN gradients): no ranking is exact."""
    for unit, score in zip(units, scores):
        if torch.isnan(score).any():
            raise ValueError(f"scores of layer {unit.name!r} contain NaN (criterion {criterion!r}): "
                             "its weights or gradients are NaN")


def _select(names: list[str], keeps: list[torch.Tensor], scores: list[torch.Tensor], sparsity: float,
            scope: str) -> list[torch.Tensor]:
    """New flat keep-masks, one per unit: the lowest scores pruned so exactly ``round(sparsity * N)``
    entries are, N counted over all units (``"global"``) or per unit (``"layerwise"``)."""
    sizes = [k.numel() for k in keeps]
    flat_keeps = [k.flatten() for k in keeps]
    flat_scores = [s.flatten() for s in scores]
    if scope == "global":
        groups = [("the pruned scope", torch.cat(flat_keeps), torch.cat(flat_scores))]
    else:
        groups = [(f"layer {name!r}", k, s) for name, k, s in zip(names, flat_keeps, flat_scores)]
    new_keeps = []
    for where, keep, score in groups:
        k, current = round(sparsity * keep.numel()), _current(keep)
        if k < current:
            raise _too_low(sparsity, current, keep.numel(), where)
        new_keeps.append(lowest_k(score, keep, k, current))
    return list(torch.split(new_keeps[0], sizes)) if scope == "global" else new_keeps


def prune_threshold(
    model: nn.Module,
    threshold: float,
    *,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> float:
    """Prune every prunable weight with ``abs(w) < threshold`` (cumulatively).

    Returns the resulting sparsity of the whole model (see :func:`pruning_core.sparsity`).
    """
    from .report import sparsity as model_sparsity

    threshold = float(threshold)
    if not threshold >= 0:
        raise ValueError(f"threshold must be a number >= 0, got {threshold}")
    for unit in prunable_weights(model, include, exclude):
        adopt_torch_pruning(unit.module)
        unit.set_mask((unit.weight.abs() >= threshold) & weight_keep(unit))
    arm(model)
    if optimizer is not None:
        attach_optimizer(model, optimizer)
    return model_sparsity(model)


def accumulate_gradients(model: nn.Module, batches, loss_fn=None) -> int:
    """Zero ``.grad`` and run backward over ``batches`` of ``(inputs, targets)``, in the model's
    current mode; normalisation layers' running statistics are left exactly as they were.

    Prepares the criteria that need gradients (see :func:`needs_gradients`); returns the batch count.
    """
    loss_fn = loss_fn or nn.functional.cross_entropy
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    saved = [{k: b.clone() for k, b in m._buffers.items() if b is not None} for m in norms]
    model.zero_grad(set_to_none=True)
    count = 0
    try:
        for inputs, targets in batches:
            loss_fn(model(inputs), targets).backward()
            count += 1
    finally:
        with torch.no_grad():
            for module, buffers in zip(norms, saved):
                for key, value in buffers.items():
                    module._buffers[key].copy_(value)
    if count == 0:
        raise ValueError("accumulate_gradients needs at least one batch")
    return count
