"""Reading what older prunesweep versions left behind, and only that.

Experiments from before the per-trial results file (:data:`analysis.schema.TRIAL_RESULTS_FILE`)
hold only Ray Tune's ``result.json`` (:data:`analysis.schema.RESULT_FILE`) in each trial folder;
so does the folder of a trial that has not reached its first checkpoint. :mod:`analysis.load`
reads such folders through here, beside the results files of newer trials.
"""
from __future__ import annotations

import json

import pandas as pd

from . import storage
from .schema import (EPOCH, MEMBERS, PARAM, RETRAIN, SCHEDULE, SCHEDULE_KIND, SEED, TARGET_SPARSITY, TRAINING_ITERATION,
                     TRIAL_ID)


def _folder(path: str) -> str:
    return storage.split(path)[0]


def without_results_file(tune_files: list[str], results_files: list[str]) -> list[str]:
    """The ``result.json`` files among ``tune_files`` whose trial folder holds none of ``results_files``."""
    covered = {_folder(f) for f in results_files}
    return [f for f in tune_files if _folder(f) not in covered]


def read_tune_results(files: list[str]) -> pd.DataFrame:
    """Rows of Ray Tune's ``result.json`` files; reports repeated by a restarted trial are kept
    once (the last), reports without an epoch (not a trial's) dropped."""
    rows = []
    for file in files:
        for line in storage.read_bytes(file).decode().splitlines():
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut off by a killed process
    df = pd.json_normalize(rows, sep=".") if rows else pd.DataFrame()
    if EPOCH not in df:
        return pd.DataFrame()
    df = df[df[EPOCH].notna()]
    group = f"config.{MEMBERS}"
    if group in df:  # a fused group's Tune rows hold no point's own numbers (its results file does)
        df = df[df[group].isna()].drop(columns=[group])
    for field in (SCHEDULE, SCHEDULE_KIND, RETRAIN, TARGET_SPARSITY, SEED):  # Tune's rows carry only the trial point
        point = f"config.{PARAM}.{field}"
        if point in df:
            df[field] = df[field].fillna(df[point]) if field in df else df[point]
    order = [TRIAL_ID, TRAINING_ITERATION] if TRAINING_ITERATION in df else [TRIAL_ID]
    return df.sort_values(order, kind="stable").drop_duplicates(subset=[TRIAL_ID, TARGET_SPARSITY, EPOCH],
                                                                 keep="last")
