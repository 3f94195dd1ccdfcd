"""Training (or loading) the dense models of seeds: their dense plans (:func:`sweeps.plan.dense_plan`)
run by a learner (one seed: a :class:`~sweeps.learner.ModelLearner`; several: fused, a
:class:`~sweeps.fused.FusedLearner`), keeping the snapshots weight rewinding starts from. No Ray
here: :mod:`sweeps.dense_phase` runs it as a Ray task per seed."""
from __future__ import annotations

import time
from typing import Sequence

import torch

from .learner import ModelLearner
from .plan import dense_plan
from .torch_files import SNAPSHOTS, read_checkpoint


def train_dense(sweep, seed: int, device: torch.device, checkpoint_state: dict | None = None,
                resume: dict | None = None, on_epoch=None) -> dict:
    """Train (or load) the dense model of ``seed``; returns its CPU state_dict and test metrics, and
    under :data:`sweeps.torch_files.SNAPSHOTS` the weights of the dense epochs that the sweep's weight
    rewinding starts from (:func:`sweeps.plan.rewind_epochs`; epoch 0: the initial weights).

    With ``dense.checkpoint`` the weights are ``checkpoint_state`` (read once by the driver and
    shipped through Ray), else read from the checkpoint here. ``on_epoch(epoch, epochs, state)``
    is called after every epoch with a function that returns everything needed to continue from
    there; training given that ``resume`` state goes on bit for bit (on the CPU) as if never stopped.
    """
    return train_dense_group(sweep, [seed], device, checkpoint_state, resume, on_epoch)[0]


def train_dense_group(sweep, seeds: Sequence[int], device: torch.device, checkpoint_state: dict | None = None,
                      resume: dict | None = None, on_epoch=None, fused: bool | None = None) -> list[dict]:
    """:func:`train_dense` of every seed in ``seeds``, trained as one fused computation when there
    are several, or one with ``fused`` (each seed's model exactly what it would be alone, in float64;
    by rounding in float32)."""
    plans = [dense_plan(sweep, seed) for seed in seeds]
    plan = plans[0]
    weights = None
    if plan.from_checkpoint:
        weights = checkpoint_state if checkpoint_state is not None else read_checkpoint(sweep.dense.checkpoint)
    start = time.perf_counter()
    if len(plans) == 1 and not fused:
        learner = ModelLearner(sweep, device, plan.seeds, plan.optimizer, plan.batch_size, weights=weights,
                               masked=False)
    else:
        from .fused import FusedLearner

        learner = FusedLearner(sweep, device, [p.seeds for p in plans], [p.optimizer for p in plans],
                               plan.batch_size, weights=[weights] * len(plans), masked=False)
    k = len(plans)
    keep = set(plan.snapshots)
    snapshots = [{0: learner.weights(i)} if 0 in keep else {} for i in range(k)]
    done, before = 0, 0.0  # epochs and seconds trained before a resume
    if resume is not None:
        learner.load_state(resume)
        done, before = resume["epoch"], resume["seconds"]
        saved = resume.get(SNAPSHOTS) or [{} for _ in range(k)]
        snapshots = saved if isinstance(saved, list) else [saved]  # one seed's: a dict

    def state(epoch: int) -> dict:
        return {**learner.state(), SNAPSHOTS: snapshots if k > 1 else snapshots[0], "epoch": epoch,
                "seconds": before + time.perf_counter() - start}

    for epoch in range(done, plan.total_epochs):
        learner.train_epoch([plan.lrs[epoch]] * k)
        if epoch + 1 in keep:
            for i in range(k):
                snapshots[i][epoch + 1] = learner.weights(i)
        if on_epoch is not None:
            on_epoch(epoch + 1, plan.total_epochs, lambda e=epoch + 1: state(e))
    tests = learner.evaluate([True] * k)
    seconds = before + time.perf_counter() - start
    return [{"state_dict": learner.weights(i), "test_accuracy": tests[i][1], "test_loss": tests[i][0],
             "epochs": plan.total_epochs, "seconds": seconds, "seed": seed, SNAPSHOTS: snapshots[i]}
            for i, seed in enumerate(seeds)]
