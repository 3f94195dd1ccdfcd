"""``prunesweep status`` (sweeps.status): where an experiment stands, from its own files, without Ray.

Experiments are written in the real on-disk layout: finished ones by benchmarks.synthetic.write_experiment,
unfinished trial folders here with the trials' own results writer and Ray Tune's files as Tune writes them."""
import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from analysis import lease as leases
from analysis import trial_results
from analysis.schema import (CONFIG_FILE, DENSE_DIR, LOCK_FILE, MEMBERS, PARAM, RESULT_FILE, TRIAL_RESULTS_FILE,
                             TrialPoint, member_trial_id)
from benchmarks.synthetic import write_experiment
from sweeps import status as st

from .conftest import ROOT

HEADER = "  arm       points  done  diverged  running  interrupted  failed  waiting"


def point(schedule: str, target: float, seed: int) -> TrialPoint:
    kind = "instant" if schedule == "instant" else "gradual"
    return TrialPoint(schedule, kind, 1 if kind == "instant" else 2, target, seed)


def experiment(tmp_path, group: int = 1, seeds: int = 2):
    """A finished experiment: instant and gradual2 at sparsities 0.5 and 0.9, ``seeds`` seeds, 4 epochs."""
    root = tmp_path / "exp"
    write_experiment(root, schedules=("instant", "gradual2"), sparsities=[0.5, 0.9], seeds=seeds, epochs=4,
                     layers=["l0"], group=group)
    (root / DENSE_DIR).mkdir()
    for seed in range(seeds):  # only their presence counts
        (root / DENSE_DIR / f"seed_{seed}.pt").write_bytes(b"")
    return root


def folder_of(root, label: str):
    """The trial folder that trains the point ``label`` (a fused group's, by its first member's label)."""
    found = [f for f in root.iterdir() if f.is_dir() and f.name.split("_", 2)[-1] == label]
    assert len(found) == 1, (label, found)
    return found[0]


def remove(folder) -> None:
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()


def trial_folder(root, name: str, points, epoch: int, budget: int = 4, tune_epoch: int | None = None,
                 failures: int = 0, diverged_at: dict | None = None, results: bool = True, age_s: float = 0.0):
    """An unfinished trial folder as a trial and Ray Tune leave it: ``params.json`` (Tune, at the start),
    ``results.parquet`` up to ``epoch`` (the trial, at its last checkpoint; none with ``results=False``),
    ``result.json`` up to ``tune_epoch`` (Tune, every epoch) and ``error.txt`` with ``failures`` failures.
    Several ``points``: a fused group's folder. ``diverged_at``: {label: epoch} of members that diverged
    there. ``age_s``: its files written that long ago."""
    trial_id = name.split("_", 1)[0]
    folder = root / name
    folder.mkdir()
    fused = len(points) > 1
    config = ({MEMBERS: [p.to_dict() for p in points], "label": name.split("_", 1)[1]} if fused
              else {PARAM: points[0].to_dict()})
    (folder / "params.json").write_text(json.dumps(config, indent=2))
    reports, ids = [], []
    for p in points:
        last = (diverged_at or {}).get(p.label, epoch)
        for e in range(1, last + 1):
            diverged = e == (diverged_at or {}).get(p.label)
            reports.append({**p.report_fields(p.target_sparsity), "epoch": e, "budget_epochs": budget,
                            "test_accuracy": 0.5, "diverged": diverged, **({"group": trial_id} if fused else {})})
            ids.append(member_trial_id(trial_id, p.label) if fused else trial_id)
    if results and reports:
        trial_results.write(str(folder / TRIAL_RESULTS_FILE), ids, reports, [])
    with open(folder / RESULT_FILE, "w") as f:
        for e in range(1, (epoch if tune_epoch is None else tune_epoch) + 1):
            row = {"epoch": e, "budget_epochs": budget, "test_accuracy": 0.5}
            f.write(json.dumps({**row, "trial_id": trial_id, "training_iteration": e, "config": config}) + "\n")
    if failures:
        (folder / "error.txt").write_text("".join(f"Failure # {n} (occurred at 2026-12-03_12-19-28)\nRuntimeError: "
                                                  "boom\n" for n in range(1, failures + 1)))
    if age_s:
        then = time.time() - age_s
        for f in folder.iterdir():
            os.utime(f, (then, then))
    return folder


