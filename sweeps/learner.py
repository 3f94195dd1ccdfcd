"""Learners: what holds the model(s), optimizer, data and masks of a run and does what its plan
says (:mod:`sweeps.plan`): prune to a target, start a phase from the weights it names, train an
epoch at a rate, evaluate, measure, save and load its state. A learner never decides anything.

The interface (:class:`Learner`) is written for K *members* (trial points of one architecture,
each with its own seed, data order, masks and rate): every call takes and returns one entry per
member, None where a member has nothing to do (it has diverged, or does not prune this epoch).
:class:`ModelLearner` holds one model (K = 1); a learner that trains K members as one fused model
implements the same calls, so that :class:`sweeps.trial.TrialRun` and the trainable run it unchanged.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
from torch import nn

import pruning_core as pc
from pruning_core.masks import SUFFIX as MASK_SUFFIX

from .data import DeviceLoader, load_dataset
from .loops import cpu_state, evaluate, prepare, train_epoch
from .models import build_model
from .optimizers import make_optimizer
from .plan import Seeds, Start


@dataclass(frozen=True)
class EpochStats:
    """What one member's training epoch gave: mean loss and accuracy over its batches, its
    seconds, the learning rate it ended at, and whether its loss and weights are still finite."""

    loss: float
    accuracy: float
    seconds: float
    lr: float
    finite: bool


class Learner(Protocol):
    """What :class:`sweeps.trial.TrialRun` asks of a learner of ``members`` models; lists hold one
    entry per member (None: nothing for that member)."""

    members: int
    layers: list[str]          # the prunable layers' names (one architecture: the same for every member)
    prunable_params: int       # prunable weights per member
    train_size: int            # training images per epoch
    has_validation: bool

    def prune(self, targets: Sequence[float | None]) -> list[bool | None]: ...
    def start(self, starts: Sequence[Start | None]) -> None: ...
    def train_epoch(self, lrs: Sequence[float | None]) -> list[EpochStats | None]: ...
    def evaluate(self, which: Sequence[bool], split: str = "test") -> list[tuple[float, float] | None]: ...
    def measure(self, which: Sequence[bool]) -> list[dict | None]: ...
    def model(self, member: int) -> nn.Module: ...
    def add_step_hook(self, hook) -> None: ...
    def state(self) -> dict: ...
    def load_state(self, state: dict) -> None: ...


def model_for(sweep, data) -> nn.Module:
    """A fresh model of the sweep for ``data`` (torch's global RNG draws its initial weights)."""
    return build_model(sweep.model, data.num_classes, data.in_channels, sweep.model_args)


def load_start_weights(model: nn.Module, weights: dict | None) -> None:
    """Load the ``weights`` a phase starts from (None: keep them as they are) where ``model``'s masks keep them."""
    if weights is None:
        return
    loaded = model.load_state_dict(weights, strict=False)
    stray = loaded.unexpected_keys + [k for k in loaded.missing_keys if not k.endswith(MASK_SUFFIX)]
    if stray:
        raise RuntimeError(f"the weights to start a phase from do not fit the model ({stray[:3]})")
    pc.apply_masks(model)


class ModelLearner:
    """A learner of one model (``members == 1``) on ``device``: the sweep's model and data, built
    with ``seeds`` (:class:`sweeps.plan.Seeds`), starting from ``weights`` (a state_dict; None: a
    fresh initialisation), trained with ``optimizer`` (an ``OptimizerConfig``) in batches of
    ``batch_size``; pruned as ``sweep.pruning`` says, a phase rewinding to the dense epochs in
    ``snapshots`` ({dense epoch: state_dict}, of the dense model of seed ``seed``)."""

    members = 1

    def __init__(self, sweep, device: torch.device, seeds: Seeds, optimizer, batch_size: int,
                 weights: dict | None = None, snapshots: dict | None = None, seed: int | None = None,
                 masked: bool = True, data=None):
        self.sweep, self.device, self.snapshots, self.seed = sweep, device, snapshots or {}, seed
        self._optimizer_config, self._masked = optimizer, masked
        data = data if data is not None else load_dataset(sweep.dataset)  # given: already on ``device``
        if seeds.before_model is not None:
            torch.manual_seed(seeds.before_model)
        model = model_for(sweep, data)
        if weights is not None:
            model.load_state_dict(weights)
        self._model, self.data = prepare(model, data, device)
        self._step_hooks: list = []
        self.optimizer = self._new_optimizer()
        if seeds.after_model is not None:
            torch.manual_seed(seeds.after_model)
        self.generator = torch.Generator(device=device).manual_seed(seeds.data)
        self.loader = DeviceLoader(self.data, batch_size, self.generator, sweep.dataset.augments)
        self._compact_macs: int | None = None
        weights_in_scope = pc.prunable_weights(self._model)
        self.layers = [w.name for w in weights_in_scope]
        self.prunable_params = sum(w.weight.numel() for w in weights_in_scope)
        self.train_size = self.data.train_size
        self.has_validation = self.data.has_validation

    def _new_optimizer(self) -> torch.optim.Optimizer:
        """A fresh optimizer with the step hooks, keeping pruned weights at zero."""
        optimizer = make_optimizer(self._optimizer_config, self._model.parameters())
        for hook in self._step_hooks:
            optimizer.register_step_pre_hook(hook)
        return pc.attach_optimizer(self._model, optimizer) if self._masked else optimizer

    def add_step_hook(self, hook) -> None:
        """Run ``hook(optimizer, args, kwargs)`` before every optimizer step, whichever optimizer a
        phase trains with."""
        self._step_hooks.append(hook)
        self.optimizer.register_step_pre_hook(hook)

    def model(self, member: int = 0) -> nn.Module:
        return self._model

    def _finite(self, gradients: bool = False) -> bool:
        """Whether every weight and buffer (and with ``gradients``, every gradient) is finite."""
        model = self._model
        tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
        if gradients:
            tensors += [p.grad for p in model.parameters() if p.grad is not None]
        return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())

    # ------------------------------------------------------------------ what a plan asks

    def prune(self, targets: Sequence[float | None]) -> list[bool | None]:
        """Prune to ``targets[0]``: True, or False (nothing pruned) if weights or scores are not finite."""
        (target,) = targets
        if target is None:
            return [None]
        p = self.sweep.pruning
        gradients = pc.needs_gradients(p.criterion)
        if gradients:
            batches = []
            for xb, yb in self.loader:
                batches.append((xb, yb))
                if len(batches) == p.gradient_batches:
                    break
            self._model.train()
            pc.accumulate_gradients(self._model, batches)
        if not self._finite(gradients):
            return [False]
        pc.prune(self._model, target, criterion=p.criterion, scope=p.scope, structure=p.structure,
                 include=p.include, exclude=p.exclude, optimizer=self.optimizer,
                 example_inputs=self._examples if pc.needs_example_inputs(p.structure) else None)
        self._compact_macs = None
        self._model.zero_grad(set_to_none=True)
        return [True]

    def start(self, starts: Sequence[Start | None]) -> None:
        """Start a phase from the weights ``starts[0]`` names, where the masks keep them, with a
        fresh optimizer if it says so."""
        (start,) = starts
        if start is None:
            return
        load_start_weights(self._model, self.start_weights(start))
        if start.fresh_optimizer:
            self.optimizer = self._new_optimizer()

    def start_weights(self, start: Start) -> dict | None:
        """The state_dict a phase started as ``start`` says begins from (None: the weights as they are)."""
        if start.rewind_to is not None:
            if start.rewind_to not in self.snapshots:
                raise RuntimeError(f"the dense model of seed {self.seed} holds no weights of dense epoch "
                                   f"{start.rewind_to} to rewind to (it has {sorted(self.snapshots) or 'none'}): "
                                   "it was trained for another sweep")
            return self.snapshots[start.rewind_to]
        if start.reinit_seed is not None:
            with torch.random.fork_rng(devices=[]):  # drawn aside: the run's own random streams go on untouched
                torch.default_generator.manual_seed(start.reinit_seed)  # the CPU's only
                return model_for(self.sweep, self.data).state_dict()
        return None

    def train_epoch(self, lrs: Sequence[float | None]) -> list[EpochStats | None]:
        """One epoch at learning rate ``lrs[0]``."""
        (lr,) = lrs
        if lr is None:
            return [None]
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        start = time.perf_counter()
        loss, accuracy = train_epoch(self._model, self.loader, self.optimizer, self.device)
        seconds = time.perf_counter() - start
        used = self.optimizer.param_groups[0]["lr"]
        return [EpochStats(loss, accuracy, seconds, used, math.isfinite(loss) and self._finite())]

    def evaluate(self, which: Sequence[bool], split: str = "test") -> list[tuple[float, float] | None]:
        """(mean loss, accuracy) on ``split`` in eval mode."""
        (wanted,) = which
        return [evaluate(self._model, self.data, self.device, split=split) if wanted else None]

    def measure(self, which: Sequence[bool]) -> list[dict | None]:
        """Sparsity, nonzero parameters, per-layer sparsity (and with filter pruning, the compacted MACs)."""
        (wanted,) = which
        if not wanted:
            return [None]
        model = self._model
        found = {"sparsity": pc.sparsity(model), "nonzero_params": pc.nonzero_params(model),
                 "layer_sparsity": pc.layer_sparsity(model)}
        if self.sweep.pruning.structure == "filters":
            found["compact_macs"] = self._compact()
        return [found]

    @functools.cached_property
    def _examples(self) -> torch.Tensor:
        """Two test images, as the model sees them: what filter pruning traces the model on."""
        images, _ = next(iter(self.data.batches("test", 2)))
        return self.data.normalise(images)

    def _compact(self) -> int:
        """MACs of one sample through the model with its pruned filters removed (once per prune)."""
        if self._compact_macs is None:
            examples = self._examples
            small = pc.compact(self._model, examples)
            self._compact_macs = pc.sparsity_report(small, tuple(examples.shape[1:]))["macs_dense"]
        return self._compact_macs

    def weights(self, member: int = 0) -> dict:
        """The model's state_dict, a CPU copy."""
        return cpu_state(self._model)

    # ------------------------------------------------------------------ continuing exactly

    def state(self) -> dict:
        """Everything needed to continue bit for bit: model with masks, optimizer, the data
        generator and torch's RNG."""
        state = {"model": {k: v.detach().cpu() for k, v in self._model.state_dict().items()},
                 "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                 "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state(self, state: dict) -> None:
        pc.load_state_dict(self._model, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self._masked:
            pc.attach_optimizer(self._model, self.optimizer)
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
