"""What the researcher sees: units, the report's headline, the dense baseline, and the plots'
prune marks, wins table and per-layer spread (synthetic experiments on disk; no Ray)."""
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from scipy import stats

from analysis import analyse, compare, compare_all, dense_baseline, load_experiment, prune_events, trial_results
from analysis.cli import main as analyze_main
from analysis.schema import CONFIG_FILE, TRIAL_RESULTS_FILE, TUNER_FILE

SCHEDULES = {"instant": ("instant", 1), "gradual2": ("gradual", 2)}
EPOCHS = 4
LAYERS = ["conv1", "conv2", "fc"]
BASE = [0.80, 0.82, 0.78, 0.85, 0.81, 0.83]  # instant's final accuracy per seed
GAIN = {0.5: [0.01, -0.004, 0.006, -0.002, 0.008, 0.0],  # gradual2 - instant: undecided
        0.9: [0.051, 0.049, 0.050, 0.052, 0.048, 0.050]}  # decided
DENSE = [0.95, 0.96, 0.97, 0.95, 0.96, 0.97]


def final(schedule, target, seed):
    return BASE[seed] + (GAIN[target][seed] if schedule == "gradual2" else 0.0)


def write_rich(folder, accuracy=final, dense=DENSE, sparsities=(0.5, 0.9), seeds=6, skip=(), dataset=None,
               exclude=("conv1",), include=None):
    """An experiment as prunesweep writes it: its config, and per trial 4 epochs of reports with the
    prune step, measured sparsity (conv1 kept dense: 0.9 of the target), per-layer sparsity (fc a
    little lower for higher seeds) and the seed's dense accuracy. gradual2 prunes to half its target
    before epoch 1, to all of it before epoch 3. ``skip``: (schedule, target, seed) not run."""
    folder.mkdir(parents=True)
    (folder / TUNER_FILE).write_bytes(b"")
    config = {"model": "small_cnn", "dataset": dataset or {"name": "digits"},
              "pruning": {"include": include, "exclude": list(exclude)},
              "finetune": {"epochs": EPOCHS, "retrain": "finetune"},
              "schedules": [{"name": n, "kind": k, "steps": s} for n, (k, s) in SCHEDULES.items()],
              "sparsities": list(sparsities), "seeds": seeds}
    (folder / CONFIG_FILE).write_text(yaml.safe_dump(config))
    for name, (kind, steps) in SCHEDULES.items():
        for target in sparsities:
            for seed in range(seeds):
                if (name, target, seed) in skip:
                    continue
                trial, rows = f"{name}_s{target}_seed{seed}", []
                for epoch in range(1, EPOCHS + 1):
                    step = (epoch - 1) // (EPOCHS // steps) + 1
                    reached = target * step / steps
                    rows.append({"schedule": name, "schedule_kind": kind, "retrain": "finetune",
                                 "target_sparsity": target, "seed": seed, "epoch": epoch, "budget_epochs": EPOCHS,
                                 "step": step, "sparsity": 0.9 * reached, "diverged": False,
                                 "test_accuracy": accuracy(name, target, seed) - 0.01 * (EPOCHS - epoch),
                                 "test_loss": 1 - accuracy(name, target, seed), "dense_test_accuracy": dense[seed],
                                 "layer_sparsity": {"conv1": 0.0, "conv2": reached, "fc": reached * (1 - seed / 100)}})
                (folder / trial).mkdir()
                trial_results.write(str(folder / trial / TRIAL_RESULTS_FILE), trial, rows, layers=LAYERS)
    return folder


@pytest.fixture(scope="module")
def rich(tmp_path_factory):
    return write_rich(tmp_path_factory.mktemp("view") / "exp")


# ---------------------------------------------------------------- one unit for differences