def live_lease(root, since_s_ago: float = 60.0, command: str = "run") -> None:
    """The lease a driver in this process holds (:mod:`sweeps.lock`'s fields), taken ``since_s_ago``."""
    now = time.time()
    lease = {**leases.new(command), "host": "vm", "since": now - since_s_ago, "heartbeat": now}
    (root / LOCK_FILE).write_text(json.dumps(lease))


def show(root, trials: bool = False) -> list[str]:
    return st.lines(str(root), trials)


def test_a_finished_experiment_is_one_line_per_arm_a_dense_line_and_a_total(tmp_path):
    root = experiment(tmp_path)
    assert show(root) == [
        f"{root}: 8 trial points; no driver runs it",
        HEADER,
        "  instant        4     4         0        0            0       0        0",
        "  gradual2       4     4         0        0            0       0        0",
        "dense models: all 2 trained",
        "total: 8 of 8 trial points finished (8 done)",
    ]


def test_a_running_point_shows_its_epoch_and_an_earlier_drivers_attempt_waits(tmp_path):
    root = experiment(tmp_path)
    remove(folder_of(root, "instant_s0.9_seed1"))
    # an earlier driver's attempt got to epoch 3; this driver's, continued from its checkpoint at epoch 1,
    # has reported epoch 2 to Tune: the furthest the running attempt's files show
    trial_folder(root, "zzzz_instant_s0.9_seed1", [point("instant", 0.9, 1)], epoch=3, age_s=3600)
    trial_folder(root, "aaaa_instant_s0.9_seed1", [point("instant", 0.9, 1)], epoch=1, tune_epoch=2)
    remove(folder_of(root, "gradual2_s0.5_seed0"))
    trial_folder(root, "bbbb_gradual2_s0.5_seed0", [point("gradual2", 0.5, 0)], epoch=1, age_s=3600)
    remove(folder_of(root, "gradual2_s0.9_seed0"))  # not begun: waiting
    live_lease(root)
    out = show(root, trials=True)
    assert out[0].startswith(f"{root}: 8 trial points; a driver runs it: `prunesweep run` (process {os.getpid()} on vm")
    assert out[1:] == [
        HEADER,
        "  instant        4     3         0        1            0       0        0  running at epoch 2/4",
        "  gradual2       4     2         0        0            0       0        2",
        "dense models: all 2 trained",
        "total: 5 of 8 trial points finished (5 done); 1 running, 2 waiting",
        f"its driver is running it; should the driver stop, continue with: prunesweep resume {root}",
        "unfinished trial points:",
        "  instant_s0.9_seed1   running  epoch 2/4  aaaa_instant_s0.9_seed1",
        "  gradual2_s0.5_seed0  waiting  epoch 1/4  bbbb_gradual2_s0.5_seed0",
        "  gradual2_s0.9_seed0  waiting",
    ]
    (root / LOCK_FILE).unlink()  # the driver gone: each attempted point is where its furthest attempt got
    assert show(root, trials=True)[-3:] == [
        "  instant_s0.9_seed1   interrupted  epoch 3/4  aaaa_instant_s0.9_seed1",
        "  gradual2_s0.5_seed0  interrupted  epoch 1/4  bbbb_gradual2_s0.5_seed0",
        "  gradual2_s0.9_seed0  waiting",
    ]


def test_without_a_live_lease_unfinished_points_are_interrupted_not_running(tmp_path):
    root = experiment(tmp_path)
    remove(folder_of(root, "instant_s0.9_seed1"))
    trial_folder(root, "aaaa_instant_s0.9_seed1", [point("instant", 0.9, 1)], epoch=2)
    expected = [
        HEADER,
        "  instant        4     3         0        0            1       0        0",
        "  gradual2       4     4         0        0            0       0        0",
        "dense models: all 2 trained",
        "total: 7 of 8 trial points finished (7 done); 1 interrupted",
        "interrupted: 1 point stopped mid-way (no driver runs the experiment, so none of them is running); "
        "resume continues each from its newest checkpoint",
        f"continue with: prunesweep resume {root}",
    ]
    assert show(root) == [f"{root}: 8 trial points; no driver runs it", *expected]
    # a lease whose process is gone (this pid, but another process start) does not count
    live_lease(root)
    lease = json.loads((root / LOCK_FILE).read_text())
    (root / LOCK_FILE).write_text(json.dumps({**lease, "process_started": 1.0}))
    out = show(root)
    assert out[0].startswith(f"{root}: 8 trial points; no driver runs it (the lease of `prunesweep run` (process "
                             f"{os.getpid()} on vm")
    assert out[0].endswith(f"is stale: its process {os.getpid()} on this machine is gone)")
    assert out[1:] == expected


