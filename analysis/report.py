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
from .schema import (ANALYSIS_DIR, ARM, CUMULATIVE, DIVERGED, FINETUNE, INSTANT, LADDER, PER_PRUNE, REGIME_MEANINGS,
                     RETRAIN, SCHEDULE, SCHEDULE_KIND, TARGET_SPARSITY, TEST_ACCURACY, arm, higher_is_better,
                     is_percent, regimes, seed_list)
from .stats import ALPHA, EFFECT_COLUMN, ERROR_BARS, MIN_SEEDS, NEAR_CHANCE, POWER, diff_unit


def _fmt(value: float, metric: str, diff: bool = False) -> str:
    """A level of ``metric`` (in its own units: shown in percent for a percent metric) or, with
    ``diff``, a difference in points (a ``_pts`` column: ``+0.17 pts`` for a percent metric)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if is_percent(metric):
        return f"{value:+.2f} pts" if diff else f"{value * 100:.2f}%"
    return f"{value:+.4g}" if diff else f"{value:.4g}"


def _span(low: float, high: float, metric: str) -> str:
    """A difference's 95% CI in points, its unit once: ``-0.23 to +0.56 pts``."""
    unit = " pts" if is_percent(metric) else ""
    return f"{_fmt(low, metric, True).removesuffix(' pts')} to {_fmt(high, metric, True).removesuffix(' pts')}{unit}"


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
    if math.isnan(p) and r["mean_diff_pts"] == 0:
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
    """One line per comparison and sparsity: a − b in points with its 95% CI, the seeds each side
    won, and whether the difference is significant."""
    lines = []
    tested = _tested(comparison)
    for _, r in comparison.iterrows():
        metric, left = r["metric"], r.get("pairs_left_out", 0)
        where = f"- **sparsity {r[TARGET_SPARSITY]:g}**: "
        unfinished = f"{left} pair(s) left out: a trial not finished yet" if left else ""
        if r["n_pairs"] == 0:
            lines.append(f"{where}{r['a']} vs {r['b']}: no finished pair yet ({unfinished}).")
            continue
        d_z = r.get("d_z", math.nan)
        effect = "" if math.isnan(d_z) else f", d_z = {d_z:+.2f}"
        ties = f", {r['ties']} tie{'s' if r['ties'] != 1 else ''}" if r["ties"] else ""
        _, sig = _significance(r, tested, alpha)
        lines.append(
            f"{where}{r['a']} − {r['b']} = {_fmt(r['mean_diff_pts'], metric, True)} "
            f"(95% CI {_span(r['ci95_low_pts'], r['ci95_high_pts'], metric)}; {r['a']} better in "
            f"{r['a_wins']}/{r['n_pairs']} seeds{ties}{effect}{_budgets(r)}{'; ' + unfinished if left else ''}); {sig}."
        )
    return lines


def _size(effect_pts: float, metric: str) -> str:
    return f"{effect_pts:.2f} pts" if is_percent(metric) else f"{effect_pts:.4g} ({metric} units)"


MAX_ADVISED = 1000  # seeds: beyond this a difference is too small next to the spread between seeds to chase


def _grown(seeds, more: int) -> str:
    """The ``seeds`` value of the config ``seeds`` (a count or a list) with ``more`` new seeds."""
    if isinstance(seeds, list):
        return f"[{', '.join(map(str, [*seeds, *range(max(seeds) + 1, max(seeds) + 1 + more)]))}]"
    return str(len(seed_list(seeds)) + more)


def _command(need: int, r, experiment: str, seeds) -> str:
    """What to run so that comparison ``r`` has ``need`` pairs: ``prunesweep resume`` when its unfinished
    trials would do, else ``prunesweep extend`` growing the experiment's ``seeds`` (a count or a list)."""
    have = int(r["n_pairs"]) + int(r.get("pairs_left_out", 0))
    if need <= have:
        return f"`prunesweep resume {shlex.quote(str(experiment))}` finishes the trials that complete them"
    value = _grown(seeds if seeds is not None else have, need - have)
    return f"extend with `prunesweep extend {shlex.quote(str(experiment))} --set {shlex.quote('seeds=' + value)}`"


def _open(comparison: pd.DataFrame) -> pd.DataFrame:
    """The comparisons the report leaves undecided."""
    tested = _tested(comparison)
    return comparison[[not _significance(r, tested)[0] for _, r in comparison.iterrows()]]


