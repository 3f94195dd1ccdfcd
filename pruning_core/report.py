"""Sparsity and cost reports: per layer and total, parameters and multiply-accumulates."""
from __future__ import annotations

import inspect
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .masks import effective_weight, is_torch_pruned, prunable_modules


def _counts(model: nn.Module) -> list[tuple[str, nn.Module, int, int]]:
    rows = []
    for name, module in prunable_modules(model):
        weight = effective_weight(module)
        rows.append((name, module, weight.numel(), int(torch.count_nonzero(weight))))
    return rows


def sparsity(model: nn.Module) -> float:
    """Fraction of all prunable weights whose effective value is exactly zero."""
    rows = _counts(model)
    total = sum(r[2] for r in rows)
    return 0.0 if total == 0 else 1.0 - sum(r[3] for r in rows) / total


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """``{module_name: fraction of its weight that is exactly zero}``."""
    return {name: 1.0 - nonzero / total for name, _, total, nonzero in _counts(model)}


def nonzero_params(model: nn.Module) -> int:
    """Nonzero entries over all parameters (weights, biases, norm layers)."""
    seen, count = set(), 0
    for name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if pname == "weight_orig":
                param = effective_weight(module)
            count += int(torch.count_nonzero(param.detach()))
    return count


class _WeightUses(TorchFunctionMode):
    """Counts, per prunable layer, the output positions its weight is applied at in a forward pass,
    however the weight is reached: a module call, ``F.linear`` on another module's weight (Swin's
    attention), or ``nn.MultiheadAttention``'s fused call, which applies ``out_proj.weight`` itself."""

    def __init__(self, names: dict[int, str]):
        super().__init__()
        self.names, self.positions = names, defaultdict(int)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _CONVS or func is F.linear:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            name = self.names.get(id(weight))
            if name is not None:  # one sample: a conv's output positions, a linear's rows
                self.positions[name] += out[0, 0].numel() if func in _CONVS else out.numel() // weight.shape[0]
        elif func is F.multi_head_attention_forward:
            weight = _MHA.bind(*args, **kwargs).arguments["out_proj_weight"]
            name = self.names.get(id(weight))
            if name is not None:
                self.positions[name] += out[0].numel() // weight.shape[0]
        return out


_CONVS = (F.conv1d, F.conv2d, F.conv3d)
_MHA = inspect.signature(F.multi_head_attention_forward)


def _positions(model: nn.Module, rows, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Output positions per prunable layer in one forward pass of a zero sample of ``input_shape``."""
    names = {id(module.weight): name for name, module, _, _ in rows}
    seen, handles = [], []
    for name, module, _, _ in rows:
        if is_torch_pruned(module):  # its weight is recomputed before each call: learn it then
            def learn(mod, inputs, name=name):
                seen.append(mod.weight)
                names[id(mod.weight)] = name
            handles.append(module.register_forward_pre_hook(learn))
    param = next(model.parameters())
    was_training = model.training
    uses = _WeightUses(names)
    try:
        model.eval()
        with torch.no_grad(), uses:
            model(torch.zeros((1, *input_shape), device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return uses.positions


def sparsity_report(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> dict:
    """Per-layer and total weights, nonzeros, sparsity and compression ratio.

    With ``input_shape`` (one sample, no batch dimension, e.g. ``(3, 32, 32)``) each layer
    also gets ``macs_dense`` and ``macs_sparse``: multiply-accumulates of one forward pass,
    dense and with zero weights skipped. They count every use of the layer's weight, however it
    is reached (a module call, a functional call on the module's weight, attention's fused
    projection; a weight used twice counts twice, one never used counts none).
    """
    rows = _counts(model)
    positions = _positions(model, rows, input_shape) if input_shape is not None else {}
    layers = []
    for name, module, total, nonzero in rows:
        row = {
            "name": name,
            "type": type(module).__name__,
            "shape": tuple(module.weight.shape) if "weight" in module._parameters else tuple(effective_weight(module).shape),
            "params": total,
            "nonzero": nonzero,
            "sparsity": 1.0 - nonzero / total,
        }
        if input_shape is not None:
            row["macs_dense"] = total * positions.get(name, 0)
            row["macs_sparse"] = nonzero * positions.get(name, 0)
        layers.append(row)
    total = sum(r["params"] for r in layers)
    nonzero = sum(r["nonzero"] for r in layers)
    report = {
        "layers": layers,
        "params": total,
        "nonzero": nonzero,
        "sparsity": 0.0 if total == 0 else 1.0 - nonzero / total,
        "compression_ratio": float("inf") if nonzero == 0 else total / nonzero,
        "nonzero_params": nonzero_params(model),
    }
    if input_shape is not None:
        report["macs_dense"] = sum(r["macs_dense"] for r in layers)
        report["macs_sparse"] = sum(r["macs_sparse"] for r in layers)
    return report
