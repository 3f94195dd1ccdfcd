"""Training (or loading) the dense model of one seed: its dense plan (:func:`sweeps.plan.dense_plan`)
run by a learner, keeping the snapshots weight rewinding starts from. No Ray here:
:mod:`sweeps.dense_phase` runs it as a Ray task per seed."""
from __future__ import annotations

import time

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
    plan = dense_plan(sweep, seed)
    weights = None
    if plan.from_checkpoint:
        weights = checkpoint_state if checkpoint_state is not None else read_checkpoint(sweep.dense.checkpoint)
    start = time.perf_counter()
    learner = ModelLearner(sweep, device, plan.seeds, plan.optimizer, plan.batch_size, weights=weights, masked=False)
    keep = set(plan.snapshots)
    snapshots = {0: learner.weights()} if 0 in keep else {}
    done, before = 0, 0.0  # epochs and seconds trained before a resume
    if resume is not None:
        learner.load_state(resume)
        done, before = resume["epoch"], resume["seconds"]
        snapshots = resume.get(SNAPSHOTS, {})

    def state(epoch: int) -> dict:
        return {**learner.state(), SNAPSHOTS: snapshots, "epoch": epoch,
                "seconds": before + time.perf_counter() - start}

    for epoch in range(done, plan.total_epochs):
        learner.train_epoch([plan.lrs[epoch]])
        if epoch + 1 in keep:
            snapshots[epoch + 1] = learner.weights()
        if on_epoch is not None:
            on_epoch(epoch + 1, plan.total_epochs, lambda e=epoch + 1: state(e))
    [(loss, accuracy)] = learner.evaluate([True])
    return {"state_dict": learner.weights(), "test_accuracy": accuracy, "test_loss": loss,
            "epochs": plan.total_epochs, "seconds": before + time.perf_counter() - start, "seed": seed,
            SNAPSHOTS: snapshots}
