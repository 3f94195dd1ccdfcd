"""``summary.csv``, ``comparison.csv``, plots and a ``report.md`` that says who wins where."""
from __future__ import annotations

import io
import math

import pandas as pd

from . import storage
from .load import completion, healthy, load_experiment, read_config
from .plots import layer_columns, plot_layer_sparsity, plot_metric_vs_epoch, plot_metric_vs_sparsity
from .schema import (ANALYSIS_DIR, CUMULATIVE, DIVERGED, FINETUNE, LADDER, PER_PRUNE, RETRAIN, SCHEDULE,
                     TARGET_SPARSITY, TEST_ACCURACY, arm, higher_is_better, is_percent, regimes)
from .stats import ERROR_BARS, compare_all, summarize


def _fmt(value: float, metric: str, diff: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if is_percent(metric):
        return f"{value * 100:+.2f} pts" if diff else f"{value * 100:.2f}%"
    return f"{value:+.4g}" if diff else f"{value:.4g}"


def verdicts(comparison: pd.DataFrame, alpha: float = 0.05) -> list[str]:
    """One sentence per compared sparsity: which schedule wins and whether it is significant."""
    lines = []
    tested = int(comparison["p_value"].notna().sum()) if "p_value" in comparison else 0
    for _, r in comparison.iterrows():
        metric = r["metric"]
        diff = r["mean_diff"]
        good = diff > 0 if higher_is_better(metric) else diff < 0
        if diff == 0:
            head = f"{r['a']} and {r['b']} tie"
        else:
            winner, loser = (r["a"], r["b"]) if good else (r["b"], r["a"])
            head = f"{winner} is ahead of {loser}"
        p, p_holm = r["p_value"], r.get("p_holm", float("nan"))
        family = f"Holm's correction for the report's {tested} tests"
        if r["n_pairs"] < 2 or (isinstance(p, float) and math.isnan(p)):
            sig = "too few seeds to test (n < 2)"
        elif p >= alpha:
            sig = f"not significant (p = {p:.3g})"
        elif math.isnan(p_holm) or tested < 2:
            sig = f"significant (paired t-test p = {p:.3g} < {alpha})"
        elif p_holm < alpha:
            sig = f"significant (paired t-test p = {p:.3g}; {p_holm:.3g} after {family})"
        else:
            sig = f"significant alone (p = {p:.3g}) but not after {family} ({p_holm:.3g})"
        lines.append(
            f"- **sparsity {r[TARGET_SPARSITY]:g}**: {head}: {r['a']} − {r['b']} = {_fmt(diff, metric, True)} "
            f"(95% CI {_fmt(r['ci95_low'], metric, True)} to {_fmt(r['ci95_high'], metric, True)}; "
            f"{r['a']} better in {r['a_wins']}/{r['n_pairs']} seeds, ties {r['ties']}{_budgets(r)}); {sig}."
        )
    return lines


def _budgets(r) -> str:
    """``; after 12 vs 4 epochs`` when the two sides had trained different budgets, else ``""``."""
    a, b = r.get("epochs_a", math.nan), r.get("epochs_b", math.nan)
    if math.isnan(a) or math.isnan(b) or a == b:
        return ""
    return f"; after {a:g} vs {b:g} retraining epochs"


REGIME_MEANINGS = {
    FINETUNE: "fine-tuning: the pruned weights train on at the fine-tuning optimizer's learning rate",
    "lr_rewind": "learning-rate rewinding: each prune's P epochs replay the dense run's last P learning rates, "
                 "with the dense optimizer",
    "weight_rewind": "weight rewinding: as learning-rate rewinding, from the dense weights of epoch T − P",
    "reinit": "random reinitialisation of the kept weights (the lottery-ticket control), retrained as "
              "learning-rate rewinding",
}


def _protocol(config: dict) -> list[str]:
    """What the compared arms trained: the retraining regimes and, with a ladder, its budget rule."""
    finetune = config.get("finetune") or {}
    lines = []
    used = regimes(finetune.get(RETRAIN, FINETUNE))
    if used != [FINETUNE]:
        lines.append("Retraining regimes (an arm is `schedule+regime`; plain fine-tuning has no suffix): "
                     + "; ".join(f"`{r}`: {REGIME_MEANINGS.get(r, r)}" for r in used) + ".")
    if any(s.get("kind") == LADDER for s in config.get("schedules") or []):
        epochs = finetune.get("epochs", "?")
        if finetune.get("ladder_budget", CUMULATIVE) == PER_PRUNE:
            lines.append(f"Budget `per_prune`: every prune is retrained {epochs} epochs, so at its j-th rung the "
                         "ladder has trained j times as long as a one-shot trial at that sparsity "
                         "(`epochs_a`/`epochs_b` in the comparisons).")
        else:
            lines.append(f"Budget `cumulative`: at the j-th sparsity every schedule has trained as long as the "
                         f"ladder by its j-th rung (j × {epochs} epochs): equal compute at every point.")
    return lines


def _table(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = []
    for _, row in df.iterrows():
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row]
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *body])


