"""analysis: numbers pinned against independent computations, plots and the report."""
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

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
    assert list(summarize(df).columns) == ["schedule", "retrain", "target_sparsity", "metric", "n", "diverged",
                                           "unfinished", "missing", "mean", "std", "sem", "ci95_low", "ci95_high",
                                           "min", "max"]


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
    # differences in percentage points: 100 per unit of accuracy
    assert c["n_pairs"] == 5 and c["mean_diff_pts"] == pytest.approx(100 * d.mean())
    assert c["ci95_low_pts"] == pytest.approx(100 * (d.mean() - half))
    assert c["ci95_high_pts"] == pytest.approx(100 * (d.mean() + half))
    assert (c["diff_unit"], c["mean_a"]) == ("percentage points", pytest.approx(np.mean(a)))  # levels: fractions
    t = d.mean() / (d.std(ddof=1) / math.sqrt(5))
    assert c["t_statistic"] == pytest.approx(t)
    assert c["p_value"] == pytest.approx(2 * stats.t.sf(abs(t), 4))
    assert (c["a_wins"], c["b_wins"], c["ties"]) == (3, 1, 1)


def test_compare_pairs_only_shared_seeds_and_handles_ties_and_n1():
    df = frame({("gradual", 0.5): [0.9, 0.8, None], ("instant", 0.5): [0.9, 0.8, 0.7],
                ("gradual", 0.9): [0.6, 0.6], ("instant", 0.9): [0.5, 0.5],
                ("gradual", 0.95): [0.4], ("instant", 0.95): [0.3]})
    c = compare(df, "gradual", "instant").set_index("target_sparsity")
    # identical differences (zero at 0.5, +0.1 at 0.9) have no spread: the t-test is undefined
    assert c.loc[0.5, "n_pairs"] == 2 and c.loc[0.5, "mean_diff_pts"] == 0 and math.isnan(c.loc[0.5, "p_value"])
    assert c.loc[0.5, "ties"] == 2
    assert math.isnan(c.loc[0.9, "p_value"]) and c.loc[0.9, "a_wins"] == 2
    assert c.loc[0.95, "n_pairs"] == 1 and math.isnan(c.loc[0.95, "p_value"])
    # accuracies over 360 images: a gain and a loss of one image cancel exactly, not to 1e-17
    acc = frame({("gradual", 0.9): [355 / 360, 357 / 360, 0.5], ("instant", 0.9): [354 / 360, 358 / 360, 0.5]})
    tie = compare(acc, "gradual", "instant").iloc[0]
    assert tie["mean_diff_pts"] == 0.0 and tie["p_value"] == 1.0
    assert (tie["a_wins"], tie["b_wins"], tie["ties"]) == (1, 1, 1)
    from analysis.report import verdicts
    assert verdicts(compare(acc, "gradual", "instant"))[0].startswith(
        "- **sparsity 0.9**: gradual − instant = +0.00 pts (95% CI")
    # gains and losses of different sizes that cancel: their float mean is ~1e-17, reported as a tie
    assert np.mean(np.round([0.9 - 0.6, 0.5 - 0.6, 0.6 - 0.8], 12)) == pytest.approx(-9.25e-18, rel=1e-2)
    from analysis import compare_all
    cancel = compare_all(frame({("gradual", 0.9): [0.9, 0.5, 0.6], ("instant", 0.9): [0.6, 0.6, 0.8]}))
    c0 = cancel.iloc[0]
    assert c0["mean_diff_pts"] == 0.0 and math.copysign(1, c0["mean_diff_pts"]) == 1 and c0["d_z"] == 0.0
    assert c0["p_value"] == pytest.approx(1.0) and math.isnan(c0["seeds_needed"])
    from analysis.report import seed_advice
    assert "gradual − instant = +0.00 pts" in verdicts(cancel)[0]
    assert "mean difference is exactly zero" in seed_advice(cancel, "exp")[0]
    loss = frame({("gradual", 0.5): [0.2, 0.3], ("instant", 0.5): [0.4, 0.1]}).rename(columns={"test_accuracy": "test_loss"})
    cl = compare(loss, "gradual", "instant", metric="test_loss").iloc[0]
    assert (cl["a_wins"], cl["b_wins"]) == (1, 1)  # lower loss wins
    # a metric that is no percent: its differences in its own units
    assert (cl["diff_unit"], cl["mean_diff_pts"]) == ("metric units", pytest.approx(0.0))


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
    assert lines[0.5].startswith("- **sparsity 0.5**: gradual − instant = +1.50 pts (95% CI")
    assert "significant alone" in lines[0.5] and family in lines[0.5]
    assert "significant alone" in lines[0.8]
    w = stats.wilcoxon(np.array(with_gain(steady)) - np.array(base)).pvalue
    # the undecided ones (not after Holm) say how many seeds would decide them; the decided one does not
    from analysis.report import seed_advice

    d = {t: np.round(np.array(with_gain(g)) - np.array(base), 12) for t, g in ((0.5, noisy_a), (0.8, noisy_b))}
    need = {t: smallest_n(v.mean() / v.std(ddof=1)) for t, v in d.items()}
    assert need == {0.5: 6, 0.8: 7}
    assert seed_advice(compare_all(df), "runs/my exp") == [
        f"- To tell gradual from instant at {t} would take about {need[t]} seeds (extend with "
        f"`prunesweep extend 'runs/my exp' --set seeds={need[t]}`; observed d_z = {v.mean() / v.std(ddof=1):+.2f})."
        for t, v in d.items()]
    # enough seeds by the estimate, yet not significant after a large family's correction; too few to estimate
    row = dict(a="gradual", b="instant", metric="test_accuracy", n_pairs=8, pairs_left_out=0, mean_diff_pts=2.0,
               p_value=0.004, p_holm=0.06, d_z=1.6, seeds_needed=6.0)
    few = {**row, "target_sparsity": 0.95, "n_pairs": 1, "p_value": math.nan, "d_z": math.nan, "seeds_needed": math.nan}
    decided = {**row, "target_sparsity": 0.8, "p_value": 0.0001, "p_holm": 0.0003}  # makes the family 2 tests
    said = seed_advice(pd.DataFrame([decided, {**row, "target_sparsity": 0.9}, few]), "exp")
    assert len(said) == 2
    assert said[0] == ("- To tell gradual from instant at 0.9: the observed difference (d_z = +1.60) would need only "
                       "about 6 seeds and 8 are paired, yet it is not significant: that estimate comes from the same "
                       "few seeds, is noisy and ignores any correction for several tests; more seeds would settle it.")
    assert said[1] == ("- To tell gradual from instant at 0.95, 1 finished pair(s) are too few to estimate the spread "
                       "between seeds; at least 2 are needed first.")
    # the command grows the experiment's own seeds (a count or a list) by the pairs still missing: here
    # 4 pairs and 1 unfinished of 6 seeds (one diverged) for 9 needed: 4 more seeds
    grow = {**row, "target_sparsity": 0.9, "n_pairs": 4, "pairs_left_out": 1, "p_value": 0.2, "p_holm": 0.4,
            "d_z": 0.9, "seeds_needed": 9.0}

    def advice(r, seeds):
        return seed_advice(pd.DataFrame([r]), "runs/exp", seeds=seeds)[0]
    assert advice(grow, 6) == ("- To tell gradual from instant at 0.9 would take about 9 seeds (extend with "
                               "`prunesweep extend runs/exp --set seeds=10`; observed d_z = +0.90); 1 more pair(s) "
                               "count once their trials finish.")
    assert "`prunesweep extend runs/exp --set 'seeds=[1, 3, 5, 7, 9, 11, 12, 13, 14, 15]'`" in \
        advice(grow, [1, 3, 5, 7, 9, 11])
    assert "about 5 seeds (`prunesweep resume runs/exp` finishes the trials that complete them;" in \
        advice({**grow, "seeds_needed": 5.0}, 6)
    assert advice({**grow, "seeds_needed": 5000.0, "d_z": 0.04}, 6) == (
        "- To tell gradual from instant at 0.9 would take more than 1000 seeds (d_z = +0.04): a difference this "
        "small next to the spread between seeds is not worth chasing with seeds; 1 more pair(s) count once their "
        "trials finish.")
    assert f"significant (paired t-test p = {p[0.9]:.3g}; {3 * p[0.9]:.3g} after {family}; Wilcoxon p = {w:.3g})" \
        in lines[0.9]


