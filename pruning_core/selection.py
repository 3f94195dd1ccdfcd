"""Choosing which weights to prune: scores, exact global/layerwise selection, thresholds."""
from __future__ import annotations

import math
import re
from typing import Iterable

import torch
from torch import nn

from .compaction import FilterUnit, filter_keep, filter_units
from .masks import CONV_TYPES, PrunableWeight, adopt_torch_pruning, arm, attach_optimizer, prunable_weights
from .schedules import check_sparsity

CRITERIA = ("magnitude", "gradient", "magnitude_gradient", "random")
SCOPES = ("global", "layerwise")
STRUCTURES = ("unstructured", "filters", "n:m")
_NM = re.compile(r"([0-9]+):([0-9]+)")


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def parse_structure(structure: str) -> tuple[str, tuple[int, int] | None]:
    """``("unstructured" | "filters", None)``, or ``("n:m", (n, m))`` for a string like ``"2:4"``."""
    if isinstance(structure, str):
        match = _NM.fullmatch(structure.strip())
        if match:
            n, m = int(match.group(1)), int(match.group(2))
            if 0 < n < m:
                return "n:m", (n, m)
            raise ValueError(f"structure {structure!r}: N:M needs 0 < N < M (keep N of every M weights)")
        if structure in ("unstructured", "filters"):
            return structure, None
    raise ValueError(f"structure must be unstructured, filters or N:M such as \"2:4\"; got {structure!r}")


def nm_sparsity(structure: str) -> float | None:
    """The sparsity an N:M ``structure`` fixes every layer at (``1 - n/m``); None for other structures."""
    kind, nm = parse_structure(structure)
    return None if nm is None else 1.0 - nm[0] / nm[1]


def _score_dtype(weight: torch.Tensor) -> torch.dtype:
    """Scores are ranked in float32, or float64 for a float64 model (never in half precision)."""
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


def _gradient(unit: PrunableWeight, criterion: str) -> torch.Tensor:
    grad = unit.parameter.grad
    if grad is None:
        raise ValueError(
            f"criterion {criterion!r} needs gradients, but layer {unit.name!r} has no .grad: "
            "run loss.backward() on one or more batches before prune()"
        )
    grad = grad.detach()
    return grad if unit.rows is None else grad[unit.rows]


def _signed_score(unit: PrunableWeight, criterion: str) -> torch.Tensor:
    """``w``, ``dL/dw`` or ``w * dL/dw`` of the unit's weight: its magnitude is the score."""
    weight = unit.weight
    dtype = _score_dtype(weight)
    weight = weight.to(dtype)
    if criterion == "magnitude":
        return weight
    grad = _gradient(unit, criterion).to(dtype)
    return grad if criterion == "gradient" else weight * grad


def _weight_scores(unit: PrunableWeight, criterion: str) -> torch.Tensor:
    """Per-weight scores of one unit (its shape); low is pruned first."""
    if criterion == "random":
        return torch.rand(unit.weight.shape, device=unit.weight.device)
    return _signed_score(unit, criterion).abs()  # never in place: for float32 that is the weight itself


def _filter_scores(unit: FilterUnit, criterion: str, norm: float) -> torch.Tensor:
    """One score per channel of a filter unit: the ``norm``-norm of its filters in all the unit's convs."""
    channels = unit.channels
    if criterion == "random":
        return torch.rand(channels, device=unit.root.module.weight.device)
    values = torch.cat([_signed_score(PrunableWeight(unit.name, conv), criterion)[rows].reshape(channels, -1)
                        for conv, rows in unit.convs], dim=1)
    return torch.linalg.vector_norm(values, ord=norm, dim=1)


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


def _weight_keep(unit: PrunableWeight) -> torch.Tensor:
    mask = unit.mask
    return torch.ones(unit.weight.shape, dtype=torch.bool, device=unit.weight.device) if mask is None else mask


def _groups(t: torch.Tensor, m: int) -> torch.Tensor:
    """``t`` (a weight's shape) as rows of ``m`` consecutive entries along the input dimension."""
    return t.movedim(1, -1).reshape(-1, m)


