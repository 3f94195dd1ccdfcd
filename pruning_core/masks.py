"""How pruning is held on a model: a boolean ``<param>_mask`` buffer beside the real parameter
(``weight_mask`` beside a Conv/Linear ``weight``, ``in_proj_weight_mask`` beside an attention's
fused Q/K/V projection).

The parameter itself stays an ordinary ``nn.Parameter`` whose pruned entries are exactly zero.
Nothing runs in ``forward``'s arithmetic. Instead, every masked parameter carries a hook that
zeroes the pruned entries of its gradient as soon as autograd has accumulated it, so no
optimizer, attached or not, made before or after the prune, moves a pruned weight: a zero
weight with a zero gradient and zero optimizer state stays zero under SGD (momentum, weight
decay), Adam and AdamW alike. Only state an optimizer built up *before* the prune (momentum,
Adam moments at now-pruned positions) can still move them; :func:`attach_optimizer` clears
that state and, around every step, masks the gradients and re-zeroes the weights.

Deep copies and unpickled models get their gradient hooks back on their first forward pass
(forward pre-hooks, which copy and pickle with the modules, re-arm them, under ``torch.compile``
too), :func:`load_state_dict`/``load_pruned`` arm them at once, and :func:`arm` does it by hand.
Because the mask is a buffer, ``state_dict`` and ``.to(device)`` carry it, and
``torch.compile`` sees the very same parameter tensors that reports and saves read.

Modules pruned with ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask`` + a forward
pre-hook) are understood too: they count in reports, and :func:`make_permanent` removes
their machinery.
"""
from __future__ import annotations

import fnmatch
import weakref
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
import torch.nn.utils.prune
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

