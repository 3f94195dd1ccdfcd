"""analysis: experiment directories into tidy pandas, statistics, plots and reports.

Needs pandas, numpy, scipy and matplotlib only: never torch, never a running Ray. Names are
imported on first use, so ``sweeps`` can import :mod:`analysis.schema` (the contract between
the two) without loading pandas or matplotlib into every trial.
"""
import importlib

_EXPORTS = {
    "load_experiment": "load", "NotAnExperiment": "experiment_file", "DuplicateTrials": "attempts",
    "final_results": "completeness", "completion": "completeness", "healthy": "completeness",
    "diverged": "completeness", "complete_results": "completeness", "is_complete": "completeness",
    "analyse": "computed", "Analysis": "computed",
    "summarize": "stats", "compare": "stats", "compare_all": "stats", "seeds_needed": "stats",
    "dense_baseline": "stats", "prune_events": "stats",
    "plot_metric_vs_sparsity": "plots", "plot_metric_vs_epoch": "plots", "plot_layer_sparsity": "plots",
    "plot_difference_vs_sparsity": "plots",
    "write_report": "report",
}
_MODULES = ("schema", "storage", "experiment_file", "attempts", "trial_results", "legacy", "load", "completeness", "stats",
            "computed", "messages", "plots", "report", "cli")
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in _MODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_MODULES))
