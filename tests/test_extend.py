"""`prunesweep extend`: an experiment grows by seeds, sparsities and schedules, and by nothing else."""
import hashlib
import json
import re
import sqlite3

import pandas as pd
import pytest
import yaml

from analysis import load_experiment
from analysis.schema import CONFIG_FILE, DENSE_DIR, DENSE_LOG, PROVENANCE, TRIAL_RESULTS_FILE, split_provenance
from sweeps import provenance
from sweeps.cli import main
from sweeps.config import validate
from sweeps.experiment import write_experiment_file
from sweeps.extend import grow

from .conftest import TINY

COLS = ["schedule", "target_sparsity", "seed", "epoch", "test_accuracy", "test_loss", "train_loss", "sparsity"]
SMALL = {**TINY, "schedules": [TINY["schedules"][0]], "sparsities": [0.5], "seeds": 1}


def _digests(folder) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _rows(df):
    return df[COLS].sort_values(COLS[:4]).reset_index(drop=True)


def _experiment(tmp_path, config: dict):
    """An experiment folder as `prunesweep run` starts it (its prunesweep.yaml), without running it."""
    path = tmp_path / config["name"]
    path.mkdir()
    sweep = validate(config)
    write_experiment_file(str(path), sweep, provenance.record(sweep))
    return path


def test_grow_names_what_it_adds():
    new, added = grow(validate(SMALL), ["seeds=3", "sparsities=[0.5, 0.8]",
                                        "schedules=[{name: instant, kind: instant}, {name: g2, kind: gradual, steps: 2}]"])
    assert added == {"seeds": [1, 2], "sparsities": [0.8], "schedules": ["g2"], "trials": 12 - 1}
    assert new.seed_list == [0, 1, 2] and new.sparsities == [0.5, 0.8]


LADDER = {"name": "ladder", "kind": "ladder"}


@pytest.mark.parametrize("config,overrides,pattern", [
    (SMALL, ["finetune.optimizer.lr=0.5"], r"finetune.optimizer.lr: 0.001 in the experiment, 0.5 asked; extend only "
                                           r"adds seeds, sparsities and schedules"),
    (SMALL, ["model=resnet20", "seeds=2"], r"model: 'small_cnn' in the experiment, 'resnet20' asked"),
    (SMALL, ["pruning.criterion=random"], r"pruning.criterion: 'magnitude' in the experiment, 'random' asked"),
    (SMALL, ["finetune.retrain=lr_rewind"], r"finetune.retrain.0: 'finetune' in the experiment, 'lr_rewind' asked"),
    ({**SMALL, "seeds": 2}, ["seeds=1"], r"seeds: extend only adds; 1 of the experiment would be dropped"),
    ({**SMALL, "sparsities": [0.5, 0.9]}, ["sparsities=[0.5, 0.8]"], r"sparsities: extend only adds; 0.9 of the "),
    (SMALL, ["schedules=[{name: g2, kind: gradual, steps: 2}]"], r"schedules: extend only adds; instant of the"),
    (TINY, ["schedules.1.steps=1"], r"schedules: 'gradual2' is .* in the experiment, .* asked; extend adds schedules "
                                    r"under new names and never changes one"),
    ({**SMALL, "schedules": [LADDER]}, ["sparsities=[0.5, 0.9]"], r"sparsities: the ladder schedule 'ladder' walks "
                                                                  r"every sparsity in order"),
    ({**SMALL, "sparsities": [0.5, 0.9]}, [f"schedules=[{TINY['schedules'][0]}, {LADDER}]"],
     r"schedules: the experiment's trial instant_s0.9_seed0 would train differently"),
    ({**SMALL, "dense": {**TINY["dense"], "epochs": 4}, "finetune": {**TINY["finetune"], "retrain": "weight_rewind"}},
     ["schedules=[{name: instant, kind: instant}, {name: g2, kind: gradual, steps: 2}]"],
     r"schedules: weight_rewind in the grown grid starts from dense epoch\(s\) 3, which the experiment's dense "
     r"models did not keep"),
    (SMALL, ["seeds=1"], r"extend: seeds=1 adds no trial to the experiment; `prunesweep resume` finishes"),
    (SMALL, [], r"extend: nothing to add; give the grown grid with --set seeds=N"),
])
def test_incomparable_growth_is_refused_in_one_line_before_anything_is_written(tmp_path, capsys, config, overrides,
                                                                               pattern):
    path = _experiment(tmp_path, config)
    before = _digests(path)
    rc = main(["extend", str(path), *(a for o in overrides for a in ("--set", o))])
    err = capsys.readouterr().err
    assert rc == 2, err
    # one line (Ray's workers of other tests may log to this process's stderr too)
    assert len([line for line in err.splitlines() if not line.startswith("\x1b[36m(")]) == 1, err
    assert re.search(pattern, err), err
    assert _digests(path) == before