def seed_advice(comparison: pd.DataFrame, experiment: str, effect_pts: float | None = None, seeds=None) -> list[str]:
    """One sentence per comparison the report leaves undecided: about how many seeds would decide it
    (``seeds_needed``; with ``effect_pts``, a difference in points, also to detect that), with the
    ``prunesweep extend`` command that grows ``experiment``'s ``seeds`` (its config's count or list) to
    that many pairs, or ``prunesweep resume`` when finishing its unfinished trials would be enough."""
    lines = []
    for _, r in _open(comparison).iterrows():
        what = f"To tell {r['a']} from {r['b']} at {r[TARGET_SPARSITY]:g}"
        n, need = int(r["n_pairs"]), r["seeds_needed"]
        if n < MIN_SEEDS:
            line = (f"{what}, {n} finished pair(s) are too few to estimate the spread between seeds; "
                    f"at least {MIN_SEEDS} are needed first")
        elif r["mean_diff_pts"] == 0:
            line = (f"{what}, no number of seeds would do: over {n} seeds their mean difference is exactly zero, "
                    "so there is no observed difference to detect")
        elif math.isnan(r["p_value"]):
            line = (f"{what}, the seeds needed cannot be estimated: every one of the {n} seeds differs by exactly "
                    f"the same amount ({_fmt(r['mean_diff_pts'], r['metric'], True)}), so there is no spread to "
                    "plan with")
        elif math.isnan(need):
            line = f"{what}, the seeds needed could not be solved for (d_z = {r['d_z']:+.2f})"
        elif need > MAX_ADVISED:
            line = (f"{what} would take more than {MAX_ADVISED} seeds (d_z = {r['d_z']:+.2f}): a difference this "
                    "small next to the spread between seeds is not worth chasing with seeds")
        elif need > n:
            line = (f"{what} would take about {int(need)} seeds ({_command(int(need), r, experiment, seeds)}; "
                    f"observed d_z = {r['d_z']:+.2f})")
        else:
            line = (f"{what}: the observed difference (d_z = {r['d_z']:+.2f}) would need only about {int(need)} "
                    f"seeds and {n} are paired, yet it is not significant: that estimate comes from the same few "
                    "seeds, is noisy and ignores any correction for several tests; more seeds would settle it")
        wanted = r.get(EFFECT_COLUMN, math.nan)
        if effect_pts is not None and not math.isnan(wanted):
            line += f"; a difference of {_size(effect_pts, r['metric'])} would take "
            if wanted > MAX_ADVISED:
                line += f"more than {MAX_ADVISED} seeds"
            else:
                line += f"about {int(wanted)} seeds"
                line += f" ({_command(int(wanted), r, experiment, seeds)})" if wanted > n else f" ({n} are paired)"
        if r.get("pairs_left_out", 0):
            line += f"; {r['pairs_left_out']} more pair(s) count once their trials finish"
        lines.append(f"- {line}.")
    return lines


def next_step(comparison: pd.DataFrame, experiment: str, seeds=None) -> str | None:
    """What to run next, in one sentence, or None when every comparison is decided: the command
    (:func:`seed_advice`'s) for the undecided comparison that the fewest seeds would decide; or why
    more seeds would decide none of them."""
    undecided = _open(comparison)
    if undecided.empty:
        return None
    few = undecided[undecided["n_pairs"] < MIN_SEEDS]
    if not few.empty:
        r = few.iloc[0]
        return (f"Next: {_command(MIN_SEEDS, r, experiment, seeds)}: {r['a']} vs {r['b']} at "
                f"{r[TARGET_SPARSITY]:g} has fewer than {MIN_SEEDS} pairs to test.")
    plannable = undecided[undecided["seeds_needed"].between(MIN_SEEDS, MAX_ADVISED)]
    growing = plannable[plannable["seeds_needed"] > plannable["n_pairs"]]
    if growing.empty:
        if not plannable.empty:
            return ("Next: more seeds (How many seeds, below): the seeds estimated to decide the open comparisons "
                    "are already paired, but the estimate is noisy.")
        return ("Next: no number of seeds within reach would decide the open comparisons: their differences are "
                "zero, or too small next to the spread between seeds (How many seeds, below).")
    r = growing.loc[growing["seeds_needed"].idxmin()]
    need = int(r["seeds_needed"])
    return (f"Next: {_command(need, r, experiment, seeds)} (about {need} seeds would decide {r['a']} vs {r['b']} "
            f"at {r[TARGET_SPARSITY]:g}, the closest to decided; How many seeds, below, has the rest).")


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
    "vs_sparsity": (lambda a: draw_metric_vs_sparsity(a.summary, a.metric, a.error, dense=a.dense), 120),
    "vs_epoch": (lambda a: draw_metric_vs_epoch(a.curves, a.metric, dense=a.dense), 110),
    "layers": (lambda a: draw_layer_sparsity(a.healthy_finals, excluded=a.excluded), 110),
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
    warning = chance_warning(analysed)
    if warning:
        lines.append(warning)
    return lines


