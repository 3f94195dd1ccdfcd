"""The plots people want to look at, as matplotlib figures.

Each function draws into the ``Axes`` (or ``Figure``) it is given, or into a new ``Figure``,
and returns the figure; it never saves, shows or touches pyplot's state or backend, so a
notebook keeps its own (``report`` saves the figures it writes).

``plot_*`` take an experiment's reports (:func:`analysis.load.load_experiment`) and compute what
they draw; ``draw_*`` draw tables computed already (an :class:`analysis.computed.Analysis`'s).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib import rcParams
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import text_to_path
from matplotlib.ticker import MaxNLocator

from .completeness import final_results, healthy
from .load import layer_columns, with_arms
from .schema import (ARM, EPOCH, LAYER_SPARSITY, RETRAIN, SCHEDULE, SEED, TARGET_SPARSITY, TEST_ACCURACY, arm,
                     is_percent)
from .stats import (ALPHA, ERROR_BARS, SPARSITY, compare_all, dense_baseline, describe, error_bars, prune_events,
                    statistics, summarize)

TABLE_FONT = 7      # points: the difference plot's table of wins
WINS_HEADER = "seeds a won, at sparsity"
MAX_WIDTH = 14.0    # inches: the widest difference plot drawn to keep its table's columns under their points
MAX_PRUNE_LABELS = 8  # a schedule's prunes in one panel beyond which their sparsities are not written


def _label(metric: str) -> tuple[str, float]:
    if is_percent(metric):
        return metric.replace("_", " ") + " (%)", 100.0
    return metric.replace("_", " "), 1.0


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Axes, bool]:
    """The axes to draw into, and whether they are on a new figure of ours (which we lay out)."""
    return (ax, False) if ax is not None else (Figure(figsize=figsize).subplots(), True)


def _colors(names) -> dict:
    """One colour per arm (or comparison), the same in every panel: the property cycle's, in sorted order."""
    cycle = rcParams["axes.prop_cycle"].by_key()["color"]
    return {name: cycle[i % len(cycle)] for i, name in enumerate(sorted(set(names)))}


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


def _dense(ax: Axes, dense: pd.DataFrame | None, metric: str) -> None:
    """The dense baseline (:func:`analysis.stats.dense_baseline`) as a horizontal line with its 95% CI
    band, on a plot of ``test_accuracy`` only (the dense models' accuracy is on the test split)."""
    if dense is None or dense.empty or metric != TEST_ACCURACY:
        return
    _, scale = _label(metric)
    styles = ["--", ":", "-."]
    for i, (_, row) in enumerate(dense[dense["n"] > 0].iterrows()):
        whose = f" ({row['arms']})" if len(dense) > 1 else ""
        ax.axhline(row["mean"] * scale, color="black", ls=styles[i % len(styles)], lw=1,
                   label=f"dense model{whose}, 95% CI (n={row['n']})")
        if not math.isnan(row["ci95_low"]):
            ax.axhspan(row["ci95_low"] * scale, row["ci95_high"] * scale, color="black", alpha=0.08, lw=0)


def plot_metric_vs_sparsity(df: pd.DataFrame, metric: str = TEST_ACCURACY, error: str = "ci95",
                            ax: Axes | None = None) -> Figure:
    """Final ``metric`` vs target sparsity, one line per arm (a schedule, with its retraining regime
    unless that is plain fine-tuning), with error bars; for ``test_accuracy`` also the dense models'
    accuracy (mean over the seeds, a line with its 95% CI band: :func:`analysis.stats.dense_baseline`).

    The x axis is the compression ratio 1/(1-sparsity) on a log scale, labelled in sparsity,
    so 0.9, 0.95 and 0.98 do not crowd together.
    """
    return draw_metric_vs_sparsity(summarize(df, metric), metric, error, ax, dense_baseline(df, metric))


