"""analysis: numbers pinned against independent computations, plots and the report."""
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import compare, final_results, load_experiment, summarize, trial_results, write_report
from analysis.cli import main as analyze_main


def frame(values: dict) -> pd.DataFrame:
    """values: {(schedule, target): [metric per seed 0..]} -> one final row per trial."""
    rows = []
    for (schedule, target), metrics in values.items():
        for seed, v in enumerate(metrics):
            if v is None:
                continue
            rows.append({"trial_id": f"{schedule}-{target}-{seed}", "schedule": schedule,
                         "schedule_kind": "instant" if schedule == "instant" else "gradual",
                         "target_sparsity": target, "seed": seed, "epoch": 4, "test_accuracy": v})
    return pd.DataFrame(rows)


def test_summarize_matches_hand_computation():
    values = [0.91, 0.88, 0.95, 0.90]
    df = frame({("gradual", 0.9): values, ("instant", 0.9): [0.8]})
    s = summarize(df).set_index("schedule")
    n = 4
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = 3.182446305284263 * sd / math.sqrt(n)  # t(0.975, 3)
    g = s.loc["gradual"]
    assert g["n"] == 4 and g["mean"] == pytest.approx(mean) and g["std"] == pytest.approx(sd)
    assert g["sem"] == pytest.approx(sd / 2)
    assert g["ci95_low"] == pytest.approx(mean - half) and g["ci95_high"] == pytest.approx(mean + half)
    assert g["min"] == 0.88 and g["max"] == 0.95
    i = s.loc["instant"]  # n = 1: a mean, no spread
    assert i["n"] == 1 and i["mean"] == 0.8 and math.isnan(i["std"]) and math.isnan(i["ci95_low"])
    assert list(summarize(df).columns) == ["schedule", "retrain", "target_sparsity", "metric", "n", "diverged", "mean", "std", "sem",
                                           "ci95_low", "ci95_high", "min", "max"]


def test_summarize_uses_last_epoch_only():
    df = frame({("gradual", 0.5): [0.9, 0.8]})
    early = df.assign(epoch=1, test_accuracy=0.1, training_iteration=1)
    s = summarize(pd.concat([early, df.assign(training_iteration=2)]))
    assert s["mean"].iloc[0] == pytest.approx(0.85) and s["n"].iloc[0] == 2


def test_compare_paired_by_seed():
    a = [0.90, 0.85, 0.93, 0.88, 0.91]
    b = [0.89, 0.86, 0.90, 0.84, 0.91]
    df = frame({("gradual", 0.9): a, ("instant", 0.9): b})
    c = compare(df, "gradual", "instant").iloc[0]
    d = np.array(a) - np.array(b)
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    assert c["n_pairs"] == 5 and c["mean_diff"] == pytest.approx(d.mean())
    assert c["ci95_low"] == pytest.approx(d.mean() - half) and c["ci95_high"] == pytest.approx(d.mean() + half)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(5))
    assert c["t_statistic"] == pytest.approx(t)
    assert c["p_value"] == pytest.approx(2 * stats.t.sf(abs(t), 4))
    assert (c["a_wins"], c["b_wins"], c["ties"]) == (3, 1, 1)


