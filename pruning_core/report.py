"""Sparsity and cost reports: per layer and total, parameters and multiply-accumulates."""
from __future__ import annotations

import torch
from torch import nn

from .masks import CONV_TYPES, effective_weight, prunable_modules


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


def sparsity_report(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> dict:
    """Per-layer and total weights, nonzeros, sparsity and compression ratio.

    With ``input_shape`` (one sample, no batch dimension, e.g. ``(3, 32, 32)``) each layer
    also gets ``macs_dense`` and ``macs_sparse``: multiply-accumulates of one forward pass,
    dense and with zero weights skipped (a layer the forward pass never calls counts none).
    ``nn.MultiheadAttention`` uses its ``out_proj`` weight without calling it; it is counted at
    the attention layer's output.
    """
    rows = _counts(model)
    positions: dict[str, int] = {}
    if input_shape is not None:
        handles = []
        attention = {f"{name}.out_proj" if name else "out_proj": m for name, m in model.named_modules()
                     if isinstance(m, nn.MultiheadAttention)}
        for name, module, _, _ in rows:
            def hook(mod, inputs, output, name=name):
                if isinstance(mod, nn.MultiheadAttention):  # output: (attention output, weights); batch of one
                    positions[name] = output[0].numel() // mod.embed_dim
                elif isinstance(mod, CONV_TYPES):
                    positions[name] = output[0, 0].numel()
                else:
                    positions[name] = output[0].numel() // mod.out_features
            handles.append(attention.get(name, module).register_forward_hook(hook))
        param = next(model.parameters())
        was_training = model.training
        try:
            model.eval()
            with torch.no_grad():
                model(torch.zeros((1, *input_shape), device=param.device, dtype=param.dtype))
        finally:
            model.train(was_training)
            for h in handles:
                h.remove()
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