def test_analyze_real_sweep_end_to_end(tiny_experiment, tmp_path):
    out = tmp_path / "analysis"
    assert analyze_main([str(tiny_experiment), "--out", str(out), "--error", "std"]) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == ["schedule", "retrain", "target_sparsity", "metric", "n", "diverged", "unfinished",
                                     "missing", "mean", "std", "sem", "ci95_low", "ci95_high", "min", "max"]
    assert set(summary["schedule"]) == {"instant", "gradual2", "ladder"} and (summary["n"] == 2).all()
    comparison = pd.read_csv(out / "comparison.csv")
    assert set(zip(comparison["a"], comparison["b"])) == {("gradual2", "instant"), ("ladder", "instant")}
    assert list(comparison.columns) == ["a", "b", "target_sparsity", "metric", "diff_unit", "n_pairs",
                                        "pairs_left_out", "mean_a", "mean_b", "mean_diff_pts", "ci95_low_pts",
                                        "ci95_high_pts", "t_statistic", "p_value",
                                        "wilcoxon_p", "a_wins", "b_wins", "ties", "d_z", "seeds_needed", "epochs_a",
                                        "epochs_b", "p_holm"]
    assert (comparison["pairs_left_out"] == 0).all() and (comparison["n_pairs"] == 2).all()
    report = (out / "report.md").read_text()
    assert "10 finished of 10 expected" in report and "## Verdict" in report and "sparsity 0.9" in report
    assert "Model `small_cnn` on `digits`" in report  # from the experiment's prunesweep.yaml
    import matplotlib.image as mpimg
    assert report.index("difference_vs_sparsity.png") < report.index("test_accuracy_vs_sparsity.png")
    for png in ("difference_vs_sparsity.png", "test_accuracy_vs_sparsity.png", "test_accuracy_vs_epoch.png",
                "layer_sparsity.png"):
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


