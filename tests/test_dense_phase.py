"""The dense phase as a robust phase: per-epoch checkpoints, retries, a failed seed failing only
its own trials, trials of a seed handed out once its dense model exists; the progress line."""
import io
import json
from types import SimpleNamespace

import torch
import yaml
from ray.tune.search import Searcher

from analysis import completion, load_experiment, storage
from analysis.schema import DENSE_DIR, DENSE_LOG, PARAM, dense_file
from sweeps import dense_phase, search
from sweeps.cli import main
from sweeps.config import validate
from sweeps.dense_training import train_dense
from sweeps.plan import expand
from sweeps.groups import Grouping, units
from sweeps.progress import ProgressLine

from .conftest import TINY, write_config


def _log(path) -> list[dict]:
    return [json.loads(line) for line in (path / DENSE_DIR / DENSE_LOG).read_text().splitlines()]


def _dense(path, seed) -> dict:
    return torch.load(io.BytesIO(storage.read_bytes(str(path / DENSE_DIR / dense_file(seed)))), weights_only=False)


def test_a_failed_dense_seed_fails_only_its_trials_and_resume_runs_them(ray_session, tmp_path, monkeypatch, capsys):
    cfg = write_config(tmp_path, sparsities=[0.5], max_failures=1)  # 2 schedules x 2 seeds
    path = tmp_path / "r" / "tiny"
    monkeypatch.setenv(dense_phase.CHAOS_ENV, "1@fail")  # seed 1's dense training raises, every attempt
    assert main(["run", str(cfg), "--storage", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "the dense model of seed 1 could not be trained (" in err and "injected failure" in err
    assert f"`prunesweep resume {path}` trains it again" in err
    df = load_experiment(path)
    assert sorted(df.loc[df["epoch"] == df["budget_epochs"], "seed"]) == [0, 0]  # seed 0's trials ran to the end
    assert completion(df, path)["missing"] == 2
    assert (path / DENSE_DIR / dense_file(0)).exists() and not (path / DENSE_DIR / dense_file(1)).exists()
    assert [e["seed"] for e in _log(path)] == [0]

    monkeypatch.delenv(dense_phase.CHAOS_ENV)
    assert main(["resume", str(path)]) == 0
    df = load_experiment(path)
    assert completion(df, path) == {"expected": 4, "started": 4, "finished": 4, "diverged": 0, "missing": 0}
    assert [e["seed"] for e in _log(path)] == [0, 1]  # seed 0 was not trained again


def test_killed_dense_training_continues_from_its_last_epoch(ray_session, tmp_path, monkeypatch):
    """SIGKILL the dense task's worker once, after 2 of 4 epochs trained and 1 saved: Ray retries
    the task, which goes on from epoch 1's checkpoint and ends with the uninterrupted weights."""
    cfg = write_config(tmp_path, seeds=1, sparsities=[0.5], schedules=[{"name": "instant", "kind": "instant"}],
                       dense={"epochs": 4, "optimizer": {"name": "sgd", "lr": 0.05}, "batch_size": 64},
                       finetune={"epochs": 1, "batch_size": 64})
    monkeypatch.setenv(dense_phase.CHAOS_ENV, "0@1")
    assert main(["run", str(cfg), "--storage", str(tmp_path), "--name", "killed"]) == 0
    assert (tmp_path / "killed" / DENSE_DIR / ".chaos-killed-0").exists(), "the fault was not injected"
    (entry,) = _log(tmp_path / "killed")
    assert entry["resumed_from_epoch"] == 1 and entry["epochs"] == 4
    # the uninterrupted training: in this process, one thread, as the task's resources.cpu: 1 gives it
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        clean = train_dense(validate(yaml.safe_load(cfg.read_text())), 0, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    killed = _dense(tmp_path / "killed", 0)
    assert clean["state_dict"].keys() == killed["state_dict"].keys()
    assert all(torch.equal(clean["state_dict"][k], killed["state_dict"][k]) for k in clean["state_dict"])
    assert clean["test_accuracy"] == killed["test_accuracy"]
    # the checkpoint goes once the dense model is written
    assert sorted(p.name for p in (tmp_path / "killed" / DENSE_DIR).iterdir()) == [
        ".chaos-killed-0", dense_file(0), DENSE_LOG]


def test_trials_of_a_seed_are_handed_out_once_its_dense_model_exists(tmp_path):
    config = validate({**TINY, "seeds": 3})
    points = expand(config)
    phase = SimpleNamespace(units=units(config, Grouping())[:-2], ready={1}, failed={}, reserved=False, poll=lambda: None,
                            release=lambda: None)
    gate = search.SeedGate()
    with dense_phase.active(phase):
        assert gate.suggest("t") is None  # a dense training still waits for its resources: nothing yet
        phase.reserved = True
        given = []
        while (s := gate.suggest("t")) is not None:
            given.append(s[PARAM])
        assert given == [p.to_dict() for p in points[:-2] if p.seed == 1]  # grid order, seed 1 only
        gate.save(str(tmp_path / "gate.pkl"))
        phase.ready.add(0)
        phase.failed[2] = "out of memory"  # a failed seed's trials are handed out too: they fail, naming why
        while (s := gate.suggest("t")) not in (None, Searcher.FINISHED):
            given.append(s[PARAM])
        assert s == Searcher.FINISHED
        assert sorted(map(str, given)) == sorted(str(p.to_dict()) for p in points[:-2])
        # restored as saved: what was handed out is not handed out again; a grid grown since
        # (prunesweep extend) hands out its new points too
        phase.units = units(config, Grouping())
        restored = search.SeedGate()
        restored.restore(str(tmp_path / "gate.pkl"))
        again = []
        while (s := restored.suggest("t")) not in (None, Searcher.FINISHED):
            again.append(s[PARAM])
        assert again == [p.to_dict() for p in points if p.seed != 1]


def test_progress_line_counts_and_eta():
    line = ProgressLine(trials=10, interval=60)
    trials = [SimpleNamespace(status=s) for s in ["TERMINATED"] * 2 + ["RUNNING"] * 2 + ["PENDING", "ERROR"]]
    line._start = 0.0
    line._done_at_start = 0
    # 2 ended in 10 minutes, 7 left (2 running, 5 waiting for resources or their dense model)
    assert line.line(trials, 600.0) == ("[prunesweep] trials: 2 done, 2 running, 5 waiting, 1 failed of 10; "
                                        "10 min elapsed; ETA 35 min")
    fresh = ProgressLine(trials=10, interval=60)
    fresh._start = 0.0
    assert fresh.line(trials, 30.0).endswith("30 s elapsed; ETA after the first trial ends")
