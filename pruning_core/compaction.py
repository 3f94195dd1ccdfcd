"""Which convolution filters can be pruned as a unit, and removing pruned filters for real.

Both read Torch-Pruning's dependency graph (``torch-pruning`` on PyPI): a trace of the model on
example inputs that knows which layers share a channel. A conv's output channels form a *filter
unit* when nothing else produces those channels: the unit holds the conv, any depthwise conv
that carries the same channels on (MobileNet's expansion + depthwise pair), and the batch norms
after them. A channel tied to another conv's output by a residual add (a ResNet's ``conv2`` and
shortcut), a product, or a second producer is left alone, as Li et al. (2017) did for CIFAR
ResNets: no mask then claims a saving that physical removal could not deliver.

Pruning a filter of a unit zeroes the filter in every conv of the unit, their biases and the
batch norms' scale and shift at that channel, so the channel is exactly zero in training and
evaluation; :func:`compact` then deletes it with identical outputs.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from .masks import CONV_TYPES, PrunableWeight, get_mask, make_permanent, prunable_weights, set_mask

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_COUPLING_OPS = ("Add", "Sub", "Mul", "Div")


@dataclass
class FilterUnit:
    """Output channels of ``root`` and everything pruned with them (see the module docstring):
    ``convs`` and ``norms`` are ``(module, channels)``, ``channels[j]`` being the module's channel
    that carries the root's channel ``j`` (the root first, with its own channels)."""

    name: str
    root: PrunableWeight
    convs: list[tuple[nn.Module, torch.Tensor]] = field(default_factory=list)
    norms: list[tuple[nn.Module, torch.Tensor]] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return self.root.module.weight.shape[0]

    def set_keep(self, keep: torch.Tensor) -> None:
        """Prune (False) channels in every layer of the unit; pruned channels stay pruned."""
        for module, channels in self.convs + self.norms:
            for param in ("weight", "bias"):
                tensor = module._parameters.get(param)
                if tensor is None:
                    continue
                mask = get_mask(module, param)
                mask = torch.ones_like(tensor, dtype=torch.bool) if mask is None else mask.clone()
                rows = keep.to(mask.device).reshape(-1, *([1] * (tensor.dim() - 1)))
                mask[channels] = mask[channels] & rows
                set_mask(module, mask, param)


def _torch_pruning():
    try:
        import torch_pruning
    except ImportError:  # pragma: no cover - a dependency of the package
        raise ImportError("filter pruning and compact() need torch-pruning: pip install 'torch-pruning>=1.6.1'") from None
    return torch_pruning


def _forward(model: nn.Module, inputs):
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def dependency_graph(model: nn.Module, example_inputs):
    """Torch-Pruning's dependency graph of ``model`` traced on ``example_inputs`` (the model's mode kept)."""
    tp = _torch_pruning()
    was_training = model.training
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    except Exception as exc:  # Torch-Pruning's own limits (e.g. ShuffleNet's channel shuffle)
        raise ValueError(f"Torch-Pruning cannot trace this model's channels on the example inputs "
                         f"({type(exc).__name__}: {exc}); use another structure") from exc
    finally:
        model.train(was_training)


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, CONV_TYPES) and module.groups > 1 and module.groups == module.in_channels == module.out_channels


def _group(graph, conv: nn.Module, idxs):
    tp = _torch_pruning()
    return graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(idxs))


