"""The plots people want to look at (matplotlib, Agg backend, PNG)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from .load import final_results  # noqa: E402
from .stats import error_bars, summarize  # noqa: E402

ERROR_LABEL = {"ci95": "95% CI (Student t)", "std": "±1 std", "minmax": "min–max"}


def _label(metric: str) -> tuple[str, float]:
    if metric.endswith("accuracy"):
        return metric.replace("_", " ") + " (%)", 100.0
    return metric.replace("_", " "), 1.0


def plot_metric_vs_sparsity(df: pd.DataFrame, path, metric: str = "test_accuracy", error: str = "ci95") -> pd.DataFrame:
    """Final ``metric`` vs target sparsity, one line per schedule, with error bars.

    The x axis is the compression ratio 1/(1-sparsity) on a log scale, labelled in sparsity,
    so 0.9, 0.95 and 0.98 do not crowd together.
    """
    summary = summarize(df, metric)
    ylabel, scale = _label(metric)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    schedules = list(summary["schedule"].unique())
    offsets = np.linspace(-0.02, 0.02, len(schedules)) if len(schedules) > 1 else [0.0]
    for schedule, off in zip(schedules, offsets):
        s = summary[summary["schedule"] == schedule].sort_values("target_sparsity")
        x = 1.0 / (1.0 - s["target_sparsity"].to_numpy(float)) * (1 + off)
        lo, hi = error_bars(s, error)
        n = ",".join(str(v) for v in sorted(s["n"].unique()))
        ax.errorbar(x, s["mean"] * scale, yerr=[lo * scale, hi * scale], marker="o", capsize=3,
                    label=f"{schedule} (n={n})")
    ticks = sorted(summary["target_sparsity"].unique())
    ax.set_xscale("log")
    ax.set_xticks([1 / (1 - t) for t in ticks])
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("target sparsity (fraction of prunable weights removed; log compression scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"Final {metric.replace('_', ' ')} vs sparsity, mean and {ERROR_LABEL[error]} over seeds")
    ax.grid(alpha=0.3)
    ax.legend(title="schedule")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return summary


def plot_metric_vs_epoch(df: pd.DataFrame, path, metric: str = "test_accuracy") -> None:
    """``metric`` after every fine-tuning epoch, per schedule (mean and 95% CI band), one panel per target."""
    targets = sorted(df["target_sparsity"].dropna().unique())
    cols = min(3, len(targets))
    rows = -(-len(targets) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    ylabel, scale = _label(metric)
    for ax, target in zip(axes.flat, targets):
        part = df[df["target_sparsity"] == target]
        for schedule, group in part.groupby("schedule", sort=True):
            g = group.groupby("epoch")[metric].agg(["mean", "std", "count"]).sort_index()
            half = stats.t.ppf(0.975, np.maximum(g["count"] - 1, 1)) * g["std"] / np.sqrt(g["count"])
            x = g.index.to_numpy()
            ax.plot(x, g["mean"] * scale, marker=".", label=f"{schedule} (n={int(g['count'].max())})")
            ax.fill_between(x, (g["mean"] - half.fillna(0)) * scale, (g["mean"] + half.fillna(0)) * scale, alpha=0.2)
        ax.set_title(f"target sparsity {target:g}")
        ax.set_xlabel("fine-tuning epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(targets):]:
        ax.set_visible(False)
    fig.suptitle(f"{metric.replace('_', ' ')} during fine-tuning (mean, 95% CI band)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_layer_sparsity(df: pd.DataFrame, path, target: float | None = None, seed=None) -> None:
    """Per-layer sparsity of the final model of each schedule's trial at ``target`` (default: the highest)."""
    finals = final_results(df)
    columns = [c for c in finals.columns if c.startswith("layer_sparsity.")]
    if not columns:
        raise ValueError("the experiment has no layer_sparsity reports")
    target = finals["target_sparsity"].max() if target is None else target
    part = finals[finals["target_sparsity"] == target]
    seed = part["seed"].min() if seed is None else seed
    part = part[part["seed"] == seed].sort_values("schedule")
    layers = [c.removeprefix("layer_sparsity.") for c in columns]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(layers) + 2), 4.5))
    width = 0.8 / max(len(part), 1)
    x = np.arange(len(layers))
    for i, (_, row) in enumerate(part.iterrows()):
        ax.bar(x + i * width, row[columns].to_numpy(float) * 100, width, label=row["schedule"])
    ax.set_xticks(x + width * (len(part) - 1) / 2)
    ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("layer sparsity (% of weights pruned)")
    ax.set_xlabel("layer")
    ax.set_ylim(0, 100)
    ax.axhline(target * 100, color="grey", ls="--", lw=1, label=f"target {target:g}")
    ax.set_title(f"Per-layer sparsity of the final model\ntarget {target:g}, seed {seed} (n=1 per schedule)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
