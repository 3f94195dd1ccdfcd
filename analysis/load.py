"""Reading a Ray Tune experiment, in a local folder or at an object-store URI (no Ray needed),
into tidy DataFrames."""
from __future__ import annotations

import fnmatch
import json

import pandas as pd
import yaml

from . import storage, trial_results
from .schema import (ARM, BUDGET_EPOCHS, CONFIG_FILE, EPOCH, EXPERIMENT_STATE_GLOB, FINETUNE, PARAM, RESULT_FILE,
                     RETRAIN, SCHEDULE, SCHEDULE_KIND, SEED, TARGET_SPARSITY, TRAINING_ITERATION, TRIAL_ID,
                     TRIAL_RESULTS_FILE, TUNER_FILE, arm, is_diverged, is_finished, split_provenance, trial_points)

KEYS = [TRIAL_ID, SCHEDULE, TARGET_SPARSITY, SEED]


class NotAnExperiment(ValueError):
    """The path holds no Ray Tune experiment."""


def load_experiment(path) -> pd.DataFrame:
    """One row per epoch of every trial: ``trial_id``, the declared metrics (``layer_sparsity.<layer>``
    one column per layer) and the trial's ``arm`` (:func:`with_arms`), sorted by trial and epoch.

    Reads each trial's results file (:data:`analysis.schema.TRIAL_RESULTS_FILE`) as one columnar
    dataset, from a local folder or straight from a URI (``s3://bucket/prefix/name``); needs Ray
    neither running nor imported. A trial folder without one (an experiment from before these
    files, or a trial that has not reached its first checkpoint) is read from Ray Tune's
    ``result.json`` instead, whatever that holds.
    """
    root = storage.normalise(str(path))
    try:
        is_dir = storage.is_dir(root)
    except Exception as exc:  # an unreachable or refusing object store
        raise NotAnExperiment(f"{root}: cannot read it ({storage.one_line(exc)})") from None
    if not is_dir:
        raise NotAnExperiment(f"{root}: no such directory")
    entries = storage.list_dir(root)
    has_state = any(fnmatch.fnmatch(e, EXPERIMENT_STATE_GLOB) for e in entries) or TUNER_FILE in entries
    found = storage.files_named(root, TRIAL_RESULTS_FILE, RESULT_FILE)
    if not has_state and not found[TRIAL_RESULTS_FILE] and not found[RESULT_FILE]:
        raise NotAnExperiment(f"{root}: not a Ray Tune experiment (no {EXPERIMENT_STATE_GLOB}, {TUNER_FILE} "
                              f"or trial {TRIAL_RESULTS_FILE} / {RESULT_FILE})")
    frames = []
    if found[TRIAL_RESULTS_FILE]:
        frames.append(trial_results.read(found[TRIAL_RESULTS_FILE]).to_pandas())
    covered = {_folder(f) for f in found[TRIAL_RESULTS_FILE]}
    legacy = [f for f in found[RESULT_FILE] if _folder(f) not in covered]
    if legacy:
        frames.append(_read_tune_results(legacy))
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=KEYS + [EPOCH])
    df = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    return with_arms(df.sort_values([TRIAL_ID, EPOCH], kind="stable").reset_index(drop=True))


