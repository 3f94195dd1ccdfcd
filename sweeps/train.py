"""Training and evaluation loops, dense training, and one trial's prune/fine-tune run.

Nothing here imports Ray: the Tune trainable (``sweeps.trainable``) and the benchmarks'
plain loop drive the same :class:`FinetuneRun`.
"""
from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

import pruning_core as pc
from pruning_core.masks import SUFFIX as MASK_SUFFIX

from analysis import storage
from analysis.schema import (BUDGET_EPOCHS, DIVERGED, DIVERGED_EPOCH, EPOCH, LADDER, LAYER_SPARSITY, TEST_ACCURACY,
                             TrialPoint)

from .config import ConfigError, SweepConfig, plan
from .data import DeviceLoader, StreamedData, TensorData, load_dataset
from .datasets import describe
from .models import build_model, strip_data_parallel
from .retrain import REGIMES, REWIND, make_optimizer, make_scheduler, rewind_epochs

FINETUNE_SEED_OFFSET = 1_000_003


LOGICAL_GPU_ENV = "PRUNESWEEP_ALLOW_LOGICAL_GPU"


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


def _autocast(device: torch.device):
    """bfloat16 autocast on GPUs that support it (Ampere and newer); full precision elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare(model: nn.Module, data: TensorData, device: torch.device):
    """Move model and data to ``device``; channels_last on CUDA (the fast path)."""
    fast = device.type == "cuda"
    model = model.to(device)
    if fast:
        model = model.to(memory_format=torch.channels_last)
    return model, data.to(device, channels_last=fast)


def train_epoch(model, loader, optimizer, device) -> tuple[float, float]:
    """One pass over ``loader``; returns (mean loss, accuracy) over the samples seen."""
    model.train()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for xb, yb in loader:
        with _autocast(device):
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach().float() * yb.shape[0]
        correct += (logits.argmax(1) == yb).sum()
        seen += yb.shape[0]
    return total_loss.item() / seen, correct.item() / seen


@torch.no_grad()
def evaluate(model, data: TensorData | StreamedData, device, batch_size: int = 1000,
             split: str = "test") -> tuple[float, float]:
    """(mean loss, accuracy) on the ``test`` or ``val`` split in ``eval()`` mode: BatchNorm
    statistics are never touched."""
    was_training = model.training
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for xb, yb in data.batches(split, batch_size):
        with _autocast(device):
            logits = model(data.normalise(xb))
        total_loss += F.cross_entropy(logits.float(), yb, reduction="sum").item()
        correct += int((logits.argmax(1) == yb).sum())
        seen += yb.shape[0]
    model.train(was_training)
    return total_loss / seen, correct / seen


def dataset_for(sweep: SweepConfig) -> TensorData | StreamedData:
    return load_dataset(sweep.dataset)


def model_for(sweep: SweepConfig, num_classes: int, in_channels: int) -> nn.Module:
    """A fresh model of the sweep (torch's global RNG draws its initial weights)."""
    return build_model(sweep.model, num_classes, in_channels, sweep.model_args)


def save_torch(path: str, obj) -> None:
    """``torch.save`` to a local path or an object-store URI (through :mod:`analysis.storage`)."""
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


def dense_checkpoint(sweep: SweepConfig) -> dict:
    """``dense.checkpoint``'s state_dict, checked to fit the config's model exactly (every key and
    shape); raises ConfigError naming the field otherwise. Run on the driver, before anything is
    written."""
    path = sweep.dense.checkpoint
    try:
        state = read_checkpoint(path)
    except Exception as exc:  # a truncated or foreign file, an unreadable URI
        raise ConfigError(f"dense.checkpoint {path!r} is not a readable torch state_dict "
                          f"({storage.one_line(exc)})") from None
    info = describe(sweep.dataset)
    try:
        model_for(sweep, info.classes, info.channels).load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"dense.checkpoint {path!r} does not fit model {sweep.model!r} on {sweep.dataset.name} "
                          f"({storage.one_line(exc)})") from None
    return state