def _png(figure, dpi: int) -> bytes:
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def write_report(experiment, out=None, metric: str = TEST_ACCURACY, error: str = "ci95") -> dict:
    """Analyse ``experiment`` into ``out`` (default ``<experiment>/analysis``); returns the file paths.

    Both may be local folders or object-store URIs (``s3://...``), in any combination.
    """
    if error not in ERROR_BARS:
        raise ValueError(f"--error must be one of {', '.join(ERROR_BARS)}; got {error!r}")
    experiment = storage.normalise(str(experiment))
    df = load_experiment(experiment)
    if df.empty:
        raise ValueError(f"{experiment}: no trial has reported yet")
    layers = layer_columns(df)
    if metric not in df:
        allowed = sorted(c for c in df.columns if df[c].dtype.kind == "f" and not c.startswith("config.")
                         and c not in layers)
        raise ValueError(f"--metric {metric!r} is not reported; numeric metrics are: {', '.join(allowed)}")
    out = storage.normalise(str(out)) if out else storage.join(experiment, ANALYSIS_DIR)
    done = completion(df, experiment)
    summary = summarize(df, metric)
    comparison = compare_all(df, metric)
    names = {"summary": "summary.csv", "comparison": "comparison.csv", "vs_sparsity": f"{metric}_vs_sparsity.png",
             "vs_epoch": f"{metric}_vs_epoch.png", "layers": "layer_sparsity.png", "report": "report.md"}
    curves = not healthy(df).empty  # when every trial diverged there is nothing to draw per epoch
    if not (layers and curves):
        names.pop("layers")
    if not curves:
        names.pop("vs_epoch")
    files = {key: storage.join(out, name) for key, name in names.items()}
    storage.write_bytes(files["summary"], summary.to_csv(index=False).encode())
    storage.write_bytes(files["comparison"], comparison.to_csv(index=False).encode())
    storage.write_bytes(files["vs_sparsity"], _png(plot_metric_vs_sparsity(df, metric, error), 120))
    if "vs_epoch" in files:
        storage.write_bytes(files["vs_epoch"], _png(plot_metric_vs_epoch(df, metric), 110))
    if "layers" in files:
        storage.write_bytes(files["layers"], _png(plot_layer_sparsity(df), 110))

    config = read_config(experiment) or {}
    model = config.get("model", "?")
    dataset = (config.get("dataset") or {}).get("name", "?")
    lines = [f"# {storage.name(experiment)}: {metric.replace('_', ' ')} by pruning schedule", ""]
    lines.append(f"Model `{model}` on `{dataset}`. Trials: {done['finished']} finished of {done['expected']} "
                 f"expected ({done['started']} started).")
    if done["diverged"]:
        lost = summary[summary[DIVERGED] > 0]
        where = ", ".join(f"{arm(r[SCHEDULE], r[RETRAIN])} at {r[TARGET_SPARSITY]:g}: {r[DIVERGED]}"
                          for _, r in lost.iterrows())
        lines.append(f"**{done['diverged']} trial(s) diverged** (loss or weights became NaN or infinite; {where}): "
                     "they ended there, are not retried, and are left out of the means, intervals and paired "
                     "tests; the summary's `diverged` column counts them (a diverged ladder keeps the rungs it "
                     "finished before; its later rungs have no result).")
    if done["missing"] > 0:
        lines.append(f"**Partial experiment: {done['missing']} trial(s) missing or unfinished**; the numbers "
                     "below use the reports that exist (`prunesweep resume` finishes the rest).")
    for line in _protocol(config):
        lines += ["", line]
    lines += ["", "Compared on the final epoch's value of each trial (never a best-epoch pick), "
              f"error bars are the {ERROR_BARS[error]} across seeds, comparisons are paired by seed.", ""]
    lines += ["## Verdict", ""]
    lines += verdicts(comparison) or ["- no pair of schedules shares a seed and a sparsity yet."]
    lines += ["", f"![{metric} vs sparsity]({names['vs_sparsity']})", "",
              "## Summary per schedule and sparsity", "", _table(summary), "",
              "## Paired comparisons", "", _table(comparison) if not comparison.empty else "(none)", ""]
    if "vs_epoch" in names:
        lines += [f"![{metric} during fine-tuning]({names['vs_epoch']})", ""]
    if "layers" in names:
        lines += [f"![per-layer sparsity]({names['layers']})", ""]
    storage.write_bytes(files["report"], "\n".join(lines).encode())
    return files