def test_compare_pairs_only_shared_seeds_and_handles_ties_and_n1():
    df = frame({("gradual", 0.5): [0.9, 0.8, None], ("instant", 0.5): [0.9, 0.8, 0.7],
                ("gradual", 0.9): [0.6, 0.6], ("instant", 0.9): [0.5, 0.5],
                ("gradual", 0.95): [0.4], ("instant", 0.95): [0.3]})
    c = compare(df, "gradual", "instant").set_index("target_sparsity")
    assert c.loc[0.5, "n_pairs"] == 2 and c.loc[0.5, "mean_diff"] == 0 and c.loc[0.5, "p_value"] == 1.0
    assert c.loc[0.5, "ties"] == 2
    assert c.loc[0.9, "p_value"] == 0.0 and c.loc[0.9, "a_wins"] == 2  # identical nonzero differences
    assert c.loc[0.95, "n_pairs"] == 1 and math.isnan(c.loc[0.95, "p_value"])
    # accuracies over 360 images: a gain and a loss of one image cancel exactly, not to 1e-17
    acc = frame({("gradual", 0.9): [355 / 360, 357 / 360, 0.5], ("instant", 0.9): [354 / 360, 358 / 360, 0.5]})
    tie = compare(acc, "gradual", "instant").iloc[0]
    assert tie["mean_diff"] == 0.0 and tie["p_value"] == 1.0 and (tie["a_wins"], tie["b_wins"], tie["ties"]) == (1, 1, 1)
    from analysis.report import verdicts
    assert verdicts(compare(acc, "gradual", "instant"))[0].startswith("- **sparsity 0.9**: gradual and instant tie")
    loss = frame({("gradual", 0.5): [0.2, 0.3], ("instant", 0.5): [0.4, 0.1]}).rename(columns={"test_accuracy": "test_loss"})
    cl = compare(loss, "gradual", "instant", metric="test_loss").iloc[0]
    assert (cl["a_wins"], cl["b_wins"]) == (1, 1)  # lower loss wins


def test_holm_adjustment_by_hand():
    from analysis.stats import holm

    # sorted: 0.01*4 = 0.04, 0.02*3 = 0.06, 0.03*2 = 0.06 (kept monotone), 0.5*1 = 0.5; NaN untouched
    adjusted = holm([0.03, float("nan"), 0.01, 0.5, 0.02])
    assert adjusted[[0, 2, 3, 4]] == pytest.approx([0.06, 0.04, 0.5, 0.06])
    assert math.isnan(adjusted[1])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_compare_all_adds_holm_and_verdicts_name_it():
    from analysis import compare_all
    from analysis.report import verdicts

    base = [0.90, 0.80, 0.85, 0.70, 0.75]
    def with_gain(gains):
        return [round(b + g, 3) for b, g in zip(base, gains)]
    steady = [0.10, 0.11, 0.12, 0.10, 0.11]       # p ~ 1e-6: significant, also after Holm
    noisy_a = [0.02, 0.01, 0.005, 0.03, 0.01]     # p ~ 0.028
    noisy_b = [0.01, 0.03, 0.005, 0.02, 0.005]    # p ~ 0.045
    df = frame({("gradual", 0.5): with_gain(noisy_a), ("instant", 0.5): base,
                ("gradual", 0.8): with_gain(noisy_b), ("instant", 0.8): base,
                ("gradual", 0.9): with_gain(steady), ("instant", 0.9): base})
    table = compare_all(df).set_index("target_sparsity")
    p = table["p_value"]
    assert p[0.9] < p[0.5] < p[0.8] < 0.05
    assert table.loc[0.9, "p_holm"] == pytest.approx(3 * p[0.9])
    assert table.loc[0.5, "p_holm"] == pytest.approx(2 * p[0.5])
    assert table.loc[0.8, "p_holm"] == pytest.approx(max(p[0.8], 2 * p[0.5]))
    lines = dict(zip(table.index, verdicts(compare_all(df))))
    family = "Holm's correction for the report's 3 tests"
    assert lines[0.5].startswith("- **sparsity 0.5**: gradual is ahead of instant: gradual − instant = +1.50 pts")
    assert "significant alone" in lines[0.5] and family in lines[0.5]
    assert "significant alone" in lines[0.8]
    assert f"significant (paired t-test p = {p[0.9]:.3g}; {3 * p[0.9]:.3g} after {family})" in lines[0.9]


