"""torch's files in an experiment's storage (a local folder or an object store, through
:mod:`analysis.storage`): dense models, their training checkpoints, a config's ``dense.checkpoint``."""
from __future__ import annotations

import io

import torch

from analysis import storage

from .models import strip_data_parallel

SNAPSHOTS = "rewind"  # in a dense model's dict: {dense epoch: state_dict} that weight rewinding starts from


def save_torch(path: str, obj) -> None:
    """``torch.save`` to a local path or an object-store URI."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    storage.write_bytes(path, buf.getvalue())


def load_torch(path: str, weights_only: bool = False):
    """``torch.load`` (onto the CPU) from a local path or an object-store URI."""
    return torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=weights_only)


def read_checkpoint(path: str) -> dict:
    """The state_dict in a dense checkpoint file, local or on an object store (``s3://``);
    a ``{"state_dict": ...}`` wrapper and DataParallel's ``module.`` prefixes are taken off."""
    state = load_torch(path, weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    return strip_data_parallel(state)