def _coupling(graph, conv: nn.Module, names: dict) -> tuple[list, list, str | None]:
    """``(convs, norms, None)`` of the unit ``conv`` roots (see :class:`FilterUnit`), or
    ``([], [], why it cannot be one)``."""
    ops = _torch_pruning().ops
    convs, norms = [(conv, torch.arange(conv.out_channels))], []
    if conv.groups > 1:
        return [], [], "a grouped convolution"
    read = False  # by a layer after the unit: else its channels are the model's output
    for item in _group(graph, conv, range(conv.out_channels)):
        node, handler = item.dep.target, item.dep.handler
        module = node.module
        if isinstance(module, (nn.Linear, *CONV_TYPES)) and not _is_depthwise(module) and module is not conv:
            read |= graph.is_in_channel_pruning_fn(handler)
        if isinstance(module, CONV_TYPES) and module.groups > 1 and not _is_depthwise(module):
            return [], [], f"grouped convolution {names.get(module, '?')!r} reads its channels"
        if node.type == ops.OPTYPE.ELEMENTWISE and any(op in str(module._grad_fn) for op in _COUPLING_OPS):
            return [], [], "its channels meet another layer's in a residual add or product"
        if node.type == ops.OPTYPE.PARAMETER:
            return [], [], "a bare parameter acts on its channels"
        if module is conv or not graph.is_out_channel_pruning_fn(handler):
            continue
        channels = torch.empty(conv.out_channels, dtype=torch.long)
        channels[torch.as_tensor([int(r) for r in item.root_idxs])] = torch.as_tensor([int(i) for i in item.idxs])
        if _is_depthwise(module):
            convs.append((module, channels))
        elif isinstance(module, _NORMS):
            if module.weight is None or module.bias is None:
                return [], [], f"batch norm {names.get(module, '?')!r} has no scale and shift to zero"
            norms.append((module, channels))
        elif isinstance(module, (nn.Linear, *CONV_TYPES)):
            return [], [], f"{names.get(module, '?')!r} produces the same channels"
        elif "Norm" in type(module).__name__:
            return [], [], f"{type(module).__name__} {names.get(module, '?')!r} normalises across its channels"
    if not read:
        return [], [], "its channels are the model's output"
    return convs, norms, None


def filter_units(
    model: nn.Module, convs: list[PrunableWeight] | None = None, example_inputs=None,
) -> tuple[list[FilterUnit], dict[str, str]]:
    """The filter units rooted at ``convs`` (in their order) and ``{weight name: why it is not one}``.

    ``convs``: prunable weights of ``model`` (default: all of them, see :func:`prunable_weights`);
    those that are not convolutions (Linear layers, attention projections) have no filters and are
    only listed with that reason. ``example_inputs`` (required): a batch the model takes, to trace
    it on. A depthwise conv is never a root (it is pruned with the conv feeding it); a unit that
    would reach a conv outside ``convs`` (excluded by the caller) is not one either.
    ``ValueError`` if there is no unit at all (saying why for the first conv), or if the model
    cannot be traced.
    """
    if example_inputs is None:
        raise ValueError("filter_units needs example_inputs (a batch the model takes): the dependency graph "
                         "traced on it tells which convolutions' channels are tied together")
    convs = prunable_weights(model) if convs is None else list(convs)
    graph = dependency_graph(model, example_inputs)
    names = {module: name for name, module in model.named_modules()}
    allowed = {id(unit.module) for unit in convs}
    units, skipped, conv_skipped = [], {}, {}
    for unit in convs:
        members, norms, why = _root_coupling(graph, unit, names, allowed)
        if why is None:
            units.append(FilterUnit(unit.name, unit, members, norms))
            continue
        skipped[unit.name] = why
        if isinstance(unit.module, CONV_TYPES):
            conv_skipped.setdefault(unit.name, why)
    if not units:
        first = conv_skipped or skipped
        name, why = next(iter(first.items())) if first else ("-", "no convolution in scope")
        raise ValueError(f"no convolution in scope can lose filters on its own ({name!r}: {why})")
    return units, skipped


def _root_coupling(graph, unit: PrunableWeight, names: dict, allowed: set) -> tuple[list, list, str | None]:
    """``(convs, norms, None)`` of the filter unit ``unit`` roots, or ``([], [], why it cannot root one)``;
    ``allowed``: ids of the modules in scope."""
    module = unit.module
    if not isinstance(module, CONV_TYPES):
        return [], [], f"a {type(module).__name__}, not a convolution: only convolutions have filters"
    if _is_depthwise(module):
        return [], [], "a depthwise conv: pruned with the conv feeding it"
    members, norms, why = _coupling(graph, module, names)
    outside = [names.get(m, "?") for m, _ in members if id(m) not in allowed]
    if why is None and outside:
        why = f"it would prune {outside[0]!r}, which is not in scope"
    return members, norms, why


def _kept_filters(conv: nn.Module) -> torch.Tensor:
    """Which output channels of ``conv`` still have a weight (True = kept)."""
    mask = get_mask(conv)
    if mask is None:
        return torch.ones(conv.weight.shape[0], dtype=torch.bool, device=conv.weight.device)
    return mask.reshape(mask.shape[0], -1).any(dim=1)