def test_differences_are_in_points_levels_in_the_metrics_own_units(rich):
    df = load_experiment(rich)
    d = np.round(np.array(GAIN[0.5]), 12)
    sd = d.std(ddof=1)
    acc = compare(df, "gradual2", "instant", effect_pts=1).set_index("target_sparsity").loc[0.5]
    assert acc["diff_unit"] == "percentage points"
    assert acc["mean_diff_pts"] == pytest.approx(100 * d.mean())
    half = stats.t.ppf(0.975, 5) * sd / math.sqrt(6)
    assert (acc["ci95_low_pts"], acc["ci95_high_pts"]) == pytest.approx((100 * (d.mean() - half),
                                                                          100 * (d.mean() + half)))
    assert acc["mean_a"] == pytest.approx(np.mean(BASE) + d.mean())  # a level: a fraction, as reported
    from analysis import seeds_needed
    assert acc["seeds_needed_effect"] == seeds_needed(0.01 / sd)  # 1 point = 0.01 of accuracy
    # a loss is no percent: its differences and effect in its own units, named so
    loss = compare(df, "gradual2", "instant", metric="test_loss", effect_pts=0.01).set_index("target_sparsity").loc[0.5]
    assert loss["diff_unit"] == "metric units" and loss["mean_diff_pts"] == pytest.approx(-d.mean())
    assert loss["seeds_needed_effect"] == seeds_needed(0.01 / sd)


def test_the_cli_effect_is_the_python_effect_in_points(rich, tmp_path):
    assert analyze_main([str(rich), "--out", str(tmp_path / "a"), "--effect", "1"]) == 0
    assert analyze_main([str(rich), "--out", str(tmp_path / "b"), "--effect", "0.01", "--metric", "test_loss"]) == 0
    df = load_experiment(rich)
    for out, metric, effect in (("a", "test_accuracy", 1), ("b", "test_loss", 0.01)):
        written = pd.read_csv(tmp_path / out / "comparison.csv")
        expected = compare_all(df, metric, effect_pts=effect)
        assert written["seeds_needed_effect"].tolist() == expected["seeds_needed_effect"].tolist()
        assert written["mean_diff_pts"].to_numpy() == pytest.approx(expected["mean_diff_pts"].to_numpy())
    report = (tmp_path / "a" / "report.md").read_text()
    assert ("Means, spreads and intervals are in `test_accuracy`'s own units (a fraction: 0.99 = 99%); the "
            "comparisons' differences (`_pts` columns) are in percentage points.") in report


# ---------------------------------------------------------------- the headline


def test_the_report_leads_with_a_headline(rich, tmp_path):
    a = analyse(rich)
    c = a.comparison.set_index("target_sparsity")
    need = int(c.loc[0.5, "seeds_needed"])
    assert 6 < need < 1000 and c.loc[0.9, "p_holm"] < 0.05 < c.loc[0.5, "p_holm"]

    def said(t, verdict):
        r = c.loc[t]
        return (f"gradual2 − instant {r['mean_diff_pts']:+.2f} ({r['ci95_low_pts']:+.2f} to "
                f"{r['ci95_high_pts']:+.2f}; p = {r['p_holm']:.2g}, {verdict})")
    mean, sd = np.mean(DENSE), np.std(DENSE, ddof=1)
    half = stats.t.ppf(0.975, 5) * sd / math.sqrt(6)
    expected = (
        "**Headline.** Does gradual pruning beat instant pruning at equal compute? Decided in 1 of 2 comparisons: "
        "significant after Holm's correction for 2 tests (6 paired seeds each). a − b in percentage points "
        f"(95% CI; Holm p): at **0.5** {said(0.5, 'undecided')}; at **0.9** "
        f"{said(0.9, '**decided: gradual2 better**')}. The dense models before pruning score {100 * mean:.2f}% "
        f"(95% CI {100 * (mean - half):.2f}% to {100 * (mean + half):.2f}%, 6 seeds). Next: extend with "
        f"`prunesweep extend {rich} --set seeds={need}` (about {need} seeds would decide gradual2 vs instant at 0.5, "
        "the closest to decided; How many seeds, below, has the rest).")
    text = open(analysis_files(rich, tmp_path)["report"]).read()
    lines = text.splitlines()
    assert lines[0].startswith("# exp: ") and lines[1] == "" and lines[2] == expected
    # the bullets below stay, one line each
    assert lines.count("## Verdict") == 1 and sum(line.startswith("- **sparsity ") for line in lines) == 2


