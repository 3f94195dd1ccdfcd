"""Means, spreads, Student-t confidence intervals and paired comparisons of schedules.

Units: a level (a metric's value, a summary's ``mean`` and interval, a comparison's ``mean_a`` and
``mean_b``, the dense baseline) is in the metric's own units, as the trials report it: a fraction
for an accuracy (0.99 = 99%). A difference between arms is in points (columns and arguments ending
in ``_pts``): percentage points for a percent metric (:func:`analysis.schema.is_percent`: 1 point =
0.01 of accuracy), the metric's own units for any other (a loss); :func:`points` is the factor and
:func:`diff_unit` the name a comparison's ``diff_unit`` column holds.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.power import TTestPower

from .completeness import final_results, healthy, in_point_order, is_complete
from .load import with_arms
from .messages import seed_text
from .schema import (ARM, DIVERGED, EPOCH, FINETUNE, INSTANT, LADDER, RETRAIN, SCHEDULE, SCHEDULE_KIND, SEED,
                     SPARSITY, STEP, TARGET_SPARSITY, TEST_ACCURACY, TRIAL_ID, arm, higher_is_better, is_percent)

ALPHA = 0.05      # the significance level of every test and interval (95%)
POWER = 0.8       # the chance of detecting a difference that seeds_needed plans for
MIN_SEEDS = 2     # the fewest pairs a paired t-test can use
MANY_SEEDS = 1e6  # beyond this many seeds, seeds_needed approximates
DIGITS = 12       # differences are rounded to this many decimals, far below any metric's precision
STAT_COLUMNS = ["n", "mean", "std", "sem", "ci95_low", "ci95_high", "min", "max"]
UNFINISHED, MISSING = "unfinished", "missing"
PERCENTAGE_POINTS, METRIC_UNITS = "percentage points", "metric units"  # a comparison's diff_unit


def points(metric: str) -> float:
    """Points per unit of ``metric``, the factor from its differences to ``_pts`` columns: 100 for a
    percent metric (a fraction, so 0.01 = 1 percentage point), 1 for any other (its own units)."""
    return 100.0 if is_percent(metric) else 1.0


def diff_unit(metric: str) -> str:
    """What a difference of ``metric`` in points is: ``percentage points`` or ``metric units``."""
    return PERCENTAGE_POINTS if is_percent(metric) else METRIC_UNITS


def last_reports(df: pd.DataFrame) -> pd.DataFrame:
    """The last report of every trial at every target sparsity, finished or not (unique index), with
    its arm, in trial-point order (:data:`analysis.completeness.POINT_ORDER`: the same reports give
    the same tables to the last digit): what :func:`summarize`, :func:`compare` and
    :func:`default_comparisons` take values from. Given these instead of ``df`` they return the same
    tables, so an analysis computes them once."""
    df = with_arms(df)
    if EPOCH in df and df.duplicated([TRIAL_ID, TARGET_SPARSITY]).any():
        return final_results(df)
    return in_point_order(df)


def t_interval(mean: float, sd: float, n: int) -> tuple[float, float, float]:
    """The standard error and Student-t 95% interval of a mean of ``n`` values (NaN for n < 2)."""
    if n < 2:
        return float("nan"), float("nan"), float("nan")
    sem = sd / math.sqrt(n)
    half = stats.t.ppf(1 - ALPHA / 2, n - 1) * sem
    return sem, mean - half, mean + half


def describe(df: pd.DataFrame, by: list[str], metric: str = TEST_ACCURACY) -> pd.DataFrame:
    """Per group of ``by``: n, mean, std (n-1), sem, 95% CI (t), min and max of ``metric``; NaN
    values are left out (n counts the others; a group of none has n = 0 and NaN statistics)."""
    rows = [[*key, metric, *statistics(group[metric])] for key, group in df.groupby(by, sort=True)]
    return pd.DataFrame(rows, columns=[*by, "metric", *STAT_COLUMNS])


def statistics(values) -> list:
    """:data:`STAT_COLUMNS` of ``values`` (NaN left out; none: n = 0 and NaN statistics)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    n = len(values)
    mean, low, high = (float(values.mean()), float(values.min()), float(values.max())) if n else (math.nan,) * 3
    sd = float(values.std(ddof=1)) if n > 1 else float("nan")
    sem, ci_low, ci_high = t_interval(mean, sd, n)
    return [n, mean, sd, sem, ci_low, ci_high, low, high]