def execute_notebook(launch: Path, experiment: str | None, tmp_path: Path) -> tuple[str, int]:
    """Run the notebook the README's headless way, ``jupyter execute`` (nbclient's, in the test extra)
    started from ``launch`` (its $PWD, as a shell sets it), with PRUNESWEEP_EXPERIMENT = ``experiment``
    (None: unset); returns the text of its outputs and how many images it drew."""
    import nbformat

    from .conftest import ROOT

    env = {k: v for k, v in os.environ.items() if k != "PRUNESWEEP_EXPERIMENT"}
    env.update({"PWD": str(launch)}, **({"PRUNESWEEP_EXPERIMENT": experiment} if experiment is not None else {}))
    out = tmp_path / "executed.ipynb"
    done = subprocess.run([str(Path(sys.executable).with_name("jupyter")), "execute", "--timeout=120",
                           str(ROOT / "notebooks" / "gradual_vs_instant.ipynb"), "--output", str(out)],
                          cwd=launch, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    nb = nbformat.read(out, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/markdown", o.get("data", {}).get("text/plain", ""))
                   for o in outputs)
    return text, sum("image/png" in o.get("data", {}) for o in outputs)


def test_notebook_executes(tiny_experiment, tmp_path):
    # a path relative to the folder Jupyter was started from (the kernel itself runs in notebooks/)
    launch = tiny_experiment.parent.parent
    text, images = execute_notebook(launch, "results/tiny", tmp_path)
    assert f"reports from {tiny_experiment}\n" in text and "**Headline.** Does gradual pruning beat instant" in text
    assert "gradual2" in text and "instant" in text and "ci95_low" in text and "mean_diff_pts" in text
    assert "seeds_needed" in text and "pairs_left_out" in text and "dense_test_accuracy" in text
    assert images == 4  # the difference, accuracy vs sparsity, the epochs, the layers


def test_notebook_reads_the_newest_experiment_by_default(tmp_path):
    from .test_report_view import write_rich

    results = tmp_path / "results"
    old, new = write_rich(results / "quickstart-1", seeds=3), write_rich(results / "quickstart-2", seeds=4)
    (results / "not-an-experiment").mkdir()  # the newest folder, but no prunesweep.yaml
    for age, folder in enumerate((results / "not-an-experiment", new, old)):
        os.utime(folder, (2e9 - 100 * age, 2e9 - 100 * age))
    text, images = execute_notebook(tmp_path, None, tmp_path)
    assert f"16 trials, 64 reports from {new}\n" in text and images == 4
    # a path neither in the launch folder nor in the repository: one clear error
    with pytest.raises(AssertionError, match="PRUNESWEEP_EXPERIMENT='nowhere': no such folder in"):
        execute_notebook(tmp_path, "nowhere", tmp_path)


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
    assert c["n_pairs"].tolist() == [2]
    assert c["mean_diff_pts"].iloc[0] == pytest.approx(50 * ((0.91 - 0.80) + (0.95 - 0.81)))
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
    # with its budget known: it ended (diverged) at epoch 4 of 10, so its first rung is complete, not unfinished
    s = summarize(pd.DataFrame(rows).assign(budget_epochs=10)).set_index("target_sparsity")
    assert s.loc[0.5, ["n", "unfinished"]].tolist() == [1, 0] and s.loc[0.8, ["diverged", "unfinished"]].tolist() == [1, 0]


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
    assert row["mean_diff_pts"] == pytest.approx(100 * (0.04 + 0.04 + 0.03) / 3) and row["n_pairs"] == 3
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


# ---------------------------------------------------------------- effect sizes, power, partial experiments


def power(d: float, n: int) -> float:
    """A two-sided one-sample t-test's power at alpha 0.05: P(|T| > t_crit), T noncentral t."""
    crit, nc = stats.t.ppf(0.975, n - 1), d * math.sqrt(n)
    return stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc)


