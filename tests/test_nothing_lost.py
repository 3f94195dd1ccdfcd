"""Killed workers, interrupted drivers and resumes: no finished work lost, numbers unchanged."""
import io
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from analysis import completion, load_experiment, storage, summarize
from analysis.cli import main as analyze
from analysis.schema import DENSE_DIR, DENSE_LOG, RESULT_FILE, is_finished
from sweeps.cli import main
from sweeps.trainable import CHAOS_ENV, CHAOS_MARKER

from .conftest import ROOT, record_fault, tune_rows, uninterrupted, write_config

COLS = ["schedule", "target_sparsity", "seed", "epoch", "test_accuracy", "test_loss", "train_loss", "sparsity"]


def rows(path):
    df = load_experiment(path)
    return df[COLS].sort_values(["schedule", "target_sparsity", "seed", "epoch"]).reset_index(drop=True)


def test_killed_worker_resumes_from_checkpoint_with_equal_numbers(ray_session, tmp_path, monkeypatch):
    cfg = write_config(tmp_path, finetune={"epochs": 4, "batch_size": 64}, seeds=1, sparsities=[0.9],
                       schedules=[{"name": "gradual2", "kind": "gradual", "steps": 2}])
    storage = tmp_path / "r"
    monkeypatch.setenv(CHAOS_ENV, "2")  # each trial's worker is SIGKILLed once, mid-epoch 3
    rc = main(["run", str(cfg), "--storage", str(storage), "--name", "chaos"])
    markers = list((storage / "chaos").glob(f"*/{CHAOS_MARKER}"))
    assert len(markers) == 1, "the fault was not injected"
    lost = completion(load_experiment(storage / "chaos"), storage / "chaos")["missing"]
    record_fault(survived=rc == 0, trials_lost=lost)
    assert rc == 0
    # the retry started from the epoch-2 checkpoint, not from scratch
    last = tune_rows(markers[0].parent)[-1]
    assert last["iterations_since_restore"] < last["training_iteration"] == 4
    # the numbers of the same trial run without interruption (in this process, from the same dense model)
    clean = uninterrupted(storage / "chaos")[COLS].sort_values(["schedule", "target_sparsity", "seed", "epoch"])
    pd.testing.assert_frame_equal(clean.reset_index(drop=True), rows(storage / "chaos"))


