"""Fused sweeps (:mod:`sweeps.groups`): one Ray Tune trial trains a group of trial points, and
everything still holds: exact numbers in float64, faults, growth, analysis and the files."""
import io
import json
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml

from analysis import attempts, completion, load_experiment, storage, summarize, trial_results
from analysis.schema import (DENSE_DIR, DENSE_LOG, FUSION, GROUP, MEMBERS, PARAM, PROVENANCE, RESULT_FILE,
                             TRIAL_RESULTS_FILE, TrialPoint, dense_file, pruned_model_file)
from sweeps import dense_phase
from sweeps.cli import main
from sweeps.config import ConfigError, validate
from sweeps.dense_training import train_dense
from sweeps.groups import Grouping, resolve, seed_groups, units
from sweeps.plan import expand, trial_plan
from sweeps.progress import ProgressLine
from sweeps.loops import DTYPE_ENV
from sweeps.trainable import CHAOS_ENV, CHAOS_MARKER, DIVERGE_ENV, Chaos
from sweeps.trial import TrialRun

from .conftest import TINY, record_fault, write_config


def test_seed_groups_are_balanced_and_growth_adds_groups_only_for_new_seeds():
    assert seed_groups(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert seed_groups([7, 3, 9], 5) == [[7, 3, 9]] and seed_groups([1], 4) == [[1]]
    grouping = Grouping(4, tuple(tuple(g) for g in seed_groups(list(range(5)), 4)))
    assert grouping.seed_groups == ((0, 1, 2), (3, 4))
    grown = grouping.grown(list(range(11)))
    assert grown.seed_groups == ((0, 1, 2), (3, 4), (5, 6, 7), (8, 9, 10))  # the recorded groups as they were
    assert Grouping.of_record({FUSION: grown.record()}) == grown
    assert Grouping.of_record({}) == Grouping() and not Grouping().fused  # an experiment from before: alone
    assert grown.dense_groups([3, 4, 9]) == [[3, 4], [9]]
    with pytest.raises(ConfigError, match=r"^provenance.fusion: .* is not a record of fused groups"):
        Grouping.of_record({FUSION: {"seed_groups": "x"}})


def test_every_cell_trains_in_the_same_seed_groups():
    config = validate({**TINY, "seeds": 5, "fuse": 2})
    found = units(config, resolve(config))
    assert [u.label for u in found[:3]] == ["instant_s0.5_seeds0-1", "instant_s0.5_seeds2-3", "instant_s0.5_seeds4"]
    assert len(found) == 2 * 2 * 3 and sorted(p for u in found for p in u.labels) == sorted(p.label for p in expand(config))
    # the two points a paired comparison pairs (one seed, two arms) trained beside the same seeds
    partners = {}
    for u in found:
        for p in u.points:
            partners.setdefault(p.seed, set()).add(tuple(sorted(u.seeds)))
    assert all(len(groups) == 1 for groups in partners.values())
    assert found[0].config[MEMBERS] == [p.to_dict() for p in found[0].points] and PARAM not in found[0].config
    alone = units(validate(TINY), Grouping())
    assert [u.config for u in alone] == [{PARAM: p.to_dict()} for p in expand(validate(TINY))]


DROPOUT_MODEL = '''
from torch import nn


def build(num_classes, in_channels):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, 32), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(32, num_classes))
'''


@pytest.mark.parametrize("changes,says", [
    ({"fuse": 1}, "fuse: got 1; allowed: off, auto, or the largest number of seeds fused into one group"),
    ({"fuse": "on"}, "fuse: got 'on'; allowed: off, auto"),
    ({"resources": {"cpu": 1, "group_cpu": 2}}, "resources.group_cpu: sizes fused groups, and fuse is off"),
    ({"fuse": 2, "model": "dropnets:build"}, "fuse: 2: layer 3 (Dropout, p=0.3) draws random numbers in training"),
])
def test_what_cannot_fuse_is_refused_in_one_line_before_anything_runs(tmp_path, monkeypatch, capsys, changes, says):
    (tmp_path / "dropnets.py").write_text(DROPOUT_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, **changes}))
    for command in (["validate", str(cfg)], ["run", str(cfg), "--storage", str(tmp_path / "r"), "--no-dashboard"]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "r").exists()


