"""The plots people want to look at, as matplotlib figures.

Each function draws into the ``Axes`` (or ``Figure``) it is given, or into a new ``Figure``,
and returns the figure; it never saves, shows or touches pyplot's state or backend, so a
notebook keeps its own (``report`` saves the figures it writes).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .load import final_results, healthy, with_arms
from .schema import (ARM, EPOCH, LAYER_SPARSITY, RETRAIN, SCHEDULE, SEED, TARGET_SPARSITY, TEST_ACCURACY, arm,
                     is_percent)
from .stats import ERROR_BARS, describe, error_bars, summarize


def _label(metric: str) -> tuple[str, float]:
    if is_percent(metric):
        return metric.replace("_", " ") + " (%)", 100.0
    return metric.replace("_", " "), 1.0


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Axes, bool]:
    """The axes to draw into, and whether they are on a new figure of ours (which we lay out)."""
    return (ax, False) if ax is not None else (Figure(figsize=figsize).subplots(), True)


def plot_metric_vs_sparsity(df: pd.DataFrame, metric: str = TEST_ACCURACY, error: str = "ci95",
                            ax: Axes | None = None) -> Figure:
    """Final ``metric`` vs target sparsity, one line per arm (a schedule, with its retraining regime
    unless that is plain fine-tuning), with error bars.

    The x axis is the compression ratio 1/(1-sparsity) on a log scale, labelled in sparsity,
    so 0.9, 0.95 and 0.98 do not crowd together.
    """
    summary = summarize(df, metric)
    ylabel, scale = _label(metric)
    ax, ours = _axes(ax, (7.5, 4.8))
    arms = [arm(s, r) for s, r in zip(summary[SCHEDULE], summary[RETRAIN])]
    names = list(dict.fromkeys(arms))
    offsets = np.linspace(-0.02, 0.02, len(names)) if len(names) > 1 else [0.0]
    for schedule, off in zip(names, offsets):
        s = summary[[a == schedule for a in arms]].sort_values(TARGET_SPARSITY)
        x = 1.0 / (1.0 - s[TARGET_SPARSITY].to_numpy(float)) * (1 + off)
        lo, hi = error_bars(s, error)
        n = ",".join(str(v) for v in sorted(s["n"].unique()))
        ax.errorbar(x, s["mean"] * scale, yerr=[lo * scale, hi * scale], marker="o", capsize=3,
                    label=f"{schedule} (n={n})")
    ticks = sorted(summary[TARGET_SPARSITY].unique())
    ax.set_xscale("log")
    ax.set_xticks([1 / (1 - t) for t in ticks])
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("target sparsity (fraction of prunable weights removed; log compression scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"Final {metric.replace('_', ' ')} vs sparsity, mean and {ERROR_BARS[error]} over seeds")
    ax.grid(alpha=0.3)
    ax.legend(title="schedule+regime" if any(a != s for a, s in zip(arms, summary[SCHEDULE])) else "schedule")
    if ours:
        ax.figure.tight_layout()
    return ax.figure


def plot_metric_vs_epoch(df: pd.DataFrame, metric: str = TEST_ACCURACY, fig: Figure | None = None) -> Figure:
    """``metric`` after every fine-tuning epoch, per schedule (mean and 95% CI band), one panel per
    target; diverged trials are left out."""
    df = with_arms(healthy(df))
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


def layer_columns(df: pd.DataFrame) -> list[str]:
    """The per-layer sparsity columns of an experiment's reports (empty if it has none)."""
    return [c for c in df.columns if c.startswith(f"{LAYER_SPARSITY}.")]


def plot_layer_sparsity(df: pd.DataFrame, target: float | None = None, seed=None, ax: Axes | None = None) -> Figure:
    """Per-layer sparsity of the final model of each schedule's trial at ``target`` (default: the
    highest); diverged trials are left out."""
    finals = with_arms(final_results(healthy(df)))
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