def filter_keep(unit: FilterUnit) -> torch.Tensor:
    """Which of the unit's channels still have a weight (True = kept)."""
    return _kept_filters(unit.root.module)


def _channel_is_zero(graph, group, channels: list[int]) -> list[bool]:
    """Per channel of the group's root: whether every layer producing it (filters, biases, norm
    scales and shifts) is exactly zero there, so that deleting it changes nothing."""
    zero = dict.fromkeys(channels, True)
    for item in group:
        module = item.dep.target.module
        if not graph.is_out_channel_pruning_fn(item.dep.handler):
            continue
        for idx, root in zip(item.idxs, item.root_idxs):
            for name in ("weight", "bias"):
                tensor = getattr(module, name, None)
                if isinstance(tensor, torch.Tensor) and tensor.dim() and bool(tensor.detach()[idx].any()):
                    zero[root] = False
    return [zero[c] for c in channels]


def _to(inputs, **kwargs):
    """``example_inputs`` (a tensor, a tuple/list or a dict of them) with floating tensors moved."""
    if isinstance(inputs, dict):
        return {k: _to(v, **kwargs) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_to(v, **kwargs) for v in inputs)
    if torch.is_tensor(inputs):
        return inputs.to(**kwargs) if inputs.is_floating_point() else inputs.to(kwargs.get("device", inputs.device))
    return inputs


def _same_outputs(model: nn.Module, small: nn.Module, example_inputs) -> None:
    """Compare evaluation outputs in float64 on the CPU, where no kernel choice (TF32, another
    algorithm for another channel count) can blur a real difference."""
    inputs = _to(example_inputs, device="cpu", dtype=torch.float64)
    outputs = []
    for net in (model, small):
        twin = copy.deepcopy(net).to(device="cpu", dtype=torch.float64).eval()
        outputs.append(_forward(twin, inputs))
    reference, out = outputs
    scale = float(reference.abs().max()) if reference.numel() else 1.0
    if out.shape != reference.shape or not torch.allclose(out, reference, rtol=1e-7, atol=1e-9 * max(1.0, scale)):
        diff = float((out - reference).abs().max()) if out.shape == reference.shape else float("nan")
        raise RuntimeError(f"compact: the compacted model's outputs differ from the pruned model's (max abs diff "
                           f"{diff:.3g} in float64); a layer after a pruned filter may not map zero to zero")


@torch.no_grad()
def compact(model: nn.Module, example_inputs, *, check: bool = True) -> nn.Module:
    """A smaller dense copy of ``model`` with its pruned filters physically removed.

    Every pruned filter of a filter unit (see :func:`prune` with ``structure="filters"``) goes,
    with the batch-norm channels and the next layers' input channels it feeds, through
    Torch-Pruning's dependency graph traced on ``example_inputs``. Masks are baked in and
    dropped: the copy is an ordinary model (unstructured zeros stay as zeros). Channels that are
    not exactly zero in every layer producing them stay, and a layer keeps at least one channel.
    With ``check`` the copy's evaluation-mode outputs on ``example_inputs`` must equal the
    model's (compared in float64 on the CPU), else ``RuntimeError``. ``model`` is not changed.
    """
    small = copy.deepcopy(model)
    roots = [(module, torch.nonzero(~_kept_filters(module)).flatten().tolist())  # depthwise: with their root
             for module in small.modules() if isinstance(module, CONV_TYPES) and not _is_depthwise(module)]
    make_permanent(small)
    graph = dependency_graph(small, example_inputs)
    names = {module: name for name, module in small.named_modules()}
    for conv, channels in roots:
        if not channels:
            continue
        _, _, why = _coupling(graph, conv, names)
        if why is not None:
            continue
        group = _group(graph, conv, channels)
        removable = [c for c, ok in zip(channels, _channel_is_zero(graph, group, channels)) if ok]
        if len(removable) >= conv.out_channels:
            removable = removable[1:]  # a layer keeps a channel
        if removable:
            _group(graph, conv, removable).prune()
    small.train(model.training)
    if check:
        _same_outputs(model, small, example_inputs)
    return small