def summarize(df: pd.DataFrame, metric: str = TEST_ACCURACY) -> pd.DataFrame:
    """Per (schedule, retraining regime, target_sparsity): n, mean, std, sem, 95% CI (t), min and
    max of the complete final results (:func:`analysis.completeness.is_complete`), and what is left out of
    all of them, counted: ``diverged`` (trials that diverged), ``unfinished`` (trials still short of
    their final epoch: a partial experiment's numbers would move) and ``missing`` (a NaN value in a
    trial that did not diverge). :func:`compare` leaves out the same reports.

    The statistics are in ``metric``'s own units, as the trials report it (a fraction for an
    accuracy: 0.99 = 99%). ``std`` uses n-1; with n = 1 the spread columns are NaN.
    """
    by = [SCHEDULE, RETRAIN, TARGET_SPARSITY]
    finals = last_reports(df)
    status = np.select([~finals.index.isin(healthy(finals).index), ~is_complete(finals), finals[metric].isna()],
                       [DIVERGED, UNFINISHED, MISSING], "")
    counted = [DIVERGED, UNFINISHED, MISSING]
    left_out = finals.groupby([*by, status]).size().unstack(fill_value=0).reindex(columns=counted, fill_value=0)
    table = describe(finals[status == ""], by, metric)
    table = table.merge(left_out.reset_index(), on=by, how="outer").sort_values(by, ignore_index=True)
    table["metric"] = metric
    table["n"] = table["n"].fillna(0).astype(int)
    table[counted] = table[counted].fillna(0).astype(int)
    return table[[*by, "metric", "n", *counted, *STAT_COLUMNS[1:]]]


@lru_cache(maxsize=None)
def _detectable(n: int) -> float:
    """The smallest standardized difference that ``n`` pairs detect with :data:`POWER`."""
    return float(TTestPower().solve_power(nobs=n, alpha=ALPHA, power=POWER, alternative="two-sided"))


def seeds_needed(effect_size: float) -> float:
    """The seeds (pairs) a two-sided paired t-test at :data:`ALPHA` needs to detect a standardized
    difference ``effect_size`` (mean difference / sd of the differences) with :data:`POWER`: the
    smallest whole number, at least :data:`MIN_SEEDS`.

    NaN for 0, NaN or infinity (no difference, or no spread to plan with), and where the solver
    finds no answer. statsmodels solves for the seeds; its search starts above 2 seeds, so for
    effects that 2 or 3 seeds already detect each of those counts is checked directly instead,
    and beyond :data:`MANY_SEEDS` (differences under ~0.003 sd) Guenther's normal approximation
    (z-test seeds + z²/2) stands in, within a few seeds of the exact count.
    """
    d = abs(effect_size)
    if not 0 < d < math.inf:
        return math.nan
    for n in (MIN_SEEDS, MIN_SEEDS + 1):
        if d >= _detectable(n):
            return float(n)
    z = stats.norm.ppf(1 - ALPHA / 2)
    approx = ((z + stats.norm.ppf(POWER)) / d) ** 2 + z * z / 2  # Guenther's normal approximation
    if not math.isfinite(approx):
        return math.nan
    if approx > MANY_SEEDS:  # where the t-test is a z-test and statsmodels' search may not end
        return float(math.ceil(approx))
    try:
        n = float(TTestPower().solve_power(effect_size=d, alpha=ALPHA, power=POWER, alternative="two-sided"))
    except (ValueError, RuntimeError, ArithmeticError):
        return math.nan
    return float(math.ceil(n)) if math.isfinite(n) else math.nan


