"""Sparsity and cost reports: per layer and total, parameters and multiply-accumulates."""
from __future__ import annotations

import inspect
import warnings
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .masks import PROJECTIONS, effective_weight, is_torch_pruned, prunable_weights


def _counts(model: nn.Module) -> list[tuple[object, int, int]]:
    rows = []
    for unit in prunable_weights(model):
        weight = unit.weight
        rows.append((unit, weight.numel(), int(torch.count_nonzero(weight))))
    return rows


def sparsity(model: nn.Module) -> float:
    """Fraction of all prunable weights whose effective value is exactly zero."""
    rows = _counts(model)
    total = sum(r[1] for r in rows)
    return 0.0 if total == 0 else 1.0 - sum(r[2] for r in rows) / total


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """``{weight_name: fraction of it that is exactly zero}`` (see :func:`prunable_weights`)."""
    return {unit.name: 1.0 - nonzero / total for unit, total, nonzero in _counts(model)}


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


def _storage(tensor) -> int | None:
    """Where a tensor's data lives: a weight and its views (``weight.T``) share it."""
    try:
        return (tensor.untyped_storage().data_ptr() or None) if torch.is_tensor(tensor) else None
    except (RuntimeError, NotImplementedError):
        return None


def _argument(args: tuple, kwargs: dict, position: int, name: str):
    return args[position] if len(args) > position else kwargs.get(name)


_CONVS = (F.conv1d, F.conv2d, F.conv3d)
_MHA = inspect.signature(F.multi_head_attention_forward)
_MATMULS = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm,
            torch.baddbmm, torch.Tensor.baddbmm)


class _WeightUses(TorchFunctionMode):
    """Counts, per prunable weight, the output positions it is applied at in a forward pass and how
    often it is applied, however the weight is reached: a module call, ``F.linear`` on another
    module's weight (Swin's attention), or ``nn.MultiheadAttention``'s fused call, which applies
    the Q/K/V and output projections itself. Also counts the multiply-accumulates of products
    of two activations (attention's scores and weighted sums), which no pruning can remove."""

    def __init__(self, names: dict[int, str], projections: dict[int, str]):
        super().__init__()
        self.names, self.projections = names, projections
        self.positions, self.calls = defaultdict(int), defaultdict(int)
        self.activation_macs = 0

    def _use(self, name: str, positions: int) -> None:
        self.positions[name] += positions
        self.calls[name] += 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _CONVS or func is F.linear:
            weight = _argument(args, kwargs, 1, "weight")
            name = self.names.get(_storage(weight))
            if name is not None:  # one sample: a conv's output positions, a linear's rows
                self._use(name, out[0, 0].numel() if func in _CONVS else out.numel() // weight.shape[0])
        elif func is F.multi_head_attention_forward:
            self._attention(_MHA.bind(*args, **kwargs).arguments, out[0])
        elif func is F.scaled_dot_product_attention:
            q, k, v = (_argument(args, kwargs, i, name) for i, name in enumerate(("query", "key", "value")))
            self.activation_macs += q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1]) * q[..., 0, 0].numel()
        elif func in _MATMULS and all(torch.is_tensor(t) for t in args[-2:]):
            weights = [(self.names[_storage(t)], t) for t in args[-2:] if _storage(t) in self.names]
            if weights:  # ``x @ layer.weight.T``: that layer's weight, applied to as many positions
                name, weight = weights[0]
                self._use(name, out.numel() * args[-2].shape[-1] // weight.numel())
            else:
                self.activation_macs += out.numel() * args[-2].shape[-1]
        return out

    def _attention(self, a: dict, out: torch.Tensor) -> None:
        """``F.multi_head_attention_forward`` of one sample: (L, 1, E) or (L, E) query."""
        length, source = a["query"].shape[0], a["key"].shape[0]
        if a.get("use_separate_proj_weight"):
            weights = [a["q_proj_weight"], a["k_proj_weight"], a["v_proj_weight"]]
        else:
            weights = [a["in_proj_weight"]] * 3
        for projection, weight, rows in zip(PROJECTIONS, weights, (length, source, source)):
            prefix = self.projections.get(_storage(weight))
            if prefix is not None:
                self._use(f"{prefix}.{projection}_proj", rows)
        name = self.names.get(_storage(a["out_proj_weight"]))
        if name is not None:
            self._use(name, length)
        embed = a["embed_dim_to_check"]
        extra = int(a.get("bias_k") is not None) + int(bool(a.get("add_zero_attn")))
        self.activation_macs += 2 * length * (source + extra) * embed  # scores, then the weighted sum


def _positions(model: nn.Module, units, input_shape: tuple[int, ...]) -> _WeightUses:
    """Uses of every prunable weight in one forward pass of a zero sample of ``input_shape``."""
    names, projections = {}, {}
    handles = []
    for unit in units:
        if unit.param != "weight":  # an attention's Q/K/V projection
            projections[_storage(unit.parameter)] = unit.name.rpartition(".")[0]
        elif is_torch_pruned(unit.module):  # its weight is recomputed before each call: learn it then
            def learn(mod, inputs, name=unit.name):
                names[_storage(mod.weight)] = name
            handles.append(unit.module.register_forward_pre_hook(learn))
        else:
            names[_storage(unit.parameter)] = unit.name
    param = next(model.parameters())
    was_training = model.training
    uses = _WeightUses(names, projections)
    try:
        model.eval()
        with torch.no_grad(), uses:
            model(torch.zeros((1, *input_shape), device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return uses


def sparsity_report(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> dict:
    """Per-layer and total weights, nonzeros, sparsity and compression ratio.

    With ``input_shape`` (one sample, no batch dimension, e.g. ``(3, 32, 32)``) each layer
    also gets ``calls`` and ``macs_dense``/``macs_sparse``: multiply-accumulates of one forward
    pass, dense and with zero weights skipped. They count every use of the layer's weight,
    however it is reached (a module call, a functional call on the module's weight, attention's
    fused projections; a weight used twice counts twice). Layers the forward pass never used are
    listed in ``layers_not_run`` (and warned about), not hidden in a zero. The totals add
    ``macs_activations``: products of two activations (attention scores and weighted sums), which
    no pruning removes.
    """
    rows = _counts(model)
    uses = _positions(model, [r[0] for r in rows], input_shape) if input_shape is not None else None
    layers = []
    for unit, total, nonzero in rows:
        row = {
            "name": unit.name,
            "type": type(unit.module).__name__,
            "shape": tuple(unit.weight.shape),
            "params": total,
            "nonzero": nonzero,
            "sparsity": 1.0 - nonzero / total,
        }
        if uses is not None:
            positions = uses.positions.get(unit.name, 0)
            row["calls"] = uses.calls.get(unit.name, 0)
            row["macs_dense"] = total * positions
            row["macs_sparse"] = nonzero * positions
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
    if uses is not None:
        report["macs_activations"] = uses.activation_macs
        report["macs_dense"] = sum(r["macs_dense"] for r in layers) + uses.activation_macs
        report["macs_sparse"] = sum(r["macs_sparse"] for r in layers) + uses.activation_macs
        report["layers_not_run"] = [r["name"] for r in layers if r["calls"] == 0]
        if report["layers_not_run"]:
            shown = ", ".join(report["layers_not_run"][:5])
            warnings.warn(f"sparsity_report: {len(report['layers_not_run'])} prunable layer(s) did not run in the "
                          f"forward pass of a {tuple(input_shape)} sample, so they count no MACs: {shown}",
                          stacklevel=2)
    return report