def smallest_n(d: float) -> int:
    n = 2
    while not power(d, n) >= 0.8:
        n += 1
    return n


def test_effect_size_wilcoxon_and_seeds_needed_against_hand_computations():
    a = [0.90, 0.85, 0.93, 0.88, 0.91]
    b = [0.89, 0.86, 0.90, 0.84, 0.91]
    df = frame({("gradual", 0.9): a, ("instant", 0.9): b})
    c = compare(df, "gradual", "instant", effect_pts=1).iloc[0]  # one percentage point
    d = np.round(np.array(a) - np.array(b), 12)
    d_z = d.mean() / d.std(ddof=1)
    assert c["d_z"] == pytest.approx(d_z)
    assert c["wilcoxon_p"] == pytest.approx(stats.wilcoxon(d).pvalue)
    assert c["seeds_needed"] == smallest_n(d_z) == 20
    assert c["seeds_needed_effect"] == smallest_n(0.01 / d.std(ddof=1))
    cols = list(c.index)
    assert cols.index("wilcoxon_p") == cols.index("p_value") + 1 and cols.index("pairs_left_out") == cols.index("n_pairs") + 1
    assert cols[cols.index("ties") + 1:cols.index("ties") + 3] == ["d_z", "seeds_needed"]
    # an exact Wilcoxon p by hand: |d| ranks 1..4, the one negative difference has rank 1, so
    # W- = 1; P(W- <= 1) = 2 of the 16 sign patterns, two-sided p = 2 * 2/16
    tiny = compare(frame({("gradual", 0.5): [0.53, 0.49, 0.52, 0.54], ("instant", 0.5): [0.5] * 4}),
                   "gradual", "instant").iloc[0]
    assert tiny["wilcoxon_p"] == pytest.approx(0.25)
    from analysis import seeds_needed
    for effect in (0.3, 0.8, 1.5, 2.5, 3.2, 3.3, 5.0, -1.5):
        assert seeds_needed(effect) == smallest_n(abs(effect)), effect
    # beyond ~3.3 sd statsmodels' solver for n fails; 2 seeds detect an effect only from ~11.55 sd:
    # power at n = 2 (df 1) by hand, P(|Z + nc| > c |W|) for independent standard normals Z, W
    from scipy import integrate

    def power_two(d):
        c, nc = stats.t.ppf(0.975, 1), d * math.sqrt(2)
        return integrate.quad(lambda w: 2 * stats.norm.pdf(w) * (stats.norm.cdf(nc - c * w) + stats.norm.cdf(-nc - c * w)),
                              0, np.inf)[0]
    assert power_two(11.4) < 0.8 < power_two(11.7) and power(6.0, 3) > 0.8
    assert [seeds_needed(x) for x in (6.0, 9.0, 11.4, 11.7, 50.0)] == [3, 3, 3, 2, 2]
    assert all(math.isnan(seeds_needed(x)) for x in (0.0, math.nan, math.inf, -math.inf))
    # a difference tiny next to the spread: an enormous number (normal approximation), never a hang
    huge = seeds_needed(1e-4)
    z_test = ((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / 1e-4) ** 2  # a z-test's seeds, by hand
    assert 0 < huge - z_test < 3


def test_paired_statistics_edge_cases():
    df = frame({("gradual", 0.5): [0.6, 0.7, 0.8], ("instant", 0.5): [0.5, 0.6, 0.7],     # all +0.1
                ("gradual", 0.8): [0.6, 0.7, 0.8], ("instant", 0.8): [0.6, 0.7, 0.8],     # all 0
                ("gradual", 0.9): [0.6], ("instant", 0.9): [0.5]})                        # n = 1
    c = compare(df, "gradual", "instant", effect_pts=2).set_index("target_sparsity")
    # every seed differs by exactly +0.1: no spread, so no t-test, d_z or power; the signs still count
    same = c.loc[0.5]
    assert same["mean_diff_pts"] == pytest.approx(10)
    assert same["ci95_low_pts"] == same["ci95_high_pts"] == pytest.approx(10)
    assert all(math.isnan(same[k]) for k in ("t_statistic", "p_value", "d_z", "seeds_needed", "seeds_needed_effect"))
    assert same["wilcoxon_p"] == pytest.approx(2 / 8)  # all three positive: 1 of 8 sign patterns, two-sided
    zero = c.loc[0.8]
    assert zero["mean_diff_pts"] == 0 and math.isnan(zero["d_z"]) and math.isnan(zero["p_value"])
    assert zero["wilcoxon_p"] == 1.0 and math.isnan(zero["seeds_needed"])
    from analysis.report import seed_advice, verdicts
    said = verdicts(c.reset_index())
    assert said[0].endswith("undetermined: every seed differs by exactly the same amount, so there is no spread "
                            "between seeds for a t-test to weigh (Wilcoxon p = 0.25); more seeds would show the spread.")
    assert said[1].endswith("gradual − instant = +0.00 pts (95% CI +0.00 to +0.00 pts; "
                            "gradual better in 0/3 seeds, 3 ties); no difference: every seed ties exactly "
                            "(Wilcoxon p = 1).")
    assert seed_advice(c.reset_index(), "exp")[0] == (
        "- To tell gradual from instant at 0.5, the seeds needed cannot be estimated: every one of the 3 seeds "
        "differs by exactly the same amount (+10.00 pts), so there is no spread to plan with.")
    one = c.loc[0.9]
    assert one["n_pairs"] == 1 and all(math.isnan(one[k]) for k in ("d_z", "wilcoxon_p", "seeds_needed",
                                                                     "seeds_needed_effect"))
    assert "seeds_needed_effect" not in compare(df, "gradual", "instant")


def test_summarize_leaves_out_and_counts_nan_values():
    df = frame({("gradual", 0.9): [0.91, float("nan"), 0.95, 0.90], ("instant", 0.9): [0.80, 0.82, 0.81, 0.84]})
    df["diverged"] = False
    df.loc[(df["schedule"] == "gradual") & (df["seed"] == 3), ["diverged", "test_accuracy"]] = [True, float("nan")]
    s = summarize(df).set_index("schedule")
    g = s.loc["gradual"]
    assert (g["n"], g["diverged"], g["missing"], g["unfinished"]) == (2, 1, 1, 0)
    assert g["mean"] == pytest.approx((0.91 + 0.95) / 2) and (g["min"], g["max"]) == (0.91, 0.95)
    assert s.loc["instant", "n"] == 4 and s.loc["instant", "missing"] == 0
    c = compare(df, "gradual", "instant").iloc[0]  # the same seeds are left out of the pairs
    assert c["n_pairs"] == 2 and c["mean_diff_pts"] == pytest.approx(50 * ((0.91 - 0.80) + (0.95 - 0.81)))


def reports(trial, schedule, kind, seed, budget, steps):
    """A trial's per-epoch reports: steps = [(target, epoch, accuracy), ...]."""
    return [{"trial_id": trial, "schedule": schedule, "schedule_kind": kind, "target_sparsity": t, "seed": seed,
             "epoch": e, "budget_epochs": budget, "diverged": False, "test_accuracy": acc} for t, e, acc in steps]


def test_partial_experiment_pairs_only_final_reports_and_finished_ladder_rungs():
    from analysis import complete_results

    rows = []
    for seed in range(3):
        for target in (0.5, 0.9):
            last = 1 if (seed, target) == (1, 0.5) else 2  # one instant trial at epoch 1 of 2
            rows += reports(f"i{seed}-{target}", "instant", "instant", seed, 2,
                            [(target, e, 0.8 - target / 10 + seed / 100 + e / 1000) for e in range(1, last + 1)])
    # ladders: rung 0.5 in epochs 1-2, rung 0.9 in 3-4; seed 1 is in its last rung, seed 2 in its first
    ladder = {0: [(0.5, 1, 0.7), (0.5, 2, 0.81), (0.9, 3, 0.7), (0.9, 4, 0.75)],
              1: [(0.5, 1, 0.7), (0.5, 2, 0.83), (0.9, 3, 0.74)],
              2: [(0.5, 1, 0.79)]}
    for seed, steps in ladder.items():
        rows += reports(f"L{seed}", "ladder", "ladder", seed, 4, steps)
    df = pd.DataFrame(rows)
    done = complete_results(df)
    assert sorted(done.loc[done["schedule"] == "ladder", ["seed", "target_sparsity"]].itertuples(index=False)) == \
        [(0, 0.5), (0, 0.9), (1, 0.5)]
    c = compare(df, "ladder", "instant").set_index("target_sparsity")
    # at 0.5 seed 1's instant trial is unfinished (its ladder's rung is done), seed 2's ladder is still on it
    assert (c.loc[0.5, "n_pairs"], c.loc[0.5, "pairs_left_out"]) == (1, 2)
    assert c.loc[0.5, "mean_diff_pts"] == pytest.approx(100 * (0.81 - 0.752))
    # seed 1's ladder is on its last rung; seed 2's has not reached it, while its instant trial has finished
    assert (c.loc[0.9, "n_pairs"], c.loc[0.9, "pairs_left_out"]) == (1, 2)
    assert c.loc[0.9, "mean_diff_pts"] == pytest.approx(100 * (0.75 - 0.712))
    s = summarize(df).set_index(["schedule", "target_sparsity"])
    assert s.loc[("ladder", 0.5), ["n", "unfinished"]].tolist() == [2, 1]
    assert s.loc[("ladder", 0.9), ["n", "unfinished"]].tolist() == [1, 1]
    assert s.loc[("instant", 0.5), ["n", "unfinished", "mean"]].tolist() == [2, 1, pytest.approx((0.752 + 0.772) / 2)]
    from analysis.report import verdicts
    said = dict(zip(c.index, verdicts(c.reset_index())))
    assert all("2 pair(s) left out: a trial not finished yet" in said[t] for t in (0.5, 0.9))
    # no finished pair at all yet: a row that says so
    early = compare(df[df["seed"] == 2], "ladder", "instant").iloc[0]
    assert (early["n_pairs"], early["pairs_left_out"]) == (0, 1) and math.isnan(early["mean_diff_pts"])
    assert verdicts(compare(df[df["seed"] == 2], "ladder", "instant"))[0] == \
        "- **sparsity 0.5**: ladder vs instant: no finished pair yet (1 pair(s) left out: a trial not finished yet)."


def test_reports_without_a_budget_count_as_complete_beside_newer_ones():
    """A trial read from an old result.json has no budget_epochs: final, even beside a newer trial's."""
    from analysis import is_complete

    old = {"trial_id": "old", "schedule": "gradual", "schedule_kind": "gradual", "target_sparsity": 0.5, "seed": 0,
           "epoch": 3, "budget_epochs": math.nan, "diverged": False, "test_accuracy": 0.8}
    df = pd.DataFrame([old, *reports("new", "instant", "instant", 0, 2, [(0.5, 1, 0.7)])])
    finals = final_results(df)
    assert dict(zip(finals["trial_id"], is_complete(finals))) == {"old": True, "new": False}
    assert summarize(df).set_index("schedule").loc["gradual", ["n", "unfinished"]].tolist() == [1, 0]
    from analysis import completion
    assert completion(df)["finished"] == 1  # the same rule counts it finished


def test_left_out_pairs_count_what_can_still_pair_and_only_that():
    """Seeds not started (given the experiment's seeds) are left out; a ladder that diverged never
    pairs at its rung or above; a duplicate report never hides a usable one."""
    rows = []
    for seed in range(3):  # instant at 0.5 and 0.9 finished for seeds 0-2
        for target in (0.5, 0.9):
            rows += reports(f"i{seed}-{target}", "instant", "instant", seed, 2, [(target, 1, 0.5), (target, 2, 0.6 + seed / 100)])
    rows += reports("L0", "ladder", "ladder", 0, 4, [(0.5, 1, 0.6), (0.5, 2, 0.7), (0.9, 3, 0.6), (0.9, 4, 0.65)])
    diverged = reports("L1", "ladder", "ladder", 1, 4, [(0.5, 1, math.nan)])
    diverged[0]["diverged"] = True
    rows += diverged  # seed 1's ladder diverged at its first rung: no pair at 0.5 or 0.9, ever
    df = pd.DataFrame(rows)  # seed 2's ladder has not started
    c = compare(df, "ladder", "instant", seeds=[0, 1, 2, 3]).set_index("target_sparsity")
    assert c["n_pairs"].tolist() == [1, 1] and c["pairs_left_out"].tolist() == [2, 2]  # seeds 2 and 3
    assert compare(df, "ladder", "instant")["pairs_left_out"].tolist() == [1, 1]  # without the seeds: seed 2
    # a diverged duplicate of seed 0's finished instant trial at 0.5 changes nothing
    again = reports("i0-dup", "instant", "instant", 0, 2, [(0.5, 1, math.nan)])
    again[0]["diverged"] = True
    dup = compare(pd.DataFrame(rows + again), "ladder", "instant").set_index("target_sparsity")
    assert dup.loc[0.5, "n_pairs"] == 1 and dup.loc[0.5, "mean_diff_pts"] == pytest.approx(10)


def test_difference_plot_is_drawn_from_the_comparison_table():
    from matplotlib.figure import Figure

    from analysis import compare_all, plot_difference_vs_sparsity

    base = [0.80, 0.82, 0.78, 0.85]
    df = frame({("instant", 0.5): base, ("gradual", 0.5): [v + g for v, g in zip(base, (0.01, 0.02, -0.005, 0.015))],
                ("instant", 0.9): base, ("gradual", 0.9): [v + g for v, g in zip(base, (0.05, 0.051, 0.049, 0.05))]})
    df = pd.concat([df, frame({("cubic", 0.5): [0.79, 0.83, 0.8, 0.84], ("cubic", 0.9): [0.7, 0.72, 0.69, 0.8]})
                    .assign(schedule_kind="cubic")], ignore_index=True)
    table = compare_all(df)
    fig = plot_difference_vs_sparsity(df)
    assert isinstance(fig, Figure) and len(fig.axes) == 2  # the plot, and the table of wins under it
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cubic − instant", "gradual − instant"]
    factors = []
    for bars, ((a, b), rows) in zip(ax.containers, table.groupby(["a", "b"], sort=False)):
        rows = rows.sort_values("target_sparsity")
        line, _, (segments,) = bars.lines
        x = line.get_xdata()
        ratio = x * (1 - rows["target_sparsity"].to_numpy())  # x is the compression ratio, shifted a little
        assert ratio == pytest.approx(np.full(len(x), ratio[0])) and abs(ratio[0] - 1) <= 0.02 + 1e-12
        factors.append(ratio[0])
        assert line.get_ydata() == pytest.approx(rows["mean_diff_pts"].to_numpy())
        for (x0, low), (x1, high), (_, r) in zip(*zip(*segments.get_segments()), rows.iterrows()):
            assert (low, high) == pytest.approx((r["ci95_low_pts"], r["ci95_high_pts"]))
    assert len(set(factors)) == 2
    labels = sorted(t.get_text() for t in fig.axes[1].texts if "/" in t.get_text())
    assert labels == sorted(f"{w}/{n} wins" + (f", {t} tie" if t else "")
                            for w, n, t in zip(table["a_wins"], table["n_pairs"], table["ties"]))
    filled = [line for line in ax.lines if line.get_linestyle() == "None" and line.get_marker() == "o"]
    assert sum(len(line.get_xdata()) for line in filled) == int((table["p_holm"] < 0.05).sum()) >= 1
    # from the table itself, into given axes: the same points
    own = Figure()
    assert plot_difference_vs_sparsity(table, ax=own.subplots()) is own
    assert own.axes[0].containers[0].lines[0].get_ydata() == pytest.approx(ax.containers[0].lines[0].get_ydata())


def write_experiment(folder, values, unfinished=()):
    """A finished (but for ``unfinished``: (schedule, target, seed)) synthetic experiment on disk."""
    from analysis.schema import TRIAL_RESULTS_FILE, TUNER_FILE

    folder.mkdir(exist_ok=True)
    (folder / TUNER_FILE).write_bytes(b"")
    for (schedule, target), accuracies in values.items():
        for seed, acc in enumerate(accuracies):
            trial = f"{schedule}_{target}_{seed}"
            epochs = 1 if (schedule, target, seed) in unfinished else 2
            steps = [(target, e, acc) for e in range(1, epochs + 1)]
            (folder / trial).mkdir()
            trial_results.write(str(folder / trial / "results.parquet"), trial,
                                reports(trial, schedule, schedule.rstrip("0123456789"), seed, 2, steps), layers=[])
    return folder


def test_report_leads_with_the_difference_and_says_how_many_seeds(tmp_path):
    a = [0.90, 0.85, 0.93, 0.88, 0.91, 0.5]
    b = [0.89, 0.86, 0.90, 0.84, 0.91, 0.6]
    same = [0.7, 0.8, 0.75, 0.72, 0.71, 0.7]
    path = write_experiment(tmp_path / "exp", {("gradual4", 0.9): a, ("instant", 0.9): b,
                                                ("gradual4", 0.5): same, ("instant", 0.5): same},
                            unfinished={("gradual4", 0.9, 5)})
    out = tmp_path / "out"
    assert analyze_main([str(path), "--out", str(out), "--effect", "1"]) == 0
    text = (out / "report.md").read_text()
    lines = text.splitlines()
    first_image = next(i for i, line in enumerate(lines) if line.startswith("!["))
    assert lines[first_image] == "![difference a − b vs sparsity](difference_vs_sparsity.png)"
    assert lines[first_image - 2] == "## Verdict" and (out / "difference_vs_sparsity.png").stat().st_size > 10_000
    table = pd.read_csv(out / "comparison.csv").set_index("target_sparsity")
    d = np.round(np.array(a[:5]) - np.array(b[:5]), 12)
    n, n_effect = smallest_n(d.mean() / d.std(ddof=1)), smallest_n(0.01 / d.std(ddof=1))
    assert table.loc[0.9, "seeds_needed"] == n and table.loc[0.9, "seeds_needed_effect"] == n_effect  # 1 pt = 0.01
    assert table.loc[0.9, "pairs_left_out"] == 1 and table.loc[0.9, "n_pairs"] == 5
    assert "## How many seeds" in text
    assert (f"- To tell gradual4 from instant at 0.9 would take about {n} seeds (extend with "
            f"`prunesweep extend {path} --set seeds={n}`; observed d_z = {d.mean() / d.std(ddof=1):+.2f}); a difference "
            f"of 1.00 pts would take about {n_effect} seeds (extend with `prunesweep extend {path} --set "
            f"seeds={n_effect}`); "
            "1 more pair(s) count once their trials finish.") in lines
    assert ("- To tell gradual4 from instant at 0.5, no number of seeds would do: over 6 seeds their mean "
            "difference is exactly zero, so there is no observed difference to detect.") in lines
    assert "1 pair(s) left out: a trial not finished yet" in text and "d_z = +0.68" in text


def test_analyze_rejects_a_bad_effect(tmp_path, capsys):
    for bad in ("0", "-1", "abc"):
        with pytest.raises(SystemExit) as exit:
            analyze_main([str(tmp_path), "--effect", bad])
        assert exit.value.code == 2 and "--effect" in capsys.readouterr().err


def test_the_report_renders_one_computed_analysis(tmp_path):
    """write_report computes the experiment's tables once (analyse) and renders its prose and every
    figure from them: the same tables and figures as the public functions compute from the reports."""
    import io

    from analysis import analyse, compare_all, plot_difference_vs_sparsity, plot_metric_vs_epoch, \
        plot_metric_vs_sparsity
    from analysis.report import figure_png, output_names, report_text

    values = {("gradual4", 0.9): [0.90, 0.85, 0.93], ("instant", 0.9): [0.89, 0.86, 0.9],
              ("gradual4", 0.5): [0.7, 0.8, 0.75], ("instant", 0.5): [0.7, 0.79, 0.7]}
    path = write_experiment(tmp_path / "exp", values, unfinished={("instant", 0.5, 2)})
    a = analyse(path, error="std", effect_pts=1)
    pd.testing.assert_frame_equal(a.summary, summarize(a.df))
    pd.testing.assert_frame_equal(a.comparison, compare_all(a.df, effect_pts=1))
    assert a.done == {"expected": 12, "started": 12, "finished": 11, "diverged": 0, "missing": 1}

    def png(figure, dpi):
        buf = io.BytesIO()
        figure.savefig(buf, format="png", dpi=dpi)
        return buf.getvalue()
    assert figure_png(a, "vs_sparsity") == png(plot_metric_vs_sparsity(a.df, error="std"), 120)
    assert figure_png(a, "vs_difference") == png(plot_difference_vs_sparsity(a.df), 120)
    assert figure_png(a, "vs_epoch") == png(plot_metric_vs_epoch(a.df), 110)
    assert "layers" not in output_names(a)  # no per-layer reports
    files = write_report(path, tmp_path / "out", error="std", effect_pts=1)
    assert open(files["report"]).read() == report_text(a)
    assert "1 trial(s) missing or unfinished" in report_text(a)


def test_the_same_reports_give_the_same_tables_to_the_last_digit_whatever_the_trial_ids():
    """Ray Tune draws random trial ids: two runs of one sweep report the same numbers under other
    ids, and the tables must not change even in their last digit (sums run in trial-point order)."""
    from analysis import compare_all

    rng = np.random.default_rng(3)
    values = {(s, p): list(rng.uniform(0.1, 0.9, 7)) for s in ("instant", "gradual") for p in (0.5, 0.9)}
    base = frame(values)
    tables = []
    for ids in (sorted(base["trial_id"].unique()), sorted(base["trial_id"].unique(), reverse=True),
                list(rng.permutation(sorted(base["trial_id"].unique())))):
        renamed = base.assign(trial_id=base["trial_id"].map(dict(zip(sorted(base["trial_id"].unique()), ids))))
        shuffled = renamed.sample(frac=1, random_state=len(tables)).sort_values("trial_id")  # as loaded: by id
        tables.append((summarize(shuffled).to_csv(), compare_all(shuffled).to_csv()))
    assert tables[0] == tables[1] == tables[2]
    # the order matters at all: summed in another order, these values round differently
    per_group = values["instant", 0.5]
    assert any(sum(per_group) != sum(np.random.default_rng(k).permutation(per_group)) for k in range(50))