def _wilcoxon(diff: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of paired differences (NaN for fewer than 2; 1.0 when all
    are zero, which scipy cannot rank)."""
    if len(diff) < MIN_SEEDS:
        return math.nan
    if not diff.any():
        return 1.0
    return float(stats.wilcoxon(diff).pvalue)


def _paired(diff: np.ndarray, better: int, scale: float, effect_pts: float | None) -> dict:
    """:func:`compare`'s statistics of the paired differences ``diff`` (a - b in the metric's units, at
    least one); differences come back in points (``scale``: :func:`points`)."""
    n = len(diff)
    mean = round(float(diff.mean()), DIGITS) + 0.0  # equal gains and losses cancel to exactly 0 (not -0.0)
    sd = math.nan if n < 2 else 0.0 if (diff == diff[0]).all() else float(diff.std(ddof=1))
    _, low, high = t_interval(mean, sd, n)
    if n < MIN_SEEDS or sd == 0:  # with no spread the t-test, d_z and any power are undefined
        t, p, d_z = math.nan, math.nan, math.nan
    else:  # the paired t-test, on the rounded mean
        t = mean / (sd / math.sqrt(n))
        p, d_z = float(2 * stats.t.sf(abs(t), n - 1)), mean / sd
    wins_a, wins_b = int((better * diff > 0).sum()), int((better * diff < 0).sum())
    row = {"mean_diff_pts": round(mean * scale, DIGITS) + 0.0, "ci95_low_pts": low * scale,
           "ci95_high_pts": high * scale, "t_statistic": t, "p_value": p, "wilcoxon_p": _wilcoxon(diff),
           "a_wins": wins_a, "b_wins": wins_b, "ties": n - wins_a - wins_b, "d_z": d_z,
           "seeds_needed": seeds_needed(d_z)}
    if effect_pts is not None:
        row[EFFECT_COLUMN] = seeds_needed(effect_pts / (sd * scale)) if sd > 0 else math.nan
    return row


COMPARE_COLUMNS = ["a", "b", TARGET_SPARSITY, "metric", "diff_unit", "n_pairs", "pairs_left_out", "mean_a", "mean_b",
                   "mean_diff_pts", "ci95_low_pts", "ci95_high_pts", "t_statistic", "p_value", "wilcoxon_p", "a_wins",
                   "b_wins", "ties", "d_z", "seeds_needed", "epochs_a", "epochs_b"]
EFFECT_COLUMN = "seeds_needed_effect"


def _columns(effect_pts: float | None) -> list[str]:
    return COMPARE_COLUMNS + ([EFFECT_COLUMN] if effect_pts is not None else [])


def _state(group: pd.DataFrame, seed, side: str, ended: set) -> str:
    """``usable``, ``dead`` (never pairs) or ``pending`` (may pair once its trial finishes or starts)."""
    if (seed, side) not in group.index:
        return "dead" if (seed, side) in ended else "pending"
    row = group.loc[(seed, side)]
    return "usable" if row["_usable"] else "dead" if row["_dead"] else "pending"


def compare(df: pd.DataFrame, a: str, b: str, metric: str = TEST_ACCURACY, effect_pts: float | None = None,
            seeds: list | None = None) -> pd.DataFrame:
    """Arm ``a`` vs ``b`` (schedules, ``+<regime>`` when not fine-tuned: :func:`analysis.schema.arm`)
    per target sparsity, paired by seed, on the reports :func:`summarize` uses: a seed where either
    side diverged, is unfinished or has a NaN value is no pair; ``pairs_left_out`` counts the seeds
    that will pair once their trials finish: a side has reported but is unfinished, or has not
    reported yet (with ``seeds``, the experiment's seeds, also where neither side has: trials not
    started), at each sparsity where both arms have reported (a sparsity with no pair yet but some
    left out has a row with ``n_pairs`` 0 and no statistics). Seeds where a side diverged (a
    ladder: at that rung or below) or ended with a NaN value never pair and are not counted here
    (``summarize`` counts them).

    Columns: ``diff_unit`` (:func:`diff_unit`), the means of the pairs (``mean_a``, ``mean_b``: in
    ``metric``'s own units, a fraction for an accuracy), the mean difference a-b and its 95% CI in
    points (``mean_diff_pts``, ``ci95_low_pts``, ``ci95_high_pts``: percentage points for a percent
    metric, else ``metric``'s units), the paired t-test's t and p, the Wilcoxon signed-rank test's p
    (``wilcoxon_p``: robust to one wild seed), how many seeds each won (by ``metric``'s direction),
    Cohen's ``d_z`` (mean / sd of the differences), ``seeds_needed`` for the paired t-test to detect
    the observed ``d_z`` (:func:`seeds_needed`), with ``effect_pts`` (a difference in points, as the
    ``_pts`` columns: ``effect_pts=1`` is one percentage point of accuracy) ``seeds_needed_effect`` to
    detect that given the observed sd, and the budget each side had trained when compared
    (``epochs_a``, ``epochs_b``: mean fine-tuning epochs; a ladder's count every rung so far).

    With fewer than 2 pairs the tests, ``d_z`` and the seeds are NaN. When every seed differs by
    exactly the same amount (no spread: often with few test samples) the t-test, ``d_z`` and the
    seeds are NaN too, and the report calls the comparison undetermined; ``wilcoxon_p`` still
    says how unlikely so many equal signs are.
    """
    finals = last_reports(df)
    finals = finals[finals[ARM].isin([a, b])]
    complete = is_complete(finals)
    diverged = ~finals.index.isin(healthy(finals).index)
    dead = diverged | (complete & finals[metric].isna())
    usable = complete & ~dead
    # the best report of each (sparsity, seed, arm): usable over pending over dead (duplicates aside, one)
    keyed = (finals.assign(_usable=usable, _dead=dead, _rank=np.where(usable, 2, np.where(dead, 0, 1)))
             .sort_values("_rank", kind="stable").drop_duplicates([TARGET_SPARSITY, SEED, ARM], keep="last")
             .set_index([TARGET_SPARSITY, SEED, ARM]))
    # a ladder that diverged never reports at the rungs above: those never pair either
    ladder = (finals[SCHEDULE_KIND] == LADDER) if SCHEDULE_KIND in finals else pd.Series(False, index=finals.index)
    gone = finals[ladder & diverged]
    ended = set(zip(gone[SEED], gone[ARM]))
    rows = []
    better = 1 if higher_is_better(metric) else -1
    for target, group in keyed.groupby(level=0, sort=True):
        arms = set(group.index.get_level_values(ARM))
        if a not in arms or b not in arms:
            continue
        group = group.droplevel(0)
        present = list(dict.fromkeys(group.index.get_level_values(SEED)))
        pairs, left = [], 0
        for seed in [*present, *(s for s in (seeds or []) if s not in present)]:
            state = [_state(group, seed, side, ended) for side in (a, b)]
            if state == ["usable", "usable"]:
                pairs.append(seed)
            elif "dead" not in state:
                left += 1
        row = {"a": a, "b": b, TARGET_SPARSITY: target, "metric": metric, "diff_unit": diff_unit(metric),
               "n_pairs": len(pairs),
               "pairs_left_out": left, "a_wins": 0, "b_wins": 0, "ties": 0}
        if pairs:
            va = group.loc[[(s, a) for s in pairs], metric].to_numpy(dtype=float)
            vb = group.loc[[(s, b) for s in pairs], metric].to_numpy(dtype=float)
            # rounded far below any metric's precision, so that equal gains and losses cancel exactly
            diff = np.round(va - vb, DIGITS)
            row.update(mean_a=float(va.mean()), mean_b=float(vb.mean()),
                       **_paired(diff, better, points(metric), effect_pts))
            if EPOCH in group:
                row.update(epochs_a=float(group.loc[[(s, a) for s in pairs], EPOCH].mean()),
                           epochs_b=float(group.loc[[(s, b) for s in pairs], EPOCH].mean()))
        if row["n_pairs"] or row["pairs_left_out"]:
            rows.append(row)
    return pd.DataFrame(rows, columns=_columns(effect_pts))


def default_comparisons(df: pd.DataFrame) -> list[tuple[str, str]]:
    """The arms each report compares. Within each retraining regime: every other schedule against
    each instant schedule (without one, the first schedule against the rest). Across regimes: every
    schedule retrained by a regime against the same schedule fine-tuned (``ladder+lr_rewind`` vs
    ``ladder``)."""
    finals = last_reports(df)
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


def compare_all(df: pd.DataFrame, metric: str = TEST_ACCURACY, effect_pts: float | None = None,
                seeds: list | None = None) -> pd.DataFrame:
    """Every default comparison (:func:`default_comparisons`) at every sparsity (:func:`compare`,
    ``effect_pts`` and ``seeds`` passed on), with ``p_holm``: the p-values adjusted by Holm's method
    over all these comparisons together."""
    frames = [compare(df, a, b, metric, effect_pts, seeds) for a, b in default_comparisons(df)]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=_columns(effect_pts) + ["p_holm"])
    table = pd.concat(frames, ignore_index=True)
    table["p_holm"] = holm(table["p_value"])
    return table


DENSE_ACCURACY = "dense_test_accuracy"  # in every report: the test accuracy of its seed's dense model
DENSE_COLUMNS = ["arms", "seeds", "metric", *STAT_COLUMNS]
NEAR_CHANCE = 0.1  # a dense model is near chance below chance + this share of the way from chance to 100%
PRUNE_COLUMNS = [ARM, TARGET_SPARSITY, EPOCH, SPARSITY, "n"]


def dense_accuracy(df: pd.DataFrame) -> pd.Series:
    """The test accuracy of each seed's dense model (a fraction), by seed: the reports'
    ``dense_test_accuracy`` (one dense model per seed, shared by every trial of that seed). Empty
    when the experiment does not report it."""
    if DENSE_ACCURACY not in df or SEED not in df:
        return pd.Series(dtype=float, name=DENSE_ACCURACY)
    known = df[[SEED, DENSE_ACCURACY]].dropna()
    return known.groupby(SEED, sort=True)[DENSE_ACCURACY].first().astype(float)


def dense_baseline(df: pd.DataFrame, metric: str = TEST_ACCURACY) -> pd.DataFrame:
    """The dense models' test accuracy (a fraction) over the seeds :func:`summarize` counts for
    ``metric``: one row per set of seeds that arms share (one row when every arm counts the same
    seeds), with those ``arms`` (comma-separated), the ``seeds`` (:func:`analysis.messages.seed_text`) and
    :data:`STAT_COLUMNS` of their dense models (:func:`dense_accuracy`). Empty when the experiment
    reports no dense accuracy."""
    dense = dense_accuracy(df)
    if dense.empty:
        return pd.DataFrame(columns=DENSE_COLUMNS)
    finals = last_reports(df)
    counted = finals[finals.index.isin(healthy(finals).index) & is_complete(finals) & finals[metric].notna()]
    arms_by_seeds: dict[tuple, list[str]] = {}
    for name, seeds in counted.groupby(ARM, sort=True)[SEED]:
        arms_by_seeds.setdefault(tuple(sorted(set(seeds))), []).append(name)
    rows = [[", ".join(arms), seed_text(seeds), DENSE_ACCURACY, *statistics(dense.reindex(list(seeds)))]
            for seeds, arms in arms_by_seeds.items()]
    return pd.DataFrame(rows, columns=DENSE_COLUMNS)


def near_chance(dense: pd.Series, classes: int | None) -> pd.Series:
    """The seeds of ``dense`` (:func:`dense_accuracy`) whose dense model is near chance accuracy
    (1/``classes``): below chance + :data:`NEAR_CHANCE` of the way from chance to 100%. Empty when
    ``classes`` is unknown (None)."""
    if not classes:
        return dense.iloc[:0]
    chance = 1.0 / classes
    return dense[dense < chance + NEAR_CHANCE * (1 - chance)]


def prune_events(df: pd.DataFrame) -> pd.DataFrame:
    """Where each arm prunes, per target sparsity: the ``epoch`` before which its trials pruned (a
    trial's first epoch, and every epoch whose prune ``step`` differs from the epoch before; in
    reports without steps, whose measured ``sparsity`` does), the mean measured ``sparsity`` the
    prune reached (NaN where not reported) and the ``n`` trials that pruned there."""
    df = with_arms(df)
    if df.empty or EPOCH not in df:
        return pd.DataFrame(columns=PRUNE_COLUMNS)
    rows = df.sort_values([TRIAL_ID, EPOCH], kind="stable").drop_duplicates([TRIAL_ID, EPOCH], keep="last")
    rows = rows.assign(**{SPARSITY: rows[SPARSITY] if SPARSITY in rows else math.nan})
    key = next((k for k in (STEP, SPARSITY) if k in rows and rows[k].notna().any()), None)
    pruned = rows[TRIAL_ID].ne(rows[TRIAL_ID].shift())
    if key is not None:
        pruned |= rows[key].fillna(-1).ne(rows[key].fillna(-1).shift())
    events = rows[pruned].groupby([ARM, TARGET_SPARSITY, EPOCH], sort=True)
    return events.agg(**{SPARSITY: (SPARSITY, "mean"), "n": (TRIAL_ID, "nunique")}).reset_index()[PRUNE_COLUMNS]


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
