"""The plots people want to look at, as matplotlib figures.

Each function draws into the ``Axes`` (or ``Figure``) it is given, or into a new ``Figure``,
and returns the figure; it never saves, shows or touches pyplot's state or backend, so a
notebook keeps its own (``report`` saves the figures it writes).

``plot_*`` take an experiment's reports (:func:`analysis.load.load_experiment`) and compute what
they draw; ``draw_*`` draw tables computed already (an :class:`analysis.computed.Analysis`'s).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .completeness import final_results, healthy
from .load import layer_columns, with_arms
from .schema import (ARM, EPOCH, LAYER_SPARSITY, RETRAIN, SCHEDULE, SEED, TARGET_SPARSITY, TEST_ACCURACY, arm,
                     is_percent)
from .stats import ALPHA, ERROR_BARS, compare_all, describe, error_bars, summarize


def _label(metric: str) -> tuple[str, float]:
    if is_percent(metric):
        return metric.replace("_", " ") + " (%)", 100.0
    return metric.replace("_", " "), 1.0


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Axes, bool]:
    """The axes to draw into, and whether they are on a new figure of ours (which we lay out)."""
    return (ax, False) if ax is not None else (Figure(figsize=figsize).subplots(), True)


def _offsets(count: int) -> np.ndarray:
    """Relative x offsets that keep ``count`` series' error bars apart on the log sparsity axis."""
    return np.linspace(-0.02, 0.02, count) if count > 1 else np.zeros(1)


def _sparsity_x(targets, offset: float = 0.0) -> np.ndarray:
    """Positions on the sparsity axis: the compression ratio 1/(1-sparsity), shifted by ``offset``."""
    return 1.0 / (1.0 - np.asarray(targets, dtype=float)) * (1 + offset)


def _sparsity_axis(ax: Axes, targets) -> None:
    """A log compression-ratio x axis, labelled in sparsity, so 0.9, 0.95 and 0.98 do not crowd."""
    ticks = sorted(set(targets))
    ax.set_xscale("log")
    ax.set_xticks(_sparsity_x(ticks))
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("target sparsity (fraction of prunable weights removed; log compression scale)")


def plot_metric_vs_sparsity(df: pd.DataFrame, metric: str = TEST_ACCURACY, error: str = "ci95",
                            ax: Axes | None = None) -> Figure:
    """Final ``metric`` vs target sparsity, one line per arm (a schedule, with its retraining regime
    unless that is plain fine-tuning), with error bars.

    The x axis is the compression ratio 1/(1-sparsity) on a log scale, labelled in sparsity,
    so 0.9, 0.95 and 0.98 do not crowd together.
    """
    return draw_metric_vs_sparsity(summarize(df, metric), metric, error, ax)


def draw_metric_vs_sparsity(summary: pd.DataFrame, metric: str = TEST_ACCURACY, error: str = "ci95",
                            ax: Axes | None = None) -> Figure:
    """:func:`plot_metric_vs_sparsity` of a summary table (:func:`analysis.stats.summarize` of ``metric``)."""
    ylabel, scale = _label(metric)
    ax, ours = _axes(ax, (7.5, 4.8))
    arms = [arm(s, r) for s, r in zip(summary[SCHEDULE], summary[RETRAIN])]
    names = list(dict.fromkeys(arms))
    for schedule, off in zip(names, _offsets(len(names))):
        s = summary[[a == schedule for a in arms]].sort_values(TARGET_SPARSITY)
        lo, hi = error_bars(s, error)
        n = ",".join(str(v) for v in sorted(s["n"].unique()))
        ax.errorbar(_sparsity_x(s[TARGET_SPARSITY], off), s["mean"] * scale, yerr=[lo * scale, hi * scale],
                    marker="o", capsize=3, label=f"{schedule} (n={n})")
    _sparsity_axis(ax, summary[TARGET_SPARSITY])
    ax.set_ylabel(ylabel)
    ax.set_title(f"Final {metric.replace('_', ' ')} vs sparsity, mean and {ERROR_BARS[error]} over seeds")
    ax.grid(alpha=0.3)
    ax.legend(title="schedule+regime" if any(a != s for a, s in zip(arms, summary[SCHEDULE])) else "schedule")
    if ours:
        ax.figure.tight_layout()
    return ax.figure


def plot_difference_vs_sparsity(data: pd.DataFrame, metric: str = TEST_ACCURACY, ax: Axes | None = None) -> Figure:
    """The answer of each paired comparison a - b, against sparsity: the mean difference over seeds
    (in percentage points for a percent metric) with its 95% CI as error bars, a zero line, and at
    each point ``wins/pairs``: the seeds a won of those paired. Filled markers are significant after
    Holm's correction (``p_holm`` < 0.05; ``p_value`` for a table without it), hollow ones are not.

    ``data`` is a comparison table (:func:`analysis.stats.compare_all`; its own metric is drawn)
    or an experiment's reports, compared here; either way the points are the table's own.
    """
    table = data if "mean_diff" in data else compare_all(data, metric)
    return draw_difference_vs_sparsity(table, metric, ax)


