"""``summary.csv``, ``comparison.csv``, plots and a ``report.md`` that says who wins where."""
from __future__ import annotations

import io
import math
import shlex

import pandas as pd

from . import storage
from .load import completion, healthy, load_experiment, read_config
from .plots import (layer_columns, plot_difference_vs_sparsity, plot_layer_sparsity, plot_metric_vs_epoch,
                    plot_metric_vs_sparsity)
from .schema import (ANALYSIS_DIR, CUMULATIVE, DIVERGED, FINETUNE, LADDER, PER_PRUNE, RETRAIN, SCHEDULE,
                     TARGET_SPARSITY, TEST_ACCURACY, arm, higher_is_better, is_percent, regimes, seed_list)
from .stats import ALPHA, EFFECT_COLUMN, ERROR_BARS, MIN_SEEDS, POWER, compare_all, summarize


def _fmt(value: float, metric: str, diff: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if is_percent(metric):
        return f"{value * 100:+.2f} pts" if diff else f"{value * 100:.2f}%"
    return f"{value:+.4g}" if diff else f"{value:.4g}"


def _tested(comparison: pd.DataFrame) -> int:
    return int(comparison["p_value"].notna().sum()) if "p_value" in comparison else 0


def _significance(r, tested: int, alpha: float = ALPHA) -> tuple[bool, str]:
    """Whether a comparison is decided (significant; after Holm's correction when the report makes
    several tests), and the words for it."""
    p, p_holm, w = r["p_value"], r.get("p_holm", math.nan), r.get("wilcoxon_p", math.nan)
    family = f"Holm's correction for the report's {tested} tests"
    t, wilcoxon = f"paired t-test p = {p:.3g}", f"Wilcoxon p = {w:.3g}"
    if r["n_pairs"] < MIN_SEEDS:
        return False, f"too few seeds to test (n < {MIN_SEEDS})"
    if math.isnan(p) and r["mean_diff"] == 0:
        return False, f"no difference: every seed ties exactly ({wilcoxon})"
    if math.isnan(p):  # every seed differs by exactly the same amount
        return False, (f"undetermined: every seed differs by exactly the same amount, so there is no spread "
                       f"between seeds for a t-test to weigh ({wilcoxon}); more seeds would show the spread")
    if p >= alpha:
        return False, f"not significant ({t}, {wilcoxon})"
    if math.isnan(p_holm) or tested < 2:
        return True, f"significant ({t} < {alpha}; {wilcoxon})"
    if p_holm < alpha:
        return True, f"significant ({t}; {p_holm:.3g} after {family}; {wilcoxon})"
    return False, f"significant alone ({t}, {wilcoxon}) but not after {family} ({p_holm:.3g})"


def verdicts(comparison: pd.DataFrame, alpha: float = ALPHA) -> list[str]:
    """One sentence per compared sparsity: which schedule wins, by how much, and whether it is significant."""
    lines = []
    tested = _tested(comparison)
    for _, r in comparison.iterrows():
        metric, diff, left = r["metric"], r["mean_diff"], r.get("pairs_left_out", 0)
        where = f"- **sparsity {r[TARGET_SPARSITY]:g}**: "
        unfinished = f"{left} pair(s) left out: a trial not finished yet" if left else ""
        if r["n_pairs"] == 0:
            lines.append(f"{where}{r['a']} vs {r['b']}: no finished pair yet ({unfinished}).")
            continue
        if diff == 0:
            head = f"{r['a']} and {r['b']} tie"
        else:
            good = diff > 0 if higher_is_better(metric) else diff < 0
            winner, loser = (r["a"], r["b"]) if good else (r["b"], r["a"])
            head = f"{winner} is ahead of {loser}"
        d_z = r.get("d_z", math.nan)
        effect = "" if math.isnan(d_z) else f", d_z = {d_z:+.2f}"
        _, sig = _significance(r, tested, alpha)
        lines.append(
            f"{where}{head}: {r['a']} − {r['b']} = {_fmt(diff, metric, True)} "
            f"(95% CI {_fmt(r['ci95_low'], metric, True)} to {_fmt(r['ci95_high'], metric, True)}; "
            f"{r['a']} better in {r['a_wins']}/{r['n_pairs']} seeds, ties {r['ties']}{effect}{_budgets(r)}"
            f"{'; ' + unfinished if left else ''}); {sig}."
        )
    return lines


def _size(effect: float, metric: str) -> str:
    return f"{effect * 100:.2f} pts" if is_percent(metric) else f"{effect:.4g}"


MAX_ADVISED = 1000  # seeds: beyond this a difference is too small next to the spread between seeds to chase


def _grown(seeds, more: int) -> str:
    """The ``seeds`` value of the config ``seeds`` (a count or a list) with ``more`` new seeds."""
    if isinstance(seeds, list):
        return f"[{', '.join(map(str, [*seeds, *range(max(seeds) + 1, max(seeds) + 1 + more)]))}]"
    return str(len(seed_list(seeds)) + more)


def seed_advice(comparison: pd.DataFrame, experiment: str, effect: float | None = None, seeds=None) -> list[str]:
    """One sentence per comparison the report leaves undecided: about how many seeds would decide it
    (``seeds_needed``; with ``effect``, also to detect that difference), with the ``prunesweep extend``
    command that grows ``experiment``'s ``seeds`` (its config's count or list) to that many pairs, or
    ``prunesweep resume`` when finishing its unfinished trials would be enough."""
    tested = _tested(comparison)

    def command(need: int, r) -> str:
        have = int(r["n_pairs"]) + int(r.get("pairs_left_out", 0))
        if need <= have:
            return f"`prunesweep resume {shlex.quote(str(experiment))}` finishes the trials that complete them"
        value = _grown(seeds if seeds is not None else have, need - have)
        return f"extend with `prunesweep extend {shlex.quote(str(experiment))} --set {shlex.quote('seeds=' + value)}`"

    lines = []
    for _, r in comparison.iterrows():
        if _significance(r, tested)[0]:
            continue
        what = f"To tell {r['a']} from {r['b']} at {r[TARGET_SPARSITY]:g}"
        n, need = int(r["n_pairs"]), r["seeds_needed"]
        if n < MIN_SEEDS:
            line = (f"{what}, {n} finished pair(s) are too few to estimate the spread between seeds; "
                    f"at least {MIN_SEEDS} are needed first")
        elif r["mean_diff"] == 0:
            line = (f"{what}, no number of seeds would do: over {n} seeds their mean difference is exactly zero, "
                    "so there is no observed difference to detect")
        elif math.isnan(r["p_value"]):
            line = (f"{what}, the seeds needed cannot be estimated: every one of the {n} seeds differs by exactly "
                    f"the same amount ({_fmt(r['mean_diff'], r['metric'], True)}), so there is no spread to plan with")
        elif math.isnan(need):
            line = f"{what}, the seeds needed could not be solved for (d_z = {r['d_z']:+.2f})"
        elif need > MAX_ADVISED:
            line = (f"{what} would take more than {MAX_ADVISED} seeds (d_z = {r['d_z']:+.2f}): a difference this "
                    "small next to the spread between seeds is not worth chasing with seeds")
        elif need > n:
            line = f"{what} would take about {int(need)} seeds ({command(int(need), r)}; observed d_z = {r['d_z']:+.2f})"
        else:
            line = (f"{what}: the observed difference (d_z = {r['d_z']:+.2f}) would need only about {int(need)} "
                    f"seeds and {n} are paired, yet it is not significant: that estimate comes from the same few "
                    "seeds, is noisy and ignores any correction for several tests; more seeds would settle it")
        wanted = r.get(EFFECT_COLUMN, math.nan)
        if effect is not None and not math.isnan(wanted):
            line += f"; a difference of {_size(effect, r['metric'])} would take "
            if wanted > MAX_ADVISED:
                line += f"more than {MAX_ADVISED} seeds"
            else:
                line += f"about {int(wanted)} seeds"
                line += f" ({command(int(wanted), r)})" if wanted > n else f" ({n} are paired)"
        if r.get("pairs_left_out", 0):
            line += f"; {r['pairs_left_out']} more pair(s) count once their trials finish"
        lines.append(f"- {line}.")
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


def write_report(experiment, out=None, metric: str = TEST_ACCURACY, error: str = "ci95",
                 effect: float | None = None) -> dict:
    """Analyse ``experiment`` into ``out`` (default ``<experiment>/analysis``); returns the file paths.

    Both may be local folders or object-store URIs (``s3://...``), in any combination. ``effect``: a
    difference worth detecting, in ``metric``'s units (:func:`analysis.stats.compare`).
    """
    if error not in ERROR_BARS:
        raise ValueError(f"--error must be one of {', '.join(ERROR_BARS)}; got {error!r}")
    given = str(experiment)
    experiment = storage.normalise(given)
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
    config = read_config(experiment) or {}
    summary = summarize(df, metric)
    comparison = compare_all(df, metric, effect, seed_list(config["seeds"]) if "seeds" in config else None)
    names = {"summary": "summary.csv", "comparison": "comparison.csv", "vs_difference": "difference_vs_sparsity.png",
             "vs_sparsity": f"{metric}_vs_sparsity.png",
             "vs_epoch": f"{metric}_vs_epoch.png", "layers": "layer_sparsity.png", "report": "report.md"}
    curves = not healthy(df).empty  # when every trial diverged there is nothing to draw per epoch
    if not (layers and curves):
        names.pop("layers")
    if not curves:
        names.pop("vs_epoch")
    files = {key: storage.join(out, name) for key, name in names.items()}
    storage.write_bytes(files["summary"], summary.to_csv(index=False).encode())
    storage.write_bytes(files["comparison"], comparison.to_csv(index=False).encode())
    storage.write_bytes(files["vs_difference"], _png(plot_difference_vs_sparsity(comparison, metric), 120))
    storage.write_bytes(files["vs_sparsity"], _png(plot_metric_vs_sparsity(df, metric, error), 120))
    if "vs_epoch" in files:
        storage.write_bytes(files["vs_epoch"], _png(plot_metric_vs_epoch(df, metric), 110))
    if "layers" in files:
        storage.write_bytes(files["layers"], _png(plot_layer_sparsity(df), 110))

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
                     "below use the finished trials (and the rungs a ladder has finished); the summary's `unfinished` "
                     "and the comparisons' `pairs_left_out` count the rest (`prunesweep resume` finishes them).")
    for line in _protocol(config):
        lines += ["", line]
    lines += ["", "Compared on the final epoch's value of each trial (never a best-epoch pick), "
              f"error bars are the {ERROR_BARS[error]} across seeds, comparisons are paired by seed.", ""]
    lines += ["## Verdict", "", f"![difference a − b vs sparsity]({names['vs_difference']})", ""]
    lines += verdicts(comparison) or ["- no pair of schedules shares a seed and a sparsity yet."]
    advice = seed_advice(comparison, given, effect, config.get("seeds"))
    if advice:
        lines += ["", "## How many seeds", "",
                  f"For a two-sided paired t-test at α = {ALPHA:g} to detect the difference with {POWER:.0%} power, "
                  "taking the spread between seeds seen so far as the truth (itself an estimate from few seeds); "
                  "a seed counts once both arms finished it. This plans for one test alone: the verdicts above "
                  "apply Holm's correction over all of them, which asks for somewhat more.", "", *advice]
    lines += ["", f"![{metric} vs sparsity]({names['vs_sparsity']})", "",
              "## Summary per schedule and sparsity", "", _table(summary), "",
              "## Paired comparisons", "", _table(comparison) if not comparison.empty else "(none)", ""]
    if "vs_epoch" in names:
        lines += [f"![{metric} during fine-tuning]({names['vs_epoch']})", ""]
    if "layers" in names:
        lines += [f"![per-layer sparsity]({names['layers']})", ""]
    storage.write_bytes(files["report"], "\n".join(lines).encode())
    return files
