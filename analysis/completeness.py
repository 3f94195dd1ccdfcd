"""Which reports count: the rules for a trial's final result, for a complete one, for a diverged
(unhealthy) one, and the experiment's counts of trials expected, started and finished.

:mod:`analysis.load` reads the reports; these rules decide which of them the statistics
(:mod:`analysis.stats`), plots and report use, and which they count apart.
"""
from __future__ import annotations

import pandas as pd

from .experiment_file import read_config
from .schema import (BUDGET_EPOCHS, EPOCH, RETRAIN, SCHEDULE, SEED, TARGET_SPARSITY, TRIAL_ID, is_diverged,
                     is_finished, trial_points)

# the order reports are kept in: by trial point, then Ray Tune's (random) trial id and the epoch, so that
# the same reports give the same tables to the last digit, whatever ids a run drew
POINT_ORDER = (SCHEDULE, RETRAIN, SEED, TRIAL_ID, TARGET_SPARSITY, EPOCH)


def in_point_order(df: pd.DataFrame) -> pd.DataFrame:
    """``df``'s rows in :data:`POINT_ORDER` (by the columns it has), indexed 0..n-1."""
    keys = [k for k in POINT_ORDER if k in df]
    return df.sort_values(keys, kind="stable", na_position="first").reset_index(drop=True)


def final_results(df: pd.DataFrame) -> pd.DataFrame:
    """The last report of each trial at each target sparsity (one row per rung for a ladder), in
    :data:`POINT_ORDER`."""
    if df.empty:
        return df
    order = df.sort_values([TRIAL_ID, TARGET_SPARSITY, EPOCH])
    return in_point_order(order.groupby([TRIAL_ID, TARGET_SPARSITY], as_index=False, sort=True).tail(1))


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


def completion(df: pd.DataFrame, path=None) -> dict:
    """Counts of trials expected (by the experiment's config, read from ``path``), started and
    finished (the diverged among them counted apart too: they have ended, but no mean includes them)."""
    return count_trials(df, read_config(path) if path is not None else None)


def count_trials(df: pd.DataFrame, config: dict | None) -> dict:
    """:func:`completion`'s counts, given the experiment's config (None: expect the trials started)."""
    started = df[TRIAL_ID].nunique() if not df.empty else 0
    finished = 0
    if not df.empty and BUDGET_EPOCHS in df:
        last = df.sort_values([TRIAL_ID, EPOCH], kind="stable").groupby(TRIAL_ID).tail(1)
        finished = int(is_finished(last).sum())
    expected = len(trial_points(config)) if config is not None else started
    return {"expected": expected, "started": started, "finished": finished, "diverged": len(diverged(df)),
            "missing": expected - finished}
