"""The contract between sweeps and analysis (analysis.schema): one trial grid, one rule for
"finished", every reported name declared and documented, no second copy of a file name."""
import ast
import json
import re
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

import pruning_core as pc
from analysis import completion, load_experiment, schema
from analysis.schema import TrialPoint
from sweeps.config import load_config, validate
from sweeps.plan import expand
from sweeps.dense_training import train_dense
from sweeps.trial import TrialRun

from .conftest import ROOT, TINY, write_config

CONTEXT = {"node_id", "device", "gpu_ids", schema.GROUP}  # what the trainable adds to TrialRun's reports


def test_trial_grid_is_the_schemas_and_counts_ladders_once(tmp_path):
    cfg = validate({**TINY, "schedules": TINY["schedules"] + [{"name": "climb", "kind": "ladder"}]})
    points = expand(cfg)
    assert points == schema.trial_points(cfg.model_dump(mode="json"))
    assert points[:4] == [TrialPoint("instant", "instant", 1, 0.5, 0), TrialPoint("instant", "instant", 1, 0.9, 0),
                          TrialPoint("instant", "instant", 1, 0.5, 1), TrialPoint("instant", "instant", 1, 0.9, 1)]
    assert points[4] == TrialPoint("gradual2", "gradual", 2, 0.5, 0)
    assert points[-2:] == [TrialPoint("climb", "ladder", 2, None, 0), TrialPoint("climb", "ladder", 2, None, 1)]
    assert len(points) == 2 * 2 * 2 + 2
    # the analysis counts an experiment's trials from its prunesweep.yaml with the same function
    (tmp_path / schema.CONFIG_FILE).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    empty = pd.DataFrame(columns=[schema.TRIAL_ID, schema.EPOCH, schema.BUDGET_EPOCHS])
    assert completion(empty, tmp_path) == {"expected": 10, "started": 0, "finished": 0, "diverged": 0, "missing": 10}
    assert schema.trial_points({**cfg.model_dump(mode="json"), "seeds": [7]})[0].seed == 7


def test_trial_point_round_trip_and_label():
    point = TrialPoint("gradual4", "gradual", 4, 0.9, 3)
    assert TrialPoint.from_dict(point.to_dict()) == point
    assert point.label == "gradual4_s0.9_seed3"
    assert TrialPoint("climb", "ladder", 5, None, 0).label == "climb_ladder_seed0"
    assert point.report_fields(0.9) == {"schedule": "gradual4", "schedule_kind": "gradual", "retrain": "finetune",
                                        "target_sparsity": 0.9, "seed": 3}
    rewound = TrialPoint("gradual4", "gradual", 4, 0.9, 3, "lr_rewind")
    assert rewound.label == "gradual4+lr_rewind_s0.9_seed3" and rewound.arm == "gradual4+lr_rewind"
    assert TrialPoint.from_dict(rewound.to_dict()) == rewound
    # experiments begun before this contract named the kind "kind" and had no retraining regimes
    # (every trial fine-tuned); their trials still resume
    legacy = {"schedule": "gradual4", "kind": "gradual", "steps": 4, "target_sparsity": 0.9, "seed": 3}
    assert TrialPoint.from_dict(legacy) == point
    with pytest.raises(KeyError):
        TrialPoint.from_dict({"schedule": "x", "schedule_kind": "instant", "target_sparsity": 0.5, "seed": 0})


def test_one_rule_for_finished_reports_and_frames():
    assert schema.is_finished({"epoch": 4, "budget_epochs": 4})
    assert not schema.is_finished({"epoch": 3, "budget_epochs": 4})
    last = pd.DataFrame({"epoch": [4, 3, 8], "budget_epochs": [4, 4, 8]})
    assert schema.is_finished(last).tolist() == [True, False, True]


def test_schedule_kinds_come_from_pruning_core():
    assert schema.INSTANT in pc.SCHEDULE_KINDS and schema.LADDER not in pc.SCHEDULE_KINDS
    documented = re.findall(r"`(\w+)`", schema.BY_NAME[schema.SCHEDULE_KIND].meaning)
    assert documented == [*pc.SCHEDULE_KINDS, schema.LADDER]
    for kind in pc.SCHEDULE_KINDS:
        validate({**TINY, "finetune": {"epochs": 4}, "schedules": [{"name": "s", "kind": kind}]})


