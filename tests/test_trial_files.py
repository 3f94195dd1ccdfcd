"""What a trial leaves behind: a few numbers for Ray Tune, everything in its own results file,
checkpoints by the policy, and the final pruned model, compactly."""
import pandas as pd
import pytest
import torch

import pruning_core as pc
from analysis import load_experiment, schema, trial_results
from sweeps.cli import main
from sweeps.config import AUTO_CHECKPOINTS, ConfigError, validate
from sweeps.models import build_model
from sweeps.trainable import CHAOS_ENV, CHAOS_MARKER, STATE_FILE

from .conftest import TINY, tune_rows, uninterrupted, write_config

# what Ray Tune adds to every result by itself
TUNE_OWN = {"timestamp", "checkpoint_dir_name", "should_checkpoint", "done", "training_iteration", "trial_id",
            "date", "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "config", "time_since_restore",
            "iterations_since_restore", "experiment_tag"}


def test_tune_gets_a_few_numbers_and_the_results_file_everything(tiny_experiment):
    df = load_experiment(tiny_experiment)
    for trial_dir in sorted(p for p in tiny_experiment.iterdir() if (p / schema.RESULT_FILE).exists()):
        rows = tune_rows(trial_dir)
        assert {k for row in rows for k in row} - TUNE_OWN == set(schema.TUNE_METRICS) - {schema.DIVERGED,
                                                                                            schema.DIVERGED_EPOCH}
        table = trial_results.read([str(trial_dir / schema.TRIAL_RESULTS_FILE)]).to_pandas()
        trial_id = rows[0]["trial_id"]
        # one row per epoch, the same epochs and accuracies Tune saw, and all of it in the analysis
        assert table["epoch"].tolist() == [r["epoch"] for r in rows] == list(range(1, rows[-1]["budget_epochs"] + 1))
        assert table["test_accuracy"].tolist() == [r["test_accuracy"] for r in rows]
        assert set(table["trial_id"]) == {trial_id}
        mine = df[df["trial_id"] == trial_id].reset_index(drop=True).drop(columns="arm")  # the analysis's own column
        pd.testing.assert_frame_equal(mine, table, check_dtype=False)
        # the final model, compactly: the same per-layer sparsity as the last report
        model = pc.load_pruned(trial_dir / schema.PRUNED_MODEL_FILE, build_model("small_cnn", 10, 1))
        last = table.iloc[-1]
        assert pc.layer_sparsity(model) == {layer: last[f"layer_sparsity.{layer}"] for layer in pc.layer_sparsity(model)}
        assert pc.sparsity(model) == last["sparsity"]
    # Tune's experiment state knows nothing of layers (it keeps statistics of every name it sees)
    state = sorted(tiny_experiment.glob("experiment_state-*.json"))[-1].read_text()
    assert "layer_sparsity" not in state and "train_loss" not in state


def test_checkpoint_every_n_epochs_resumes_with_equal_numbers(ray_session, tmp_path, monkeypatch):
    """Checkpoints at epochs 3 and 6 and the end (8); a worker killed in epoch 5 continues from 3
    and ends with the numbers of an uninterrupted run; one checkpoint kept, the final compact one."""
    cfg = write_config(tmp_path, finetune={"epochs": 8, "batch_size": 64}, seeds=1, sparsities=[0.9],
                       schedules=[{"name": "gradual2", "kind": "gradual", "steps": 2}],
                       checkpoint={"every_epochs": 3, "keep": 1})
    storage = tmp_path / "r"
    monkeypatch.setenv(CHAOS_ENV, "4")  # the worker is SIGKILLed one step into epoch 5
    assert main(["run", str(cfg), "--storage", str(storage), "--name", "chaos"]) == 0
    (trial,) = [p for p in (storage / "chaos").iterdir() if p.name.endswith("_seed0")]
    assert (trial / CHAOS_MARKER).exists(), "the fault was not injected"
    rows = tune_rows(trial)
    saved = [r["epoch"] for r in rows if r.get("should_checkpoint")]
    assert saved == [3, 6, 8]
    # epoch 4's report reached Ray Tune before the worker died, or did not (a race with the kill): the
    # restored trial reports epochs 4 to 8 again, from the epoch-3 checkpoint
    assert [r["epoch"] for r in rows] in ([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 4, 5, 6, 7, 8])
    assert [(r["epoch"], r["iterations_since_restore"]) for r in rows[-5:]] == [(4, 1), (5, 2), (6, 3), (7, 4), (8, 5)]
    assert [r["iterations_since_restore"] for r in rows[:3]] == [1, 2, 3]
    # equal to the same trial run without interruption (in this process, from the same dense model)
    chaos = load_experiment(storage / "chaos")
    numbers = [c for c in chaos.columns if not c.endswith("_s") and c not in ("trial_id", "node_id", "device", "gpu_ids")]
    pd.testing.assert_frame_equal(uninterrupted(storage / "chaos")[numbers], chaos[numbers])
    # keep: 1 leaves the final checkpoint only, and it holds no model or optimizer (the trial is done)
    (kept,) = [p for p in trial.iterdir() if p.name.startswith("checkpoint_")]
    state = torch.load(kept / STATE_FILE, weights_only=False)
    assert state["done"] is True and set(state) == {"done", "history"} and len(state["history"]) == 8