def draw_difference_vs_sparsity(table: pd.DataFrame, metric: str = TEST_ACCURACY, ax: Axes | None = None) -> Figure:
    """:func:`plot_difference_vs_sparsity` of a comparison table (:func:`analysis.stats.compare_all`)."""
    metric = table["metric"].iloc[0] if len(table) else metric
    holm = "p_holm" in table
    p = table["p_holm" if holm else "p_value"]
    label, scale = _label(metric)
    ax, ours = _axes(ax, (7.5, 4.8))
    _sparsity_axis(ax, table[TARGET_SPARSITY])  # first: a log scale set on one point's limits warns
    names = list(dict.fromkeys(zip(table["a"], table["b"])))
    for (a, b), off in zip(names, _offsets(len(names))):
        rows = (table["a"] == a) & (table["b"] == b)
        c = table[rows].sort_values(TARGET_SPARSITY)
        x = _sparsity_x(c[TARGET_SPARSITY], off)
        y = c["mean_diff"].to_numpy(float) * scale
        lo, hi = error_bars(c.rename(columns={"mean_diff": "mean"}), "ci95")
        bars = ax.errorbar(x, y, yerr=[lo * scale, hi * scale], marker="o", mfc="none", capsize=3, label=f"{a} − {b}")
        significant = (p[rows] < ALPHA).loc[c.index].to_numpy()
        ax.plot(x[significant], y[significant], "o", color=bars.lines[0].get_color())
        for xi, yi, wins, n in zip(x, y, c["a_wins"], c["n_pairs"]):
            if n:
                ax.annotate(f"{wins}/{n}", (xi, yi), xytext=(4, 4), textcoords="offset points", fontsize=7)
    ax.axhline(0, color="grey", lw=1)
    ax.set_ylabel(f"{label.removesuffix(' (%)')} difference a − b" + (" (percentage points)" if scale != 1 else ""))
    ax.set_title("Paired difference a − b: mean and 95% CI over seeds, a's wins/pairs\n"
                 f"filled: significant {'after Holm' if holm else 'alone'} (p < {ALPHA:g}); hollow: not")
    ax.grid(alpha=0.3)
    if names:
        ax.legend(title="a − b")
    if ours:
        ax.figure.tight_layout()
    return ax.figure


def plot_metric_vs_epoch(df: pd.DataFrame, metric: str = TEST_ACCURACY, fig: Figure | None = None) -> Figure:
    """``metric`` after every fine-tuning epoch, per schedule (mean and 95% CI band), one panel per
    target; diverged trials are left out."""
    return draw_metric_vs_epoch(with_arms(healthy(df)), metric, fig)


def draw_metric_vs_epoch(df: pd.DataFrame, metric: str = TEST_ACCURACY, fig: Figure | None = None) -> Figure:
    """:func:`plot_metric_vs_epoch` of reports already without diverged trials, with arms
    (:func:`analysis.completeness.healthy`, :func:`analysis.load.with_arms`)."""
    targets = sorted(df[TARGET_SPARSITY].dropna().unique())
    cols = min(3, len(targets))
    rows = -(-len(targets) // cols)
    ours = fig is None
    fig = Figure(figsize=(5 * cols, 3.6 * rows)) if ours else fig
    axes = fig.subplots(rows, cols, squeeze=False)
    ylabel, scale = _label(metric)
    for ax, target in zip(axes.flat, targets):
        curves = describe(df[df[TARGET_SPARSITY] == target], [ARM, EPOCH], metric)
        for schedule, g in curves.groupby(ARM, sort=True):
            x = g[EPOCH].to_numpy()
            low, high = g["ci95_low"].fillna(g["mean"]), g["ci95_high"].fillna(g["mean"])
            ax.plot(x, g["mean"] * scale, marker=".", label=f"{schedule} (n={int(g['n'].max())})")
            ax.fill_between(x, low * scale, high * scale, alpha=0.2)
        ax.set_title(f"target sparsity {target:g}")
        ax.set_xlabel("fine-tuning epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(targets):]:
        ax.set_visible(False)
    fig.suptitle(f"{metric.replace('_', ' ')} during fine-tuning (mean, 95% CI band)")
    if ours:
        fig.tight_layout()
    return fig


def plot_layer_sparsity(df: pd.DataFrame, target: float | None = None, seed=None, ax: Axes | None = None) -> Figure:
    """Per-layer sparsity of the final model of each schedule's trial at ``target`` (default: the
    highest); diverged trials are left out."""
    return draw_layer_sparsity(with_arms(final_results(healthy(df))), target, seed, ax)


def draw_layer_sparsity(finals: pd.DataFrame, target: float | None = None, seed=None,
                        ax: Axes | None = None) -> Figure:
    """:func:`plot_layer_sparsity` of final results already without diverged trials, with arms."""
    columns = layer_columns(finals)
    if not columns:
        raise ValueError(f"the experiment has no {LAYER_SPARSITY} reports")
    target = finals[TARGET_SPARSITY].max() if target is None else target
    part = finals[finals[TARGET_SPARSITY] == target]
    seed = part[SEED].min() if seed is None else seed
    part = part[part[SEED] == seed].sort_values(ARM)
    layers = [c.removeprefix(f"{LAYER_SPARSITY}.") for c in columns]
    ax, ours = _axes(ax, (max(6.0, 0.35 * len(layers) + 2), 4.5))
    width = 0.8 / max(len(part), 1)
    x = np.arange(len(layers))
    for i, (_, row) in enumerate(part.iterrows()):
        ax.bar(x + i * width, row[columns].to_numpy(float) * 100, width, label=row[ARM])
    ax.set_xticks(x + width * (len(part) - 1) / 2)
    ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("layer sparsity (% of weights pruned)")
    ax.set_xlabel("layer")
    ax.set_ylim(0, 100)
    ax.axhline(target * 100, color="grey", ls="--", lw=1, label=f"target {target:g}")
    ax.set_title(f"Per-layer sparsity of the final model\ntarget {target:g}, seed {seed} (n=1 per schedule)")
    ax.legend(fontsize=8)
    if ours:
        ax.figure.tight_layout()
    return ax.figure