def _chance(classes: int) -> str:
    return f"{100 / classes:.2f}% (1/{classes} classes)"


def chance_warning(analysed: Analysis) -> str | None:
    """The warning for dense models near chance accuracy (:func:`analysis.stats.near_chance`), naming
    their seeds, or None."""
    low = analysed.near_chance
    if low.empty:
        return None
    chance = 1 / analysed.classes
    seeds = ", ".join(f"{seed} ({value * 100:.1f}%)" for seed, value in low.items())
    return (f"**Warning: {len(low)} dense model(s) near chance accuracy**: seed(s) {seeds}, against chance "
            f"{_chance(analysed.classes)}; near means below {100 * (chance + NEAR_CHANCE * (1 - chance)):.1f}%. "
            "Those seeds' dense models learned (almost) nothing, so their pruned trials say nothing about pruning: "
            "train the dense models properly (the config's `dense:` section) before reading the comparisons.")


def dense_said(analysed: Analysis) -> str | None:
    """The dense baseline in one sentence (its mean and 95% CI per set of seeds), or None where not reported."""
    dense = analysed.dense[analysed.dense["n"] > 0]
    if dense.empty:
        return None
    parts = [f"{'' if len(dense) == 1 else r['arms'] + ': '}{r['mean'] * 100:.2f}% (95% CI "
             f"{_fmt(r['ci95_low'], TEST_ACCURACY)} to {_fmt(r['ci95_high'], TEST_ACCURACY)}, "
             f"{r['n']} seed{'s' if r['n'] != 1 else ''})" for _, r in dense.iterrows()]
    return "The dense models before pruning score " + "; ".join(parts) + "."


def _question(analysed: Analysis) -> str:
    """The question the comparisons answer, from what they pair."""
    df, comparison = analysed.df, analysed.comparison
    kinds = df.groupby(ARM)[SCHEDULE_KIND].first().to_dict() if SCHEDULE_KIND in df else {}
    regime = df.groupby(ARM)[RETRAIN].first().to_dict()
    pairs = set(zip(comparison["a"], comparison["b"]))
    asks = []
    if any(kinds.get(b) == INSTANT and kinds.get(a) != INSTANT and regime.get(a) == regime.get(b) for a, b in pairs):
        asks.append("does gradual pruning beat instant pruning")
    if any(regime.get(a) != regime.get(b) for a, b in pairs):
        asks.append("does each retraining regime beat fine-tuning")
    question = " and ".join(asks or ["which of the compared schedules is better"])
    budgets = comparison[["epochs_a", "epochs_b"]].dropna()
    equal = (budgets["epochs_a"] == budgets["epochs_b"]).all()
    budget = " at equal compute?" if equal else "? (at unequal budgets: see the verdicts)"
    return question[0].upper() + question[1:] + budget


def _answer(r, tested: int) -> str:
    """One comparison at one sparsity in the headline: a − b, its 95% CI, Holm's p and decided or not."""
    metric, name = r["metric"], f"{r['a']} − {r['b']}"
    if r["n_pairs"] == 0:
        return f"{name}: no finished pair yet"
    diff = f"{name} {_fmt(r['mean_diff_pts'], metric, True).removesuffix(' pts')}"
    span = _span(r["ci95_low_pts"], r["ci95_high_pts"], metric).removesuffix(" pts")
    decided, _ = _significance(r, tested)
    p = r.get("p_holm", math.nan)
    p = r["p_value"] if p != p else p
    if r["n_pairs"] < MIN_SEEDS:
        strength = f"{r['n_pairs']} pair: too few to test"
    elif p != p:
        strength = "every seed ties" if r["mean_diff_pts"] == 0 else "every seed differs alike: undetermined"
    else:
        good = r["mean_diff_pts"] > 0 if higher_is_better(metric) else r["mean_diff_pts"] < 0
        word = f"**decided: {r['a'] if good else r['b']} better**" if decided else "undecided"
        strength = f"p = {p:.2g}, {word}"
    return f"{diff} ({span}; {strength})"