def analysis_files(experiment, tmp_path):
    from analysis import write_report

    return write_report(experiment, tmp_path / "out")


def test_the_headline_when_every_comparison_is_decided_or_none_can_be(tmp_path):
    from analysis.report import headline

    decided = write_rich(tmp_path / "all", accuracy=lambda s, t, seed: BASE[seed] + (GAIN[0.9][seed] if s != "instant"
                                                                                       else 0))
    text = headline(analyse(decided))
    assert "Decided in all 2 comparisons: significant after Holm's correction for 2 tests" in text
    assert "Next:" not in text and text.count("**decided: gradual2 better**") == 2
    same = write_rich(tmp_path / "same", accuracy=lambda s, t, seed: BASE[seed])
    assert headline(analyse(same)).endswith(
        "Next: no number of seeds within reach would decide the open comparisons: their differences are zero, or too "
        "small next to the spread between seeds (How many seeds, below).")


# ---------------------------------------------------------------- the dense baseline


def test_dense_baseline_over_the_seeds_each_arm_counts(tmp_path):
    # gradual2 never ran seed 5: its arms count seeds 0-4, instant's 0-5: two rows
    path = write_rich(tmp_path / "exp", skip={("gradual2", t, 5) for t in (0.5, 0.9)})
    table = dense_baseline(load_experiment(path)).set_index("arms")
    assert list(table.index) == ["gradual2", "instant"] and table["seeds"].tolist() == ["0-4", "0-5"]
    for arm, n in (("gradual2", 5), ("instant", 6)):
        values = np.array(DENSE[:n])
        half = stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n)
        row = table.loc[arm]
        assert row["n"] == n and row["mean"] == pytest.approx(values.mean())
        assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((values.mean() - half, values.mean() + half))
    assert dense_baseline(load_experiment(path).drop(columns="dense_test_accuracy")).empty


def test_a_dense_model_near_chance_is_a_warning_naming_its_seeds(tmp_path):
    from analysis.report import report_text

    low = [0.95, 0.96, 0.10, 0.95, 0.12, 0.97]  # digits: 10 classes, chance 10%, near below 19%
    a = analyse(write_rich(tmp_path / "exp", dense=low))
    assert a.classes == 10 and a.near_chance.to_dict() == {2: 0.10, 4: 0.12}
    text = report_text(a)
    assert ("**Warning: 2 dense model(s) near chance accuracy**: seed(s) 2 (10.0%), 4 (12.0%), against chance "
            "10.00% (1/10 classes); near means below 19.0%.") in text
    assert "**Warning: some dense models are near chance accuracy (below).**" in text.splitlines()[2]
    assert "## Dense baseline" in text and "chance is 10.00% (1/10 classes)" in text
    assert "near chance" not in report_text(analyse(write_rich(tmp_path / "fine")))


def test_classes_come_from_the_dataset_name_or_the_image_folder():
    from analysis.computed import num_classes

    assert [num_classes({"dataset": {"name": name}}) for name in ("cifar10", "cifar100", "mnist", "svhn")] == [
        10, 100, 10, 10]
    assert num_classes({"dataset": {"name": "imagefolder"}}) is None, "an image folder's classes are its folders"
    assert num_classes({}) is None and num_classes({"dataset": {"name": "imagefolder", "root": "/nonexistent"}}) is None


def test_an_image_folder_has_as_many_classes_as_training_folders(tmp_path):
    from analysis.computed import num_classes

    for name in ("cat", "dog", "eel"):
        (tmp_path / "train" / name).mkdir(parents=True)
    (tmp_path / "train" / "README.txt").write_text("not a class")
    assert num_classes({"dataset": {"name": "imagefolder", "root": str(tmp_path)}}) == 3
    low = [0.40] * 6  # 3 classes: chance 33.3%, near below 40.0%
    a = analyse(write_rich(tmp_path / "exp", dense=[0.39] + low[1:],
                           dataset={"name": "imagefolder", "root": str(tmp_path)}))
    assert a.near_chance.to_dict() == {0: 0.39}


