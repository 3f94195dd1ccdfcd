"""Nothing lost, nothing counted twice, nothing run that the user did not write: the experiment's
lease, the attempts of a point, what is loaded from an experiment, and writes a full disk cuts short.
(The killed drivers are in test_nothing_lost.py.)"""
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
import yaml

from analysis import attempts, load_experiment, schema, storage, trial_results
from analysis.cli import main as analyze
from benchmarks.synthetic import write_experiment
from sweeps import lock
from sweeps.cli import main

from .conftest import TINY, write_config


# ------------------------------------------------------------------ the lease
def _lease(path) -> dict:
    return json.loads(storage.read_bytes(storage.join(str(path), schema.LOCK_FILE)))


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_a_held_experiment_is_refused_naming_its_holder_and_released_at_exit(tmp_path):
    path = str(tmp_path / "exp")
    with lock.held(path, "run") as mine:
        assert _lease(path)["pid"] == os.getpid() and _lease(path)["command"] == "run"
        with pytest.raises(lock.ExperimentInUse, match=rf"resume {path}: the experiment is in use by `prunesweep run` "
                                                        rf"\(process {os.getpid()} on [^,]+, since .*last heard from 0 s ago\)"):
            lock.Lease(path, "resume").acquire()
        assert lock.holder(path).startswith("`prunesweep run` (process")
        assert not mine.lost
    assert not os.path.exists(path), "a run that wrote nothing leaves nothing behind"
    os.makedirs(path)
    (tmp_path / "exp" / "kept").write_text("x")
    with lock.held(path, "resume"):
        pass
    assert os.listdir(path) == ["kept"] and lock.holder(path) is None


def test_a_lease_is_broken_only_when_provably_stale_or_forced(tmp_path, capsys):
    path = str(tmp_path / "exp")
    file = os.path.join(path, schema.LOCK_FILE)
    os.makedirs(path)

    def leave(**fields):
        lease = {**lock._me("run"), **fields}
        with open(file, "w") as f:
            json.dump(lease, f)

    leave(pid=_dead_pid())  # this machine, its process gone: provably stale
    with lock.held(path, "resume"):
        assert _lease(path)["pid"] == os.getpid()
    assert "its process" in capsys.readouterr().err
    leave(machine="elsewhere/boot", pid=1, heartbeat=time.time() - lock.STALE_S - 5)  # not renewed: stale
    with lock.held(path, "resume"):
        pass
    assert "not renewed for" in capsys.readouterr().err
    leave(machine="elsewhere/boot", pid=1, heartbeat=time.time() - 5)  # another machine, alive
    with pytest.raises(lock.ExperimentInUse, match="last heard from 5 s ago"):
        lock.Lease(path, "extend").acquire()
    leave(pid=os.getpid())  # this machine, alive, however late its heartbeat
    with pytest.raises(lock.ExperimentInUse):
        lock.Lease(path, "resume").acquire()
    with lock.held(path, "resume", force=True):
        assert _lease(path)["command"] == "resume"
    assert "--force" in capsys.readouterr().err


def test_the_lease_on_an_object_store(s3):
    path = s3.bucket("lease") + "/exp"
    with lock.held(path, "run"):
        assert s3.keys("lease") == [f"exp/{schema.LOCK_FILE}"]
        with pytest.raises(lock.ExperimentInUse, match="in use by `prunesweep run`"):
            lock.Lease(path, "run").acquire()
    assert s3.keys("lease") == []


def test_a_lease_renews_its_heartbeat(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.05)
    path = str(tmp_path / "exp")
    with lock.held(path, "run"):
        first = _lease(path)["heartbeat"]
        time.sleep(0.3)
        assert _lease(path)["heartbeat"] > first


# ------------------------------------------------------------------ attempts of a point
def _copy_trial(root, folder: str, trial_id: str, epochs: int | None = None) -> str:
    """A second attempt of the trial in ``folder``: its reports under ``trial_id``, cut to ``epochs``."""
    source = os.path.join(root, folder)
    target = os.path.join(root, f"{trial_id}_{folder.split('_', 2)[2]}")
    os.makedirs(target)
    layer = f"{schema.LAYER_SPARSITY}.a"
    table = trial_results.read([os.path.join(source, schema.TRIAL_RESULTS_FILE)]).to_pylist()
    rows = [{**{k: v for k, v in r.items() if k not in (layer, schema.TRIAL_ID)}, schema.LAYER_SPARSITY: {"a": r[layer]}}
            for r in table][: epochs or len(table)]
    trial_results.write(os.path.join(target, schema.TRIAL_RESULTS_FILE), trial_id, rows, ["a"])
    return target


