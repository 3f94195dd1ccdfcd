"""How a trial retrains after each prune: optimizers, learning-rate schedules and the retraining
regimes compared by Renda, Frankle & Carbin (2020), "Comparing Rewinding and Fine-tuning in
Neural Network Pruning".

A regime is one small strategy for a *phase* (the P epochs of retraining that follow one prune):
which optimizer it trains with, the learning rate of each of its epochs, and which weights it
starts from. A new regime is one new class in :data:`REGIMES`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .config import OptimizerConfig, Phase, SweepConfig
    from .train import FinetuneRun

REWIND = "rewind"  # in a dense model's dict: {dense epoch: state_dict} that weight rewinding starts from
REINIT_SEED_OFFSET = 2_000_003


def make_optimizer(cfg: OptimizerConfig, params) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(kind: str, optimizer, epochs: int):
    """Per-epoch learning-rate schedule (torch's own): constant, cosine to zero over ``epochs``,
    or step (x0.1 at 50% and at 75% of ``epochs``)."""
    schedulers = torch.optim.lr_scheduler
    epochs = max(epochs, 1)
    if kind == "cosine":
        return schedulers.CosineAnnealingLR(optimizer, T_max=epochs)
    if kind == "step":
        return schedulers.MultiStepLR(optimizer, milestones=[epochs // 2, (3 * epochs) // 4], gamma=0.1)
    return schedulers.ConstantLR(optimizer, factor=1.0, total_iters=0)


def schedule_lrs(kind: str, lr: float, epochs: int) -> list[float]:
    """The learning rate of each of ``epochs`` epochs under :func:`make_scheduler`: the very values
    that a training stepping that scheduler once per epoch uses (the dense training does)."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = make_scheduler(kind, optimizer, epochs)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradient: changes nothing, but keeps torch's step-order check quiet
        scheduler.step()
    return lrs


class FineTune:
    """``finetune``: keep training the pruned weights where they are, with ``finetune.optimizer``
    (one optimizer for the whole trial, its state kept across prunes) and ``finetune.lr_schedule``
    spanning the trial's budget; a ladder's schedule restarts at every rung."""

    name = "finetune"
    fresh_optimizer = False  # whether every phase gets a new optimizer (no state carried over)
    replays_dense = False    # whether its learning rates are the dense schedule's (needing dense.epochs >= P)

    def optimizer(self, sweep: SweepConfig) -> OptimizerConfig:
        return sweep.finetune.optimizer

    def batch_size(self, sweep: SweepConfig) -> int:
        return sweep.finetune.batch_size

    def learning_rates(self, sweep: SweepConfig, phases: list[Phase], ladder: bool) -> list[float]:
        """The learning rate of every epoch of a trial with these phases."""
        ft = sweep.finetune
        spans = [p.epochs for p in phases] if ladder else [sum(p.epochs for p in phases)]
        return [lr for span in spans for lr in schedule_lrs(ft.lr_schedule, ft.optimizer.lr, span)]

    def snapshots(self, sweep: SweepConfig, epochs: int) -> set[int]:
        """Dense epochs whose weights a phase of ``epochs`` epochs starts from."""
        return set()

    def start_weights(self, run: FinetuneRun, epochs: int) -> dict | None:
        """The state_dict whose weights a phase of ``epochs`` epochs starts from where the masks keep
        them (None: the weights as they are)."""
        return None


class LrRewind(FineTune):
    """``lr_rewind``: a phase of P epochs retrains with the dense run's optimizer (kind, momentum,
    weight decay; fresh state) and batch size and, in its epoch e, the dense schedule's learning rate
    of dense epoch T - P + e (T = ``dense.epochs``): the last P epochs of the dense training, replayed."""

    name = "lr_rewind"
    fresh_optimizer = True
    replays_dense = True

    def optimizer(self, sweep: SweepConfig) -> OptimizerConfig:
        return sweep.dense.optimizer

    def batch_size(self, sweep: SweepConfig) -> int:
        return sweep.dense.batch_size

    def learning_rates(self, sweep: SweepConfig, phases: list[Phase], ladder: bool) -> list[float]:
        dense = sweep.dense
        lrs = schedule_lrs(dense.lr_schedule, dense.optimizer.lr, dense.epochs)
        return [lr for p in phases for lr in lrs[dense.epochs - p.epochs:]]


class WeightRewind(LrRewind):
    """``weight_rewind``: as ``lr_rewind``, and a phase of P epochs starts from the dense run's
    weights and BatchNorm statistics at the end of dense epoch T - P (masks kept)."""

    name = "weight_rewind"

    def snapshots(self, sweep: SweepConfig, epochs: int) -> set[int]:
        return {sweep.dense.epochs - epochs}

    def start_weights(self, run: FinetuneRun, epochs: int) -> dict:
        epoch = run.sweep.dense.epochs - epochs
        saved = run.dense.get(REWIND, {})
        if epoch not in saved:
            raise RuntimeError(f"the dense model of seed {run.point.seed} holds no weights of dense epoch {epoch} to "
                               f"rewind to (it has {sorted(saved) or 'none'}): it was trained for another sweep")
        return saved[epoch]


class Reinit(LrRewind):
    """``reinit``: the lottery-ticket control. A phase starts from one fresh random initialisation
    of the model (drawn from the trial's seed, the same at every phase, never the dense run's),
    masks kept, and retrains as ``lr_rewind``."""

    name = "reinit"

    def start_weights(self, run: FinetuneRun, epochs: int) -> dict:
        from .train import model_for

        with torch.random.fork_rng(devices=[]):  # drawn aside: the trial's own random streams go on untouched
            torch.default_generator.manual_seed(run.point.seed + REINIT_SEED_OFFSET)  # the CPU's only
            model = model_for(run.sweep, run.data.num_classes, run.data.in_channels)
        return model.state_dict()


REGIMES = {regime.name: regime for regime in (FineTune(), LrRewind(), WeightRewind(), Reinit())}


def rewind_epochs(sweep: SweepConfig) -> list[int]:
    """The dense epochs (0: the initial weights) whose weights the sweep's phases start from: what
    the dense training keeps beside the dense model (only these)."""
    from .config import every_phase

    return sorted({epoch for point, phase in every_phase(sweep)
                   for epoch in REGIMES[point.retrain].snapshots(sweep, phase.epochs)})
