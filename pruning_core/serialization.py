"""Compact files for pruned models: surviving values plus a bit-packed mask."""
from __future__ import annotations

import os

import torch
from torch import nn

from .masks import MASK, SUFFIX, effective_weight, is_torch_pruned, load_state_dict, mask_entries

FORMAT = "pruning_core.pruned/1"
_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor into uint8, eight entries a byte (flattened, zero-padded)."""
    flat = mask.detach().flatten().to("cpu", torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) * _BITS).sum(dim=1, dtype=torch.uint8)


def unpack_mask(packed: torch.Tensor, shape) -> torch.Tensor:
    """Inverse of :func:`pack_mask`."""
    numel = 1
    for s in shape:
        numel *= s
    bits = (packed.view(-1, 1) & _BITS).ne(0).flatten()
    if bits.numel() < numel:
        raise ValueError("packed mask is shorter than its shape")
    return bits[:numel].view(*shape)


def _masked_params(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{state key of a masked parameter: (its effective value, its mask)}``."""
    found = {}
    for name, module in model.named_modules():
        prefix = name + "." if name else ""
        if is_torch_pruned(module):
            found[prefix + "weight"] = (effective_weight(module), module._buffers[MASK].bool())
        for param_name, param, mask in mask_entries(module):
            found[prefix + param_name] = (param.detach(), mask.bool())
    return found


def save_pruned(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``model`` compactly: masked weights as surviving values + packed mask."""
    masked = _masked_params(model)
    skip = set(masked) | {k + SUFFIX for k in masked} | {k + "_orig" for k in masked}
    dense = {key: tensor.detach().cpu().clone() for key, tensor in model.state_dict().items() if key not in skip}
    sparse = {key: {"shape": list(weight.shape), "values": weight[mask].detach().cpu().clone(), "mask": pack_mask(mask)}
              for key, (weight, mask) in masked.items()}
    torch.save({"format": FORMAT, "dense": dense, "sparse": sparse}, path)


def load_pruned(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Fill ``model`` (a fresh instance of the saved architecture) from :func:`save_pruned`'s file.

    Masks are restored, so further pruning and training behave as before saving. A damaged,
    truncated or foreign file, or one saved from another architecture, raises ``ValueError``
    naming the file (and the first module that differs); ``model`` is then left unchanged.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for damaged files
        raise ValueError(f"{path}: not a readable pruned-model file ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a pruned-model file written by pruning_core.save_pruned")
    try:
        state = dict(payload["dense"])
        for key, entry in payload["sparse"].items():
            shape = list(entry["shape"])
            mask = unpack_mask(entry["mask"], shape)
            values = entry["values"]
            if int(mask.sum()) != values.numel():
                raise ValueError(f"mask of {key} keeps {int(mask.sum())} weights but {values.numel()} values are stored")
            weight = torch.zeros(shape, dtype=values.dtype)
            weight[mask] = values
            state[key] = weight
            state[key + SUFFIX] = mask
    except (KeyError, TypeError, RuntimeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path}: damaged pruned-model file ({exc})") from None
    load_state_dict(model, state, strict=True, source=str(path))
    return model