def test_extend_refuses_changed_code_and_missing_trackers(tmp_path, capsys):
    path = _experiment(tmp_path, SMALL)
    document = yaml.safe_load((path / CONFIG_FILE).read_text())
    document[PROVENANCE][provenance.CODE_HASH] = "0" * 64
    (path / CONFIG_FILE).write_text(yaml.safe_dump(document, sort_keys=False))
    before = _digests(path)
    assert main(["extend", str(path), "--set", "seeds=2"]) == 2
    assert "the code differs from the run's start" in capsys.readouterr().err
    document[PROVENANCE][provenance.CODE_HASH] = provenance.code_hash()
    (path / CONFIG_FILE).write_text(yaml.safe_dump(document, sort_keys=False))
    before = _digests(path)
    assert main(["extend", str(path), "--set", "seeds=2", "--log", "wandb"]) == 2
    err = capsys.readouterr().err
    assert "--log wandb: needs the wandb package(s); install them with: pip install 'prunesweep[wandb]'" in err
    assert _digests(path) == before
    # a tracker the experiment logged to before is checked at resume too, not only one asked for now
    document[PROVENANCE][provenance.TRACKERS] = ["wandb"]
    (path / CONFIG_FILE).write_text(yaml.safe_dump(document, sort_keys=False))
    before = _digests(path)
    assert main(["resume", str(path)]) == 2
    assert "--log wandb: needs the wandb package(s)" in capsys.readouterr().err
    assert _digests(path) == before


