"""An experiment's analysis computed once: the reports, the tables and the counts that the report's
prose and every plot of ``prunesweep analyze`` render from (:mod:`analysis.report`).

No matplotlib here: the numbers only.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from . import storage
from .completeness import count_trials, final_results, healthy
from .experiment_file import read_config
from .load import layer_columns, load_experiment, with_arms
from .schema import TEST_ACCURACY, seed_list
from .stats import ERROR_BARS, compare_all, last_reports, summarize


@dataclass(frozen=True, eq=False)
class Analysis:
    """What :func:`analyse` computed of one experiment; build it with :func:`analyse`."""

    experiment: str          # the experiment, normalised (:func:`analysis.storage.normalise`)
    given: str               # the experiment as the caller named it (the report's commands quote it)
    metric: str              # the metric compared
    error: str               # the error bars drawn (one of :data:`analysis.stats.ERROR_BARS`)
    effect: float | None     # a difference worth detecting, in the metric's units, or None
    config: dict             # the experiment's sweep config ({} when it has no prunesweep.yaml)
    df: pd.DataFrame         # every report (:func:`analysis.load.load_experiment`)
    layers: list             # its per-layer sparsity columns (:func:`analysis.load.layer_columns`)
    done: dict               # trials expected, started, finished... (:func:`analysis.completeness.completion`)
    summary: pd.DataFrame    # :func:`analysis.stats.summarize`
    comparison: pd.DataFrame  # :func:`analysis.stats.compare_all`
    curves: pd.DataFrame     # the reports of trials that did not diverge, with arms (epoch curves)
    healthy_finals: pd.DataFrame  # the last of those per trial and sparsity, with arms (layer sparsity)


def analyse(experiment, metric: str = TEST_ACCURACY, error: str = "ci95", effect: float | None = None) -> Analysis:
    """Read ``experiment`` (a folder or an object-store URI) and compute everything its report shows.

    Raises ValueError for an unknown ``error``, an experiment with no report yet or a ``metric`` it
    does not report, and :class:`analysis.experiment_file.NotAnExperiment` where there is none.
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
    found = read_config(experiment)
    config = found or {}
    finals = last_reports(df)  # summarize and compare_all give the same tables from these as from df
    seeds = seed_list(config["seeds"]) if "seeds" in config else None
    fine = healthy(df)
    return Analysis(experiment=experiment, given=given, metric=metric, error=error, effect=effect, config=config,
                    df=df, layers=layers, done=count_trials(df, found), summary=summarize(finals, metric),
                    comparison=compare_all(finals, metric, effect, seeds), curves=with_arms(fine),
                    healthy_finals=with_arms(final_results(fine)))