def train_dense(sweep: SweepConfig, seed: int, device: torch.device, checkpoint_state: dict | None = None,
                resume: dict | None = None, on_epoch=None) -> dict:
    """Train (or load) the dense model of ``seed``; returns its CPU state_dict and test metrics, and
    under :data:`sweeps.retrain.REWIND` the weights of the dense epochs that the sweep's weight
    rewinding starts from (:func:`sweeps.retrain.rewind_epochs`; epoch 0: the initial weights).

    With ``dense.checkpoint`` the weights are ``checkpoint_state`` (read once by the driver and
    shipped through Ray), else read from the checkpoint here. ``on_epoch(epoch, epochs, state)``
    is called after every epoch with a function that returns everything needed to continue from
    there; training given that ``resume`` state goes on bit for bit (on the CPU) as if never stopped.
    """
    data = dataset_for(sweep)
    torch.manual_seed(seed)
    model = model_for(sweep, data.num_classes, data.in_channels)
    start = time.perf_counter()
    if sweep.dense.checkpoint is not None:
        model.load_state_dict(checkpoint_state if checkpoint_state is not None
                              else read_checkpoint(sweep.dense.checkpoint))
    model, data = prepare(model, data, device)
    epochs = sweep.dense.epochs or 0
    before = 0.0  # seconds trained before a resume
    keep = set(rewind_epochs(sweep))
    snapshots = {0: _cpu_state(model)} if 0 in keep else {}
    if epochs:
        optimizer = make_optimizer(sweep.dense.optimizer, model.parameters())
        scheduler = make_scheduler(sweep.dense.lr_schedule, optimizer, epochs)
        generator = torch.Generator(device=device).manual_seed(seed)
        loader = DeviceLoader(data, sweep.dense.batch_size, generator, sweep.dataset.augments)
        done = 0
        if resume is not None:
            model.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            generator.set_state(resume["generator"])
            torch.set_rng_state(resume["torch_rng"])
            if "cuda_rng" in resume and device.type == "cuda":
                torch.cuda.set_rng_state(resume["cuda_rng"], device)
            done, before = resume["epoch"], resume["seconds"]
            snapshots = resume.get(REWIND, {})

        def state(epoch: int) -> dict:
            saved = {"model": _cpu_state(model), REWIND: snapshots,
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "epoch": epoch,
                     "seconds": before + time.perf_counter() - start}
            if device.type == "cuda":
                saved["cuda_rng"] = torch.cuda.get_rng_state(device)
            return saved

        for epoch in range(done, epochs):
            train_epoch(model, loader, optimizer, device)
            scheduler.step()
            if epoch + 1 in keep:
                snapshots[epoch + 1] = _cpu_state(model)
            if on_epoch is not None:
                on_epoch(epoch + 1, epochs, lambda e=epoch + 1: state(e))
    loss, acc = evaluate(model, data, device)
    return {"state_dict": _cpu_state(model), "test_accuracy": acc, "test_loss": loss, "epochs": epochs,
            "seconds": before + time.perf_counter() - start, "seed": seed, REWIND: snapshots}


def _cpu_state(model: nn.Module) -> dict:
    """A copy of ``model``'s state_dict on the CPU, contiguous."""
    return {k: v.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
            for k, v in model.state_dict().items()}