MASK = "weight_mask"
SUFFIX = "_mask"
PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
PROJECTIONS = ("q", "k", "v")


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def prunable_modules(
    model: nn.Module,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every Conv1d/2d/3d and Linear whose ``weight`` may be pruned.

    ``include``/``exclude`` are module names or ``fnmatch`` patterns (``"layer3.*"``).
    Attention's Q/K/V projections are prunable weights too, but not modules of their own:
    :func:`prunable_weights` lists them.
    """
    return [(unit.name, unit.module) for unit in prunable_weights(model, include, exclude) if unit.param == "weight"]


@dataclass(frozen=True, eq=False)
class PrunableWeight:
    """One prunable weight matrix: a Conv/Linear ``weight``, or one projection (``q``, ``k``,
    ``v``) of an ``nn.MultiheadAttention``, named ``<attention>.q_proj`` and so on.

    ``rows`` selects the projection's rows of a fused ``in_proj_weight``; ``None`` is the whole
    parameter.
    """

    name: str
    module: nn.Module
    param: str = "weight"
    rows: slice | None = None

    @property
    def parameter(self) -> torch.Tensor:
        return self.module._parameters[self.param]

    @property
    def weight(self) -> torch.Tensor:
        """The values the layer computes with (detached), never a stale copy."""
        if self.param == "weight" and is_torch_pruned(self.module):
            value = self.module.weight_orig.detach() * self.module._buffers[MASK]
        else:
            value = self.parameter.detach()
        return value if self.rows is None else value[self.rows]

    @property
    def mask(self) -> torch.Tensor | None:
        """The keep-mask (bool, True = kept), or None while nothing of it is pruned."""
        mask = self.module._buffers.get(self.param + SUFFIX)
        if mask is None:
            return None
        mask = mask.bool()
        return mask if self.rows is None else mask[self.rows]

    def set_mask(self, mask: torch.Tensor) -> None:
        """Install ``mask`` (True = keep) and zero the pruned weights now."""
        if self.rows is None:
            set_mask(self.module, mask, self.param)
            return
        full = self.module._buffers.get(self.param + SUFFIX)
        full = torch.ones_like(self.parameter, dtype=torch.bool) if full is None else full.bool().clone()
        if mask.shape != full[self.rows].shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match {self.name} {tuple(full[self.rows].shape)}")
        full[self.rows] = mask.to(full.device)
        set_mask(self.module, full, self.param)


def _attention_weights(name: str, module: nn.MultiheadAttention) -> list[PrunableWeight]:
    if module._qkv_same_embed_dim:
        e = module.embed_dim
        return [PrunableWeight(f"{name}.{p}_proj", module, "in_proj_weight", slice(i * e, (i + 1) * e))
                for i, p in enumerate(PROJECTIONS)]
    return [PrunableWeight(f"{name}.{p}_proj", module, f"{p}_proj_weight") for p in PROJECTIONS]


def prunable_weights(
    model: nn.Module,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> list[PrunableWeight]:
    """Every prunable weight of ``model`` in module order: Conv1d/2d/3d and Linear weights, and the
    Q, K and V projections of each ``nn.MultiheadAttention`` (its ``out_proj`` is a Linear).

    ``include``/``exclude`` are names or ``fnmatch`` patterns; a pattern matches a weight when it
    matches the weight's name or the name of the module holding it (``"*.self_attention"``
    selects an attention's three projections).
    """
    include = list(include) if include is not None else None
    exclude = list(exclude or [])
    found, seen = [], set()
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES):
            units = [PrunableWeight(name, module)]
        elif isinstance(module, nn.MultiheadAttention):
            units = _attention_weights(name, module)
        else:
            continue
        for unit in units:
            names = (unit.name, name)
            if include is not None and not any(_matches(n, include) for n in names):
                continue
            if any(_matches(n, exclude) for n in names):
                continue
            key = (id(unit.module._parameters.get(unit.param, unit.module)), unit.rows and unit.rows.start)
            if key not in seen:  # a weight tied between two layers counts once, under its first name
                seen.add(key)
                found.append(unit)
    return found


def is_torch_pruned(module: nn.Module) -> bool:
    """True if ``torch.nn.utils.prune`` holds this module's weight (``weight_orig``)."""
    return "weight_orig" in module._parameters and MASK in module._buffers


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the module computes with, never a stale copy."""
    return PrunableWeight("", module).weight


def get_mask(module: nn.Module, param: str = "weight") -> torch.Tensor | None:
    """The keep-mask of ``module``'s ``param`` as a bool tensor (True = kept), or None if unpruned.

    It is the mask buffer itself: read it, change masks only through pruning_core."""
    mask = module._buffers.get(param + SUFFIX)
    return None if mask is None else mask.bool()


def adopt_torch_pruning(module: nn.Module) -> None:
    """Replace ``torch.nn.utils.prune`` machinery on ``module`` by a pruning_core mask."""
    if not is_torch_pruned(module):
        return
    mask = module._buffers[MASK].bool().clone()
    torch.nn.utils.prune.remove(module, "weight")
    set_mask(module, mask)


def set_mask(module: nn.Module, mask: torch.Tensor, param: str = "weight") -> None:
    """Install ``mask`` (True = keep) on ``module``'s ``param`` and zero the pruned weights now."""
    if param == "weight":
        adopt_torch_pruning(module)
    weight = module._parameters[param]
    if mask.shape != weight.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match {param} {tuple(weight.shape)}")
    mask = mask.to(device=weight.device, dtype=torch.bool)
    existing = module._buffers.get(param + SUFFIX)
    if existing is not None:
        existing.copy_(mask)
    else:
        module.register_buffer(param + SUFFIX, mask.clone())
    with torch.no_grad():
        weight.mul_(module._buffers[param + SUFFIX])
    _arm_module(module)


def mask_entries(module: nn.Module) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(parameter name, parameter, mask)`` of every pruning_core mask on ``module`` (not torch's):
    a buffer ``<name>_mask`` beside a parameter ``<name>``."""
    for key, mask in list(module._buffers.items()):
        if mask is not None and key.endswith(SUFFIX):
            param = module._parameters.get(key[: -len(SUFFIX)])
            if param is not None:
                yield key[: -len(SUFFIX)], param, mask


def masked_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every module that carries a pruning_core mask (not torch's)."""
    for name, module in model.named_modules():
        if next(mask_entries(module), None) is not None:
            yield name, module


def _masked(model: nn.Module) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for _, module in masked_modules(model):
        for _, param, mask in mask_entries(module):
            yield param, mask


# parameter -> [(module holding it, its mask buffer's name), ...] (a tied weight has several)
_OWNERS: WeakIdKeyDictionary = WeakIdKeyDictionary()
# models whose every masked module has been armed (a deep copy is a new object: armed on its first call)
_ARMED: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _holds(module_ref, key: str, param: torch.Tensor) -> nn.Module | None:
    """The owner's module if it is alive and still holds ``param`` under ``key``'s parameter name."""
    module = module_ref()
    return module if module is not None and module._parameters.get(key[: -len(SUFFIX)]) is param else None


def _mask_accumulated_gradient(param: torch.Tensor) -> None:
    if param.grad is None:
        return
    for module_ref, key in _OWNERS.get(param, ()):
        module = _holds(module_ref, key, param)
        mask = module._buffers.get(key) if module is not None else None
        if mask is not None:
            param.grad.mul_(mask)


def _rearm(module: nn.Module, args) -> None:
    """Forward pre-hook of a masked module: hooks for a parameter that is new to it (a deep
    copy's, an unpickled model's, a replaced one). Skipped while compiling (see :func:`_rearm_model`)."""
    if not torch.compiler.is_compiling():
        _arm_module(module)


def _arm_once(model: nn.Module) -> None:
    if model not in _ARMED:
        arm(model)


def _rearm_model(model: nn.Module, args) -> None:
    """Forward pre-hook of a pruned model: a copy of it gets every masked module armed on its first
    call, also under ``torch.compile`` (run eagerly there, through ``torch.compiler.disable`` taken
    only then: importing torch's compiler up front would cost every process a second and a half)
    and for weights applied without calling their module."""
    if torch.compiler.is_compiling():
        torch.compiler.disable(_arm_once)(model)
    else:
        _arm_once(model)


def _arm_module(module: nn.Module) -> None:
    if _rearm not in module._forward_pre_hooks.values():
        module.register_forward_pre_hook(_rearm)
    for name, param, _ in mask_entries(module):
        if not param.requires_grad:
            continue  # armed when it is unfrozen and the module next runs
        owners = _OWNERS.get(param)
        if owners is None:
            owners = _OWNERS[param] = []
            param.register_post_accumulate_grad_hook(_mask_accumulated_gradient)
        owners[:] = [(r, k) for r, k in owners if _holds(r, k, param) is not None]
        if not any(r() is module and k == name + SUFFIX for r, k in owners):
            owners.append((weakref.ref(module), name + SUFFIX))


def arm(model: nn.Module) -> nn.Module:
    """Make autograd zero the pruned entries of every masked parameter's gradient in ``model``.

    ``prune``, ``load_state_dict`` and ``load_pruned`` do this; a deep copy or an unpickled model
    does it on its first forward pass. Call it yourself only to arm such a copy before that (say,
    before wrapping it in ``nn.DataParallel``). Returns ``model``.
    """
    if _rearm_model not in model._forward_pre_hooks.values():
        model.register_forward_pre_hook(_rearm_model)
    for _, module in masked_modules(model):
        _arm_module(module)
    _ARMED[model] = True
    return model


def disarm(module: nn.Module) -> None:
    """Remove the re-arming hooks of ``module`` and its gradient masking (its masks are gone)."""
    for key, hook in list(module._forward_pre_hooks.items()):
        if hook is _rearm or hook is _rearm_model:
            del module._forward_pre_hooks[key]
    for param in module._parameters.values():
        owners = _OWNERS.get(param) if param is not None else None
        if owners:
            owners[:] = [(r, k) for r, k in owners if r() is not module]


@torch.no_grad()
def apply_masks(model: nn.Module) -> None:
    """Re-zero every pruned weight (call after any update that ignores the masks)."""
    for param, mask in _masked(model):
        param.mul_(mask)


@torch.no_grad()
def mask_gradients(model: nn.Module) -> None:
    """Zero the gradients of pruned weights (autograd already does, for gradients it computes)."""
    for param, mask in _masked(model):
        if param.grad is not None:
            param.grad.mul_(mask)


@torch.no_grad()
def clear_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Zero the optimizer's per-weight state (momentum, Adam moments) at pruned positions."""
    for param, mask in _masked(model):
        state = optimizer.state.get(param)
        if not state:
            continue
        for value in state.values():
            if torch.is_tensor(value) and value.shape == mask.shape:
                value.mul_(mask)


_ATTACHED: "weakref.WeakKeyDictionary[torch.optim.Optimizer, weakref.WeakSet]" = weakref.WeakKeyDictionary()


def attach_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Clear ``optimizer``'s state at ``model``'s pruned positions, and around every step mask the
    gradients (also ones set by hand, which autograd's hooks never see) and re-zero the weights.

    Needed only for an optimizer that stepped *before* the prune (its momentum or Adam moments
    would otherwise move the pruned weights); any other optimizer keeps them at zero anyway,
    because autograd masks their gradients. Idempotent; masks added later are covered. Returns
    the optimizer.
    """
    attached = _ATTACHED.setdefault(optimizer, weakref.WeakSet())
    if model not in attached:
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
        attached.add(model)
    clear_optimizer_state(model, optimizer)
    return optimizer


def make_permanent(model: nn.Module) -> nn.Module:
    """Bake masks into the weights and remove all pruning machinery (ours and torch's).

    Afterwards ``model.state_dict()`` has exactly the keys of an unpruned model.
    """
    for _, module in list(model.named_modules()):
        if is_torch_pruned(module):
            torch.nn.utils.prune.remove(module, "weight")
        for name, param, mask in list(mask_entries(module)):
            with torch.no_grad():
                param.mul_(mask)
            del module._buffers[name + SUFFIX]
        disarm(module)
    return model


def check_fits(source: str, model: nn.Module, state: dict) -> None:
    """Raise ``ValueError`` naming ``source`` and the first module (in ``model``'s order) whose
    entries in ``state`` are missing, unknown or differently shaped. Masks the model lacks may
    come with the state; masks the model has must."""
    own = model.state_dict()
    expected = {key: tuple(t.shape) for key, t in own.items()}
    for key in [k for k in expected if k.endswith("_orig") and k[: -len("_orig")] + SUFFIX in own]:
        expected[key[: -len("_orig")]] = expected.pop(key)  # a weight held by torch.nn.utils.prune
    for key in state:
        if key.endswith(SUFFIX) and key[: -len(SUFFIX)] in expected:
            expected[key] = expected[key[: -len(SUFFIX)]]
    where = f"{source}: does not fit this model:"
    for key in list(expected) + [k for k in state if k not in expected]:
        module, _, leaf = key.rpartition(".")
        module = repr(module) if module else "(the model itself)"
        if key not in state:
            raise ValueError(f"{where} module {module} has {leaf!r}, the saved state has not")
        elif key not in expected:
            raise ValueError(f"{where} the saved state has {key!r}, which module {module} of this model has not")
        elif tuple(state[key].shape) != expected[key]:
            raise ValueError(f"{where} module {module}: {leaf} is {tuple(state[key].shape)} in the saved state, "
                             f"{expected[key]} in the model")


def load_state_dict(model: nn.Module, state_dict: dict, strict: bool = True, source: str = "state_dict"):
    """Load a pruned model's ``state_dict`` into a fresh instance, masks included.

    This is the documented way to restore a pruned model (checkpoints, resume). Accepts
    pruning_core state dicts and torch.nn.utils.prune ones (``weight_orig``/``weight_mask``).
    With ``strict`` a state that does not fit (a missing, unknown or differently shaped entry)
    raises ``ValueError`` naming ``source`` and the first module that differs, before anything
    of ``model`` changes.
    """
    state_dict = dict(state_dict)
    for key in [k for k in state_dict if k.endswith(SUFFIX) and k[: -len(SUFFIX)] + "_orig" in state_dict]:
        mask = state_dict[key].bool()  # torch.nn.utils.prune layout: weight_orig * weight_mask
        state_dict[key[: -len(SUFFIX)]] = state_dict.pop(key[: -len(SUFFIX)] + "_orig") * mask
        state_dict[key] = mask
    if strict:
        check_fits(source, model, state_dict)
    for key in [k for k in state_dict if k.endswith(SUFFIX)]:
        prefix, _, leaf = key.rpartition(".")
        param = leaf[: -len(SUFFIX)]
        try:
            module = model.get_submodule(prefix)
        except AttributeError:
            continue  # not strict: an unexpected key
        if param == "weight" and is_torch_pruned(module):
            adopt_torch_pruning(module)
        if param not in module._parameters:
            continue
        if leaf not in module._buffers:
            module.register_buffer(leaf, torch.ones_like(module._parameters[param], dtype=torch.bool))
    result = model.load_state_dict(state_dict, strict=strict)
    if next(masked_modules(model), None) is not None:
        arm(model)
    return result
