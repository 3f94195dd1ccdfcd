"""Means, spreads, Student-t confidence intervals and paired comparisons of schedules."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from .load import final_results, healthy, with_arms
from .schema import (ARM, DIVERGED, EPOCH, FINETUNE, INSTANT, RETRAIN, SCHEDULE, SCHEDULE_KIND, SEED,
                     TARGET_SPARSITY, TEST_ACCURACY, TRIAL_ID, arm, higher_is_better, is_diverged)

STAT_COLUMNS = ["n", "mean", "std", "sem", "ci95_low", "ci95_high", "min", "max"]


def _finals(df: pd.DataFrame) -> pd.DataFrame:
    df = with_arms(df)
    return final_results(df) if EPOCH in df and df.duplicated([TRIAL_ID, TARGET_SPARSITY]).any() else df


def t_interval(mean: float, sd: float, n: int) -> tuple[float, float, float]:
    """The standard error and Student-t 95% interval of a mean of ``n`` values (NaN for n < 2)."""
    if n < 2:
        return float("nan"), float("nan"), float("nan")
    sem = sd / math.sqrt(n)
    half = stats.t.ppf(0.975, n - 1) * sem
    return sem, mean - half, mean + half


def describe(df: pd.DataFrame, by: list[str], metric: str = TEST_ACCURACY) -> pd.DataFrame:
    """Per group of ``by``: n, mean, std (n-1), sem, 95% CI (t), min and max of ``metric``."""
    rows = []
    for key, group in df.groupby(by, sort=True):
        values = group[metric].astype(float).to_numpy()
        n = len(values)
        mean = float(values.mean())
        sd = float(values.std(ddof=1)) if n > 1 else float("nan")
        sem, low, high = t_interval(mean, sd, n)
        rows.append([*key, metric, n, mean, sd, sem, low, high, float(values.min()), float(values.max())])
    return pd.DataFrame(rows, columns=[*by, "metric", *STAT_COLUMNS])


def summarize(df: pd.DataFrame, metric: str = TEST_ACCURACY) -> pd.DataFrame:
    """Per (schedule, retraining regime, target_sparsity) of the final results: n, mean, std, sem,
    95% CI (t), min, max, and ``diverged``: how many trials diverged and are left out of n and the rest.

    ``std`` uses n-1; with n = 1 the spread columns are NaN.
    """
    by = [SCHEDULE, RETRAIN, TARGET_SPARSITY]
    finals = _finals(df)
    table = describe(healthy(finals), by, metric)
    lost = finals[is_diverged(finals)].groupby(by).size().rename(DIVERGED).reset_index()
    table = table.merge(lost, on=by, how="outer").sort_values(by, ignore_index=True)
    table["metric"] = metric
    table["n"] = table["n"].fillna(0).astype(int)
    table[DIVERGED] = table[DIVERGED].fillna(0).astype(int)
    return table[[*by, "metric", "n", DIVERGED, *STAT_COLUMNS[1:]]]


COMPARE_COLUMNS = ["a", "b", TARGET_SPARSITY, "metric", "n_pairs", "mean_a", "mean_b", "mean_diff",
                   "ci95_low", "ci95_high", "t_statistic", "p_value", "a_wins", "b_wins", "ties", "epochs_a", "epochs_b"]


def compare(df: pd.DataFrame, a: str, b: str, metric: str = TEST_ACCURACY) -> pd.DataFrame:
    """Arm ``a`` vs ``b`` (schedules, ``+<regime>`` when not fine-tuned: :func:`analysis.schema.arm`)
    per target sparsity, paired by seed (a seed where either diverged is no pair): mean difference
    a-b, its 95% CI, the paired t-test's p-value, how many seeds each won (by ``metric``'s
    direction), and the budget each side had trained when compared (``epochs_a``, ``epochs_b``:
    mean fine-tuning epochs; a ladder's count every rung so far).

    When all differences are equal the t-test is undefined: p is 1.0 if they are all zero,
    else 0.0 (every seed agrees exactly).
    """
    finals = healthy(_finals(df))
    chosen = finals[finals[ARM].isin([a, b])]
    table = chosen.pivot_table(index=[TARGET_SPARSITY, SEED], columns=ARM, values=metric, aggfunc="last")
    spent = (chosen.pivot_table(index=[TARGET_SPARSITY, SEED], columns=ARM, values=EPOCH, aggfunc="last")
             if EPOCH in chosen else None)
    rows = []
    better = 1 if higher_is_better(metric) else -1
    for target, group in table.groupby(level=0, sort=True):
        if a not in group or b not in group:
            continue
        pairs = group[[a, b]].dropna()
        n = len(pairs)
        if n == 0:
            continue
        # rounded far below any metric's precision, so that equal gains and losses cancel exactly
        diff = np.round((pairs[a] - pairs[b]).to_numpy(dtype=float), 12)
        mean = float(diff.mean())
        sd = float(diff.std(ddof=1)) if n > 1 else float("nan")
        _, low, high = t_interval(mean, sd, n)
        if n < 2:
            t, p = float("nan"), float("nan")
        elif sd == 0:
            t, p = (float("nan"), 1.0) if mean == 0 else (math.copysign(float("inf"), mean), 0.0)
        else:
            res = stats.ttest_1samp(diff, 0.0)  # the paired t-test
            t, p = float(res.statistic), float(res.pvalue)
        wins_a = int((better * diff > 0).sum())
        wins_b = int((better * diff < 0).sum())
        epochs = [float(spent.loc[pairs.index, side].mean()) if spent is not None and side in spent else float("nan")
                  for side in (a, b)]
        rows.append([a, b, target, metric, n, float(pairs[a].mean()), float(pairs[b].mean()), mean, low, high,
                     t, p, wins_a, wins_b, n - wins_a - wins_b, *epochs])
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


def default_comparisons(df: pd.DataFrame) -> list[tuple[str, str]]:
    """The arms each report compares. Within each retraining regime: every other schedule against
    each instant schedule (without one, the first schedule against the rest). Across regimes: every
    schedule retrained by a regime against the same schedule fine-tuned (``ladder+lr_rewind`` vs
    ``ladder``)."""
    finals = _finals(df)
    arms = finals.groupby(ARM, sort=True)[[SCHEDULE, RETRAIN]].first()
    arms[SCHEDULE_KIND] = (finals.groupby(ARM)[SCHEDULE_KIND].first() if SCHEDULE_KIND in finals else None)
    pairs = []
    for regime in sorted(arms[RETRAIN].unique(), key=lambda r: (r != FINETUNE, r)):
        names = list(arms.index[arms[RETRAIN] == regime])
        instants = [n for n in names if arms.loc[n, SCHEDULE_KIND] == INSTANT]
        if instants:
            pairs += [(n, i) for i in instants for n in names if n not in instants]
        else:
            pairs += [(names[0], n) for n in names[1:]]
    pairs += [(name, arm(row[SCHEDULE])) for name, row in arms.iterrows()
              if row[RETRAIN] != FINETUNE and arm(row[SCHEDULE]) in arms.index]
    return pairs


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN stays NaN, not counted)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def compare_all(df: pd.DataFrame, metric: str = TEST_ACCURACY) -> pd.DataFrame:
    """Every default comparison (:func:`default_comparisons`) at every sparsity, with ``p_holm``:
    the p-values adjusted by Holm's method over all these comparisons together."""
    frames = [compare(df, a, b, metric) for a, b in default_comparisons(df)]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=COMPARE_COLUMNS + ["p_holm"])
    table = pd.concat(frames, ignore_index=True)
    table["p_holm"] = holm(table["p_value"])
    return table


ERROR_BARS = {"ci95": "95% CI (Student t)", "std": "±1 std", "minmax": "min–max"}


def error_bars(summary: pd.DataFrame, error: str = "ci95") -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper error-bar lengths (one of :data:`ERROR_BARS`) around a summary's means."""
    mean = summary["mean"].to_numpy(float)
    if error == "ci95":
        low, high = summary["ci95_low"].to_numpy(float), summary["ci95_high"].to_numpy(float)
    elif error == "std":
        sd = summary["std"].to_numpy(float)
        low, high = mean - sd, mean + sd
    elif error == "minmax":
        low, high = summary["min"].to_numpy(float), summary["max"].to_numpy(float)
    else:
        raise ValueError(f"error must be one of {', '.join(ERROR_BARS)}; got {error!r}")
    return np.nan_to_num(mean - low), np.nan_to_num(high - mean)