def headline(analysed: Analysis) -> str:
    """The report's first paragraph: the question, the answer at each sparsity with its strength
    (a − b in points, 95% CI, Holm's p, decided or not), the seeds it rests on, the dense baseline,
    any warning, and what to run next."""
    comparison, metric = analysed.comparison, analysed.metric
    said = [f"**Headline.** {_question(analysed)}"]
    if comparison.empty:
        return " ".join(said + ["No pair of schedules shares a seed and a sparsity yet."])
    tested = _tested(comparison)
    decided = sum(_significance(r, tested)[0] for _, r in comparison.iterrows())
    total = len(comparison)
    paired = comparison.loc[comparison["n_pairs"] > 0, "n_pairs"]
    seeds = "no" if paired.empty else f"{paired.min()}" if paired.min() == paired.max() else \
        f"{paired.min()}–{paired.max()}"
    left = int(comparison["pairs_left_out"].sum())
    significant = f"significant after Holm's correction for {tested} tests" if tested > 1 else "significant"
    lead = (f"Not decided yet: none of the {total} comparisons is {significant}" if decided == 0
            else f"Decided in {'all' if decided == total else f'{decided} of'} {total} comparisons: {significant}")
    said.append(f"{lead} ({seeds} paired seeds each" + (f", {left} more pairs once unfinished trials finish"
                                                         if left else "") + ").")
    unit = "percentage points" if is_percent(metric) else f"{metric} units"
    per = [f"at **{target:g}** " + ", ".join(_answer(r, tested) for _, r in rows.iterrows())
           for target, rows in comparison.groupby(TARGET_SPARSITY, sort=True)]
    said.append(f"a − b in {unit} (95% CI; {'Holm p' if tested > 1 else 'p'}): " + "; ".join(per) + ".")
    warning = "**Warning: some dense models are near chance accuracy (below).**" if len(analysed.near_chance) else None
    for extra in (dense_said(analysed), warning, next_step(comparison, analysed.given, analysed.config.get("seeds"))):
        if extra:
            said.append(extra)
    return " ".join(said)


def dense_section(analysed: Analysis) -> list[str]:
    """The report's "Dense baseline" section: the table (:func:`analysis.stats.dense_baseline`) and
    chance accuracy, or no lines where the experiment reports no dense accuracy."""
    if analysed.dense.empty:
        return []
    chance = (f"chance is {_chance(analysed.classes)}" if analysed.classes
              else "chance is unknown (the dataset's classes are not known here)")
    by = "one row: every arm counts the same seeds" if len(analysed.dense) == 1 else "a row per set of seeds"
    drawn = " Drawn as a line with its 95% CI band in the accuracy plots." if analysed.metric == TEST_ACCURACY else ""
    return ["## Dense baseline", "",
            f"The test accuracy of the dense model each seed's trials start from (a fraction), over the seeds the "
            f"summary counts ({by}); {chance}.{drawn}", "", _table(analysed.dense), ""]


def method_said(analysed: Analysis) -> str:
    """The sentence on what is compared and what the error bars are."""
    return ("Compared on the final epoch's value of each trial (never a best-epoch pick), "
            f"error bars are the {ERROR_BARS[analysed.error]} across seeds, comparisons are paired by seed.")


def seeds_section(analysed: Analysis) -> list[str]:
    """The report's "How many seeds" section (:func:`seed_advice`), or no lines when every comparison is decided."""
    advice = seed_advice(analysed.comparison, analysed.given, analysed.effect_pts, analysed.config.get("seeds"))
    if not advice:
        return []
    return ["## How many seeds", "",
            f"For a two-sided paired t-test at α = {ALPHA:g} to detect the difference with {POWER:.0%} power, "
            "taking the spread between seeds seen so far as the truth (itself an estimate from few seeds); "
            "a seed counts once both arms finished it. This plans for one test alone: the verdicts above "
            "apply Holm's correction over all of them, which asks for somewhat more.", "", *advice]


def units_said(metric: str) -> str:
    """The units of the report's tables."""
    level = "a fraction: 0.99 = 99%" if is_percent(metric) else "as the trials report it"
    return (f"Means, spreads and intervals are in `{metric}`'s own units ({level}); the comparisons' differences "
            f"(`_pts` columns) are in {diff_unit(metric)}.")


def report_text(analysed: Analysis, names: dict | None = None) -> str:
    """The text of ``report.md``: title, headline, trials, protocol, verdicts, seed advice, the tables
    and the figures (``names``: :func:`output_names`, computed when not given)."""
    names = output_names(analysed) if names is None else names
    metric, summary, comparison = analysed.metric, analysed.summary, analysed.comparison
    lines = [f"# {storage.name(analysed.experiment)}: {metric.replace('_', ' ')} by pruning schedule", "",
             headline(analysed), ""]
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
              "## Summary per schedule and sparsity", "", units_said(metric), "", _table(summary), "",
              *dense_section(analysed),
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
                 effect_pts: float | None = None) -> dict:
    """Analyse ``experiment`` into ``out`` (default ``<experiment>/analysis``); returns the file paths.

    Both may be local folders or object-store URIs (``s3://...``), in any combination. ``effect_pts``:
    a difference worth detecting, in points (percentage points for a percent metric, else the
    metric's units: :func:`analysis.stats.compare`). The same as :func:`write_analysis` of
    :func:`analysis.computed.analyse`.
    """
    return write_analysis(analyse(experiment, metric, error, effect_pts), out)