def draw_metric_vs_sparsity(summary: pd.DataFrame, metric: str = TEST_ACCURACY, error: str = "ci95",
                            ax: Axes | None = None, dense: pd.DataFrame | None = None) -> Figure:
    """:func:`plot_metric_vs_sparsity` of a summary table (:func:`analysis.stats.summarize` of ``metric``)
    and a dense baseline (:func:`analysis.stats.dense_baseline`; None: none drawn)."""
    ylabel, scale = _label(metric)
    ax, ours = _axes(ax, (7.5, 4.8))
    arms = [arm(s, r) for s, r in zip(summary[SCHEDULE], summary[RETRAIN])]
    names = list(dict.fromkeys(arms))
    colors = _colors(names)
    for schedule, off in zip(names, _offsets(len(names))):
        s = summary[[a == schedule for a in arms]].sort_values(TARGET_SPARSITY)
        lo, hi = error_bars(s, error)
        n = ",".join(str(v) for v in sorted(s["n"].unique()))
        ax.errorbar(_sparsity_x(s[TARGET_SPARSITY], off), s["mean"] * scale, yerr=[lo * scale, hi * scale],
                    marker="o", capsize=3, color=colors[schedule], label=f"{schedule} (n={n})")
    _sparsity_axis(ax, summary[TARGET_SPARSITY])
    _dense(ax, dense, metric)
    ax.set_ylabel(ylabel)
    ax.set_title(f"Final {metric.replace('_', ' ')} vs sparsity, mean and {ERROR_BARS[error]} over seeds")
    ax.grid(alpha=0.3)
    ax.legend(title="schedule+regime" if any(a != s for a, s in zip(arms, summary[SCHEDULE])) else "schedule")
    if ours:
        ax.figure.tight_layout()
    return ax.figure


def plot_difference_vs_sparsity(data: pd.DataFrame, metric: str = TEST_ACCURACY, ax: Axes | None = None) -> Figure:
    """The answer of each paired comparison a - b, against sparsity: the mean difference over seeds in
    points (``mean_diff_pts``: percentage points for a percent metric) with its 95% CI as error bars,
    a zero line, and under the plot a table of each point's seeds: ``3/5 wins, 1 tie`` (a won 3 of
    the 5 pairs, one pair tied). Filled markers are significant after Holm's correction
    (``p_holm`` < 0.05; ``p_value`` for a table without it), hollow ones are not.

    ``data`` is a comparison table (:func:`analysis.stats.compare_all`; its own metric is drawn)
    or an experiment's reports, compared here; either way the points are the table's own. Drawn into
    ``ax``, the table goes in an inset under its x label: leave room below it.
    """
    table = data if "mean_diff_pts" in data else compare_all(data, metric)
    return draw_difference_vs_sparsity(table, metric, ax)


def wins_label(wins: int, pairs: int, ties: int) -> str:
    """A comparison's seeds at one sparsity, compactly: ``3/5 wins, 1 tie``."""
    if not pairs:
        return "no pair"
    return f"{wins}/{pairs} wins" + (f", {ties} tie{'s' if ties > 1 else ''}" if ties else "")


def _text_inches(text: str, points: float) -> float:
    """The width of ``text`` at ``points`` in the default font, before anything is drawn."""
    return text_to_path.get_text_width_height_descent(text, FontProperties(size=points), ismath=False)[0] / 72


