"""What a researcher sees while a sweep runs: a console that prunesweep's own lines are not lost in,
the dashboard naming each trial and dense training, the sweep's figures as Ray metrics, and one
clear line for what a user typed wrong."""
import os
import socket

import pytest

from analysis import load_experiment, storage
from analysis.messages import count
from analysis.schema import RESULT_FILE
from sweeps.cli import main

from .conftest import run_helper, write_config

# Ray's and Ray Tune's lines that asked the user to change what prunesweep sets, or said per
# checkpoint what prunesweep says per sweep
NOISE = ("snapshotting has been triggered", "Checkpoint successfully created", "Token authentication is enabled",
         "Could not fetch metrics", "Tuner.restore(")


def _agent_port_taken():
    """Hold the port Ray's dashboard agent serves HTTP on, as another Ray on the machine would
    (None when something, another Ray, already holds it)."""
    sock = socket.socket()
    try:
        sock.bind(("0.0.0.0", 52365))
    except OSError:
        sock.close()
        return None
    sock.listen()
    return sock


@pytest.mark.ray
def test_dashboard_names_trials_and_metrics_follow_them(tmp_path):
    """A sweep as a user starts it (a local Ray with its dashboard), watched through Ray's state API
    and the node's metrics endpoint: each trial's actor is named by its folder, each dense training's
    task by its seeds; a point's epoch, sparsity and test accuracy are metrics whose values are its
    results file's, its state is running while it trains and finished once its trial ended; the
    console says what the port Ray's dashboard agent could not get costs, shows its progress line and
    carries none of Ray's noise."""
    cfg = write_config(tmp_path, seeds=1, sparsities=[0.9], finetune={"epochs": 4, "batch_size": 64})
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PRUNESWEEP_PROGRESS_S": "2", "RAY_metrics_report_interval_ms": "500"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_MODE", None)  # the local Ray's token authentication is prunesweep's to set
    held = _agent_port_taken()
    try:
        seen, out = run_helper("tests.helpers.monitor", ["run", str(cfg), "--storage", str(tmp_path), "--name", "watched"],
                               env)
    finally:
        if held is not None:
            held.close()
    assert seen["code"] == 0, out[-3000:]

    path = tmp_path / "watched"
    folders = sorted(p.name for p in path.iterdir() if (p / RESULT_FILE).exists())
    assert len(folders) == 2 and set(folders) <= set(seen["actors"]), (folders, seen["actors"], seen["errors"])
    assert "dense_seed0" in seen["tasks"]

    df = load_experiment(path)
    metrics = seen["metrics"]

    def samples(name: str, folder: str, **tags) -> list[float]:
        wanted = [f'tune_trial="{folder}"', 'experiment="watched"', *(f'{k}="{v}"' for k, v in tags.items())]
        return [v for k, v in metrics.items() if k.startswith(f"ray_prunesweep_{name}{{") and all(w in k for w in wanted)]

    exported = [f for f in folders if samples("trial_epoch", f)]
    assert exported, metrics  # a trial's worker exports every 0.5 s here; a trial trains for seconds
    for folder in exported:
        rows = df[df["trial_id"] == folder.split("_", 1)[0]]
        assert set(samples("trial_epoch", folder)) <= set(rows["epoch"])
        assert set(samples("trial_test_accuracy", folder)) <= set(rows["test_accuracy"])
        assert set(samples("trial_sparsity", folder)) <= set(rows["sparsity"])
    for folder in folders:  # from the driver, once the trial ended
        assert 1.0 in samples("trial_state", folder, state="finished"), (folder, metrics)
    assert any(k.startswith("ray_prunesweep_points{") and 'state="done"' in k for k in metrics)
    assert any(k.startswith("ray_prunesweep_dense_epoch{") and 'seeds="0"' in k for k in metrics)

    for noise in NOISE:
        assert noise not in out, noise
    assert "[prunesweep] trials: " in out
    # this test holds the agent's port, or another Ray on the machine does
    assert "warning: Ray's dashboard agent could not listen on port 52365" in out
    assert len(out.splitlines()) < 60, out


def test_one_slash_uri_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path)
    assert main(["run", str(cfg), "--storage", "s3:/bucket/x"]) == 2
    assert capsys.readouterr().err == ("prunesweep: error: --storage: 's3:/bucket/x': a URI takes two slashes after "
                                       "s3: (did you mean s3://bucket/x?)\n")
    assert list(tmp_path.iterdir()) == [cfg]  # no folder named s3:
    assert storage.normalise("C:/data") == os.path.abspath("C:/data")  # one letter: a drive, not a scheme


def test_dataset_root_at_the_datasets_own_folder_names_its_parent(tmp_path, capsys):
    own = tmp_path / "cifar-10-batches-py"
    own.mkdir()
    cfg = write_config(tmp_path, dataset={"name": "cifar10", "root": str(own), "download": False}, model="resnet20")
    assert main(["validate", str(cfg)]) == 2
    assert capsys.readouterr().err == (f"prunesweep: error: dataset.root {str(own)!r} is the cifar-10-batches-py folder "
                                       f"itself: torchvision looks for it inside dataset.root; use its parent "
                                       f"(dataset.root: {tmp_path})\n")


def test_counts_are_worded_in_their_number():
    assert [count(1, "sparsities"), count(2, "sparsities"), count(1, "seeds"), count(3, "seeds"), count(0, "days")] == [
        "1 sparsity", "2 sparsities", "1 seed", "3 seeds", "0 days"]


def test_every_subcommand_documents_its_arguments(capsys):
    for command in ("run", "resume", "extend"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "-v, --verbose print everything Ray and Ray Tune say" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["validate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "config YAML file, or a built-in config name" in text and "--set KEY=VALUE override a config field" in text


def test_quiet_driver_drops_only_what_prunesweep_says_itself(caplog):
    """Without -v: Ray's INFO lines off and Tune's restore advice dropped, its other warnings kept;
    with -v everything; and afterwards the loggers as they were."""
    import logging

    from sweeps import console

    tune, train = logging.getLogger("ray.tune.tune"), logging.getLogger("ray.train._internal.storage")
    before = (logging.getLogger("ray.train").level, logging.getLogger("ray.tune").level)
    caplog.set_level(logging.INFO)
    for loud in (False, True):
        caplog.clear()
        with console.driver(loud):
            train.info("Checkpoint successfully created at: x")
            tune.warning('Resume experiment with: Tuner.restore(path="x", trainable=...)')
            tune.warning("Trial failed")
        said = [r.getMessage() for r in caplog.records]
        assert said == (["Checkpoint successfully created at: x", 'Resume experiment with: Tuner.restore(path="x", '
                         'trainable=...)', "Trial failed"] if loud else ["Trial failed"])
    assert (logging.getLogger("ray.train").level, logging.getLogger("ray.tune").level) == before
    assert console.table(False) == (console.TABLE_EVERY_S, console.TABLE_ROWS) and console.table(True)[0] == 20


def test_verbose_is_for_one_command(monkeypatch):
    from sweeps import console

    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    with console.verbose_while(True):
        assert console.verbose()
    assert not console.verbose() and console.VERBOSE_ENV not in os.environ
