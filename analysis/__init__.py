"""analysis: experiment directories into tidy pandas, statistics, plots and reports.

Needs pandas, numpy, scipy and matplotlib only: never torch, never a running Ray.
"""
from .load import NotAnExperiment, completion, final_results, load_experiment
from .stats import compare, compare_all, summarize
from .plots import plot_layer_sparsity, plot_metric_vs_epoch, plot_metric_vs_sparsity
from .report import write_report

__all__ = ["load_experiment", "final_results", "completion", "summarize", "compare", "compare_all",
           "plot_metric_vs_sparsity", "plot_metric_vs_epoch", "plot_layer_sparsity", "write_report",
           "NotAnExperiment"]
