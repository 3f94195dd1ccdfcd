"""How a trial retrains after each prune: the retraining regimes compared by Renda, Frankle &
Carbin (2020), "Comparing Rewinding and Fine-tuning in Neural Network Pruning".

A regime is plain data about a *phase* (the P epochs of retraining that follow one prune): whose
optimizer, batch size and learning rates it trains with, whether its optimizer starts fresh, and
which weights it starts from. :mod:`sweeps.plan` turns it into each epoch's instructions; what a
regime means in words is :data:`analysis.schema.REGIME_MEANINGS`. A new regime is one entry in
:data:`REGIMES` (and its meaning in the schema).
"""
from __future__ import annotations

from dataclasses import dataclass

from analysis.schema import FINETUNE, LR_REWIND, REGIME_MEANINGS, REINIT, WEIGHT_REWIND

KEEP, REWIND, FRESH = "keep", "rewind", "fresh"  # which weights a phase starts from, where the masks keep them
REINIT_SEED_OFFSET = 2_000_003


@dataclass(frozen=True)
class Regime:
    """``replays_dense``: a phase of P epochs trains with the dense run's optimizer (kind, momentum,
    weight decay) and batch size at the learning rates of the dense run's last P epochs (needs
    ``dense.epochs`` >= P); else with ``finetune``'s, along ``finetune.lr_schedule`` over the trial's
    budget (a ladder's restarts at every rung). ``fresh_optimizer``: every phase gets a new optimizer
    (no state carried over). ``start``: a phase starts from the weights as they are (:data:`KEEP`),
    from the dense run's weights and BatchNorm statistics at dense epoch T - P (:data:`REWIND`), or
    from one fresh random initialisation drawn from the trial's seed, the same at every phase
    (:data:`FRESH`)."""

    name: str
    replays_dense: bool = False
    fresh_optimizer: bool = False
    start: str = KEEP


REGIMES = {r.name: r for r in (
    Regime(FINETUNE),
    Regime(LR_REWIND, replays_dense=True, fresh_optimizer=True),
    Regime(WEIGHT_REWIND, replays_dense=True, fresh_optimizer=True, start=REWIND),
    Regime(REINIT, replays_dense=True, fresh_optimizer=True, start=FRESH),
)}
assert set(REGIMES) == set(REGIME_MEANINGS), "every regime has its meaning in analysis.schema.REGIME_MEANINGS"
