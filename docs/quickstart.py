"""Regenerate the README's quickstart figures and table from a `make sweep` experiment.

    .venv/bin/python docs/quickstart.py results/quickstart-<timestamp>

writes docs/quickstart_*.png and prints the report's headline, the Markdown table of means and 95%
CIs, and the comparisons (mean difference, p, Holm's p, seeds needed), to paste.
"""
import sys
from pathlib import Path

from matplotlib.figure import Figure

from analysis import analyse, compare_all, load_experiment, summarize
from analysis.plots import (plot_difference_vs_sparsity, plot_layer_sparsity, plot_metric_vs_epoch,
                            plot_metric_vs_sparsity)
from analysis.report import headline

DOCS = Path(__file__).resolve().parent


def comparisons(df) -> None:
    table = compare_all(df)
    for _, r in table.iterrows():
        print(f"{r['a']} - {r['b']} at {r['target_sparsity']:g}: {r['mean_diff_pts']:+.2f} pts "
              f"({r['ci95_low_pts']:+.2f} to {r['ci95_high_pts']:+.2f}), wins {r['a_wins']}/{r['n_pairs']}, "
              f"p {r['p_value']:.3g}, Holm {r['p_holm']:.3g}, Wilcoxon {r['wilcoxon_p']:.3g}, "
              f"d_z {r['d_z']:+.2f}, seeds needed {r['seeds_needed']:g}")


def main(experiment: str) -> None:
    df, analysed = load_experiment(experiment), analyse(experiment)
    figures = {"difference_vs_sparsity": plot_difference_vs_sparsity(compare_all(df)),
               "accuracy_vs_sparsity": plot_metric_vs_sparsity(df), "accuracy_vs_epoch": plot_metric_vs_epoch(df),
               "layer_sparsity": plot_layer_sparsity(df, excluded=analysed.excluded)}
    for name, figure in figures.items():
        assert isinstance(figure, Figure)
        figure.savefig(DOCS / f"quickstart_{name}.png", dpi=100)
    print(headline(analysed))
    summary = summarize(df)
    schedules = list(dict.fromkeys(summary["schedule"]))
    schedules.sort(key=lambda s: (s != "instant", s))
    print("| sparsity | " + " | ".join(schedules) + " |")
    print("| --- |" + " --- |" * len(schedules))
    for target, rows in summary.groupby("target_sparsity"):
        cells = {r["schedule"]: f"{r['mean'] * 100:.2f}% ({r['ci95_low'] * 100:.1f}–{r['ci95_high'] * 100:.1f})"
                 for _, r in rows.iterrows()}
        print(f"| {target:g} | " + " | ".join(cells[s] for s in schedules) + " |")
    comparisons(df)


if __name__ == "__main__":
    main(sys.argv[1])