def test_every_reported_name_is_declared_and_reported():
    sweep = validate({**TINY, "dataset": {"name": "digits", "train_subset": 256, "validation": 64},
                      "dense": {"epochs": 1, "batch_size": 64}, "finetune": {"epochs": 2, "batch_size": 64},
                      "pruning": {"structure": "filters"}})  # which adds compact_macs
    dense = train_dense(sweep, 0, torch.device("cpu"))
    run = TrialRun.of_point(sweep, expand(sweep)[0], dense, torch.device("cpu"))
    [report] = run.run_epoch()
    assert schema.undeclared(report) == []
    poisoned = {**dense, "state_dict": {k: v * float("nan") for k, v in dense["state_dict"].items()}}
    [diverged] = TrialRun.of_point(sweep, expand(sweep)[0], poisoned, torch.device("cpu")).run_epoch()
    assert diverged[schema.DIVERGED] is True and set(diverged) < set(report) | {schema.DIVERGED_EPOCH}
    assert set(report) | set(diverged) | CONTEXT == {m.name for m in schema.METRICS}
    from sweeps.trainable import _checked

    with pytest.raises(ValueError, match="reported metric\\(s\\) test_acc are not declared"):
        _checked({**report, "test_acc": 0.5})


def test_readme_documents_every_metric_from_the_schema():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Metrics reference", 1)[1]
    table = "\n".join(line for line in section.split("\n\n")[2].splitlines() if line.startswith("|"))
    assert table == schema.metrics_table(), "regenerate the README table with: python -m analysis.schema"


def test_direction_and_percent_are_decided_by_the_schema():
    assert schema.higher_is_better("test_accuracy") and not schema.higher_is_better("val_loss")
    assert not schema.higher_is_better("epoch_time_s") and schema.higher_is_better("samples_per_s")
    assert not schema.higher_is_better("time_total_s")  # Tune's own, by its name
    assert schema.is_percent("dense_test_accuracy") and not schema.is_percent("sparsity")


def _code_strings(file) -> list[str]:
    """The string constants of a module's code (f-string parts included), docstrings left out."""
    tree = ast.parse(file.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and id(node) not in docstrings]


def test_no_second_copy_of_the_contract():
    """File names and the trial point's key live only in analysis/schema.py."""
    names = [schema.CONFIG_FILE, schema.DENSE_LOG, schema.RESULT_FILE, schema.TUNER_FILE, "experiment_state-",
             "seed_"]
    offenders = []
    for package in ("sweeps", "analysis", "benchmarks"):
        for file in (ROOT / package).glob("*.py"):
            if file.name == "schema.py":
                continue
            for text in _code_strings(file):
                offenders += [f"{file.relative_to(ROOT)}: {text!r}" for name in names if name in text]
                if text == schema.PARAM:
                    offenders.append(f"{file.relative_to(ROOT)}: {text!r}")
    assert offenders == []


def test_analysis_schema_imports_nothing_heavy():
    code = ("import sys, analysis.schema; heavy = [m for m in ('pandas', 'matplotlib', 'scipy', 'torch', 'ray') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_trials_get_the_drivers_config_and_only_their_point(ray_session, tmp_path):
    from sweeps import runner

    cfg = write_config(tmp_path, seeds=1, sparsities=[0.5], schedules=[{"name": "instant", "kind": "instant"}],
                       finetune={"epochs": 2, "batch_size": 64, "optimizer": {"name": "adam", "lr": 0.001}})
    config = load_config(str(cfg))
    # a value validation refuses, set after validation on the driver: a trial that validated the
    # config again would fail; one that uses the driver's config trains with it
    config.finetune.optimizer.lr = 0.0
    with pytest.raises(Exception, match="finetune.optimizer.lr"):
        validate(config.model_dump(mode="json"))
    outcome = runner.run(config, str(tmp_path / "r"), "driver_config")
    assert [r.error for r in outcome.results] == [None] and outcome.trials == 1 and outcome.dense_failed == {}
    df = load_experiment(tmp_path / "r" / "driver_config")
    assert df["lr"].tolist() == [0.0, 0.0]
    # each trial's Tune config is its point, nothing else
    row = (tmp_path / "r" / "driver_config").glob(f"*/{schema.RESULT_FILE}")
    first = json.loads(next(row).read_text().splitlines()[0])
    assert first["config"] == {schema.PARAM: TrialPoint("instant", "instant", 1, 0.5, 0).to_dict()}
    assert not [c for c in df.columns if c.startswith("config.") and not c.startswith(f"config.{schema.PARAM}.")]
    assert re.fullmatch(r"\w+_instant_s0\.5_seed0", next((tmp_path / "r" / "driver_config").glob("*_seed0")).name)