def test_a_trial_failed_for_good_is_failed_and_one_tune_still_retries_is_running(tmp_path):
    root = experiment(tmp_path)
    for label in ("instant_s0.5_seed0", "instant_s0.5_seed1"):
        remove(folder_of(root, label))
    # max_failures 3 (the default): the 4th failure is the last; after the 2nd Tune retries
    trial_folder(root, "aaaa_instant_s0.5_seed0", [point("instant", 0.5, 0)], epoch=1, failures=4)
    trial_folder(root, "bbbb_instant_s0.5_seed1", [point("instant", 0.5, 1)], epoch=2, failures=2)
    live_lease(root)
    assert show(root, trials=True)[2:] == [
        "  instant        4     2         0        1            0       1        0  running at epoch 2/4",
        "  gradual2       4     4         0        0            0       0        0",
        "dense models: all 2 trained",
        "total: 6 of 8 trial points finished (6 done); 1 running, 1 failed",
        "failed: 1 point failed after all of Ray Tune's retries (max_failures: 3); resume runs them again",
        f"its driver is running it; should the driver stop, continue with: prunesweep resume {root}",
        "unfinished trial points:",
        "  instant_s0.5_seed0  failed   epoch 1/4  aaaa_instant_s0.5_seed0  (4 failures)",
        "  instant_s0.5_seed1  running  epoch 2/4  bbbb_instant_s0.5_seed1  (2 failures)",
    ]
    (root / LOCK_FILE).unlink()
    assert show(root)[2] == "  instant        4     2         0        0            1       1        0"


def test_a_diverged_point_has_finished_and_counts_apart(tmp_path):
    root = experiment(tmp_path)
    remove(folder_of(root, "gradual2_s0.9_seed1"))
    p = point("gradual2", 0.9, 1)
    trial_folder(root, "aaaa_gradual2_s0.9_seed1", [p], epoch=4, diverged_at={p.label: 2})
    assert show(root)[2:] == [
        "  instant        4     4         0        0            0       0        0",
        "  gradual2       4     3         1        0            0       0        0",
        "dense models: all 2 trained",
        "total: 8 of 8 trial points finished (7 done, 1 diverged (they end there and are never retried))",
    ]


def test_the_fused_layout_counts_each_member_of_a_group_folder(tmp_path):
    root = experiment(tmp_path, group=2, seeds=4)  # 16 points in 8 group folders of 2 seeds
    assert show(root)[0] == f"{root}: 16 trial points; fused in groups of up to 2 seeds; no driver runs it"
    # a group checkpointed at epoch 2 (Tune has seen 3), one of whose members diverged at epoch 1
    remove(folder_of(root, "instant_s0.9_seeds0-1"))
    members = [point("instant", 0.9, s) for s in (0, 1)]
    trial_folder(root, "aaaa_instant_s0.9_seeds0-1", members, epoch=2, tune_epoch=3,
                 diverged_at={members[1].label: 1})
    # a group that has not reached its first checkpoint: Ray Tune's files only
    remove(folder_of(root, "gradual2_s0.5_seeds2-3"))
    trial_folder(root, "bbbb_gradual2_s0.5_seeds2-3", [point("gradual2", 0.5, s) for s in (2, 3)], epoch=1,
                 results=False)
    live_lease(root)
    assert show(root, trials=True)[1:] == [
        HEADER,
        "  instant        8     6         1        1            0       0        0  running at epoch 3/4",
        "  gradual2       8     6         0        2            0       0        0  running at epoch 1/4, 1/4",
        "dense models: all 4 trained",
        "total: 13 of 16 trial points finished (12 done, 1 diverged (they end there and are never retried)); "
        "3 running",
        f"its driver is running it; should the driver stop, continue with: prunesweep resume {root}",
        "unfinished trial points:",
        "  instant_s0.9_seed0   running  epoch 3/4  aaaa_instant_s0.9_seeds0-1",
        "  gradual2_s0.5_seed2  running  epoch 1/4  bbbb_gradual2_s0.5_seeds2-3",
        "  gradual2_s0.5_seed3  running  epoch 1/4  bbbb_gradual2_s0.5_seeds2-3",
    ]