def _dense_lines(ax):
    return [line for line in ax.lines if line.get_label().startswith("dense model")]


def test_the_accuracy_plots_draw_the_dense_baseline_with_its_band(rich):
    from matplotlib.patches import Rectangle

    from analysis import plot_metric_vs_epoch, plot_metric_vs_sparsity

    df = load_experiment(rich)
    row = dense_baseline(df).iloc[0]
    fig = plot_metric_vs_sparsity(df)
    epochs = plot_metric_vs_epoch(df)
    for ax in [fig.axes[0], *epochs.axes[:2]]:  # the epoch figure's panels come first, then their strips
        (line,) = _dense_lines(ax)
        assert line.get_ydata() == pytest.approx([100 * row["mean"]] * 2)
        assert line.get_label() == "dense model, 95% CI (n=6)"
        (band,) = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_alpha() == 0.08]
        assert (band.get_y(), band.get_y() + band.get_height()) == pytest.approx((100 * row["ci95_low"],
                                                                                   100 * row["ci95_high"]))
    # the dense models' accuracy says nothing about a loss
    assert not _dense_lines(plot_metric_vs_sparsity(df, metric="test_loss").axes[0])


# ---------------------------------------------------------------- where each schedule prunes


def test_prune_events_from_steps_or_from_sparsity(rich):
    df = load_experiment(rich)
    events = prune_events(df)
    at = events[events["target_sparsity"] == 0.9].set_index(["arm", "epoch"])
    assert list(at.index) == [("gradual2", 1), ("gradual2", 3), ("instant", 1)]
    assert at["sparsity"].to_numpy() == pytest.approx([0.9 * 0.45, 0.9 * 0.9, 0.9 * 0.9])
    assert (at["n"] == 6).all()
    # reports without a step: the measured sparsity's changes say the same
    pd.testing.assert_frame_equal(prune_events(df.drop(columns="step")), events)


def test_the_epoch_plot_marks_each_schedules_prunes(rich):
    from analysis import plot_metric_vs_epoch

    fig = plot_metric_vs_epoch(load_experiment(rich))
    panels, strips = fig.axes[:2], fig.axes[2:]
    assert [p.get_title() for p in panels] == ["target sparsity 0.5", "target sparsity 0.9"]
    strip = strips[1]  # under target 0.9: a row per arm, ▼ half an epoch before the first epoch after each prune
    assert [t.get_text() for t in strip.get_yticklabels()] == ["gradual2", "instant"]
    marks = {line.get_color(): (list(line.get_xdata()), list(line.get_ydata())) for line in strip.lines
             if line.get_marker() == "v"}
    colors = {line.get_label().split(" ")[0]: line.get_color() for line in panels[1].lines
              if not line.get_label().startswith(("dense", "_"))}
    assert marks[colors["gradual2"]] == ([0.5, 2.5], [0, 0]) and marks[colors["instant"]] == ([0.5], [1])
    labels = sorted((t.xy, t.get_text()) for t in strip.texts)
    assert labels == [((0.5, 0), "40.5%"), ((0.5, 1), "81%"), ((2.5, 0), "81%")]
    assert strip.get_xlim()[0] < 0.5 < 4 < strip.get_xlim()[1]


# ---------------------------------------------------------------- the wins table under the difference plot


def _boxes(fig, texts):
    renderer = FigureCanvasAgg(fig).get_renderer()
    return [t.get_window_extent(renderer) for t in texts]


