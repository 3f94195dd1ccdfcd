"""``summary.csv``, ``comparison.csv``, plots and a ``report.md`` that says who wins where.

The numbers are computed once (:func:`analysis.computed.analyse`); the prose (functions that take
them and return sentences) and every figure are rendered from that one :class:`~analysis.computed.Analysis`."""
from __future__ import annotations

import io
import math
import shlex

import pandas as pd

from . import storage
from .computed import Analysis, analyse
from .plots import draw_difference_vs_sparsity, draw_layer_sparsity, draw_metric_vs_epoch, draw_metric_vs_sparsity
from .schema import (ANALYSIS_DIR, CUMULATIVE, DIVERGED, FINETUNE, LADDER, PER_PRUNE, REGIME_MEANINGS, RETRAIN,
                     SCHEDULE, TARGET_SPARSITY, TEST_ACCURACY, arm, higher_is_better, is_percent, regimes, seed_list)
from .stats import ALPHA, EFFECT_COLUMN, ERROR_BARS, MIN_SEEDS, POWER


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


def output_names(analysed: Analysis) -> dict:
    """The files a report of ``analysed`` writes, by key: the tables, the figures it can draw (no
    epoch curves when every trial diverged, no layer sparsity without per-layer reports) and report.md."""
    metric = analysed.metric
    names = {"summary": "summary.csv", "comparison": "comparison.csv", "vs_difference": "difference_vs_sparsity.png",
             "vs_sparsity": f"{metric}_vs_sparsity.png",
             "vs_epoch": f"{metric}_vs_epoch.png", "layers": "layer_sparsity.png", "report": "report.md"}
    curves = not analysed.curves.empty  # when every trial diverged there is nothing to draw per epoch
    if not (analysed.layers and curves):
        names.pop("layers")
    if not curves:
        names.pop("vs_epoch")
    return names


FIGURES = {  # key in output_names: (how to draw it from an Analysis, dpi)
    "vs_difference": (lambda a: draw_difference_vs_sparsity(a.comparison, a.metric), 120),
    "vs_sparsity": (lambda a: draw_metric_vs_sparsity(a.summary, a.metric, a.error), 120),
    "vs_epoch": (lambda a: draw_metric_vs_epoch(a.curves, a.metric), 110),
    "layers": (lambda a: draw_layer_sparsity(a.healthy_finals), 110),
}


def figure_png(analysed: Analysis, key: str) -> bytes:
    """The PNG of the report's figure ``key`` (one of :data:`FIGURES`), drawn from ``analysed``."""
    draw, dpi = FIGURES[key]
    return _png(draw(analysed), dpi)


def trials_said(analysed: Analysis) -> list[str]:
    """The report's lines on its trials: model, dataset and counts; then, when there are, the
    diverged trials and the missing or unfinished ones."""
    config, done, summary = analysed.config, analysed.done, analysed.summary
    model = config.get("model", "?")
    dataset = (config.get("dataset") or {}).get("name", "?")
    lines = [f"Model `{model}` on `{dataset}`. Trials: {done['finished']} finished of {done['expected']} "
             f"expected ({done['started']} started)."]
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
    return lines


def method_said(analysed: Analysis) -> str:
    """The sentence on what is compared and what the error bars are."""
    return ("Compared on the final epoch's value of each trial (never a best-epoch pick), "
            f"error bars are the {ERROR_BARS[analysed.error]} across seeds, comparisons are paired by seed.")


def seeds_section(analysed: Analysis) -> list[str]:
    """The report's "How many seeds" section (:func:`seed_advice`), or no lines when every comparison is decided."""
    advice = seed_advice(analysed.comparison, analysed.given, analysed.effect, analysed.config.get("seeds"))
    if not advice:
        return []
    return ["## How many seeds", "",
            f"For a two-sided paired t-test at α = {ALPHA:g} to detect the difference with {POWER:.0%} power, "
            "taking the spread between seeds seen so far as the truth (itself an estimate from few seeds); "
            "a seed counts once both arms finished it. This plans for one test alone: the verdicts above "
            "apply Holm's correction over all of them, which asks for somewhat more.", "", *advice]


def report_text(analysed: Analysis, names: dict | None = None) -> str:
    """The text of ``report.md``: title, trials, protocol, verdicts, seed advice, the tables and the
    figures (``names``: :func:`output_names`, computed when not given)."""
    names = output_names(analysed) if names is None else names
    metric, summary, comparison = analysed.metric, analysed.summary, analysed.comparison
    lines = [f"# {storage.name(analysed.experiment)}: {metric.replace('_', ' ')} by pruning schedule", ""]
    lines += trials_said(analysed)
    for line in _protocol(analysed.config):
        lines += ["", line]
    lines += ["", method_said(analysed), ""]
    lines += ["## Verdict", "", f"![difference a − b vs sparsity]({names['vs_difference']})", ""]
    lines += verdicts(comparison) or ["- no pair of schedules shares a seed and a sparsity yet."]
    seeds = seeds_section(analysed)
    if seeds:
        lines += ["", *seeds]
    lines += ["", f"![{metric} vs sparsity]({names['vs_sparsity']})", "",
              "## Summary per schedule and sparsity", "", _table(summary), "",
              "## Paired comparisons", "", _table(comparison) if not comparison.empty else "(none)", ""]
    if "vs_epoch" in names:
        lines += [f"![{metric} during fine-tuning]({names['vs_epoch']})", ""]
    if "layers" in names:
        lines += [f"![per-layer sparsity]({names['layers']})", ""]
    return "\n".join(lines)


def write_analysis(analysed: Analysis, out=None) -> dict:
    """Write ``analysed``'s tables, figures and report.md into ``out`` (default ``<experiment>/analysis``,
    a folder or an object-store URI); returns the file paths by key (:func:`output_names`)."""
    out = storage.normalise(str(out)) if out else storage.join(analysed.experiment, ANALYSIS_DIR)
    names = output_names(analysed)
    files = {key: storage.join(out, name) for key, name in names.items()}
    storage.write_bytes(files["summary"], analysed.summary.to_csv(index=False).encode())
    storage.write_bytes(files["comparison"], analysed.comparison.to_csv(index=False).encode())
    for key in FIGURES:
        if key in files:
            storage.write_bytes(files[key], figure_png(analysed, key))
    storage.write_bytes(files["report"], report_text(analysed, names).encode())
    return files


def write_report(experiment, out=None, metric: str = TEST_ACCURACY, error: str = "ci95",
                 effect: float | None = None) -> dict:
    """Analyse ``experiment`` into ``out`` (default ``<experiment>/analysis``); returns the file paths.

    Both may be local folders or object-store URIs (``s3://...``), in any combination. ``effect``: a
    difference worth detecting, in ``metric``'s units (:func:`analysis.stats.compare`). The same as
    :func:`write_analysis` of :func:`analysis.computed.analyse`.
    """
    return write_analysis(analyse(experiment, metric, error, effect), out)