def with_arms(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with its ``retrain`` column (``finetune`` for trials from before retraining regimes)
    and ``arm``, what the analysis compares: the schedule with its regime (:func:`analysis.schema.arm`)."""
    if SCHEDULE not in df or ARM in df:  # nothing to name, or named already (load_experiment's frames)
        return df
    df = df.assign(**{RETRAIN: df[RETRAIN].fillna(FINETUNE) if RETRAIN in df else FINETUNE})
    return df.assign(**{ARM: [arm(s, r) for s, r in zip(df[SCHEDULE], df[RETRAIN])]})


def _folder(path: str) -> str:
    return storage.split(path)[0]


def _read_tune_results(files: list[str]) -> pd.DataFrame:
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
    for field in (SCHEDULE, SCHEDULE_KIND, RETRAIN, TARGET_SPARSITY, SEED):  # Tune's rows carry only the trial point
        point = f"config.{PARAM}.{field}"
        if point in df:
            df[field] = df[field].fillna(df[point]) if field in df else df[point]
    order = [TRIAL_ID, TRAINING_ITERATION] if TRAINING_ITERATION in df else [TRIAL_ID]
    return df.sort_values(order, kind="stable").drop_duplicates(subset=[TRIAL_ID, TARGET_SPARSITY, EPOCH],
                                                                 keep="last")


def final_results(df: pd.DataFrame) -> pd.DataFrame:
    """The last report of each trial at each target sparsity (one row per rung for a ladder)."""
    if df.empty:
        return df
    order = df.sort_values([TRIAL_ID, TARGET_SPARSITY, EPOCH])
    return order.groupby([TRIAL_ID, TARGET_SPARSITY], as_index=False, sort=True).tail(1).reset_index(drop=True)


def is_complete(finals: pd.DataFrame) -> pd.Series:
    """The one rule for a final result that is final: one bool per row of :func:`final_results`
    (of whole trials, before :func:`healthy`), true when no later epoch can change it.

    That is when its trial is finished (:func:`analysis.schema.is_finished`), or when the trial has
    reported a later epoch at another target sparsity: only a ladder does, walking up its rungs,
    so every rung below the last it reported is complete. Reports without an epoch budget (tables
    of final results without the column; trials of older experiments read from ``result.json``
    beside newer ones: :func:`analysis.schema.is_finished`) are taken as complete.
    """
    if EPOCH not in finals or BUDGET_EPOCHS not in finals:
        return pd.Series(True, index=finals.index)
    trial = finals[TRIAL_ID]
    finished = is_finished(finals).groupby(trial).transform("any")
    moved_on = finals[EPOCH] < finals[EPOCH].groupby(trial).transform("max")
    return finished | moved_on


def complete_results(df: pd.DataFrame) -> pd.DataFrame:
    """The final results (:func:`final_results`) that are complete (:func:`is_complete`): the reports
    :func:`analysis.stats.summarize` and :func:`analysis.stats.compare` take values from, after leaving
    out the diverged and NaN ones too (which they count)."""
    finals = final_results(df) if EPOCH in df else df
    return finals[is_complete(finals)]


def diverged(df: pd.DataFrame) -> pd.Index:
    """Ids of the trials that diverged (:data:`analysis.schema.DIVERGED`)."""
    if df.empty:
        return pd.Index([], name=TRIAL_ID)
    return pd.Index(df.loc[is_diverged(df), TRIAL_ID].unique(), name=TRIAL_ID)


def healthy(df: pd.DataFrame) -> pd.DataFrame:
    """The reports without those of a (trial, target sparsity) that diverged: what means, intervals,
    paired tests and plots use. A ladder keeps the rungs it finished before it diverged."""
    if df.empty:
        return df
    bad = df.loc[is_diverged(df), [TRIAL_ID, TARGET_SPARSITY]].drop_duplicates()
    if bad.empty:
        return df
    keys = pd.MultiIndex.from_frame(df[[TRIAL_ID, TARGET_SPARSITY]])
    return df[~keys.isin(pd.MultiIndex.from_frame(bad))]


def read_experiment_file(path) -> tuple[dict, dict] | None:
    """``(config, provenance)`` from an experiment's ``prunesweep.yaml``, or None if it has none.
    Raises NotAnExperiment if the file is not a YAML mapping."""
    file = storage.join(storage.normalise(str(path)), CONFIG_FILE)
    if not storage.exists(file):
        return None
    try:
        document = yaml.safe_load(storage.read_bytes(file))
    except yaml.YAMLError as exc:
        raise NotAnExperiment(f"{file} is damaged: {storage.one_line(exc)}") from None
    if not isinstance(document, dict):
        raise NotAnExperiment(f"{file} is damaged: not a mapping of config fields")
    return split_provenance(document)


def read_config(path) -> dict | None:
    """The sweep config an experiment was started with (its ``prunesweep.yaml``), or None."""
    found = read_experiment_file(path)
    return found[0] if found is not None else None


def completion(df: pd.DataFrame, path=None) -> dict:
    """Counts of trials expected (by the experiment's config), started and finished (the diverged
    among them counted apart too: they have ended, but no mean includes them)."""
    started = df[TRIAL_ID].nunique() if not df.empty else 0
    finished = 0
    if not df.empty and BUDGET_EPOCHS in df:
        last = df.sort_values([TRIAL_ID, EPOCH], kind="stable").groupby(TRIAL_ID).tail(1)
        finished = int(is_finished(last).sum())
    config = read_config(path) if path is not None else None
    expected = len(trial_points(config)) if config is not None else started
    return {"expected": expected, "started": started, "finished": finished, "diverged": len(diverged(df)),
            "missing": expected - finished}
