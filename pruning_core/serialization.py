"""Compact files for pruned models: surviving values plus a bit-packed mask."""
from __future__ import annotations

import os

import torch
from torch import nn

from .masks import MASK, effective_weight, get_mask, load_state_dict

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


def save_pruned(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``model`` compactly: masked weights as surviving values + packed mask."""
    masked = {}
    for name, module in model.named_modules():
        mask = get_mask(module)
        if mask is not None:
            masked[name + "." if name else ""] = (effective_weight(module), mask)
    dense, sparse = {}, {}
    for key, tensor in model.state_dict().items():
        prefix, _, leaf = key.rpartition(".")
        prefix = prefix + "." if prefix else ""
        if prefix in masked and leaf in ("weight", "weight_orig", MASK):
            continue
        dense[key] = tensor.detach().cpu().clone()
    for prefix, (weight, mask) in masked.items():
        sparse[prefix + "weight"] = {
            "shape": list(weight.shape),
            "values": weight[mask].detach().cpu().clone(),
            "mask": pack_mask(mask),
        }
    torch.save({"format": FORMAT, "dense": dense, "sparse": sparse}, path)


def load_pruned(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Fill ``model`` (a fresh instance of the saved architecture) from :func:`save_pruned`'s file.

    Masks are restored, so further pruning and training behave as before saving. A
    damaged, truncated or foreign file raises ``ValueError`` naming the file.
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
            state[key[: -len("weight")] + MASK] = mask
        load_state_dict(model, state, strict=True)
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{path}: does not fit this model ({exc})") from None
    return model