def draw_difference_vs_sparsity(table: pd.DataFrame, metric: str = TEST_ACCURACY, ax: Axes | None = None) -> Figure:
    """:func:`plot_difference_vs_sparsity` of a comparison table (:func:`analysis.stats.compare_all`)."""
    metric = table["metric"].iloc[0] if len(table) else metric
    holm = "p_holm" in table
    p = table["p_holm" if holm else "p_value"]
    label, _ = _label(metric)
    names = list(dict.fromkeys(zip(table["a"], table["b"])))
    targets = sorted(set(table[TARGET_SPARSITY]))
    cells = [wins_label(w, n, t) for w, n, t in zip(table["a_wins"], table["n_pairs"], table["ties"])]
    cell_in = max([_text_inches(c, TABLE_FONT) for c in cells] + [0.3]) + 0.15
    label_in = max(_text_inches(text, TABLE_FONT) for text in [WINS_HEADER, *(f"{a} − {b}" for a, b in names)]) + 0.1
    table_in = 0.2 * (len(names) + 1) + 0.1
    ours = ax is None
    if ours:
        left = max(label_in + 0.2, 0.9) + 0.2  # beside the axes once laid out: the row labels (or the y axis')
        width_in = max(7.5 - left, cell_in * len(targets))
        for wider in np.arange(width_in, MAX_WIDTH - left, 0.25):  # as wide as columns under their points need
            if _fit(targets, cell_in, 0.95 * wider) is not None:
                width_in = wider
                break
        fig = Figure(figsize=(width_in + left, 4.8 + table_in))
        grid = fig.add_gridspec(2, 1, height_ratios=[4.8, table_in])
        ax, under = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    else:
        fig_w, fig_h = ax.figure.get_size_inches()
        height = ax.get_position().height * fig_h
        under = ax.inset_axes([0, -(0.6 + table_in) / height, 1, table_in / height])  # 0.6 in: tick labels, x label
        width_in = ax.get_position().width * fig_w
    _sparsity_axis(ax, table[TARGET_SPARSITY])  # first: a log scale set on one point's limits warns
    colors = _colors(f"{a} − {b}" for a, b in names)
    for (a, b), off in zip(names, _offsets(len(names))):
        rows_ab = (table["a"] == a) & (table["b"] == b)
        c = table[rows_ab].sort_values(TARGET_SPARSITY)
        x = _sparsity_x(c[TARGET_SPARSITY], off)
        y = c["mean_diff_pts"].to_numpy(float)
        lo, hi = error_bars(c.rename(columns={"mean_diff_pts": "mean", "ci95_low_pts": "ci95_low",
                                              "ci95_high_pts": "ci95_high"}), "ci95")
        color = colors[f"{a} − {b}"]
        ax.errorbar(x, y, yerr=[lo, hi], marker="o", mfc="none", capsize=3, color=color, label=f"{a} − {b}")
        significant = (p[rows_ab] < ALPHA).loc[c.index].to_numpy()
        ax.plot(x[significant], y[significant], "o", color=color)
    ax.axhline(0, color="grey", lw=1)
    unit = " (percentage points)" if is_percent(metric) else ""
    ax.set_ylabel(f"{label.removesuffix(' (%)')} difference a − b{unit}")
    ax.set_title("Paired difference a − b over seeds: mean and 95% CI\n"
                 f"filled: significant {'after Holm' if holm else 'alone'} (p < {ALPHA:g}); hollow: not")
    ax.grid(alpha=0.3)
    if names:
        ax.legend(title="a − b")
    _wins_table(under, table, names, targets, cells, colors, _columns(ax, targets, cell_in, 0.95 * width_in))
    if ours:
        fig.tight_layout()
    return ax.figure


def _fit(targets, cell_in: float, width_in: float) -> float | None:
    """The margin (in log compression ratio) either side of ``targets`` on the difference plot's x axis
    that lets cells ``cell_in`` wide sit under their points side by side on an axis ``width_in``
    wide, or None where they do not fit."""
    logs = np.log(_sparsity_x(targets))
    if not len(logs):
        return None
    span, edge = logs[-1] - logs[0], cell_in / 2 + 0.05
    if width_in <= 2 * edge:
        return None
    margin = max(edge * span / (width_in - 2 * edge), 0.05)
    return margin if (np.diff(logs) / (span + 2 * margin) * width_in >= cell_in).all() else None


def _columns(plot: Axes, targets, cell_in: float, width_in: float) -> np.ndarray:
    """Where the wins table's columns go, in axes fractions: under their points on ``plot``'s x axis
    (:func:`_fit`; its limits widened to fit the outer cells), else evenly spaced."""
    margin = _fit(targets, cell_in, width_in)
    if margin is None:
        return (np.arange(len(targets)) + 0.5) / max(len(targets), 1)
    logs = np.log(_sparsity_x(targets))
    plot.set_xlim(np.exp(logs[0] - margin), np.exp(logs[-1] + margin))
    return (logs - logs[0] + margin) / (logs[-1] - logs[0] + 2 * margin)


def _wins_table(ax: Axes, table: pd.DataFrame, names, targets, cells, colors, xs) -> None:
    """The table under the difference plot: a row per comparison (labelled in the left margin), a
    column per sparsity at ``xs`` (axes fractions: :func:`_columns`), each cell the seeds a won of
    the pairs (:func:`wins_label`)."""
    ax.set_axis_off()
    ys = 1 - (np.arange(len(names) + 1) + 0.5) / (len(names) + 1)
    ax.text(-0.01, ys[0], WINS_HEADER, fontsize=TABLE_FONT, va="center", ha="right", style="italic")
    for x, t in zip(xs, targets):
        ax.text(x, ys[0], f"{t:g}", fontsize=TABLE_FONT, va="center", ha="center", style="italic")
    said = dict(zip(zip(table["a"], table["b"], table[TARGET_SPARSITY]), cells))
    for y, (a, b) in zip(ys[1:], names):
        ax.text(-0.01, y, f"{a} − {b}", fontsize=TABLE_FONT, va="center", ha="right", color=colors[f"{a} − {b}"])
        for x, t in zip(xs, targets):
            ax.text(x, y, said.get((a, b, t), "–"), fontsize=TABLE_FONT, va="center", ha="center")