def _dense_experiment(tmp_path):
    """5 seeds, one point each: seed 0's dense model trained, seeds 1 and 2 in one fused dense checkpoint
    at epoch 3 of 5, seed 3's trial began without its model (its training failed), seed 4 not begun."""
    import torch

    root = tmp_path / "dense"
    root.mkdir()
    config = {"name": "dense", "schedules": [{"name": "instant", "kind": "instant", "steps": 1}],
              "sparsities": [0.5], "seeds": 5, "finetune": {"epochs": 4}, "dense": {"epochs": 5}}
    (root / CONFIG_FILE).write_text(yaml.safe_dump(config))
    dense = root / DENSE_DIR
    dense.mkdir()
    torch.save({"model": {"w": torch.zeros(3)}, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
                "rewind": [{0: {"w": torch.zeros(3)}}, {}], "epoch": 5, "seconds": 1.0}, dense / "seed_0.pt")
    torch.save({"model": {"w": torch.zeros(3)}, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
                "generator": torch.zeros(4, dtype=torch.uint8), "rewind": [{}, {}], "epoch": 3, "seconds": 2.5},
               dense / "seeds_1_2.checkpoint.pt")
    (dense / "trainings.jsonl").write_text(json.dumps({"seed": 0, "epochs": 5, "test_accuracy": 0.9}) + "\n")
    trial_folder(root, "aaaa_instant_s0.5_seed0", [point("instant", 0.5, 0)], epoch=4)
    trial_folder(root, "bbbb_instant_s0.5_seed3", [point("instant", 0.5, 3)], epoch=0, failures=4)
    return root


def test_dense_models_per_seed_trained_in_training_failed_and_not_started(tmp_path):
    root = _dense_experiment(tmp_path)
    live_lease(root)
    out = show(root)
    assert out[2:5] == [
        "  instant       5     1         0        0            0       1        3",
        "dense models (5 epochs each): 1 trained (seed 0); 2 in training (seeds 1-2 at epoch 3/5); 1 failed (seed 3); "
        "1 not started (seed 4)",
        "total: 1 of 5 trial points finished (1 done); 1 failed, 3 waiting",
    ]
    (root / LOCK_FILE).unlink()  # its driver gone: the checkpointed training is interrupted
    assert show(root)[3] == ("dense models (5 epochs each): 1 trained (seed 0); 2 interrupted (seeds 1-2 at epoch 3/5); "
                             "1 failed (seed 3); 1 not started (seed 4)")


def test_on_an_object_store_the_listings_say_when_files_were_written(tmp_path, s3, monkeypatch):
    from analysis import storage

    root = _dense_experiment(tmp_path)
    live_lease(root)
    local = show(root)
    uri = s3.bucket("status-times") + "/dense"
    for f in root.rglob("*"):
        if f.is_file():
            storage.write_bytes(storage.join(uri, *f.relative_to(root).parts), f.read_bytes())
    asked = []
    monkeypatch.setattr(storage, "modified", lambda path: asked.append(path))
    assert st.lines(uri)[1:] == [line.replace(str(root), uri) for line in local[1:]]
    assert asked == [], "no request per file for what the listing said"