def test_analyze_real_sweep_end_to_end(tiny_experiment, tmp_path):
    out = tmp_path / "analysis"
    assert analyze_main([str(tiny_experiment), "--out", str(out), "--error", "std"]) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == ["schedule", "retrain", "target_sparsity", "metric", "n", "diverged", "mean", "std",
                                     "sem", "ci95_low", "ci95_high", "min", "max"]
    assert set(summary["schedule"]) == {"instant", "gradual2", "ladder"} and (summary["n"] == 2).all()
    comparison = pd.read_csv(out / "comparison.csv")
    assert set(zip(comparison["a"], comparison["b"])) == {("gradual2", "instant"), ("ladder", "instant")}
    report = (out / "report.md").read_text()
    assert "10 finished of 10 expected" in report and "## Verdict" in report and "sparsity 0.9" in report
    assert "Model `small_cnn` on `digits`" in report  # from the experiment's prunesweep.yaml
    import matplotlib.image as mpimg
    for png in ("test_accuracy_vs_sparsity.png", "test_accuracy_vs_epoch.png", "layer_sparsity.png"):
        assert (out / png).name in report
        image = mpimg.imread(out / png)
        assert image.shape[0] > 200 and image.shape[1] > 300


def test_partial_experiment_says_what_is_missing(tiny_experiment, tmp_path):
    copy = tmp_path / "partial"
    shutil.copytree(tiny_experiment, copy, ignore=shutil.ignore_patterns("analysis"))
    victims = sorted(copy.glob("*_gradual2_s0.9_seed1"))
    shutil.rmtree(victims[0])
    files = write_report(copy)
    text = open(files["report"]).read()
    assert "9 finished of 10 expected" in text and "1 trial(s) missing" in text


