"""Choosing which weights to prune: scores, exact global/layerwise selection, thresholds."""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from .masks import (
    CONV_TYPES,
    adopt_torch_pruning,
    attach_optimizer,
    effective_weight,
    get_mask,
    prunable_modules,
    set_mask,
)
from .schedules import check_sparsity

CRITERIA = ("magnitude", "gradient", "magnitude_gradient", "random")
SCOPES = ("global", "layerwise")
STRUCTURES = ("unstructured", "filters")


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _gradient(name: str, module: nn.Module, criterion: str) -> torch.Tensor:
    grad = module.weight.grad
    if grad is None:
        raise ValueError(
            f"criterion {criterion!r} needs gradients, but layer {name!r} has no .grad: "
            "run loss.backward() on one or more batches before prune()"
        )
    return grad.detach()


def _signed_score(name: str, module: nn.Module, criterion: str) -> torch.Tensor:
    """``w``, ``dL/dw`` or ``w * dL/dw`` of ``module.weight`` (float32): its magnitude is the score."""
    weight = effective_weight(module).float()
    if criterion == "magnitude":
        return weight
    grad = _gradient(name, module, criterion).float()
    return grad if criterion == "gradient" else weight * grad


def _filter_scores(name: str, module: nn.Module, criterion: str, norm: float) -> torch.Tensor:
    out_channels = module.weight.shape[0]
    if criterion == "random":
        return torch.rand(out_channels, device=module.weight.device)
    values = _signed_score(name, module, criterion)
    return torch.linalg.vector_norm(values.reshape(out_channels, -1), ord=norm, dim=1)


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


def _filter_keep(module: nn.Module) -> torch.Tensor:
    """Which output channels of ``module`` still have a weight (True = kept)."""
    mask = get_mask(module)
    out_channels = module.weight.shape[0]
    if mask is None:
        return torch.ones(out_channels, dtype=torch.bool, device=module.weight.device)
    return mask.reshape(out_channels, -1).any(dim=1)


def _weight_keep(modules, total: int) -> torch.Tensor:
    """All modules' keep-masks as one flat bool tensor."""
    masks = [get_mask(module) for _, module in modules]
    if all(mask is None for mask in masks):
        return torch.ones(total, dtype=torch.bool, device=modules[0][1].weight.device)
    return torch.cat([torch.ones(module.weight.numel(), dtype=torch.bool, device=module.weight.device)
                      if mask is None else mask.flatten() for (_, module), mask in zip(modules, masks)])


def _flat_weight_scores(modules, criterion: str) -> torch.Tensor:
    """All modules' per-weight scores (float32) as one flat tensor; low is pruned first."""
    if criterion == "random":
        return torch.cat([torch.rand(module.weight.numel(), device=module.weight.device) for _, module in modules])
    return torch.cat([_signed_score(name, module, criterion).flatten() for name, module in modules]).abs_()


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
) -> dict[str, torch.Tensor]:
    """Prune ``model`` in place so exactly ``round(sparsity * N)`` units in scope are pruned.

    Units are single weights (``structure="unstructured"``; N = prunable weights in scope)
    or whole conv output channels (``"filters"``, ranked by their ``norm``-norm; N = filters;
    Linear layers are left alone). ``scope="global"`` ranks all units together,
    ``"layerwise"`` prunes each layer to ``round(sparsity * N_layer)``. Pruning is cumulative:
    pruned units stay pruned and a target below the current sparsity is a ``ValueError``.
    Pass every ``optimizer`` that trains the model (or call :func:`attach_optimizer`) so
    pruned weights stay exactly zero. Returns ``{module_name: keep_mask}``.
    """
    sparsity = check_sparsity(sparsity)
    _choice(criterion, CRITERIA, "criterion")
    _choice(scope, SCOPES, "scope")
    _choice(structure, STRUCTURES, "structure")
    modules = prunable_modules(model, include, exclude)
    if structure == "filters":
        modules = [(n, m) for n, m in modules if isinstance(m, CONV_TYPES)]
    if not modules:
        raise ValueError(f"no prunable layers in scope (structure={structure!r}, include={include}, exclude={exclude})")
    for _, module in modules:
        adopt_torch_pruning(module)

    if structure == "filters":
        units = [module.weight.shape[0] for _, module in modules]
        keep_all = torch.cat([_filter_keep(module) for _, module in modules])
        score_all = torch.cat([_filter_scores(name, module, criterion, norm) for name, module in modules])
    else:
        units = [module.weight.numel() for _, module in modules]
        keep_all = _weight_keep(modules, sum(units))
        score_all = _flat_weight_scores(modules, criterion)
    if torch.isnan(score_all).any():  # a diverged model, or NaN gradients: no ranking is exact
        for (name, _), score in zip(modules, torch.split(score_all, units)):
            if torch.isnan(score).any():
                raise ValueError(f"scores of layer {name!r} contain NaN (criterion {criterion!r}): "
                                 "its weights or gradients are NaN")

    if scope == "global":
        groups = [("the pruned scope", keep_all, score_all)]
    else:
        groups = [(f"layer {name!r}", keep, score) for (name, _), keep, score
                  in zip(modules, torch.split(keep_all, units), torch.split(score_all, units))]
    new_keeps = []
    for where, keep, score in groups:
        k, current = round(sparsity * keep.numel()), _current(keep)
        if k < current:
            raise _too_low(sparsity, current, keep.numel(), where)
        new_keeps.append(lowest_k(score, keep, k, current))
    if scope == "global":
        new_keeps = torch.split(new_keeps[0], units)

    result = {}
    for (name, module), keep in zip(modules, new_keeps):
        shape = module.weight.shape
        if structure == "filters":
            mask = keep.reshape(-1, *([1] * (len(shape) - 1))).expand(shape)
        else:
            mask = keep.reshape(shape)
        set_mask(module, mask)
        result[name] = get_mask(module)
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
    for _, module in prunable_modules(model, include, exclude):
        weight = effective_weight(module)
        mask = get_mask(module)
        keep = weight.abs() >= threshold
        set_mask(module, keep if mask is None else keep & mask)
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