def test_the_epoch_of_a_dense_checkpoint_is_read_without_torch_or_unpickling(tmp_path):
    import torch

    file = tmp_path / "seed_0.checkpoint.pt"
    # the learner's state before the training's own epoch: the last "epoch" key is the training's
    torch.save({"model": {"epoch": torch.zeros(1)}, "optimizer": {"epoch": 99}, "epoch": 7, "seconds": 1.0}, file)
    assert st.checkpoint_epoch(str(file)) == 7
    (tmp_path / "cut.pt").write_bytes(file.read_bytes()[:100])
    assert st.checkpoint_epoch(str(tmp_path / "cut.pt")) is None


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_a_lease_is_live_until_its_process_is_gone_or_it_is_not_renewed(tmp_path):
    file = leases.lease_file(str(tmp_path))
    now = time.time()

    def judge(**fields):
        with open(file, "w") as f:
            f.write(json.dumps({**leases.new("resume"), **fields}) if fields.get("raw") is None else fields["raw"])
        return leases.judge(file, now)

    assert leases.judge(file) == leases.Judged(), "no lease: none to judge"
    here = judge(since=now - 60)
    assert here.live and here.since == now - 60 and here.stale == ""
    assert here.holder.startswith(f"`prunesweep resume` (process {os.getpid()} on ")
    assert judge(heartbeat=now - 10 * leases.STALE_S).live, "alive on this machine, however late its heartbeat"
    assert judge(pid=_dead_pid()).stale.startswith("its process ")
    assert not judge(pid=_dead_pid()).live
    assert judge(machine="elsewhere", heartbeat=now - 5).holder.endswith("last heard from 5 s ago)")
    assert judge(machine="elsewhere", heartbeat=now - 5).live
    gone = judge(machine="elsewhere", heartbeat=now - leases.STALE_S - 5)
    assert not gone.live and gone.stale.startswith(f"not renewed for {leases.STALE_S + 5:.0f} s")
    cut = judge(raw="{half a lea")
    assert cut.live and cut.lease == {} and cut.holder == leases.UNREADABLE
    old = now - leases.STALE_S - 5
    os.utime(file, (old, old))
    assert not leases.judge(file, now).live and "cannot be read" in leases.judge(file, now).stale


def test_status_words_the_lease_as_it_is_judged(tmp_path):
    root = str(tmp_path)
    assert st.read_lease(root) == st.LeaseState()
    live_lease(tmp_path, since_s_ago=30, command="extend")
    held = st.read_lease(root)
    assert held.live and held.holder.startswith("`prunesweep extend` (process") and held.since < time.time() - 29
    away = {**leases.new("run"), "machine": "elsewhere", "heartbeat": time.time() - leases.STALE_S - 5}
    (tmp_path / LOCK_FILE).write_text(json.dumps(away))
    assert st.read_lease(root).note.startswith("the lease of `prunesweep run` (process ")
    assert "is stale: not renewed for" in st.read_lease(root).note
    (tmp_path / LOCK_FILE).write_text("[")
    assert st.read_lease(root).live and st.read_lease(root).holder == leases.UNREADABLE
    old = time.time() - leases.STALE_S - 5
    os.utime(tmp_path / LOCK_FILE, (old, old))
    assert st.read_lease(root).note == f"its lease is stale: it cannot be read and was written {leases.STALE_S + 5:.0f} s ago"


@pytest.mark.parametrize("make, says", [
    (lambda p: None, "no such experiment"),
    (lambda p: p.mkdir(), f"not a prunesweep experiment (no {CONFIG_FILE})"),
    (lambda p: (p.mkdir(), (p / CONFIG_FILE).write_text("[1, 2")), f"{CONFIG_FILE} is damaged"),
    (lambda p: (p.mkdir(), (p / CONFIG_FILE).write_text("name: x\n")), f"{CONFIG_FILE} is damaged: no trial grid"),
])
def test_what_is_not_an_experiment_is_one_line_naming_it_and_exit_2(tmp_path, capsys, make, says):
    path = tmp_path / "nope"
    make(path)
    assert st.main([str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"prunesweep status: error: {path}") and says in err


def test_status_imports_neither_ray_nor_torch(tmp_path):
    root = _dense_experiment(tmp_path)
    code = ("import sys; from sweeps.status import main; rc = main([sys.argv[1]]); "
            "print('imported', sorted(m for m in ('ray', 'torch') if m in sys.modules)); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, str(root)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "imported []" in done.stdout
    assert "2 interrupted (seeds 1-2 at epoch 3/5)" in done.stdout


def test_a_point_finished_twice_is_counted_once_and_named(tmp_path):
    root = experiment(tmp_path)
    trial_folder(root, "aaaa_instant_s0.5_seed0", [point("instant", 0.5, 0)], epoch=4)
    assert show(root)[2] == "  instant        4     4         0        0            0       0        0"
    assert show(root)[-1] == ("warning: 1 point finished more than once (instant_s0.5_seed0); the analysis refuses "
                              "them until one trial folder of each is kept")