def test_validate_shows_the_groups_and_what_each_trial_trains(tmp_path, capsys):
    assert main(["validate", str(write_config(tmp_path, seeds=3, fuse=2))]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == ("fused (fuse: 2): 8 Ray Tune trials, one per arm, sparsity and seed group; seed groups [0, 1], "
                      "[2]; each seed group's dense models train fused too")
    assert out[2:4] == ["  trial instant_s0.5_seeds0-1 trains instant_s0.5_seed0, instant_s0.5_seed1",
                        "  trial instant_s0.5_seeds2 trains instant_s0.5_seed2"]


def test_fuse_auto_decides_by_a_measurement_and_records_it(capsys):
    config = validate({**TINY, "fuse": "auto"})
    grouping = resolve(config)
    assert grouping.measured is not None and grouping.fused == (grouping.measured >= 1.1)
    assert f"{grouping.measured:.2f}x as fast fused" in capsys.readouterr().out
    assert Grouping.of_record({FUSION: grouping.record()}).fused == grouping.fused


def test_the_progress_line_of_a_fused_sweep_counts_points():
    def trial(status, seeds):
        return SimpleNamespace(status=status, config={MEMBERS: [{**TrialPoint("i", "instant", 1, 0.5, s).to_dict()}
                                                                for s in seeds]})

    done = {TrialPoint("i", "instant", 1, 0.5, 4).label}  # finished in an earlier session
    line = ProgressLine(10, interval=60, done_before=1,
                        weight=lambda t: sum(TrialPoint.from_dict(p).label not in done for p in t.config[MEMBERS]))
    line._start, line._done_at_start = 0.0, 1
    trials = [trial("TERMINATED", [0, 1]), trial("RUNNING", [2, 3]), trial("RUNNING", [4, 5])]
    assert line.line(trials, 60.0) == ("[prunesweep] trial points: 3 done, 3 running (in 2 fused trials), 4 waiting, "
                                       "0 failed of 10; 1 min elapsed; ETA 4 min")


def test_a_group_folder_counts_once_per_member_and_a_group_without_results_is_not_begun(tmp_path):
    """The attempts of a fused group's folder are its members', each by its own trial id; the analysis
    reads them as it reads single trials; Ray Tune's rows of a group (no point's own numbers) are left out."""
    points = [TrialPoint("instant", "instant", 1, 0.5, s) for s in (0, 1)]
    root = tmp_path / "e"
    group = root / "aaaa_instant_s0.5_seeds0-1"
    group.mkdir(parents=True)
    reports = [{**p.report_fields(0.5), "epoch": e, "budget_epochs": 2, "test_accuracy": 0.5 + 0.1 * e + p.seed,
                "diverged": False, GROUP: "aaaa"} for p in points for e in (1, 2)]
    ids = [f"aaaa:{p.label}" for p in points for _ in (1, 2)]
    trial_results.write(str(group / TRIAL_RESULTS_FILE), ids, reports, [])
    alone = root / "bbbb_instant_s0.9_seed0"  # a single trial beside it (not begun: only Tune's row)
    alone.mkdir()
    (alone / RESULT_FILE).write_text(json.dumps({"trial_id": "bbbb", "epoch": 1, "budget_epochs": 2,
                                                 "config": {PARAM: TrialPoint("instant", "instant", 1, 0.9, 0).to_dict()}}))
    begun = root / "cccc_instant_s0.9_seeds0-1"
    begun.mkdir()
    (begun / RESULT_FILE).write_text(json.dumps({"trial_id": "cccc", "epoch": 1, "budget_epochs": 2, "test_accuracy": 0.3,
                                                 "config": {MEMBERS: [p.to_dict() for p in points]}}))
    found = {a.trial_id: (a.point, a.finished, a.epoch) for a in attempts.scan(str(root))}
    assert found == {"aaaa:instant_s0.5_seed0": ("instant_s0.5_seed0", True, 2),
                     "aaaa:instant_s0.5_seed1": ("instant_s0.5_seed1", True, 2),
                     "bbbb": ("instant_s0.9_seed0", False, 1)}
    (root / "prunesweep.yaml").write_text(yaml.safe_dump({**TINY, "sparsities": [0.5, 0.9]}))
    df = load_experiment(root)
    assert sorted(df["trial_id"].unique()) == ["aaaa:instant_s0.5_seed0", "aaaa:instant_s0.5_seed1", "bbbb"]
    assert set(df.loc[df["trial_id"] != "bbbb", GROUP]) == {"aaaa"}


FLOATS = ["test_accuracy", "test_loss", "train_loss", "train_accuracy", "sparsity", "lr", "dense_test_accuracy"]
KEY = ["schedule", "target_sparsity", "seed", "epoch"]


def _alone(config, chaos: Chaos) -> pd.DataFrame:
    """Every point of ``config`` trained alone in this process in float64 (its dense model too):
    what a fused float64 sweep of it must equal."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    try:
        denses = {s: train_dense(config, s, torch.device("cpu")) for s in config.seed_list}
        rows = []
        for point in expand(config):
            run = TrialRun.of_point(config, point, denses[point.seed], torch.device("cpu"),
                                    chaos.plan(trial_plan(config, point)))
            while not run.done:
                rows += run.run_epoch()
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)
    return pd.DataFrame(rows), denses


def _equal(fused: pd.DataFrame, alone: pd.DataFrame) -> None:
    fused = fused.sort_values(KEY).reset_index(drop=True)
    alone = alone.sort_values(KEY).reset_index(drop=True)
    assert fused[KEY].values.tolist() == alone[KEY].values.tolist()
    assert fused["diverged"].fillna(False).astype(bool).tolist() == alone["diverged"].tolist()
    healthy = ~alone["diverged"]
    for column in FLOATS:
        # float64: the same numbers, up to the order a fused loss is summed in (about 1e-16)
        pd.testing.assert_series_equal(fused.loc[healthy, column], alone.loc[healthy, column], rtol=1e-9,
                                       check_dtype=False, check_names=False)
    assert fused.loc[healthy, "nonzero_params"].astype(int).tolist() == alone.loc[healthy, "nonzero_params"].tolist()


def test_a_fused_sweep_equals_each_point_alone_through_faults_resume_and_extend(ray_session, tmp_path, monkeypatch,
                                                                               capsys):
    """In float64 a fused sweep gives every point the numbers it gets alone, while every group's worker
    is killed mid-epoch once, the fused dense training of both seeds is killed once, and one member
    diverges (the others go on); resume trains nothing; extend by a seed adds its own groups and leaves
    every finished folder as it was."""
    # instant and gradual2 at 0.9, seeds 0 to 2: groups of seeds 0 and 1 (dense models too) and of seed 2
    cfg = write_config(tmp_path, fuse=2, seeds=3, sparsities=[0.9])
    path = tmp_path / "r" / "tiny"
    diverging = "gradual2_s0.9_seed1"
    monkeypatch.setenv(DTYPE_ENV, "float64")
    monkeypatch.setenv(CHAOS_ENV, "1")  # each group's worker is SIGKILLed once, mid-epoch 2
    monkeypatch.setenv(DIVERGE_ENV, f"{diverging}@1")
    monkeypatch.setenv(dense_phase.CHAOS_ENV, "0@1")  # the dense group of seeds 0 and 1, killed once in epoch 2
    assert main(["run", str(cfg), "--storage", str(tmp_path / "r"), "--no-dashboard"]) == 0
    out = capsys.readouterr()
    assert f"{diverging} diverged in epoch" in out.err
    assert "6 of 6 trial points finished (1 diverged" in out.out
    recorded = yaml.safe_load((path / "prunesweep.yaml").read_text())[PROVENANCE][FUSION]
    assert recorded == {"members": 2, "seed_groups": [[0, 1], [2]], "dense_groups": [[0, 1], [2]]}
    groups = sorted(p for p in path.iterdir() if (p / TRIAL_RESULTS_FILE).exists())
    assert sorted(p.name.split("_", 1)[1] for p in groups) == [
        "gradual2_s0.9_seeds0-1", "gradual2_s0.9_seeds2", "instant_s0.9_seeds0-1", "instant_s0.9_seeds2"]
    assert len(list(path.glob(f"*/{CHAOS_MARKER}"))) == 4, "every group's worker was killed once"
    log = {e["seed"]: e for e in map(json.loads, (path / DENSE_DIR / DENSE_LOG).read_text().splitlines())}
    assert {s: (e["resumed_from_epoch"], e["fused_with"]) for s, e in log.items()} == {0: (1, [1]), 1: (1, [0]),
                                                                                        2: (0, [])}
    state = json.loads(sorted(path.glob("experiment_state-*.json"))[-1].read_text())
    assert len(state["trial_data"]) == 4  # Ray Tune keeps one trial per group

    df = load_experiment(path)
    lost = completion(df, path)["missing"]
    for _ in range(4 + 1):  # every group's worker and the fused dense training, each killed once
        record_fault(survived=lost == 0, trials_lost=lost)
    assert completion(df, path) == {"expected": 6, "started": 6, "finished": 6, "diverged": 1, "missing": 0}
    assert df.groupby("trial_id")["seed"].nunique().eq(1).all() and df["trial_id"].nunique() == 6
    assert df[GROUP].notna().all() and df[GROUP].nunique() == 4
    config = validate(yaml.safe_load(cfg.read_text()))
    alone, denses = _alone(config, Chaos(diverge=(diverging, 1)))
    _equal(df, alone)
    for seed in (0, 1, 2):
        fused = torch.load(io.BytesIO(storage.read_bytes(str(path / DENSE_DIR / dense_file(seed)))), weights_only=False)
        for name, value in denses[seed]["state_dict"].items():
            torch.testing.assert_close(fused["state_dict"][name], value, rtol=1e-9, atol=1e-12)
    models = sorted(f.name for g in groups for f in g.iterdir() if f.name.startswith("pruned_model"))
    assert models == sorted(pruned_model_file(p.label) for p in expand(config) if p.label != diverging)
    assert summarize(df)["n"].sum() == 5  # the diverged point is counted apart

    for env in (CHAOS_ENV, DIVERGE_ENV, dense_phase.CHAOS_ENV):
        monkeypatch.delenv(env)
    assert main(["resume", str(path), "--no-dashboard"]) == 0
    assert "6 of 6 trial points finished before; 0 to run" in capsys.readouterr().out

    before = {p.name: (p / TRIAL_RESULTS_FILE).read_bytes() for p in groups}
    assert main(["extend", str(path), "--set", "seeds=5", "--no-dashboard"]) == 0
    grown = yaml.safe_load((path / "prunesweep.yaml").read_text())[PROVENANCE][FUSION]
    # seeds 3 and 4 in a new group; its dense models split in two, to fill the 2 CPUs
    assert grown == {"members": 2, "seed_groups": [[0, 1], [2], [3, 4]], "dense_groups": [[0, 1], [2], [3], [4]]}
    assert {p.name: (p / TRIAL_RESULTS_FILE).read_bytes() for p in groups} == before  # finished folders untouched
    new = sorted(p.name for p in path.iterdir() if (p / TRIAL_RESULTS_FILE).exists() and p.name not in before)
    assert len(new) == 2 and all(n.endswith("_seeds3-4") for n in new)
    df = load_experiment(path)
    assert completion(df, path)["finished"] == 10
    grown_config = validate({**yaml.safe_load(cfg.read_text()), "seeds": [3, 4]})
    _equal(df[df["seed"] >= 3], _alone(grown_config, Chaos())[0])
