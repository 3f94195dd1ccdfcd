"""torch's files in an experiment's storage (a local folder or an object store, through
:mod:`analysis.storage`): dense models, their training checkpoints, a config's ``dense.checkpoint``."""
from __future__ import annotations

import io

import torch

from analysis import storage
from analysis.messages import one_line

from .models import strip_data_parallel

SNAPSHOTS = "rewind"  # in a dense model's dict: {dense epoch: state_dict} that weight rewinding starts from


def save_torch(path: str, obj) -> None:
    """``torch.save`` to a local path or an object-store URI."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    storage.write_bytes(path, buf.getvalue())


class NotData(ValueError):
    """A torch file that holds more than tensors and plain data: loading it would run code."""


def load_torch(path: str):
    """``torch.load`` (onto the CPU) from a local path or an object-store URI, of data only
    (``weights_only=True``: tensors, numbers, strings, lists, dicts); a file that would need more
    (objects whose loading runs code) is refused, :class:`NotData`. Everything prunesweep writes is data."""
    import pickle

    try:
        return torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message: a paragraph on weights_only, then what it refused
        parts = [p.strip() for p in str(exc).split("\n\n") if p.strip()]
        said = [p for p in parts if not p.startswith(("Weights only load failed", "Check the documentation"))] or [""]
        refused = next((p for p in said if "GLOBAL" in p.upper()), None)
        if refused is None:  # not a torch file at all (random bytes, another format)
            raise pickle.UnpicklingError(f"not a torch file ({one_line(ValueError(said[0]), 160)})") from None
        raise NotData(f"{path}: holds more than tensors and plain data ({one_line(ValueError(refused), 160)}); "
                      "prunesweep loads only data, so that a file in an experiment cannot run code") from None


def read_checkpoint(path: str) -> dict:
    """The state_dict in a dense checkpoint file, local or on an object store (``s3://``);
    a ``{"state_dict": ...}`` wrapper and DataParallel's ``module.`` prefixes are taken off."""
    state = load_torch(path)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    return strip_data_parallel(state)
