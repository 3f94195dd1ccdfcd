"""What only a CUDA GPU can show: trials placed on it, bf16 autocast and channels_last, dense tasks
in fresh worker processes, trials packed onto one GPU by fractional ``resources.gpu``, and fused
groups within tolerance of their unfused twins there. Skipped where there is no CUDA; ``make
gpu-check`` runs them on a GPU machine (offline: nothing here downloads)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sweeps.config import validate
from sweeps.dense_training import train_dense, train_dense_group
from sweeps.learner import ModelLearner
from sweeps.loops import autocast, device_for
from sweeps.plan import dense_plan, expand
from sweeps.trial import TrialRun

pytestmark = pytest.mark.gpu

SWEEP = {"name": "gpu", "model": "resnet20", "dataset": {"name": "digits"},
         "dense": {"epochs": 2, "batch_size": 128, "optimizer": {"name": "sgd", "lr": 0.05}},
         "finetune": {"epochs": 2, "batch_size": 128}, "schedules": [{"name": "instant", "kind": "instant"}],
         "sparsities": [0.5, 0.9], "seeds": 2}


def test_a_trial_given_a_gpu_trains_on_it_in_bf16_and_channels_last():
    device = device_for(["0"])
    assert device == torch.device("cuda", 0)
    sweep = validate(SWEEP)
    plan = dense_plan(sweep, 0)
    learner = ModelLearner(sweep, device, plan.seeds, plan.optimizer, plan.batch_size, masked=False)
    model = learner.model()
    conv = model.conv1.weight
    assert conv.is_cuda and conv.is_contiguous(memory_format=torch.channels_last)
    assert learner.data.x_train.is_cuda  # the dataset is held on the GPU
    with autocast(device):
        xb, _ = next(iter(learner.loader))
        logits = model(xb)
    if torch.cuda.is_bf16_supported(including_emulation=False):
        assert logits.dtype == torch.bfloat16
    [stats] = learner.train_epoch([0.05])
    assert stats.finite and stats.accuracy > 0.1


def test_a_fused_group_on_the_gpu_is_within_rounding_of_its_unfused_twins():
    device = torch.device("cuda", 0)
    sweep = validate(SWEEP)
    alone = [train_dense(sweep, s, device) for s in (0, 1)]
    fused = train_dense_group(sweep, [0, 1], device)
    for a, f in zip(alone, fused):
        assert a["test_accuracy"] > 0.5 and abs(a["test_accuracy"] - f["test_accuracy"]) <= 0.05
    points = [p for p in expand(sweep) if p.seed == 0]
    denses = [alone[0]] * len(points)
    run = TrialRun.of_points(sweep, points, denses, device)
    reports = []
    while not run.done:
        reports += run.run_epoch()
    for point in points:
        solo = TrialRun.of_point(sweep, point, alone[0], device)
        while not solo.done:
            [last] = solo.run_epoch()
        mine = [r for r in reports if r["target_sparsity"] == point.target_sparsity][-1]
        assert mine["epoch"] == last["epoch"] and not mine["diverged"]
        assert abs(mine["test_accuracy"] - last["test_accuracy"]) <= 0.05


def test_trials_pack_onto_one_gpu_and_dense_tasks_run_on_it(tmp_path):
    """Four trials at ``resources.gpu: 0.25`` through ``prunesweep run``: every trial and dense model
    trained on cuda:0, and trials ran at the same time on the one GPU."""
    from analysis.load import load_experiment

    cfg = {**SWEEP, "finetune": {"epochs": 6, "batch_size": 128}, "seeds": 1,
           "sparsities": [0.5, 0.7, 0.8, 0.9], "resources": {"cpu": 1, "gpu": 0.25}, "max_concurrent_trials": 4}
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "sweeps", "run", str(path), "--storage", str(tmp_path), "--name", "g",
                           "--no-dashboard"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    df = load_experiment(str(tmp_path / "g"))
    assert set(df["device"]) == {"cuda:0"} and df["trial_id"].nunique() == 4
    spans = []
    for result in (tmp_path / "g").glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        spans.append((rows[-1]["timestamp"] - rows[-1]["time_total_s"], rows[-1]["timestamp"]))
    spans.sort()
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), spans  # packed, not in turn
    dense = Path(tmp_path / "g" / "dense")
    assert dense.is_dir() and any(dense.iterdir())