def _ungroup(rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    moved = (shape[0], *shape[2:], shape[1])
    return rows.reshape(moved).movedim(-1, 1)


def units_in_scope(
    model: nn.Module,
    structure: str = "unstructured",
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> list[PrunableWeight]:
    """The weights :func:`prune` prunes with these arguments; ``ValueError`` if there are none, or if
    the structure cannot apply to one of them (N:M on a layer whose input is not a multiple of M)."""
    kind, nm = parse_structure(structure)
    units = prunable_weights(model, include, exclude)
    if kind == "filters":
        units = [u for u in units if isinstance(u.module, CONV_TYPES)]
    if not units:
        raise ValueError(f"no prunable layers in scope (structure={structure!r}, include={include}, exclude={exclude})")
    if nm is not None:
        for unit in units:
            inputs = unit.weight.shape[1]
            if inputs % nm[1]:
                raise ValueError(f"structure '{nm[0]}:{nm[1]}': layer {unit.name!r} has input dimension {inputs}, "
                                 f"not a multiple of {nm[1]}; exclude it")
    return units


def _nm_scores(unit: PrunableWeight, score: torch.Tensor, keep: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """``score`` where a weight may still go under N:M, +inf where it may not: in every group of
    ``m`` weights along the input dimension only the ``m - n`` lowest (pruned ones included) may."""
    shape = unit.weight.shape
    rows, kept = _groups(score, m), _groups(keep, m)
    order = torch.argsort(torch.where(kept, rows, -torch.inf), dim=1, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(m, device=order.device).expand_as(order))
    pruned = m - kept.sum(dim=1)
    if bool((pruned > m - n).any()):
        raise ValueError(f"structure '{n}:{m}': layer {unit.name!r} already has more than {m - n} of "
                         f"{m} weights pruned in a group (pruned before without N:M)")
    return _ungroup(torch.where(kept & (rank < m - n), rows, torch.inf), shape)


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
    """
    sparsity = check_sparsity(sparsity)
    _choice(criterion, CRITERIA, "criterion")
    _choice(scope, SCOPES, "scope")
    kind, nm = parse_structure(structure)
    if nm is not None and sparsity > nm_sparsity(structure) + 1e-9:
        raise ValueError(f"structure {structure!r} keeps {nm[0]} of every {nm[1]} weights, so sparsity is at most "
                         f"{nm_sparsity(structure):g}; got {sparsity}")
    if kind == "filters" and example_inputs is None:
        raise ValueError("structure 'filters' needs example_inputs (a batch the model takes): the dependency "
                         "graph traced on it tells which convolutions' channels are tied together")
    units = units_in_scope(model, structure, include, exclude)
    for unit in units:
        adopt_torch_pruning(unit.module)
    if kind == "filters":
        units, _ = filter_units(model, units, example_inputs)
        keeps = [filter_keep(u) for u in units]
        scores = [_filter_scores(u, criterion, norm) for u in units]
    else:
        keeps = [_weight_keep(u) for u in units]
        scores = [_weight_scores(u, criterion) for u in units]
    for unit, score in zip(units, scores):  # a diverged model, or NaN gradients: no ranking is exact
        if torch.isnan(score).any():
            raise ValueError(f"scores of layer {unit.name!r} contain NaN (criterion {criterion!r}): "
                             "its weights or gradients are NaN")
    if nm is not None:
        scores = [_nm_scores(u, s, k, *nm) for u, s, k in zip(units, scores, keeps)]
    sizes = [k.numel() for k in keeps]
    flat_keeps = [k.flatten() for k in keeps]
    flat_scores = [s.flatten() for s in scores]
    if scope == "global":
        groups = [("the pruned scope", torch.cat(flat_keeps), torch.cat(flat_scores))]
    else:
        groups = [(f"layer {u.name!r}", k, s) for u, k, s in zip(units, flat_keeps, flat_scores)]
    new_keeps = []
    for where, keep, score in groups:
        k, current = round(sparsity * keep.numel()), _current(keep)
        if k < current:
            raise _too_low(sparsity, current, keep.numel(), where)
        new_keeps.append(lowest_k(score, keep, k, current))
    if scope == "global":
        new_keeps = torch.split(new_keeps[0], sizes)

    result = {}
    for unit, keep in zip(units, new_keeps):
        if kind == "filters":
            unit.set_keep(keep)
            result[unit.name] = unit.root.mask.clone()
        else:
            unit.set_mask(keep.reshape(unit.weight.shape))
            result[unit.name] = unit.mask.clone()
    arm(model)
    if optimizer is not None:
        attach_optimizer(model, optimizer)
    return result


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
        unit.set_mask((unit.weight.abs() >= threshold) & _weight_keep(unit))
    arm(model)
    if optimizer is not None:
        attach_optimizer(model, optimizer)
    return model_sparsity(model)


def accumulate_gradients(model: nn.Module, batches, loss_fn=None) -> int:
    """Zero ``.grad`` and run backward over ``batches`` of ``(inputs, targets)``, in the model's
    current mode; normalisation layers' running statistics are left exactly as they were.

    Prepares the ``gradient`` and ``magnitude_gradient`` criteria; returns the batch count.
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
