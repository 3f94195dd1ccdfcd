"""Real Ray Tune sweeps on the embedded digits dataset."""
import json

import pandas as pd
import pytest

from analysis import final_results, load_experiment
from analysis.schema import is_finished
from sweeps.cli import main

from .conftest import write_config

REPORT_KEYS = {"schedule", "target_sparsity", "seed", "sparsity", "step", "epoch", "test_accuracy", "test_loss",
               "train_loss", "nonzero_params", "compression_ratio", "budget_epochs", "node_id", "device"}


def test_tiny_sweep_reports_everything(tiny_experiment):
    df = load_experiment(tiny_experiment)
    # 2 schedules x 2 sparsities x 2 seeds, plus one ladder per seed
    assert df["trial_id"].nunique() == 10
    assert REPORT_KEYS <= set(df.columns)
    assert df[list(REPORT_KEYS)].notna().all().all()
    # measured sparsity equals the target to the element at the end of every trial
    finals = final_results(df)
    assert len(finals) == 8 + 2 * 2
    prunable = finals["prunable_params"].iloc[0]
    for _, row in finals.iterrows():
        assert row["sparsity"] == pytest.approx(round(row["target_sparsity"] * prunable) / prunable, abs=1e-12)
        assert is_finished(row) or row["schedule_kind"] == "ladder"
    assert df["device"].eq("cpu").all()


def test_equal_budget_and_ladder_rungs(tiny_experiment):
    df = load_experiment(tiny_experiment)
    epochs = df.groupby(["schedule", "target_sparsity", "seed"])["epoch"].apply(sorted)
    # with a ladder in the sweep, instant/gradual at rung j train the ladder's cumulative budget
    assert epochs[("instant", 0.5, 0)] == [1, 2]
    assert epochs[("instant", 0.9, 0)] == [1, 2, 3, 4]
    assert epochs[("gradual2", 0.9, 1)] == [1, 2, 3, 4]
    assert epochs[("ladder", 0.5, 0)] == [1, 2] and epochs[("ladder", 0.9, 0)] == [3, 4]
    g = df[(df.schedule == "gradual2") & (df.target_sparsity == 0.9) & (df.seed == 0)].sort_values("epoch")
    assert g["step"].tolist() == [1, 1, 2, 2]
    assert g["sparsity"].iloc[0] < g["sparsity"].iloc[-1]  # pruned in two steps, not at once


def test_dense_models_trained_once_per_seed(tiny_experiment):
    lines = (tiny_experiment / "dense" / "trainings.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["seed"] for line in lines) == [0, 1]
    df = load_experiment(tiny_experiment)
    # every trial of one seed starts from the same dense model
    assert df.groupby("seed")["dense_test_accuracy"].nunique().eq(1).all()


def test_no_silent_overwrite(tiny_experiment, capsys):
    before = sorted(p.name for p in tiny_experiment.iterdir())
    cfg = tiny_experiment / "prunesweep.yaml"
    rc = main(["run", str(cfg), "--storage", str(tiny_experiment.parent), "--name", tiny_experiment.name])
    err = capsys.readouterr().err
    assert rc == 2 and "already exists" in err and f"prunesweep resume {tiny_experiment}" in err and "--name" in err
    assert sorted(p.name for p in tiny_experiment.iterdir()) == before


def test_gpu_request_refused_without_gpus(ray_session, tmp_path, capsys):
    cfg = write_config(tmp_path, resources={"cpu": 1, "gpu": 0.25})
    rc = main(["run", str(cfg), "--storage", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "resources.gpu: each trial asks for 0.25 GPU but the Ray cluster has none" in err
    assert not (tmp_path / "r" / "tiny").exists()


def test_resume_of_finished_experiment_trains_nothing(tiny_experiment, capsys):
    before = load_experiment(tiny_experiment)
    dense_log = (tiny_experiment / "dense" / "trainings.jsonl").read_text()
    assert main(["resume", str(tiny_experiment)]) == 0
    after = load_experiment(tiny_experiment)
    assert (tiny_experiment / "dense" / "trainings.jsonl").read_text() == dense_log
    cols = ["trial_id", "epoch", "test_accuracy", "test_loss"]
    pd.testing.assert_frame_equal(before[cols], after[cols])


def test_rewinding_sweep_under_ray_and_its_report(ray_session, tmp_path):
    """One-shot vs a ladder, both with weight rewinding, per-prune budget: the dense task keeps the one
    snapshot the trials rewind to, the trials start from it through Ray, and the report states the budgets."""
    import torch

    from analysis import write_report

    cfg = write_config(tmp_path, seeds=1, schedules=[{"name": "oneshot", "kind": "instant"},
                                                     {"name": "imp", "kind": "ladder"}],
                       finetune={"epochs": 1, "batch_size": 64, "retrain": ["weight_rewind", "finetune"],
                                 "ladder_budget": "per_prune"})
    assert main(["run", str(cfg), "--storage", str(tmp_path / "r"), "--name", "rw"]) == 0
    experiment = tmp_path / "r" / "rw"
    dense = torch.load(experiment / "dense" / "seed_0.pt", weights_only=False)
    assert sorted(dense["rewind"]) == [1]  # T - P = 2 - 1, and only that
    df = load_experiment(experiment)
    assert df["trial_id"].nunique() == 6 and set(df["arm"]) == {"oneshot", "imp", "oneshot+weight_rewind",
                                                                 "imp+weight_rewind"}
    rewound = df[df["retrain"] == "weight_rewind"]
    # every phase is one epoch: the dense cosine's rate in its last epoch (0.05 -> 0.025), with dense SGD
    assert rewound["lr"].tolist() == pytest.approx([0.025] * len(rewound), rel=1e-12)
    assert df.loc[df["retrain"] == "finetune", "lr"].eq(0.001).all()
    report = (tmp_path / "out" / "report.md")
    write_report(experiment, tmp_path / "out")
    text = report.read_text()
    assert "Budget `per_prune`" in text and "`weight_rewind`: weight rewinding" in text
    table = pd.read_csv(tmp_path / "out" / "comparison.csv").set_index(["a", "b", "target_sparsity"])
    row = table.loc[("imp+weight_rewind", "oneshot+weight_rewind", 0.9)]
    assert (row["epochs_a"], row["epochs_b"]) == (2, 1)
    assert ("imp+weight_rewind", "imp", 0.5) in table.index and ("oneshot", "imp", 0.5) not in table.index