def test_checkpoint_policy_defaults_and_legacy_name():
    config = validate({**TINY, "finetune": {"epochs": 120}})
    assert config.checkpoint.keep == 2 and config.checkpoint.every_epochs is None
    assert AUTO_CHECKPOINTS == 10
    assert [config.checkpoint.every(n) for n in (4, 8, 10, 11, 25, 120, 160)] == [1, 1, 1, 2, 3, 12, 16]
    assert validate({**TINY, "checkpoint": {"every_epochs": 5}}).checkpoint.every(120) == 5
    # an experiment recorded before checkpoint.keep still validates (and so resumes)
    assert validate({**TINY, "checkpoints_to_keep": 10}).checkpoint.keep == 10
    with pytest.raises(ConfigError, match="checkpoints_to_keep: give checkpoint.keep only"):
        validate({**TINY, "checkpoints_to_keep": 10, "checkpoint": {"keep": 3}})
    with pytest.raises(ConfigError, match="checkpoint.every_epochs"):
        validate({**TINY, "checkpoint": {"every_epochs": 0}})


def test_results_files_read_in_chunks_and_unified(tmp_path, monkeypatch):
    """Many files are read as datasets of CHUNK files; a file with other columns (a resumed
    experiment's newer code) is unified with the rest, its missing values null."""
    reports = lambda n: [{"schedule": "instant", "epoch": e, "test_accuracy": e / 10, "layer_sparsity": {"a": 0.5}}
                         for e in range(1, n + 1)]
    paths = []
    for i in range(5):
        paths.append(str(tmp_path / f"t{i}" / schema.TRIAL_RESULTS_FILE))
        trial_results.write(paths[-1], f"t{i}", reports(i + 1), layers=["a"])
    monkeypatch.setattr(trial_results, "CHUNK", 2)
    table = trial_results.read(paths).to_pandas()
    assert table["trial_id"].tolist() == [f"t{i}" for i in range(5) for _ in range(i + 1)]
    assert table["epoch"].tolist() == [e for i in range(5) for e in range(1, i + 2)]
    assert list(table.columns) == trial_results.arrow_schema(["a"]).names
    # another layer set in one file: that file is read with its own columns, the others get nulls
    trial_results.write(paths[0], "t0", [{"epoch": 1, "layer_sparsity": {"b": 0.25}}], layers=["b"])
    table = trial_results.read(paths).to_pandas().set_index("trial_id")
    assert table.loc["t0", "layer_sparsity.b"] == 0.25 and pd.isna(table.loc["t0", "layer_sparsity.a"])
    assert table.loc["t1", "layer_sparsity.a"].tolist() == [0.5, 0.5] and table.loc["t1", "layer_sparsity.b"].isna().all()
    with pytest.raises(ValueError, match="not columns of the results file: layer_sparsity.c"):
        trial_results.to_table("t", [{"layer_sparsity": {"c": 1.0}}], layers=["a"])
