"""What a sweep trains, as plain data: its trial points, each trial's plan, and each seed's dense plan.

A plan says what happens in which epoch (prunes and their targets, the regime's learning rate,
which weights a phase starts from, when to checkpoint and report) and never sees a model; a
learner (:mod:`sweeps.learner`) holds the model, optimizer and data and does what the plan says,
driven epoch by epoch by :class:`sweeps.trial.TrialRun`. Everything here follows from the
validated config and the trial point alone, so the same config always plans the same trials.

The config is passed in (``SweepConfig``) and read, never imported: :mod:`sweeps.config` validates
a config with these plans, so this module sits below it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from analysis import schema
from analysis.schema import LADDER, PER_PRUNE, TrialPoint
from pruning_core import sparsity_schedule

from .optimizers import schedule_lrs
from .regimes import FRESH, REGIMES, REINIT_SEED_OFFSET, REWIND

FINETUNE_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class Phase:
    """Prune to ``prune_to``, then train ``epochs``; reports are compared at ``target``."""

    prune_to: float
    epochs: int
    target: float


@dataclass(frozen=True)
class Seeds:
    """Where a learner's random numbers come from: torch's global RNG is seeded with
    ``before_model`` before the model is built (its initial weights), and with ``after_model`` once
    it is (dropout, the random criterion); ``data`` seeds the stream of batch orders and augmentations.
    None: left as it is."""

    before_model: int | None
    after_model: int | None
    data: int


@dataclass(frozen=True)
class Start:
    """Which weights a phase starts from after its prune, where the masks keep them: as they are,
    the dense run's of dense epoch ``rewind_to``, or a fresh initialisation drawn from
    ``reinit_seed``; ``fresh_optimizer``: with a new optimizer (no state carried over)."""

    rewind_to: int | None = None
    reinit_seed: int | None = None
    fresh_optimizer: bool = False


@dataclass(frozen=True)
class Epoch:
    """One epoch of a trial (``epoch`` counts from 1): prune to ``prune_to`` first and start the
    phase as ``start`` says (the first epoch of a phase only), train at ``lr``, report at ``target``
    as prune step ``step`` (a ladder's rung), then checkpoint if ``checkpoint``."""

    epoch: int
    step: int
    target: float
    lr: float
    prune_to: float | None = None
    start: Start | None = None
    checkpoint: bool = False


@dataclass(frozen=True)
class TrialPlan:
    """Everything one trial point does, epoch by epoch."""

    point: TrialPoint
    optimizer: Any  # an OptimizerConfig: its kind, momentum, weight decay (the rate is each epoch's)
    batch_size: int
    seeds: Seeds
    epochs: tuple[Epoch, ...]

    @property
    def total_epochs(self) -> int:
        return len(self.epochs)

    def with_lr_from(self, epoch: int, lr: float) -> "TrialPlan":
        """This plan with learning rate ``lr`` from epoch ``epoch`` (1-based) on."""
        return replace(self, epochs=tuple(replace(e, lr=lr) if e.epoch >= epoch else e for e in self.epochs))


@dataclass(frozen=True)
class DensePlan:
    """The dense training of one seed: ``lrs`` per epoch (none: the weights come from
    ``dense.checkpoint``), and the epochs whose weights are kept for weight rewinding (0: the initial ones)."""

    seed: int
    optimizer: Any
    batch_size: int
    seeds: Seeds
    lrs: tuple[float, ...]
    snapshots: tuple[int, ...]
    from_checkpoint: bool

    @property
    def total_epochs(self) -> int:
        return len(self.lrs)


def expand(config) -> list[TrialPoint]:
    """Every trial point of the sweep (:func:`analysis.schema.trial_points`)."""
    return schema.trial_points(config.model_dump(mode="json"))


def one_seed(config) -> list[TrialPoint]:
    """The trial points of the sweep's first seed. Every seed has the same points but for the
    seed (:func:`analysis.schema.trial_points`), and a point's phases do not depend on its seed,
    so counts, phases and budgets of the whole sweep follow from these, without listing every
    trial (a million of them take seconds)."""
    raw = config.model_dump(mode="json", exclude={"seeds"})
    return schema.trial_points({**raw, "seeds": config.seeds[:1] if isinstance(config.seeds, list) else 1})


def trial_count(config) -> int:
    """``len(expand(config))``, from :func:`one_seed`."""
    return len(one_seed(config)) * config.seed_count


def budget(config, target: float) -> int:
    """Fine-tuning epochs a (non-ladder) trial at ``target`` gets.

    ``finetune.epochs``; with a ladder in the sweep and ``finetune.ladder_budget: cumulative``,
    the ladder's cumulative budget at that rung, so that every point compares equal compute
    (``per_prune``, Renda et al.'s protocol: ``finetune.epochs`` after every prune, the ladder's too).
    """
    if not config.has_ladder or config.finetune.ladder_budget == PER_PRUNE:
        return config.finetune.epochs
    rung = sorted(config.sparsities).index(target)
    return (rung + 1) * config.finetune.epochs


def phases(config, point: TrialPoint) -> list[Phase]:
    """The prune/train phases of one trial."""
    if point.schedule_kind == LADDER:
        return [Phase(s, config.finetune.epochs, s) for s in sorted(config.sparsities)]
    target = point.target_sparsity
    total = budget(config, target)
    steps = sparsity_schedule(point.schedule_kind, target, point.steps)
    return [Phase(s, total // len(steps), target) for s in steps]


def seed_phases(config) -> list[tuple[TrialPoint, Phase]]:
    """``(trial, phase)`` for every phase of every trial of the sweep's first seed (:func:`one_seed`):
    every other seed's trials have the same phases."""
    return [(point, phase) for point in one_seed(config) for phase in phases(config, point)]


def epochs_to_train(config) -> tuple[int, int]:
    """``(dense, retraining)``: the epochs the whole sweep trains, which its compute is proportional to."""
    seeds = config.seed_count
    return (config.dense.epochs or 0) * seeds, seeds * sum(phase.epochs for _, phase in seed_phases(config))


def learning_rates(config, retrain: str, trial: list[Phase], ladder: bool) -> list[float]:
    """The learning rate of every epoch of a trial with these phases, retrained as ``retrain``."""
    if REGIMES[retrain].replays_dense:  # each phase of P epochs replays the dense run's last P rates
        dense = config.dense
        lrs = schedule_lrs(dense.lr_schedule, dense.optimizer.lr, dense.epochs)
        return [lr for p in trial for lr in lrs[dense.epochs - p.epochs:]]
    ft = config.finetune
    spans = [p.epochs for p in trial] if ladder else [sum(p.epochs for p in trial)]
    return [lr for span in spans for lr in schedule_lrs(ft.lr_schedule, ft.optimizer.lr, span)]


def rewind_point(config, phase: Phase) -> int:
    """The dense epoch a phase rewinds to: T - P (T = ``dense.epochs``, P the phase's epochs)."""
    return config.dense.epochs - phase.epochs


def rewind_epochs(config) -> list[int]:
    """The dense epochs (0: the initial weights) whose weights the sweep's phases start from: what
    the dense training keeps beside the dense model (only these)."""
    return sorted({rewind_point(config, phase) for point, phase in seed_phases(config)
                   if REGIMES[point.retrain].start == REWIND})


def _start(config, point: TrialPoint, phase: Phase) -> Start:
    regime = REGIMES[point.retrain]
    return Start(rewind_to=rewind_point(config, phase) if regime.start == REWIND else None,
                 reinit_seed=point.seed + REINIT_SEED_OFFSET if regime.start == FRESH else None,
                 fresh_optimizer=regime.fresh_optimizer)


def trial_plan(config, point: TrialPoint) -> TrialPlan:
    """The plan of one trial point: its phases, each epoch's learning rate, and when it checkpoints."""
    regime = REGIMES[point.retrain]
    trial = phases(config, point)
    lrs = learning_rates(config, point.retrain, trial, ladder=point.schedule_kind == LADDER)
    every = config.checkpoint.every(len(lrs))
    epochs = []
    for step, phase in enumerate(trial, start=1):
        for i in range(phase.epochs):
            n = len(epochs) + 1
            first = i == 0
            epochs.append(Epoch(n, step, phase.target, lrs[n - 1], prune_to=phase.prune_to if first else None,
                                start=_start(config, point, phase) if first else None, checkpoint=n % every == 0))
    source = config.dense if regime.replays_dense else config.finetune
    seed = point.seed + FINETUNE_SEED_OFFSET
    return TrialPlan(point, source.optimizer, source.batch_size, Seeds(None, seed, seed), tuple(epochs))


def dense_plan(config, seed: int) -> DensePlan:
    """The dense training of ``seed``: ``dense.epochs`` along ``dense.lr_schedule`` (none with
    ``dense.checkpoint``), keeping the weights the sweep's weight rewinding starts from."""
    dense = config.dense
    epochs = dense.epochs or 0
    return DensePlan(seed, dense.optimizer, dense.batch_size, Seeds(seed, None, seed),
                     tuple(schedule_lrs(dense.lr_schedule, dense.optimizer.lr, epochs)) if epochs else (),
                     tuple(rewind_epochs(config)), dense.checkpoint is not None)