def test_a_point_counts_once_superseded_attempts_are_left_out_and_a_duplicate_is_refused(tmp_path, capsys):
    root = str(tmp_path / "exp")
    write_experiment(root, schedules=("instant", "gradual2"), sparsities=[0.9], seeds=2, epochs=3, layers=["a"])
    before = load_experiment(root)
    first = sorted(f for f in os.listdir(root) if f.startswith("00000_"))[0]
    _copy_trial(root, first, "11111_00000", epochs=2)  # an attempt superseded by the finished one
    pd.testing.assert_frame_equal(load_experiment(root), before)
    assert {a.trial_id: a.finished for a in attempts.scan(root) if a.trial_id.startswith("11111")} == {"11111_00000": False}

    _copy_trial(root, first, "22222_00000")  # finished twice
    with pytest.raises(attempts.DuplicateTrials, match=r"instant_s0.9_seed0 \(00000_00000, 22222_00000\)"):
        load_experiment(root)
    assert analyze([root, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "finished more than once" in err and "instant_s0.9_seed0" in err
    assert not (tmp_path / "out").exists()


def test_the_rule_for_attempts():
    a = attempts.Attempt
    chosen = attempts.counted([a("t1", "p", False, 4), a("t2", "p", True, 8), a("t3", "p", False, 6),
                               a("t4", "q", False, 2), a("t5", "q", False, 5)])
    assert {p: c.trial_id for p, c in chosen.items()} == {"p": "t2", "q": "t5"}


# ------------------------------------------------------------------ only data is loaded
class _Runs:
    def __reduce__(self):
        return (os.system, ("touch /tmp/prunesweep-pwned",))


def test_a_torch_file_that_would_run_code_is_refused_in_one_line(tmp_path):
    from sweeps.torch_files import NotData, load_torch

    file = tmp_path / "seed_0.pt"
    torch.save({"state_dict": {}, "x": _Runs()}, file)
    with pytest.raises(NotData) as refused:
        load_torch(str(file))
    assert "\n" not in str(refused.value) and "posix.system" in str(refused.value)
    assert not os.path.exists("/tmp/prunesweep-pwned")


def test_an_unreadable_newest_checkpoint_falls_back_to_the_one_kept_before(tmp_path, capsys):
    from ray import tune

    from sweeps.trainable import STATE_FILE, checkpoints, readable

    trial, earlier = tmp_path / "t2_instant_s0.9_seed0", tmp_path / "t1_instant_s0.9_seed0"
    for folder, epochs in ((earlier, [2, 4]), (trial, [5, 6, 7])):
        for i, epoch in enumerate(epochs):
            (folder / f"checkpoint_00000{i}").mkdir(parents=True)
            torch.save({"epoch": epoch, "history": []}, folder / f"checkpoint_00000{i}" / STATE_FILE)
    newest = trial / "checkpoint_000001" / STATE_FILE
    newest.write_bytes(newest.read_bytes()[:100])  # cut short by a full disk
    # Ray Tune restarts the trial from checkpoint_000001 (000002 was written after it recorded one)
    found = checkpoints(tune.Checkpoint(str(trial / "checkpoint_000001")), str(trial), [str(earlier)])
    assert [os.path.relpath(c, tmp_path) for c in found] == [
        "t2_instant_s0.9_seed0/checkpoint_000001", "t2_instant_s0.9_seed0/checkpoint_000000",
        "t1_instant_s0.9_seed0/checkpoint_000001", "t1_instant_s0.9_seed0/checkpoint_000000"]
    assert [state["epoch"] for _, state in readable(found)] == [5, 4, 2]
    assert "checkpoint_000001 cannot be read" in capsys.readouterr().err
    # a new trial of the point continues from its earlier attempt's checkpoints; one that would run code is passed over
    torch.save({"epoch": 4, "bad": _Runs()}, earlier / "checkpoint_000001" / STATE_FILE)
    found = checkpoints(None, str(trial), [str(earlier)])
    assert [state["epoch"] for _, state in readable(found)] == [2]
    assert "posix.system" in capsys.readouterr().err


def test_a_stored_config_runs_no_code_before_the_provenance_check(tmp_path, monkeypatch, capsys):
    """An experiment whose model builder changed since it ran is refused without importing it, and
    a builder inside the experiment's own folder is never imported."""
    code = tmp_path / "code"
    code.mkdir()
    marker = tmp_path / "imported"
    (code / "mymodel.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                     "from sweeps.models import small_cnn as build\n")
    monkeypatch.chdir(code)
    from sweeps import provenance
    from sweeps.config import validate
    from sweeps.experiment import write_experiment_file

    config = validate({**TINY, "model": "mymodel:build"})
    path = str(tmp_path / "exp")
    write_experiment_file(path, config, provenance.record(config))
    (code / "mymodel.py").write_text((code / "mymodel.py").read_text() + "# changed\n")
    assert main(["resume", path]) == 2
    assert "the code of model mymodel:build differs" in capsys.readouterr().err
    assert not marker.exists()
    # the same builder, but found in the experiment's folder
    shutil.move(str(code / "mymodel.py"), os.path.join(path, "mymodel.py"))
    monkeypatch.chdir(path)
    assert main(["resume", path, "--force"]) == 2
    assert "inside the experiment" in capsys.readouterr().err and not marker.exists()


# ------------------------------------------------------------------ a full disk
def test_a_write_cut_short_leaves_the_old_file_whole_and_no_temporary_file(tmp_path):
    file = tmp_path / "results.parquet"
    storage.write_bytes(str(file), b"old")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
    try:
        with pytest.raises(OSError):
            storage.write_bytes(str(file), b"x" * 5000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert os.listdir(tmp_path) == ["results.parquet"] and file.read_bytes() == b"old"


def test_an_analysis_killed_midway_leaves_whole_files_and_runs_again_to_the_same_tables(tmp_path):
    root = str(tmp_path / "exp")
    write_experiment(root, schedules=("instant", "gradual2", "gradual4"), sparsities=[0.5, 0.8, 0.9], seeds=6,
                     epochs=4, layers=["a", "b"])
    cut, clean = tmp_path / "cut", tmp_path / "clean"
    analysis = subprocess.Popen([sys.executable, "-m", "analysis", root, "--out", str(cut)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.time() + 120
    while not (cut / "summary.csv").exists() and analysis.poll() is None and time.time() < end:
        time.sleep(0.01)
    analysis.kill()
    analysis.wait()
    assert not [f for f in os.listdir(cut) if ".tmp-" in f]
    assert analyze([root, "--out", str(cut)]) == 0
    assert analyze([root, "--out", str(clean)]) == 0
    for table in ("summary.csv", "comparison.csv"):
        assert (cut / table).read_bytes() == (clean / table).read_bytes()


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "..", "a/b"])
def test_name_stays_inside_storage(tmp_path, capsys, name):
    cfg = write_config(tmp_path)
    assert main(["run", str(cfg), "--storage", str(tmp_path / "r"), "--name", name]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"prunesweep: error: --name {name!r}") or err.startswith(f"prunesweep: error: --name {name}")
    assert err.count("\n") == 1 and not (tmp_path / "r").exists() and not (tmp_path / "x").exists()


def test_analyze_says_when_a_driver_holds_the_experiment(tmp_path, capsys):
    root = str(tmp_path / "exp")
    write_experiment(root, schedules=("instant", "gradual2"), sparsities=[0.9], seeds=2, epochs=2, layers=["a"])
    with lock.held(root, "resume"):
        assert analyze([root, "--out", str(tmp_path / "out")]) == 0
    assert f"`prunesweep resume` (process {os.getpid()} on " in capsys.readouterr().err
    assert analyze([root, "--out", str(tmp_path / "out")]) == 0
    assert "lease" not in capsys.readouterr().err


def test_an_unreadable_lease_is_held_until_it_is_old_and_a_lost_lease_stops_its_driver(tmp_path, monkeypatch):
    import threading

    path = str(tmp_path / "exp")
    os.makedirs(path)
    file = os.path.join(path, schema.LOCK_FILE)
    with open(file, "w") as f:
        f.write("{half a lea")
    with pytest.raises(lock.ExperimentInUse, match="a driver whose lease cannot be read"):
        lock.Lease(path, "resume").acquire()
    old = time.time() - lock.STALE_S - 5
    os.utime(file, (old, old))
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.05)
    mine = lock.Lease(path, "resume")
    stopped = threading.Event()
    mine.on_lost = stopped.set
    mine.acquire()
    try:
        with open(file, "w") as f:
            json.dump({**lock._me("resume"), "command": "resume --force"}, f)  # another driver forced it
        assert stopped.wait(5) and mine.lost
    finally:
        mine.release()
    assert _lease(path)["command"] == "resume --force", "the other driver's lease stays"
