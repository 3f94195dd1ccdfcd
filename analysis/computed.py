"""An experiment's analysis computed once: the reports, the tables and the counts that the report's
prose and every plot of ``prunesweep analyze`` render from (:mod:`analysis.report`).

No matplotlib here: the numbers only.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import pandas as pd

from . import storage
from .completeness import count_trials, final_results, healthy
from .experiment_file import read_config
from .load import layer_columns, load_experiment, with_arms
from .schema import DATASET_CLASSES, IMAGEFOLDER, LAYER_SPARSITY, TEST_ACCURACY, seed_list
from .stats import ERROR_BARS, compare_all, dense_accuracy, dense_baseline, last_reports, near_chance, summarize

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj")  # pruning_core names an attention's Q/K/V "<module>.q_proj"


@dataclass(frozen=True, eq=False)
class Analysis:
    """What :func:`analyse` computed of one experiment; build it with :func:`analyse`."""

    experiment: str          # the experiment, normalised (:func:`analysis.storage.normalise`)
    given: str               # the experiment as the caller named it (the report's commands quote it)
    metric: str              # the metric compared
    error: str               # the error bars drawn (one of :data:`analysis.stats.ERROR_BARS`)
    effect_pts: float | None  # a difference worth detecting, in points (:func:`analysis.stats.points`), or None
    config: dict             # the experiment's sweep config ({} when it has no prunesweep.yaml)
    df: pd.DataFrame         # every report (:func:`analysis.load.load_experiment`)
    layers: list             # its per-layer sparsity columns (:func:`analysis.load.layer_columns`)
    done: dict               # trials expected, started, finished... (:func:`analysis.completeness.completion`)
    summary: pd.DataFrame    # :func:`analysis.stats.summarize`
    comparison: pd.DataFrame  # :func:`analysis.stats.compare_all`
    curves: pd.DataFrame     # the reports of trials that did not diverge, with arms (epoch curves)
    healthy_finals: pd.DataFrame  # the last of those per trial and sparsity, with arms (layer sparsity)
    dense: pd.DataFrame      # the dense baseline (:func:`analysis.stats.dense_baseline`)
    classes: int | None      # the dataset's classes (:func:`num_classes`), None where unknown
    near_chance: pd.Series   # the seeds whose dense model is near chance (:func:`analysis.stats.near_chance`)
    excluded: list           # the layers the config keeps dense (:func:`excluded_layers`)


def num_classes(config: dict) -> int | None:
    """The classes of the config's dataset: a named dataset's own count, an image folder's class folders
    under ``<root>/train``; None where neither is known (no config, a folder that cannot be read)."""
    dataset = (config or {}).get("dataset") or {}
    name = dataset.get("name")
    if name in DATASET_CLASSES:
        return DATASET_CLASSES[name]
    if name != IMAGEFOLDER or not dataset.get("root"):
        return None
    train = storage.join(storage.normalise(str(dataset["root"])), "train")
    try:
        classes = [e for e in storage.list_dir(train) if storage.is_dir(storage.join(train, e))]
    except OSError:
        return None
    return len(classes) or None


def excluded_layers(config: dict, layers: list[str]) -> list[str]:
    """The layers of ``layers`` (names, or ``layer_sparsity.<name>`` columns) that the config's ``pruning``
    keeps dense: those ``exclude`` matches, or that ``include`` (when given) does not; a name or ``fnmatch``
    pattern matches a layer's name or the module holding it, as in :func:`pruning_core.prunable_weights`."""
    pruning = (config or {}).get("pruning") or {}
    include, exclude = pruning.get("include"), pruning.get("exclude") or []

    def matches(layer: str, patterns) -> bool:
        module, _, last = layer.rpartition(".")
        names = (layer, module) if last in ATTENTION_PROJECTIONS else (layer,)
        return any(n == p or fnmatch.fnmatchcase(n, p) for n in names for p in patterns)

    names = [c.removeprefix(f"{LAYER_SPARSITY}.") for c in layers]
    return [n for n in names if matches(n, exclude) or (include is not None and not matches(n, include))]


def analyse(experiment, metric: str = TEST_ACCURACY, error: str = "ci95",
            effect_pts: float | None = None) -> Analysis:
    """Read ``experiment`` (a folder or an object-store URI) and compute everything its report shows;
    ``effect_pts``: a difference worth detecting, in points (:func:`analysis.stats.compare`).

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
    classes = num_classes(config)
    return Analysis(experiment=experiment, given=given, metric=metric, error=error, effect_pts=effect_pts,
                    config=config, df=df, layers=layers, done=count_trials(df, found),
                    summary=summarize(finals, metric), comparison=compare_all(finals, metric, effect_pts, seeds),
                    curves=with_arms(fine), healthy_finals=with_arms(final_results(fine)),
                    dense=dense_baseline(finals, metric), classes=classes,
                    near_chance=near_chance(dense_accuracy(df), classes), excluded=excluded_layers(config, layers))
