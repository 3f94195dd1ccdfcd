"""Reading a Ray Tune experiment, in a local folder or at an object-store URI (no Ray needed),
into tidy DataFrames. Which of its reports count is :mod:`analysis.completeness`'s; the
experiment's own file (its config) is :mod:`analysis.experiment_file`'s."""
from __future__ import annotations

import fnmatch

import pandas as pd

from . import attempts, experiment_file, legacy, storage, trial_results
from .completeness import in_point_order
from .messages import one_line
from .schema import (ARM, EPOCH, EXPERIMENT_STATE_GLOB, FINETUNE, LAYER_SPARSITY, RESULT_FILE, RETRAIN, SCHEDULE,
                     SEED, TARGET_SPARSITY, TRIAL_ID, TRIAL_RESULTS_FILE, TUNER_FILE, arm)

KEYS = [TRIAL_ID, SCHEDULE, TARGET_SPARSITY, SEED]


def load_experiment(path) -> pd.DataFrame:
    """One row per epoch of every trial: ``trial_id``, the declared metrics (``layer_sparsity.<layer>``
    one column per layer) and the trial's ``arm`` (:func:`with_arms`), in the order of :data:`analysis.completeness.POINT_ORDER` (a trial's rows together, by epoch).

    Reads each trial's results file (:data:`analysis.schema.TRIAL_RESULTS_FILE`) as one columnar
    dataset, from a local folder or straight from a URI (``s3://bucket/prefix/name``); needs Ray
    neither running nor imported. A trial folder without one (an experiment from before these
    files, or a trial that has not reached its first checkpoint) is read from Ray Tune's
    ``result.json`` instead, whatever that holds (:mod:`analysis.legacy`). Of a point's attempts only
    the one that counts is read (:func:`counted_attempts`).
    Raises :class:`analysis.experiment_file.NotAnExperiment` if ``path`` holds no experiment.
    """
    root = storage.normalise(str(path))
    try:
        is_dir = storage.is_dir(root)
    except Exception as exc:  # an unreachable or refusing object store
        raise experiment_file.NotAnExperiment(f"{root}: cannot read it ({one_line(exc)})") from None
    if not is_dir:
        raise experiment_file.NotAnExperiment(f"{root}: no such directory")
    entries = storage.list_dir(root)
    has_state = any(fnmatch.fnmatch(e, EXPERIMENT_STATE_GLOB) for e in entries) or TUNER_FILE in entries
    found = storage.files_named(root, TRIAL_RESULTS_FILE, RESULT_FILE)
    if not has_state and not found[TRIAL_RESULTS_FILE] and not found[RESULT_FILE]:
        raise experiment_file.NotAnExperiment(
            f"{root}: not a Ray Tune experiment (no {EXPERIMENT_STATE_GLOB}, {TUNER_FILE} "
            f"or trial {TRIAL_RESULTS_FILE} / {RESULT_FILE})")
    frames = []
    if found[TRIAL_RESULTS_FILE]:
        frames.append(trial_results.read(found[TRIAL_RESULTS_FILE]).to_pandas())
    whole = set(frames[0][TRIAL_ID]) if frames and TRIAL_ID in frames[0] else set()
    older = legacy.without_results_file(found[RESULT_FILE], found[TRIAL_RESULTS_FILE])
    if older:
        frames.append(legacy.read_tune_results(older))
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=KEYS + [EPOCH])
    df = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    return with_arms(in_point_order(counted_attempts(df, whole)))


def counted_attempts(df: pd.DataFrame, whole: set | None = None) -> pd.DataFrame:
    """The reports of the trial that counts for each point (:func:`analysis.attempts.counted`):
    attempts superseded by a resumed one are left out; a point finished twice raises
    :class:`analysis.attempts.DuplicateTrials`. ``whole``: the ids of the trials read from their
    results files (None: all), preferred to those with only Ray Tune's numbers."""
    if df.empty or SCHEDULE not in df:
        return df
    last = df.sort_values([TRIAL_ID, EPOCH], kind="stable").groupby(TRIAL_ID).tail(1)
    tries = [attempts.attempt(row[TRIAL_ID], row, whole=whole is None or row[TRIAL_ID] in whole)
             for row in last.to_dict("records")]
    keep = {a.trial_id for a in attempts.counted(tries).values()}
    return df if len(keep) == len(tries) else df[df[TRIAL_ID].isin(keep)]


def with_arms(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with its ``retrain`` column (``finetune`` for trials from before retraining regimes)
    and ``arm``, what the analysis compares: the schedule with its regime (:func:`analysis.schema.arm`)."""
    if SCHEDULE not in df or ARM in df:  # nothing to name, or named already (load_experiment's frames)
        return df
    df = df.assign(**{RETRAIN: df[RETRAIN].fillna(FINETUNE) if RETRAIN in df else FINETUNE})
    return df.assign(**{ARM: [arm(s, r) for s, r in zip(df[SCHEDULE], df[RETRAIN])]})


def layer_columns(df: pd.DataFrame) -> list[str]:
    """The per-layer sparsity columns of an experiment's reports (empty if it has none)."""
    return [c for c in df.columns if c.startswith(f"{LAYER_SPARSITY}.")]
