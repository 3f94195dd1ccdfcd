"""The Ray Tune trainable: one train-prune-train trial, checkpointed every epoch."""
from __future__ import annotations

import os
import signal
import tempfile

import ray
import torch
from ray import tune

from analysis import schema

from .config import SweepConfig
from .train import FinetuneRun, device_for

STATE_FILE = "state.pt"
CHAOS_ENV = "PRUNESWEEP_CHAOS_KILL_AT_EPOCH"
CHAOS_MARKER = ".chaos_killed"


def chaos_from_env() -> int | None:
    """The epoch after which fault injection kills each trial's worker once (``CHAOS_ENV``), or None."""
    value = os.environ.get(CHAOS_ENV)
    return int(value) if value else None


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


def train_prune_train(config: dict, sweep: SweepConfig, dense_refs: dict, kill_at_epoch: int | None = None) -> None:
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
    if kill_at_epoch is not None:
        kill_once_mid_epoch(run, kill_at_epoch, os.path.join(tune.get_context().get_trial_dir(), CHAOS_MARKER))

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
