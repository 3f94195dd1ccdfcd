"""How pruning is held on a model: a boolean ``weight_mask`` buffer beside the real ``weight``.

The weight itself stays an ordinary ``nn.Parameter`` whose pruned entries are exactly zero.
Nothing runs in ``forward``; an optimizer attached with :func:`attach_optimizer` masks the
gradients before each step and re-zeroes the weights after it. Because the mask is a
buffer, ``copy.deepcopy``, ``state_dict`` and ``.to(device)`` carry it for free, and
``torch.compile`` sees the very same parameter tensors that reports and saves read.

Modules pruned with ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask`` + a forward
pre-hook) are understood too: they count in reports, and :func:`make_permanent` removes
their machinery.
"""
from __future__ import annotations

import fnmatch
import weakref
from typing import Iterable, Iterator

import torch
import torch.nn.utils.prune
from torch import nn

MASK = "weight_mask"
PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def prunable_modules(
    model: nn.Module,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every Conv1d/2d/3d and Linear whose ``weight`` may be pruned.

    ``include``/``exclude`` are module names or ``fnmatch`` patterns (``"layer3.*"``).
    """
    include = list(include) if include is not None else None
    exclude = list(exclude or [])
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        if include is not None and not _matches(name, include):
            continue
        if _matches(name, exclude):
            continue
        found.append((name, module))
    return found


def is_torch_pruned(module: nn.Module) -> bool:
    """True if ``torch.nn.utils.prune`` holds this module's weight (``weight_orig``)."""
    return "weight_orig" in module._parameters and MASK in module._buffers


def has_mask(module: nn.Module) -> bool:
    """True if this module carries a pruning mask (ours or torch's)."""
    return MASK in module._buffers


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the module computes with, never a stale copy."""
    if is_torch_pruned(module):
        return module.weight_orig.detach() * module._buffers[MASK]
    return module.weight.detach()


def get_mask(module: nn.Module) -> torch.Tensor | None:
    """The module's keep-mask as a bool tensor (True = kept), or None if unpruned."""
    mask = module._buffers.get(MASK)
    return None if mask is None else mask.bool()


def adopt_torch_pruning(module: nn.Module) -> None:
    """Replace ``torch.nn.utils.prune`` machinery on ``module`` by a pruning_core mask."""
    if not is_torch_pruned(module):
        return
    mask = module._buffers[MASK].bool().clone()
    torch.nn.utils.prune.remove(module, "weight")
    set_mask(module, mask)


def set_mask(module: nn.Module, mask: torch.Tensor) -> None:
    """Install ``mask`` (True = keep) on ``module`` and zero the pruned weights now."""
    adopt_torch_pruning(module)
    weight = module.weight
    if mask.shape != weight.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match weight {tuple(weight.shape)}")
    mask = mask.to(device=weight.device, dtype=torch.bool)
    existing = module._buffers.get(MASK)
    if existing is not None:
        existing.copy_(mask)
    else:
        module.register_buffer(MASK, mask.clone())
    with torch.no_grad():
        weight.mul_(module._buffers[MASK])


def masked_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every module that carries a pruning_core mask (not torch's)."""
    for name, module in model.named_modules():
        if MASK in module._buffers and "weight" in module._parameters:
            yield name, module


@torch.no_grad()
def apply_masks(model: nn.Module) -> None:
    """Re-zero every pruned weight (call after any update that ignores the masks)."""
    for _, module in masked_modules(model):
        module.weight.mul_(module._buffers[MASK])


@torch.no_grad()
def mask_gradients(model: nn.Module) -> None:
    """Zero the gradients of pruned weights."""
    for _, module in masked_modules(model):
        grad = module.weight.grad
        if grad is not None:
            grad.mul_(module._buffers[MASK])


@torch.no_grad()
def clear_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Zero the optimizer's per-weight state (momentum, Adam moments) at pruned positions."""
    for _, module in masked_modules(model):
        state = optimizer.state.get(module.weight)
        if not state:
            continue
        mask = module._buffers[MASK]
        for value in state.values():
            if torch.is_tensor(value) and value.shape == mask.shape:
                value.mul_(mask)


_ATTACHED: "weakref.WeakKeyDictionary[torch.optim.Optimizer, set[int]]" = weakref.WeakKeyDictionary()


def attach_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Keep ``model``'s pruned weights exactly zero while ``optimizer`` trains it.

    Registers a step pre-hook (mask gradients) and post-hook (re-zero weights) and clears
    stale optimizer state at pruned positions. Works for an optimizer made before or after
    the prune, for masks added later, and is idempotent. Returns the optimizer.
    """
    attached = _ATTACHED.setdefault(optimizer, set())
    if id(model) not in attached:
        model_ref = weakref.ref(model)

        def pre_hook(opt, args, kwargs):
            m = model_ref()
            if m is not None:
                mask_gradients(m)

        def post_hook(opt, args, kwargs):
            m = model_ref()
            if m is not None:
                apply_masks(m)

        optimizer.register_step_pre_hook(pre_hook)
        optimizer.register_step_post_hook(post_hook)
        attached.add(id(model))
    clear_optimizer_state(model, optimizer)
    return optimizer


def make_permanent(model: nn.Module) -> nn.Module:
    """Bake masks into the weights and remove all pruning machinery (ours and torch's).

    Afterwards ``model.state_dict()`` has exactly the keys of an unpruned model.
    """
    for _, module in list(model.named_modules()):
        if is_torch_pruned(module):
            torch.nn.utils.prune.remove(module, "weight")
        elif MASK in module._buffers:
            with torch.no_grad():
                module.weight.mul_(module._buffers[MASK])
            del module._buffers[MASK]
    return model


def load_state_dict(model: nn.Module, state_dict: dict, strict: bool = True):
    """Load a pruned model's ``state_dict`` into a fresh instance, masks included.

    This is the documented way to restore a pruned model (checkpoints, resume). Accepts
    pruning_core state dicts and torch.nn.utils.prune ones (``weight_orig``/``weight_mask``).
    """
    state_dict = dict(state_dict)
    suffix = "." + MASK
    for key in [k for k in state_dict if k.endswith(suffix) or k == MASK]:
        prefix = key[: -len(MASK)]
        module = model.get_submodule(prefix[:-1]) if prefix else model
        orig_key = prefix + "weight_orig"
        if orig_key in state_dict:  # torch.nn.utils.prune layout
            mask = state_dict[key].bool()
            state_dict[prefix + "weight"] = state_dict.pop(orig_key) * mask
            state_dict[key] = mask
        if is_torch_pruned(module):
            adopt_torch_pruning(module)
        if MASK not in module._buffers:
            module.register_buffer(MASK, torch.ones_like(module.weight, dtype=torch.bool))
    return model.load_state_dict(state_dict, strict=strict)