def _wait_for(predicate, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _reports(file: str) -> list[dict]:
    return [json.loads(line) for line in storage.read_bytes(file).decode().splitlines() if line.strip()]


def _finished_trials(path: str) -> dict:
    """Reports of each finished trial, read from the experiment's storage (a folder or s3://)."""
    done = {}
    for name in storage.list_dir(path):
        file = storage.join(path, name, RESULT_FILE)
        if storage.is_file(file):
            lines = _reports(file)
            if lines and is_finished(lines[-1]):
                done[name] = lines
    return done


def _checkpoints(path: str, trial: str) -> list[str]:
    return [n for n in storage.list_dir(storage.join(path, trial)) if n.startswith("checkpoint_")]


@pytest.fixture(scope="module")
def reference(ray_session, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    cfg = write_config(folder, finetune={"epochs": 8, "batch_size": 64}, seeds=[3, 4])
    assert main(["run", str(cfg), "--storage", str(folder), "--name", "ref"]) == 0
    return cfg, summarize(load_experiment(folder / "ref")), rows(folder / "ref")


# SIGINT (a graceful stop) on S3, then resume; SIGKILL (no goodbye) on a local folder, then extend by
# a seed: each storage, each kind of stop and each way on once (local-sigint adds half a minute
# to the suite and nothing the two miss)
@pytest.mark.parametrize("where,sig,then", [("local", signal.SIGKILL, "extend"), ("s3", signal.SIGINT, "resume")],
                         ids=["local-sigkill-extend", "s3-sigint-resume"])
def test_interrupted_sweep_resumes_only_unfinished(reference, ray_session, s3, tmp_path, where, sig, then):
    """Interrupt the driver mid-sweep, resume (or extend it by the reference's second seed), analyse:
    finished trials untouched, the dense model trained only for the new seed, numbers equal an
    uninterrupted local run's; on S3 the analysis reads straight from the bucket."""
    cfg, ref_summary, ref_rows = reference
    if then == "extend":
        cfg = write_config(tmp_path, name="first_seed.yaml", finetune={"epochs": 8, "batch_size": 64}, seeds=[3])
    root = s3.bucket(f"cut-{sig.name.lower()}") + "/experiments" if where == "s3" else str(tmp_path)
    path = storage.join(root, "cut")
    # the driver syncs results and experiment state to storage every second (default: >= 10 s),
    # so what this test reads from storage is current enough to interrupt mid-sweep
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    env.pop(CHAOS_ENV, None)
    console = tmp_path / "console.txt"
    with open(console, "w") as out:
        driver = subprocess.Popen(
            [sys.executable, "-m", "sweeps", "run", str(cfg), "--storage", root, "--name", "cut",
             "--address", ray_session.address_info["address"]],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: len(_finished_trials(path)) >= 1, 120, "a finished trial")
        os.kill(driver.pid, sig)
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    if sig == signal.SIGINT:  # Ctrl-C ends with prunesweep's resume line, none of Ray Tune's restore advice
        said = console.read_text()
        assert "Tuner.restore(" not in said and "Could not fetch metrics" not in said, said[-3000:]
        assert "prunesweep resume" in said.strip().splitlines()[-1], said[-3000:]
    finished = _finished_trials(path)
    assert 1 <= len(finished) < (4 if then == "extend" else 8), "the interrupt came too late to test anything"
    dense_log = storage.read_bytes(storage.join(path, DENSE_DIR, DENSE_LOG))
    checkpoints = {name: _checkpoints(path, name) for name in finished}

    rc = main(["resume", path] if then == "resume" else ["extend", path, "--set", "seeds=[3, 4]"])
    record_fault(survived=rc == 0, trials_lost=completion(load_experiment(path), path)["missing"])
    assert rc == 0

    # dense models were not retrained (only the new seed's trained), finished trials were not trained again
    log = storage.read_bytes(storage.join(path, DENSE_DIR, DENSE_LOG))
    assert log.startswith(dense_log)
    assert [json.loads(line)["seed"] for line in log[len(dense_log):].splitlines()] == ([4] if then == "extend" else [])
    for name, lines in finished.items():
        after = _reports(storage.join(path, name, RESULT_FILE))
        assert {r["epoch"] for r in after} == {r["epoch"] for r in lines}
        assert [r["test_accuracy"] for r in after[: len(lines)]] == [r["test_accuracy"] for r in lines]
        # no new checkpoint (Ray Tune may only have removed one beyond checkpoint.keep)
        kept = _checkpoints(path, name)
        assert set(kept) <= set(checkpoints[name]) and max(kept) == max(checkpoints[name])
    # and the analysis equals the uninterrupted sweep's
    pd.testing.assert_frame_equal(rows(path), ref_rows)
    pd.testing.assert_frame_equal(summarize(load_experiment(path)), ref_summary)
    if where == "s3":
        out = tmp_path / "report"
        assert analyze([path, "--out", str(out)]) == 0
        summary = pd.read_csv(out / "summary.csv")
        pd.testing.assert_frame_equal(summary, pd.read_csv(io.StringIO(ref_summary.to_csv(index=False))))
        assert "8 finished of 8 expected" in (out / "report.md").read_text()


def test_fault_injection_fires_one_step_into_the_epoch(tmp_path, monkeypatch):
    """The kill comes after one optimizer step of epoch N+1, never from a gradient-criterion
    prune's forward passes (gradient scoring at the start of each phase)."""
    import torch

    from sweeps import trainable
    from sweeps.config import validate
    from sweeps.dense_training import train_dense
    from sweeps.plan import expand
    from sweeps.trial import TrialRun

    from .conftest import TINY

    sweep = validate({**TINY, "pruning": {"criterion": "gradient", "gradient_batches": 1},
                      "dense": {"epochs": 1, "batch_size": 64}, "finetune": {"epochs": 4, "batch_size": 64}})
    point = [p for p in expand(sweep) if p.schedule_kind == "gradual"][0]
    run = TrialRun.of_point(sweep, point, train_dense(sweep, 0, torch.device("cpu")), torch.device("cpu"))
    steps = {}
    run.learner.optimizer.register_step_post_hook(lambda *_: steps.update({run.epoch: steps.get(run.epoch, 0) + 1}))
    kills = []
    monkeypatch.setattr(trainable.os, "kill", lambda pid, sig: kills.append((run.epoch, steps.get(run.epoch, 0), sig)))
    trainable.kill_once_mid_epoch(run, 2, str(tmp_path / CHAOS_MARKER))  # epoch 3 starts with the second prune
    while not run.done:
        run.run_epoch()
    assert kills == [(2, 1, signal.SIGKILL)] and (tmp_path / CHAOS_MARKER).exists()


def _driver(args: list[str], ray_session) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    env.pop(CHAOS_ENV, None)
    return subprocess.Popen([sys.executable, "-m", "sweeps", *args, "--address", ray_session.address_info["address"]],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _kill(driver: subprocess.Popen) -> None:
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=60)


def _trial_folders(path) -> set[str]:
    return {p.name for p in path.iterdir() if p.is_dir() and p.name not in (DENSE_DIR, "analysis")}


def test_a_driver_killed_in_any_phase_resumes_once_to_the_same_numbers(ray_session, tmp_path, capsys):
    """SIGKILL the driver during the dense phase (a second ``run`` and a ``resume`` are refused while
    it runs: it holds the experiment), SIGKILL the resuming driver once trials have begun, cut Ray
    Tune's state files short, resume again: every trial finishes once, none twice, with the numbers of
    an uninterrupted run; the dense model continued from its checkpoint equals one trained in one go;
    a resume of the finished experiment runs nothing."""
    import torch

    from analysis.schema import dense_checkpoint_file, dense_file
    from sweeps.config import load_config
    from sweeps.dense_training import train_dense

    cfg = write_config(tmp_path, dataset={"name": "digits", "train_subset": 256}, seeds=[5], sparsities=[0.9],
                       dense={"epochs": 30, "optimizer": {"name": "sgd", "lr": 0.05}, "batch_size": 64},
                       finetune={"epochs": 12, "batch_size": 64}, checkpoint={"every_epochs": 1})
    root, path = tmp_path / "r", tmp_path / "r" / "cut"
    faults = 0

    first = _driver(["run", str(cfg), "--storage", str(root), "--name", "cut"], ray_session)
    try:
        _wait_for(lambda: (path / DENSE_DIR / dense_checkpoint_file(5)).exists(), 120, "a dense checkpoint")
        assert main(["run", str(cfg), "--storage", str(root), "--name", "cut"]) == 2
        assert main(["resume", str(path)]) == 2
        refused = capsys.readouterr().err
        assert refused.count("the experiment is in use by `prunesweep run` (process ") == 2, refused
        assert not (path / DENSE_DIR / dense_file(5)).exists(), "the dense phase ended too soon to test it"
    finally:
        _kill(first)
    faults += 1

    second = _driver(["resume", str(path)], ray_session)
    try:
        _wait_for(lambda: list(path.glob("*/checkpoint_*")), 180, "a trial checkpoint")
    finally:
        _kill(second)
    faults += 1
    for state in [*path.glob("experiment_state-*.json"), path / "tuner.pkl"]:
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    faults += 1
    before = _trial_folders(path)

    rc = main(["resume", str(path)])
    df = load_experiment(path)  # refuses a point finished twice
    lost = completion(df, path)["missing"]
    for _ in range(faults):
        record_fault(survived=rc == 0 and lost == 0, trials_lost=lost)
    assert rc == 0 and lost == 0
    assert df.groupby("schedule")["trial_id"].nunique().to_dict() == {"gradual2": 1, "instant": 1}
    # the dense model was trained once, continued from the checkpoint the first driver's task left
    [log] = _reports(str(path / DENSE_DIR / DENSE_LOG))
    assert log["seed"] == 5 and log["resumed_from_epoch"] > 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = train_dense(load_config(str(cfg)), 5, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    dense = torch.load(path / DENSE_DIR / dense_file(5), weights_only=True)
    assert dense["test_accuracy"] == reference["test_accuracy"]
    assert all(torch.equal(dense["state_dict"][k], v) for k, v in reference["state_dict"].items())
    clean = uninterrupted(path)[COLS].sort_values(["schedule", "target_sparsity", "seed", "epoch"])
    pd.testing.assert_frame_equal(clean.reset_index(drop=True), rows(path))

    # finished: a resume runs nothing and adds no trial folder
    folders = _trial_folders(path)
    assert folders >= before
    assert main(["resume", str(path)]) == 0
    assert _trial_folders(path) == folders and len(_reports(str(path / DENSE_DIR / DENSE_LOG))) == 1
