"""The device a trial trains on, and the training and evaluation loops over one model.

Nothing here imports Ray or knows about pruning: :mod:`sweeps.learner` drives these loops.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError

LOGICAL_GPU_ENV = "PRUNESWEEP_ALLOW_LOGICAL_GPU"
DTYPE_ENV = "PRUNESWEEP_DTYPE"  # float64: trials and dense trainings compute in float64 (fused equals unfused exactly)


def dtype_from_env() -> str | None:
    """The floating-point type ``DTYPE_ENV`` asks trainings to compute in (None: torch's float32)."""
    value = os.environ.get(DTYPE_ENV) or None
    if value not in (None, "float32", "float64"):
        raise ConfigError(f"{DTYPE_ENV}={value}: allowed: float32 or float64")
    return value


def set_dtype(dtype: str | None) -> None:
    """Compute in ``dtype`` (None: float32) in this worker from now on (an actor Ray Tune reuses too)."""
    torch.set_default_dtype(getattr(torch, dtype or "float32"))


def use_cpus(cpus: float) -> None:
    """Let torch use the CPUs a task was given (``resources.cpu``, at least one thread)."""
    torch.set_num_threads(max(1, int(round(cpus))))


def device_for(gpu_ids) -> torch.device:
    """The trial's device: the GPU Ray assigned it (``ray.get_gpu_ids()``), else the CPU.

    A GPU assigned by Ray that torch cannot see (a driver or CUDA build mismatch) is an error,
    not a silent CPU run holding a GPU; ``PRUNESWEEP_ALLOW_LOGICAL_GPU=1`` allows it where the
    GPU is only a logical Ray resource (tests, a cluster that labels nodes with GPUs)."""
    if gpu_ids:
        if torch.cuda.is_available():
            # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPUs, so the first visible one is ours
            return torch.device("cuda", 0)
        if os.environ.get(LOGICAL_GPU_ENV) != "1":
            raise RuntimeError(f"Ray assigned GPU(s) {list(gpu_ids)} to this trial but torch {torch.__version__} sees "
                               "no CUDA device (check the NVIDIA driver and that torch is a CUDA build); set "
                               f"{LOGICAL_GPU_ENV}=1 on the workers to train on the CPU instead")
    return torch.device("cpu")


def autocast(device: torch.device):
    """bfloat16 autocast on GPUs that support it (Ampere and newer); full precision elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def place(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device``; channels_last on CUDA (the fast path)."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def prepare(model: nn.Module, data, device: torch.device):
    """Move model and data to ``device`` (:func:`place`; the data channels_last on CUDA too)."""
    return place(model, device), data.to(device, channels_last=device.type == "cuda")


def full_precision(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 where autocast left it in half precision; float32 and float64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def train_step(model, optimizer, xb, yb, device) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on the batch ``(xb, yb)``; returns the batch's loss and logits."""
    with autocast(device):
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, logits


def train_epoch(model, loader, optimizer, device) -> tuple[float, float]:
    """One pass over ``loader``; returns (mean loss, accuracy) over the samples seen."""
    model.train()
    total_loss = torch.zeros((), device=device, dtype=torch.get_default_dtype())
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for xb, yb in loader:
        loss, logits = train_step(model, optimizer, xb, yb, device)
        total_loss += full_precision(loss.detach()) * yb.shape[0]
        correct += (logits.argmax(1) == yb).sum()
        seen += yb.shape[0]
    return total_loss.item() / seen, correct.item() / seen


@torch.no_grad()
def evaluate(model, data, device, batch_size: int = 1000, split: str = "test") -> tuple[float, float]:
    """(mean loss, accuracy) on the ``test`` or ``val`` split in ``eval()`` mode: BatchNorm
    statistics are never touched."""
    was_training = model.training
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for xb, yb in data.batches(split, batch_size):
        with autocast(device):
            logits = model(data.normalise(xb))
        total_loss += F.cross_entropy(full_precision(logits), yb, reduction="sum").item()
        correct += int((logits.argmax(1) == yb).sum())
        seen += yb.shape[0]
    model.train(was_training)
    return total_loss / seen, correct / seen


def cpu_state(model: nn.Module) -> dict:
    """A copy of ``model``'s state_dict on the CPU, contiguous."""
    return {k: v.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
            for k, v in model.state_dict().items()}
