"""The Ray Tune trainable: one train-prune-train trial, checkpointed every epoch."""
from __future__ import annotations

import math
import os
import signal
import tempfile
from dataclasses import dataclass

import ray
import torch
from ray import tune

from analysis import schema

from .config import SweepConfig
from .train import FinetuneRun, device_for

STATE_FILE = "state.pt"
CHAOS_ENV = "PRUNESWEEP_CHAOS_KILL_AT_EPOCH"
DIVERGE_ENV = "PRUNESWEEP_CHAOS_DIVERGE"
CHAOS_MARKER = ".chaos_killed"


@dataclass(frozen=True)
class Chaos:
    """Fault injection, for checking what a sweep survives: ``kill_at_epoch`` (``CHAOS_ENV=N``)
    SIGKILLs every trial's worker once, mid-epoch N+1; ``diverge`` (``DIVERGE_ENV=LABEL@N``) gives
    the trial named LABEL (its folder's suffix, e.g. ``gradual2_s0.9_seed1``) an infinite learning
    rate from epoch N on, so that its training really diverges."""

    kill_at_epoch: int | None = None
    diverge: tuple[str, int] | None = None

    def apply(self, run: FinetuneRun, trial_dir: str) -> None:
        if self.kill_at_epoch is not None:
            kill_once_mid_epoch(run, self.kill_at_epoch, os.path.join(trial_dir, CHAOS_MARKER))
        if self.diverge is not None and self.diverge[0] == run.point.label:
            diverge_from_epoch(run, self.diverge[1])


def chaos_from_env() -> Chaos:
    """The fault injection asked for by ``CHAOS_ENV`` and ``DIVERGE_ENV`` (none when unset)."""
    kill = os.environ.get(CHAOS_ENV)
    diverge = os.environ.get(DIVERGE_ENV)
    if diverge:
        label, _, epoch = diverge.rpartition("@")
        diverge = (label, int(epoch))
    return Chaos(int(kill) if kill else None, diverge or None)


def diverge_from_epoch(run: FinetuneRun, epoch: int) -> None:
    """Fault injection: from epoch ``epoch`` (1-based) on, every optimizer step uses an infinite
    learning rate."""

    def hook(optimizer, args, kwargs):
        if run.epoch + 1 >= epoch:
            for group in optimizer.param_groups:
                group["lr"] = math.inf

    run.optimizer.register_step_pre_hook(hook)


def kill_once_mid_epoch(run: FinetuneRun, kill_at_epoch: int, marker: str) -> None:
    """Fault injection: SIGKILL this worker at the second optimizer step after ``kill_at_epoch``
    epochs (one training batch into the epoch), once per trial (``marker`` remembers it), as a
    real worker death mid-epoch would."""
    steps = 0

    def hook(optimizer, args, kwargs):
        nonlocal steps
        if run.epoch == kill_at_epoch and not os.path.exists(marker):
            steps += 1
            if steps == 2:
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)

    run.optimizer.register_step_pre_hook(hook)


def train_prune_train(config: dict, sweep: SweepConfig, dense_refs: dict, chaos: Chaos = Chaos()) -> None:
    """Tune function trainable. ``config`` holds only the trial point (``config["trial"]``);
    ``sweep``, the config validated on the driver, and the dense models arrive once through
    ``tune.with_parameters``. Resumes from ``tune.get_checkpoint()`` when Tune restarts a trial.
    """
    point = schema.TrialPoint.from_dict(config[schema.PARAM])
    torch.set_num_threads(max(1, int(round(sweep.resources.cpu))))
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    device = device_for(gpu_ids)
    run = FinetuneRun(sweep, point, ray.get(dense_refs[point.seed]), device)
    last_metrics = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=False)
        run.load_state(state)
        last_metrics = state.get("metrics")
    context = {"node_id": ray.get_runtime_context().get_node_id(), "device": str(device), "gpu_ids": gpu_ids}
    chaos.apply(run, tune.get_context().get_trial_dir())

    if run.done and last_metrics is not None:
        # finished before the driver recorded it: announce the final result again, train nothing
        tune.report(_checked({**last_metrics, **context}))
        return
    while not run.done:
        metrics = run.run_epoch()
        state = run.state()
        state["metrics"] = metrics
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, os.path.join(folder, STATE_FILE))
            tune.report(_checked({**metrics, **context}), checkpoint=tune.Checkpoint.from_directory(folder))


def _checked(report: dict) -> dict:
    """``report`` if every name in it is a declared metric (:data:`analysis.schema.METRICS`)."""
    unknown = schema.undeclared(report)
    if unknown:
        raise ValueError(f"reported metric(s) {', '.join(unknown)} are not declared in analysis.schema.METRICS")
    return report
