"""Reading a Ray Tune experiment directory from disk (no Ray needed) into tidy DataFrames."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from .schema import (BUDGET_EPOCHS, CONFIG_FILE, EPOCH, EXPERIMENT_STATE_GLOB, RESULT_FILE, SCHEDULE, SEED,
                     TARGET_SPARSITY, TRAINING_ITERATION, TRIAL_ID, TUNER_FILE, is_finished, trial_points)

KEYS = [TRIAL_ID, SCHEDULE, TARGET_SPARSITY, SEED]


class NotAnExperiment(ValueError):
    """The path holds no Ray Tune experiment."""


def _trial_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob(f"*/{RESULT_FILE}"))


def load_experiment(path) -> pd.DataFrame:
    """One row per report of every trial: ``trial_id``, metrics, and the trial point as
    ``config.trial.*``.

    Reads Ray Tune's ``result.json`` files; works on a copied directory with Ray neither
    running nor imported. Reports repeated by a restarted trial are kept once (the last).
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise NotAnExperiment(f"{root}: no such directory")
    has_state = any(root.glob(EXPERIMENT_STATE_GLOB)) or (root / TUNER_FILE).exists()
    trials = _trial_dirs(root)
    if not has_state and not trials:
        raise NotAnExperiment(f"{root}: not a Ray Tune experiment (no {EXPERIMENT_STATE_GLOB}, {TUNER_FILE} "
                              f"or trial {RESULT_FILE})")
    rows = []
    for folder in trials:
        with open(folder / RESULT_FILE) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue  # a line cut off by a killed process
    if not rows:
        return pd.DataFrame(columns=KEYS + [EPOCH])
    df = pd.json_normalize(rows, sep=".")
    if EPOCH in df:
        df = df.drop_duplicates(subset=[TRIAL_ID, TARGET_SPARSITY, EPOCH], keep="last")
    return df.sort_values([TRIAL_ID, TRAINING_ITERATION]).reset_index(drop=True)


def final_results(df: pd.DataFrame) -> pd.DataFrame:
    """The last report of each trial at each target sparsity (one row per rung for a ladder)."""
    if df.empty:
        return df
    order = df.sort_values([TRIAL_ID, TARGET_SPARSITY, EPOCH])
    return order.groupby([TRIAL_ID, TARGET_SPARSITY], as_index=False, sort=True).tail(1).reset_index(drop=True)


def read_config(path) -> dict | None:
    """The sweep config an experiment was started with (its ``prunesweep.yaml``), or None."""
    file = Path(path) / CONFIG_FILE
    return yaml.safe_load(file.read_text()) if file.exists() else None


def completion(df: pd.DataFrame, path=None) -> dict:
    """Counts of trials expected (by the experiment's config), started and finished."""
    started = df[TRIAL_ID].nunique() if not df.empty else 0
    finished = 0
    if not df.empty and BUDGET_EPOCHS in df:
        last = df.groupby(TRIAL_ID)[[EPOCH, BUDGET_EPOCHS]].max()
        finished = int(is_finished(last).sum())
    config = read_config(path) if path is not None else None
    expected = len(trial_points(config)) if config is not None else started
    return {"expected": expected, "started": started, "finished": finished, "missing": expected - finished}