def test_extend_refuses_an_edited_config_even_with_force(tmp_path, capsys):
    path = _experiment(tmp_path, SMALL)
    document = yaml.safe_load((path / CONFIG_FILE).read_text())
    document["finetune"]["optimizer"]["lr"] = 0.5  # edited by hand after the run
    (path / CONFIG_FILE).write_text(yaml.safe_dump(document, sort_keys=False))
    before = _digests(path)
    assert main(["extend", str(path), "--set", "seeds=2", "--force"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("\x1b[36m(")]
    assert len(err) == 1 and "the config differs from the one the run started with" in err[0]
    assert f"its {CONFIG_FILE} was edited" in err[0] and "--force does not apply" in err[0]
    assert _digests(path) == before
    # with changed code too, the hash may have moved with a newer prunesweep's defaults: --force decides
    document[PROVENANCE][provenance.CODE_HASH] = "0" * 64
    (path / CONFIG_FILE).write_text(yaml.safe_dump(document, sort_keys=False))
    before = _digests(path)
    assert main(["extend", str(path), "--set", "seeds=2"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("\x1b[36m(")]
    assert len(err) == 1 and "the config differs" in err[0] and "the code differs" in err[0], err
    assert "(pass --force to extend anyway)" in err[0] and _digests(path) == before


def test_an_experiment_from_before_provenance_is_refused_in_one_line(tmp_path, capsys):
    path = _experiment(tmp_path, SMALL)
    document = yaml.safe_load((path / CONFIG_FILE).read_text())
    del document[PROVENANCE]
    (path / CONFIG_FILE).write_text(yaml.safe_dump(document, sort_keys=False))
    assert main(["extend", str(path), "--set", "model=resnet20"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("\x1b[36m(")]
    assert len(err) == 1 and err[0].startswith("prunesweep: error: model: 'small_cnn' in the experiment"), err
    # what an extension of it records: the config's hash, its code unknown (not today's code)
    recorded = provenance.extended({}, validate(SMALL), validate({**SMALL, "seeds": 2}), {"seeds": [1]}, [])
    assert recorded[provenance.LEGACY] and provenance.CODE_HASH not in recorded
    assert recorded[provenance.CONFIG_HASH] == provenance.config_hash(validate({**SMALL, "seeds": 2}))
    assert provenance.differences(validate({**SMALL, "seeds": 2}), recorded) == []


def test_extend_a_finished_experiment_by_seeds_sparsities_and_a_schedule(tiny_experiment, tmp_path):
    """One trial, run with TensorBoard and MLflow logging, grows to eight: the finished trial and the
    dense model are untouched byte for byte, only the new seed's dense model is trained, the trackers
    follow the new trials, and the new trials' numbers equal those of the same trials run at once."""
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(SMALL))
    path = tmp_path / "r" / "tiny"
    assert main(["run", str(config), "--storage", str(tmp_path / "r"), "--log", "tensorboard", "--log", "mlflow"]) == 0
    before = _digests(path)
    finished = {k: v for k, v in before.items() if k.startswith(DENSE_DIR + "/seed_") or "_instant_s0.5_seed0/" in k}
    assert len(finished) >= 6  # the dense model, the trial's checkpoints, results, model and Tune's files
    assert main(["extend", str(path), "--set", "seeds=2", "--set", "sparsities=[0.5, 0.9]",
                 "--set", f"schedules={json.dumps(TINY['schedules'])}"]) == 0
    after = _digests(path)
    assert {k: after[k] for k in finished} == finished
    log = [json.loads(line) for line in (path / DENSE_DIR / DENSE_LOG).read_text().splitlines()]
    assert [entry["seed"] for entry in log] == [0, 1]
    df = load_experiment(path)
    assert df["trial_id"].nunique() == 8
    assert df.groupby("trial_id")["epoch"].max().eq(2).all()  # no ladder: 2 epochs everywhere
    grown, recorded = split_provenance(yaml.safe_load((path / CONFIG_FILE).read_text()))
    assert grown["seeds"] == 2 and grown["sparsities"] == [0.5, 0.9] and len(grown["schedules"]) == 2
    (extension,) = recorded[provenance.EXTENSIONS]
    assert extension["added"] == {"seeds": [1], "sparsities": [0.9], "schedules": ["gradual2"], "trials": 7}
    assert recorded[provenance.CONFIG_HASH] == provenance.config_hash(validate(grown))
    assert recorded[provenance.TRACKERS] == ["tensorboard", "mlflow"]  # extend logged to them, unasked
    # at sparsity 0.5 the shared tiny experiment (same config, plus a ladder) trained the same budget
    ours, shared = _rows(df), _rows(load_experiment(tiny_experiment))
    pd.testing.assert_frame_equal(ours[ours.target_sparsity == 0.5].reset_index(drop=True),
                                  shared[(shared.target_sparsity == 0.5) & (shared.schedule != "ladder")]
                                  .reset_index(drop=True))
    # trackers: an event file per trial, one MLflow run per trial with its test accuracy per epoch
    assert len(list(path.glob("*/events.out.tfevents.*"))) == 8
    with sqlite3.connect(path / "mlflow.db") as db:
        runs = db.execute("select count(*) from runs").fetchone()[0]
        steps = db.execute("select count(*) from metrics where key = 'test_accuracy'").fetchone()[0]
    assert runs == 8 and steps == 8 * 2
    assert not list(tiny_experiment.glob("*/events.out.tfevents.*"))  # no --log, no event files
    # and a resume finds nothing left to do
    assert main(["resume", str(path)]) == 0
    assert (path / DENSE_DIR / DENSE_LOG).read_text().count("\n") == 2
    assert all((path / k).exists() for k in after if k.endswith(TRIAL_RESULTS_FILE))
