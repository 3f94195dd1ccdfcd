"""The Ray Tune trainable: one train-prune-train trial, checkpointed every epoch."""
from __future__ import annotations

import os
import signal
import tempfile

import ray
import torch
from ray import tune

from .config import validate
from .train import FinetuneRun, device_for

STATE_FILE = "state.pt"
CHAOS_MARKER = ".chaos_killed"


def train_prune_train(config: dict, dense_refs: dict) -> None:
    """Tune function trainable. ``config``: ``sweep`` (the validated config), ``trial`` (the point).

    Resumes from ``tune.get_checkpoint()`` when Tune restarts a failed or interrupted trial.
    """
    sweep = validate(config["sweep"])
    trial = config["trial"]
    torch.set_num_threads(max(1, int(round(sweep.resources.cpu))))
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    device = device_for(gpu_ids)
    dense = ray.get(dense_refs[trial["seed"]])
    run = FinetuneRun(sweep, trial, dense, device)
    last_metrics = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=False)
        run.load_state(state)
        last_metrics = state.get("metrics")
    context = {"node_id": ray.get_runtime_context().get_node_id(), "device": str(device), "gpu_ids": gpu_ids}

    kill_at = (config.get("chaos") or {}).get("kill_at_epoch")
    on_batch = None
    if kill_at is not None:
        marker = os.path.join(tune.get_context().get_trial_dir(), CHAOS_MARKER)

        def on_batch(i):
            if run.epoch == kill_at and i == 1 and not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)  # a real worker death, mid-epoch

    if run.done and last_metrics is not None:
        # finished before the driver recorded it: announce the final result again, train nothing
        tune.report({**last_metrics, **context})
        return
    while not run.done:
        metrics = run.run_epoch(on_batch)
        state = run.state()
        state["metrics"] = metrics
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, os.path.join(folder, STATE_FILE))
            tune.report({**metrics, **context}, checkpoint=tune.Checkpoint.from_directory(folder))