class FinetuneRun:
    """One trial: start from the dense model, follow the schedule's prune/retrain phases, each
    retrained as the trial's regime (:mod:`sweeps.retrain`) says.

    Call :meth:`run_epoch` until :attr:`done`; :meth:`state` and :meth:`load_state` hold
    everything needed to continue bit for bit: model with masks, optimizer, the data generator,
    torch's RNG, the epoch and the prunes done (each epoch's learning rate follows from the config).
    """

    def __init__(self, sweep: SweepConfig, point: TrialPoint, dense: dict, device: torch.device):
        self.sweep, self.point, self.device, self.dense = sweep, point, device, dense
        self.regime = REGIMES[point.retrain]
        self.phases = plan(sweep, point)
        self.total_epochs = sum(p.epochs for p in self.phases)
        self.lrs = self.regime.learning_rates(sweep, self.phases, ladder=point.schedule_kind == LADDER)
        data = dataset_for(sweep)
        model = model_for(sweep, data.num_classes, data.in_channels)
        model.load_state_dict(dense["state_dict"])
        self.model, self.data = prepare(model, data, device)
        self.dense_test_accuracy = dense["test_accuracy"]
        self._step_hooks: list = []
        self.optimizer = self._new_optimizer()
        seed = point.seed
        torch.manual_seed(seed + FINETUNE_SEED_OFFSET)
        self.generator = torch.Generator(device=device).manual_seed(seed + FINETUNE_SEED_OFFSET)
        self.loader = DeviceLoader(self.data, self.regime.batch_size(sweep), self.generator, sweep.dataset.augments)
        self.epoch = 0
        self.prunes_done = 0
        self.diverged_at: int | None = None
        self._compact_macs: int | None = None
        weights = pc.prunable_weights(self.model)
        self.layers = [w.name for w in weights]
        self.prunable = sum(w.weight.numel() for w in weights)

    def _new_optimizer(self) -> torch.optim.Optimizer:
        """The regime's optimizer, with fresh state, keeping pruned weights at zero, with the step hooks."""
        optimizer = make_optimizer(self.regime.optimizer(self.sweep), self.model.parameters())
        for hook in self._step_hooks:
            optimizer.register_step_pre_hook(hook)
        return pc.attach_optimizer(self.model, optimizer)

    def add_step_hook(self, hook) -> None:
        """Run ``hook(optimizer, args, kwargs)`` before every optimizer step, whichever optimizer a
        phase trains with."""
        self._step_hooks.append(hook)
        self.optimizer.register_step_pre_hook(hook)

    @property
    def done(self) -> bool:
        """The whole budget is trained, or the run diverged (and so ends)."""
        return self.epoch >= self.total_epochs or self.diverged_at is not None

    def _finite(self, gradients: bool = False) -> bool:
        """Whether every weight and buffer (and with ``gradients``, every gradient) is finite."""
        tensors = [t for t in (*self.model.parameters(), *self.model.buffers()) if t.is_floating_point()]
        if gradients:
            tensors += [p.grad for p in self.model.parameters() if p.grad is not None]
        return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())

    def _diverged(self, epoch: int, phase, index: int, **seen) -> dict:
        """End the run at ``epoch``: the report of a trial whose loss or weights are no longer finite."""
        self.diverged_at = epoch
        return {**self.point.report_fields(phase.target), "step": index + 1, EPOCH: epoch,
                BUDGET_EPOCHS: self.total_epochs, DIVERGED: True, DIVERGED_EPOCH: epoch,
                "dense_test_accuracy": self.dense_test_accuracy, "prunable_params": self.prunable, **seen}

    def _phase_index(self, epoch: int) -> int:
        end = 0
        for i, phase in enumerate(self.phases):
            end += phase.epochs
            if epoch < end:
                return i
        return len(self.phases) - 1

    def _prune(self, phase) -> bool:
        """Prune to the phase's sparsity; False (nothing pruned) if weights or scores are not finite."""
        p = self.sweep.pruning
        gradients = p.criterion in ("gradient", "magnitude_gradient")
        if gradients:
            batches = []
            for xb, yb in self.loader:
                batches.append((xb, yb))
                if len(batches) == p.gradient_batches:
                    break
            self.model.train()
            pc.accumulate_gradients(self.model, batches)
        if not self._finite(gradients):
            return False
        pc.prune(self.model, phase.prune_to, criterion=p.criterion, scope=p.scope, structure=p.structure,
                 include=p.include, exclude=p.exclude, optimizer=self.optimizer,
                 example_inputs=self._examples if p.structure == "filters" else None)
        self._compact_macs = None
        self.model.zero_grad(set_to_none=True)
        return True

    @functools.cached_property
    def _examples(self) -> torch.Tensor:
        """Two test images, as the model sees them: what filter pruning traces the model on."""
        images, _ = next(iter(self.data.batches("test", 2)))
        return self.data.normalise(images)

    def compact_macs(self) -> int:
        """MACs of one sample through the model with its pruned filters removed (once per prune)."""
        if self._compact_macs is None:
            examples = self._examples
            small = pc.compact(self.model, examples)
            self._compact_macs = pc.sparsity_report(small, tuple(examples.shape[1:]))["macs_dense"]
        return self._compact_macs

    def _start_phase(self, phase) -> None:
        """After a prune: the weights the phase starts from, where the masks keep them, and a fresh
        optimizer if the regime wants one."""
        start = self.regime.start_weights(self, phase.epochs)
        if start is not None:
            loaded = self.model.load_state_dict(start, strict=False)
            stray = loaded.unexpected_keys + [k for k in loaded.missing_keys if not k.endswith(MASK_SUFFIX)]
            if stray:
                raise RuntimeError(f"{self.regime.name}: the weights to start from do not fit the model ({stray[:3]})")
            pc.apply_masks(self.model)
        if self.regime.fresh_optimizer:
            self.optimizer = self._new_optimizer()

    def run_epoch(self) -> dict:
        """Prune if a phase starts now, train one epoch, evaluate; returns the epoch's metrics.

        A run whose loss or weights stop being finite ends with a ``diverged`` report instead.
        """
        index = self._phase_index(self.epoch)
        phase = self.phases[index]
        if self.prunes_done <= index:
            if not self._prune(phase):
                return self._diverged(self.epoch + 1, phase, index)
            self._start_phase(phase)
            self.prunes_done = index + 1
        for group in self.optimizer.param_groups:
            group["lr"] = self.lrs[self.epoch]
        start = time.perf_counter()
        train_loss, train_acc = train_epoch(self.model, self.loader, self.optimizer, self.device)
        lr = self.optimizer.param_groups[0]["lr"]
        seconds = time.perf_counter() - start
        if not (math.isfinite(train_loss) and self._finite()):
            self.epoch += 1
            return self._diverged(self.epoch, phase, index, lr=lr, train_loss=train_loss)
        test_loss, test_acc = evaluate(self.model, self.data, self.device)
        self.epoch += 1
        measured = pc.sparsity(self.model)
        validation = {}
        if self.data.has_validation:
            validation["val_loss"], validation["val_accuracy"] = evaluate(self.model, self.data, self.device, split="val")
        return {
            **self.point.report_fields(phase.target),
            "sparsity": measured,
            "compression_ratio": 1.0 / (1.0 - measured) if measured < 1 else float("inf"),
            "step": index + 1,
            EPOCH: self.epoch,
            BUDGET_EPOCHS: self.total_epochs,
            "lr": lr,
            "train_loss": train_loss,
            "train_accuracy": train_acc,
            "test_loss": test_loss,
            TEST_ACCURACY: test_acc,
            **validation,
            "dense_test_accuracy": self.dense_test_accuracy,
            DIVERGED: False,
            "nonzero_params": pc.nonzero_params(self.model),
            "prunable_params": self.prunable,
            "epoch_time_s": seconds,
            "samples_per_s": self.data.train_size / seconds,
            LAYER_SPARSITY: pc.layer_sparsity(self.model),
            **({"compact_macs": self.compact_macs()} if self.sweep.pruning.structure == "filters" else {}),
        }

    def state(self) -> dict:
        state = {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "epoch": self.epoch,
            "prunes_done": self.prunes_done,
            "diverged_at": self.diverged_at,
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state(self, state: dict) -> None:
        pc.load_state_dict(self.model, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        pc.attach_optimizer(self.model, self.optimizer)
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.epoch = state["epoch"]
        self.prunes_done = state["prunes_done"]
        self.diverged_at = state.get("diverged_at")