def plot_metric_vs_epoch(df: pd.DataFrame, metric: str = TEST_ACCURACY, fig: Figure | None = None) -> Figure:
    """``metric`` after every fine-tuning epoch, per arm (mean and 95% CI band), one panel per target,
    for ``test_accuracy`` with the dense models' accuracy (a line and its 95% CI band); under each
    panel a strip marks where each arm prunes (▼ before the epoch it prunes for, with the mean
    measured sparsity reached: :func:`analysis.stats.prune_events`), so that a gradual schedule's
    early lead over an instant one reads as what it is: a model pruned less so far. Diverged trials
    are left out."""
    return draw_metric_vs_epoch(with_arms(healthy(df)), metric, fig, dense_baseline(df, metric))


def draw_metric_vs_epoch(df: pd.DataFrame, metric: str = TEST_ACCURACY, fig: Figure | None = None,
                         dense: pd.DataFrame | None = None) -> Figure:
    """:func:`plot_metric_vs_epoch` of reports already without diverged trials, with arms
    (:func:`analysis.completeness.healthy`, :func:`analysis.load.with_arms`), and a dense baseline
    (:func:`analysis.stats.dense_baseline`; None: none drawn)."""
    targets = sorted(df[TARGET_SPARSITY].dropna().unique())
    arms = sorted(df[ARM].dropna().unique())
    colors = _colors(arms)
    events = prune_events(df)
    cols = min(3, len(targets))
    rows = -(-len(targets) // cols)
    strip = 0.25 + 0.2 * len(arms)
    ours = fig is None
    fig = Figure(figsize=(5 * cols, (3.8 + strip) * rows + 0.4), layout="constrained") if ours else fig
    cells = [cell.subgridspec(2, 1, height_ratios=[3.6, strip], hspace=0) for cell in fig.add_gridspec(rows, cols)]
    panels = [fig.add_subplot(cell[0]) for cell in cells]
    strips = [fig.add_subplot(cell[1], sharex=panel) for cell, panel in zip(cells, panels)]
    ylabel, scale = _label(metric)
    for ax, below, target in zip(panels, strips, targets):
        part = df[df[TARGET_SPARSITY] == target]
        curves = describe(part, [ARM, EPOCH], metric)
        for schedule, g in curves.groupby(ARM, sort=True):
            x = g[EPOCH].to_numpy()
            low, high = g["ci95_low"].fillna(g["mean"]), g["ci95_high"].fillna(g["mean"])
            ax.plot(x, g["mean"] * scale, marker=".", color=colors[schedule],
                    label=f"{schedule} (n={int(g['n'].max())})")
            ax.fill_between(x, low * scale, high * scale, color=colors[schedule], alpha=0.2)
        _dense(ax, dense, metric)
        ax.set_title(f"target sparsity {target:g}")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.tick_params(labelbottom=False)
        _prunes(below, events[events[TARGET_SPARSITY] == target], arms, colors)
        epochs = pd.concat([part[EPOCH], events.loc[events[TARGET_SPARSITY] == target, EPOCH]]).dropna()
        below.set_xlim(epochs.min() - 1, epochs.max() + 0.5)
    for ax in panels[len(targets):] + strips[len(targets):]:
        ax.set_visible(False)
    fig.suptitle(f"{metric.replace('_', ' ')} during fine-tuning (mean, 95% CI band)\n▼ where each arm prunes, "
                 "labelled with the measured sparsity after it (of all prunable weights, excluded layers too)")
    return fig


def _prunes(ax: Axes, events: pd.DataFrame, arms: list, colors: dict) -> None:
    """A strip of each arm's prunes (:func:`analysis.stats.prune_events` of one target) against epochs:
    ▼ half an epoch before the first epoch trained after the prune, labelled with the sparsity reached."""
    for row, name in enumerate(arms):
        e = events[events[ARM] == name]
        x = e[EPOCH].to_numpy(float) - 0.5
        ax.plot(x, np.full(len(x), row), "v", color=colors[name], ms=5, ls="none")
        if len(x) <= MAX_PRUNE_LABELS:
            for xi, reached in zip(x, e[SPARSITY]):
                if reached == reached:
                    ax.annotate(f"{reached * 100:.3g}%", (xi, row), xytext=(5, 0), textcoords="offset points",
                                va="center", fontsize=6)
    ax.set_yticks(range(len(arms)), arms, fontsize=7)
    ax.set_ylim(len(arms) - 0.5, -0.5)
    ax.tick_params(axis="y", length=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel("fine-tuning epoch (▼ prune)")


def plot_layer_sparsity(df: pd.DataFrame, target: float | None = None, seed=None, ax: Axes | None = None,
                        excluded=()) -> Figure:
    """Per-layer sparsity of each arm's final models at ``target`` (default: the highest): the mean
    over seeds with the min–max over seeds as error bars (with ``seed``: that seed's model only).
    Layers named in ``excluded`` (kept dense by the config: :func:`analysis.computed.excluded_layers`)
    are marked ``excluded``; others that no trial pruned are marked ``not pruned``. Diverged trials
    are left out."""
    return draw_layer_sparsity(with_arms(final_results(healthy(df))), target, seed, ax, excluded)


def draw_layer_sparsity(finals: pd.DataFrame, target: float | None = None, seed=None,
                        ax: Axes | None = None, excluded=()) -> Figure:
    """:func:`plot_layer_sparsity` of final results already without diverged trials, with arms."""
    columns = layer_columns(finals)
    if not columns:
        raise ValueError(f"the experiment has no {LAYER_SPARSITY} reports")
    target = finals[TARGET_SPARSITY].max() if target is None else target
    part = finals[finals[TARGET_SPARSITY] == target]
    if seed is not None:
        part = part[part[SEED] == seed]
    layers = [c.removeprefix(f"{LAYER_SPARSITY}.") for c in columns]
    arms = sorted(part[ARM].unique())
    colors = _colors(arms)
    ax, ours = _axes(ax, (max(6.0, 0.35 * len(layers) * max(len(arms), 1) + 2), 4.5))
    width = 0.8 / max(len(arms), 1)
    x = np.arange(len(layers))
    seeds = part[SEED].nunique()
    for i, name in enumerate(arms):
        values = part.loc[part[ARM] == name, columns].to_numpy(float) * 100
        n, mean, _, _, _, _, low, high = zip(*(statistics(v) for v in values.T))
        mean, low, high = np.array(mean), np.array(low), np.array(high)
        spread = np.where(high > low, 1.0, np.nan)  # no bar of error where the seeds agree (an excluded layer)
        ax.bar(x + i * width, mean, width, yerr=[(mean - low) * spread, (high - mean) * spread],
               capsize=2, color=colors[name], label=f"{name} (n={max(n)})", error_kw={"lw": 0.8})
    centre = x + width * (len(arms) - 1) / 2
    ax.set_xticks(centre)
    ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=8)
    untouched = part[columns].fillna(0).eq(0).all().to_numpy() if len(part) else np.zeros(len(layers), bool)
    for xi, layer, zero, tick in zip(centre, layers, untouched, ax.get_xticklabels()):
        why = "excluded (kept dense)" if layer in set(excluded) else "not pruned (0% in every trial)" if zero else ""
        if why:
            ax.text(xi, 2, why, rotation=90, ha="center", va="bottom", fontsize=8, color="dimgrey")
            tick.set_color("dimgrey")
    ax.set_ylabel("layer sparsity (% of weights pruned)")
    ax.set_xlabel("layer")
    ax.set_ylim(0, 100)
    ax.axhline(target * 100, color="grey", ls="--", lw=1, label=f"target {target:g}")
    spread = f"seed {seed}" if seed is not None else f"mean and min–max over {seeds} seed{'s' if seeds != 1 else ''}"
    ax.set_title(f"Per-layer sparsity of the final models at target {target:g}\n{spread} per schedule")
    ax.legend(fontsize=8)
    if ours:
        ax.figure.tight_layout()
    return ax.figure