def test_load_and_report_without_ray_torch_or_pyplot(tiny_experiment, tmp_path):
    copy = tmp_path / "copied"
    shutil.copytree(tiny_experiment, copy)
    # the whole report, in a process whose matplotlib backend is set (as a notebook's is):
    # analysis neither imports torch or Ray nor switches the backend or touches pyplot
    code = ("import sys, matplotlib, analysis; df = analysis.load_experiment(sys.argv[1]); "
            "analysis.write_report(sys.argv[1], sys.argv[2]); "
            "bad = [m for m in ('ray', 'torch', 'matplotlib.pyplot') if m in sys.modules]; "
            "backend = matplotlib.rcParams._get_backend_or_none(); "
            "print(len(df), bad, backend); sys.exit(1 if bad or df.empty or backend != 'svg' else 0)")
    proc = subprocess.run([sys.executable, "-c", code, str(copy), str(tmp_path / "out")], capture_output=True,
                          text=True, env={**os.environ, "MPLBACKEND": "svg"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "out" / "layer_sparsity.png").stat().st_size > 10_000
    df = load_experiment(copy)
    # the columns are the results files' own (trial_id, every declared metric, one per prunable layer),
    # then the arm each trial belongs to
    layers = [c.removeprefix("layer_sparsity.") for c in df.columns if c.startswith("layer_sparsity.")]
    assert layers == ["conv1", "conv2", "conv3", "fc"]
    assert list(df.columns) == trial_results.arrow_schema(layers).names + ["arm"]
    assert len(final_results(df)) == 12


def test_analyze_rejects_non_experiment(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("hi")
    assert analyze_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a Ray Tune experiment" in err
    assert analyze_main([str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_analyze_rejects_unknown_metric(tiny_experiment, tmp_path, capsys):
    assert analyze_main([str(tiny_experiment), "--out", str(tmp_path), "--metric", "accuracy"]) == 2
    err = capsys.readouterr().err
    assert "--metric 'accuracy' is not reported" in err and "test_accuracy" in err


def test_notebook_executes(tiny_experiment, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    from .conftest import ROOT

    monkeypatch.setenv("PRUNESWEEP_EXPERIMENT", str(tiny_experiment))
    nb = nbformat.read(ROOT / "notebooks" / "gradual_vs_instant.ipynb", as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "gradual2" in text and "instant" in text and "ci95_low" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2


def test_plots_return_figures_drawn_from_the_statistics():
    from matplotlib.figure import Figure

    import analysis
    from analysis import plot_metric_vs_epoch, plot_metric_vs_sparsity
    from analysis.stats import describe

    assert analysis.stats.describe is describe and analysis.plots.plot_metric_vs_epoch is plot_metric_vs_epoch

    values = {("gradual", 0.5): [0.90, 0.85, 0.93], ("instant", 0.5): [0.89, 0.86, 0.90],
              ("gradual", 0.9): [0.80, 0.70, 0.75], ("instant", 0.9): [0.60, 0.65, 0.61]}
    early = frame({k: [v - 0.1 for v in vs] for k, vs in values.items()}).assign(epoch=1)
    df = pd.concat([early, frame(values).assign(epoch=2)], ignore_index=True)
    fig = plot_metric_vs_sparsity(df)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    summary = summarize(df).set_index(["schedule", "target_sparsity"])
    for line in fig.axes[0].lines:
        if line.get_label().startswith("gradual"):
            assert line.get_ydata() == pytest.approx(100 * summary.loc["gradual", "mean"].to_numpy())
    # draws into the axes it is given, and returns that axes' figure
    own = Figure()
    ax = own.subplots()
    assert plot_metric_vs_sparsity(df, error="std", ax=ax) is own and ax.lines
    # the epoch bands are the same t-intervals as the summary's
    curves = plot_metric_vs_epoch(df)
    panel = curves.axes[1]  # target 0.9
    band = describe(df[df["target_sparsity"] == 0.9], ["schedule", "epoch"])
    g = band[band["schedule"] == "gradual"]
    vertices = panel.collections[0].get_paths()[0].vertices
    for x, low, high in zip(g["epoch"], g["ci95_low"], g["ci95_high"]):
        ys = vertices[vertices[:, 0] == x][:, 1]
        assert min(ys) == pytest.approx(100 * low) and max(ys) == pytest.approx(100 * high)
    assert panel.lines[0].get_ydata() == pytest.approx(100 * g["mean"].to_numpy())


def test_diverged_trials_are_counted_apart_and_never_paired():
    df = frame({("gradual", 0.9): [0.91, 0.88, 0.95], ("instant", 0.9): [0.80, 0.82, 0.81]})
    df["diverged"] = False
    df.loc[(df["schedule"] == "gradual") & (df["seed"] == 1), ["diverged", "test_accuracy"]] = [True, 0.1]
    s = summarize(df).set_index("schedule")
    assert s.loc["gradual", "n"] == 2 and s.loc["gradual", "diverged"] == 1
    assert s.loc["gradual", "mean"] == pytest.approx((0.91 + 0.95) / 2)
    c = compare(df, "gradual", "instant")
    assert c["n_pairs"].tolist() == [2] and c["mean_diff"].iloc[0] == pytest.approx(((0.91 - 0.80) + (0.95 - 0.81)) / 2)
    # older experiments have no such column, and a table of finals needs no epoch column
    plain = frame({("gradual", 0.9): [0.91, 0.88], ("instant", 0.9): [0.80, 0.82]}).drop(columns="epoch")
    assert summarize(plain)["diverged"].tolist() == [0, 0] and compare(plain, "gradual", "instant")["n_pairs"][0] == 2
    # a whole group diverged: a row with n = 0, counted
    gone = frame({("gradual", 0.9): [0.1], ("instant", 0.9): [0.8]}).assign(diverged=[True, False])
    row = summarize(gone).set_index("schedule").loc["gradual"]
    assert row["n"] == 0 and row["diverged"] == 1 and math.isnan(row["mean"])


def test_a_diverged_ladder_keeps_the_rungs_it_finished():
    from analysis import healthy

    rows = [{"trial_id": "L", "schedule": "ladder", "target_sparsity": t, "seed": 0, "epoch": e, "diverged": d,
             "test_accuracy": a}
            for t, e, d, a in ((0.5, 1, False, 0.9), (0.5, 2, False, 0.91), (0.8, 3, False, 0.85), (0.8, 4, True, 0.1))]
    kept = healthy(pd.DataFrame(rows))
    assert kept["target_sparsity"].tolist() == [0.5, 0.5]
    s = summarize(pd.DataFrame(rows)).set_index("target_sparsity")
    assert s.loc[0.5, "n"] == 1 and s.loc[0.5, "mean"] == 0.91 and s.loc[0.8, "n"] == 0 and s.loc[0.8, "diverged"] == 1


def test_report_when_every_trial_diverged(tmp_path):
    import json

    from analysis.schema import RESULT_FILE, TRIAL_RESULTS_FILE, TUNER_FILE

    (tmp_path / TUNER_FILE).write_bytes(b"")
    for i, schedule in enumerate(("instant", "gradual2")):
        folder = tmp_path / f"t{i}_{schedule}"
        folder.mkdir()
        report = {"schedule": schedule, "schedule_kind": schedule.rstrip("2"), "target_sparsity": 0.9, "seed": 0,
                  "epoch": 1, "budget_epochs": 2, "diverged": True, "diverged_epoch": 1, "train_loss": float("nan")}
        if i == 0:  # a trial's own results file
            trial_results.write(str(folder / TRIAL_RESULTS_FILE), f"t{i}", [report], layers=["conv1"])
        else:  # an experiment from before results files: Ray Tune's result.json
            (folder / RESULT_FILE).write_text(json.dumps({**report, "trial_id": f"t{i}", "training_iteration": 1}) + "\n")
    assert analyze_main([str(tmp_path), "--metric", "train_loss"]) == 0
    text = (tmp_path / "analysis" / "report.md").read_text()
    assert "**2 trial(s) diverged**" in text and "_vs_epoch.png" not in text
    assert "Trials: 2 finished of 2 expected" in text


def test_arms_are_schedule_and_regime_and_each_is_compared_within_its_regime_and_with_finetune():
    from analysis.report import verdicts
    from analysis.stats import compare_all, default_comparisons

    rows = []
    accuracy = {("instant", "finetune"): [0.80, 0.82, 0.81], ("ladder", "finetune"): [0.84, 0.85, 0.83],
                ("instant", "lr_rewind"): [0.86, 0.85, 0.88], ("ladder", "lr_rewind"): [0.90, 0.89, 0.91]}
    for (schedule, regime), values in accuracy.items():
        for seed, v in enumerate(values):
            # per prune: one-shot retrains 2 epochs, the ladder has spent 4 by its second rung
            rows.append({"trial_id": f"{schedule}-{regime}-{seed}", "schedule": schedule, "schedule_kind": schedule,
                         "retrain": regime, "target_sparsity": 0.9, "seed": seed,
                         "epoch": 4 if schedule == "ladder" else 2, "test_accuracy": v})
    df = pd.DataFrame(rows)
    assert default_comparisons(df) == [("ladder", "instant"), ("ladder+lr_rewind", "instant+lr_rewind"),
                                       ("instant+lr_rewind", "instant"), ("ladder+lr_rewind", "ladder")]
    table = compare_all(df).set_index(["a", "b"])
    row = table.loc[("ladder+lr_rewind", "instant+lr_rewind")]
    assert row["mean_diff"] == pytest.approx((0.04 + 0.04 + 0.03) / 3) and row["n_pairs"] == 3
    assert (row["epochs_a"], row["epochs_b"]) == (4.0, 2.0)
    assert table.loc[("instant+lr_rewind", "instant"), ["epochs_a", "epochs_b"]].tolist() == [2.0, 2.0]
    said = verdicts(compare_all(df))
    assert "after 4 vs 2 retraining epochs" in said[0] and "retraining epochs" not in said[2]
    summary = summarize(df)
    assert summary[["schedule", "retrain"]].drop_duplicates().shape[0] == 4
    # without an instant schedule, each regime compares its first schedule with the rest
    other = df.replace({"instant": "cubic", "ladder": "gradual"})
    assert default_comparisons(other) == [("cubic", "gradual"), ("cubic+lr_rewind", "gradual+lr_rewind"),
                                          ("cubic+lr_rewind", "cubic"), ("gradual+lr_rewind", "gradual")]
    # an experiment from before regimes (no retrain column) is all fine-tuning
    old = df[df["retrain"] == "finetune"].drop(columns="retrain")
    assert default_comparisons(old) == [("ladder", "instant")] and set(summarize(old)["retrain"]) == {"finetune"}