@pytest.mark.parametrize("sparsities", [(0.5, 0.8, 0.9, 0.95, 0.98), (0.9, 0.905, 0.91, 0.915)])
def test_the_wins_table_never_overlaps_itself_or_the_plot(sparsities):
    from analysis.plots import draw_difference_vs_sparsity, wins_label

    assert (wins_label(3, 7, 2), wins_label(5, 5, 0), wins_label(2, 5, 1)) == ("3/7 wins, 2 ties", "5/5 wins",
                                                                               "2/5 wins, 1 tie")
    rows = [{"a": a, "b": "instant", "target_sparsity": t, "metric": "test_accuracy", "n_pairs": 17,
             "a_wins": 13, "ties": 2 + i, "mean_diff_pts": 0.3 * i - 0.5 * j, "ci95_low_pts": 0.3 * i - 0.5 * j - 1,
             "ci95_high_pts": 0.3 * i - 0.5 * j + 1.5, "p_value": 0.2, "p_holm": 0.5}
            for i, a in enumerate(["gradual4+weight_rewind", "cubic4", "ladder"]) for j, t in enumerate(sparsities)]
    table = pd.DataFrame(rows)
    fig = draw_difference_vs_sparsity(table)
    plot, under = fig.axes
    texts = [t for t in under.texts if t.get_text()]
    assert sorted(t.get_text() for t in texts if "wins" in t.get_text()) == sorted(
        wins_label(r["a_wins"], r["n_pairs"], r["ties"]) for r in rows)
    boxes = _boxes(fig, texts)
    for i, box in enumerate(boxes):
        assert not any(box.overlaps(other) for other in boxes[i + 1:]), texts[i].get_text()
        assert not box.overlaps(plot.get_window_extent()), texts[i].get_text()
        assert 0 <= box.x0 and box.x1 <= fig.bbox.width  # on the figure
    # where the points are far enough apart, each column sits under its points
    if sparsities[1] - sparsities[0] > 0.1:
        centres = {t.get_text(): (b.x0 + b.x1) / 2 for t, b in zip(texts, boxes) if "wins" not in t.get_text()}
        x = plot.transData.transform([(1 / (1 - s), 0) for s in sparsities])[:, 0]
        assert [centres[f"{s:g}"] for s in sparsities] == pytest.approx(x, abs=1)


# ---------------------------------------------------------------- per-layer sparsity over all seeds


def test_layer_sparsity_is_the_mean_over_seeds_with_its_spread_and_names_excluded_layers(rich):
    from matplotlib.container import BarContainer

    from analysis import plot_layer_sparsity
    from analysis.computed import excluded_layers

    df = load_experiment(rich)
    a = analyse(rich)
    assert a.excluded == ["conv1"]
    fig = plot_layer_sparsity(df, excluded=a.excluded)
    ax = fig.axes[0]
    gradual, _ = [c for c in ax.containers if isinstance(c, BarContainer)]  # the arms in order
    heights = [bar.get_height() for bar in gradual]
    fc = 90 * np.mean([1 - s / 100 for s in range(6)])
    assert heights == pytest.approx([0, 90, fc])  # target 0.9, the mean over 6 seeds
    (bars,) = gradual.errorbar.lines[2]
    spread = [[y for _, y in segment] for segment in bars.get_segments() if len(segment)]
    assert spread == [pytest.approx([90 * 0.95, 90])]  # fc's min-max over seeds; the others' seeds agree
    notes = {t.get_text(): t.get_position()[0] for t in ax.texts}
    assert list(notes) == ["excluded (kept dense)"] and notes["excluded (kept dense)"] == pytest.approx(
        ax.get_xticks()[0])
    assert "mean and min–max over 6 seeds" in ax.get_title()
    # not named as excluded: a layer nothing pruned says so; one seed: that seed's model
    assert [t.get_text() for t in plot_layer_sparsity(df).axes[0].texts] == ["not pruned (0% in every trial)"]
    one = plot_layer_sparsity(df, seed=3).axes[0]
    bars = next(c for c in one.containers if isinstance(c, BarContainer))
    assert [b.get_height() for b in bars] == pytest.approx([0, 90, 90 * 0.97])
    assert "seed 3" in one.get_title()
    # the config's rule: exclude patterns, include when given, attention projections by their module's name
    config = {"pruning": {"include": ["block*", "attn", "head"], "exclude": ["block2.*"]}}
    layers = ["block1.conv", "block2.conv", "attn.q_proj", "head", "stem"]
    assert excluded_layers(config, [f"layer_sparsity.{n}" for n in layers]) == ["block2.conv", "stem"]
