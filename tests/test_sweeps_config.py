"""Config validation, overrides, the trial grid and the equal-budget rules (no Ray needed)."""
import pytest

from sweeps.cli import main
from sweeps.config import ConfigError, load_config, validate
from sweeps.plan import budget, epochs_to_train, expand, trial_count
from sweeps.plan import phases as plan

from .conftest import TINY, write_config


def run_cli(capsys, *argv):
    rc = main(list(argv))
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize("changes,pattern", [
    ({"foo": 1}, r"foo: unknown field; allowed here: name, model, model_args, dataset, dense, pruning, finetune"),
    ({"finetune__epoch": 3}, r"finetune.epoch: unknown field; allowed here: epochs, optimizer, lr_schedule, batch_size"),
    ({"schedules": [{"name": "g", "kind": "instant", "step": 2}]}, r"schedules.0.step: unknown field; allowed here: name, kind, steps"),
    ({"finetune__epochs": "many"}, r"finetune.epochs: Input should be a valid integer.*'many'"),
    ({"sparsities": [0.5, 1.0]}, r"sparsities.1: sparsity must be in \[0, 1\), got 1.0"),
    ({"sparsities": [-0.1]}, r"sparsities.0: sparsity must be in \[0, 1\)"),
    ({"sparsities": [0.5, 0.5]}, r"sparsities: duplicate value\(s\) 0.5"),
    ({"schedules": [{"name": "g", "kind": "gradual", "steps": 0}]}, r"schedules.0.steps: Input should be greater than or equal to 1"),
    ({"schedules": [{"name": "g", "kind": "linear"}]}, r"schedules.0.kind: Input should be 'instant', 'gradual', 'cubic' or 'ladder'"),
    ({"schedules": [{"name": "g", "kind": "gradual", "steps": 3}]}, r"schedules.0.steps: 3 does not divide finetune.epochs=2"),
    ({"model": "resnet7"}, r"model: 'resnet7' is none of a built-in \(small_cnn, resnet20,.*resnet110\), torchvision:<name>"),
    ({"model": "torchvision:resnet7"}, r"model: torchvision has no classification model 'resnet7' \(got 'torchvision:resnet7'\); it has alexnet,"),
    ({"dataset__name": "imagenet"}, r"dataset.name: Input should be 'digits', 'cifar10', 'cifar100', 'mnist', 'fashion_mnist', 'svhn' or 'imagefolder'"),
    ({"dataset": {"name": "cifar10", "root": "/nonexistent/cifar"}}, r"dataset.root '/nonexistent/cifar' holds no cifar10 \(cifar-10-batches-py, as torchvision reads them: RuntimeError: Dataset not found or corrupted.*\) and dataset.download is false"),
    ({"dataset": {"name": "svhn"}}, r"dataset.root is required for svhn \(a folder holding train_32x32.mat and test_32x32.mat\)"),
    ({"dataset": {"name": "imagefolder", "root": "/x"}}, r"dataset.image_size is required for imagefolder"),
    ({"dataset": {"name": "mnist", "root": "/x", "channels": 3}}, r"dataset.channels is only for imagefolder \(mnist images are 1x28x28\)"),
    ({"dataset": {"name": "imagefolder", "root": "/nonexistent/images", "image_size": 16}}, r"dataset.root '/nonexistent/images': /nonexistent/images has no train/ folder"),
    ({"model_args": {"width": 8}}, r"model 'small_cnn': built-in model 'small_cnn' takes no model_args \(got width\)"),
    ({"resources__gpu": 1.5}, r"resources.gpu above 1 must be a whole number"),
    ({"pruning__structure": "2:1"}, r"pruning.structure: structure '2:1': N:M needs 0 < N < M"),
    ({"pruning__structure": 124}, r"pruning.structure: got the number 124: YAML reads an unquoted N:M such as 2:4 as a base-60 number; quote it"),
    ({"pruning__structure": "channels"}, r"pruning.structure: .*structure must be unstructured, filters or N:M such as \"2:4\"; got 'channels'"),
    ({"pruning__structure": "2:4", "sparsities": [0.5, 0.9]}, r"sparsities: structure '2:4' fixes every layer at sparsity 0.5; got \[0.5, 0.9\] \(allowed: \[0.5\]\)"),
    ({"pruning__criterion": "taylor"}, r"pruning.criterion: Input should be 'magnitude', 'gradient', 'magnitude_gradient' or 'random'"),
    ({"dense": {"epochs": 2, "checkpoint": "/x.pt"}}, r"give exactly one of dense.epochs"),
    ({"dataset__validation": 1437}, r"dataset.validation must leave training images: digits has 1437, so the allowed range is 0..1436 \(got 1437\)"),
    ({"dataset__validation": -1}, r"dataset.validation: Input should be greater than or equal to 0"),
    ({"finetune__retrain": "rewind"}, r"finetune.retrain.0: Input should be 'finetune', 'lr_rewind', 'weight_rewind' or 'reinit' \(got 'rewind'\)"),
    ({"finetune__retrain": ["lr_rewind", "lr_rewind"]}, r"finetune.retrain: duplicate regime\(s\)"),
    ({"finetune__retrain": "weight_rewind", "dense": {"checkpoint": "/x.pt"}}, r"finetune.retrain: weight_rewind replays the dense training's learning-rate schedule, so it needs dense.epochs >= 1"),
    ({"finetune__retrain": ["finetune", "lr_rewind"], "schedules": [{"name": "i", "kind": "instant"}, {"name": "l", "kind": "ladder"}]},
     r"finetune.retrain: lr_rewind rewinds a prune's 4 retraining epochs to dense epoch 2 - 4 < 0 \(dense.epochs is 2\); allowed: at most dense.epochs"),
    ({"finetune__lr_schedule": "cosine", "schedules": [{"name": "i", "kind": "instant"}, {"name": "l", "kind": "ladder"}]}, r"finetune.lr_schedule: cosine with a ladder and finetune.ladder_budget: cumulative would compare different learning-rate curves.*use finetune.ladder_budget: per_prune"),
    ({"finetune__ladder_budget": "both"}, r"finetune.ladder_budget: Input should be 'cumulative' or 'per_prune'"),
    ({"sparsities": {"geometric": 1.5, "levels": 2}}, r"sparsities: a grid is \{geometric: r, levels: L\} with 0 < r < 1 and a whole L >= 1 \(got geometric: 1.5\)"),
    ({"sparsities": {"geometric": 0.9, "levels": 40}}, r"sparsities: .*level 13 rounds to the level before it or to 1 \(allowed: levels up to 12, got 40\)"),
    ({"seeds": True}, r"error: config error: seeds: got True; allowed: a count N >= 1 \(seeds 0..N-1\) or a list of distinct whole numbers >= 0, all below 2\*\*63$"),
    ({"seeds": [0, 2, -1]}, r"error: config error: seeds: entry 2 is -1; allowed: a count N >= 1"),
    ({"seeds": [3, False]}, r"error: config error: seeds: entry 1 is False; allowed: a count N >= 1"),
    ({"seeds": [4, 1, 4, 1]}, r"error: config error: seeds: duplicate seed\(s\) 1, 4; allowed: a count N >= 1"),
    ({"seeds": 0}, r"error: config error: seeds: got 0; allowed: a count N >= 1"),
    ({"seeds": 2.0}, r"error: config error: seeds: got 2.0; allowed: a count N >= 1"),
    ({"seeds": [2 ** 63]}, r"error: config error: seeds: entry 0 is 9223372036854775808; allowed: .* all below 2\*\*63$"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, capsys, changes, pattern):
    cfg = write_config(tmp_path, **changes)
    storage = tmp_path / "results"
    rc, err = run_cli(capsys, "run", str(cfg), "--storage", str(storage))
    assert rc == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("prunesweep: error: ")
    import re
    assert re.search(pattern, err), err
    assert not storage.exists()  # nothing created


def test_malformed_yaml(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("name: x\nsparsities: [0.5, 0.9\nseeds: 2\n")
    rc, err = run_cli(capsys, "run", str(cfg), "--storage", str(tmp_path / "r"))
    assert rc == 2 and "malformed YAML at line" in err and err.count("\n") == 1


def test_set_overrides_and_bad_paths(tmp_path, capsys):
    cfg = write_config(tmp_path)
    config = load_config(str(cfg), ["seeds=3", "sparsities=[0.5, 0.8, 0.95]", "finetune.epochs=4",
                                     "finetune.optimizer.lr=0.01"])
    assert config.seed_list == [0, 1, 2]
    assert config.sparsities == [0.5, 0.8, 0.95]
    assert config.finetune.epochs == 4 and config.finetune.optimizer.lr == 0.01
    rc, err = run_cli(capsys, "run", str(cfg), "--set", "finetune.epoch=3", "--storage", str(tmp_path / "r"))
    assert rc == 2 and "--set finetune.epoch: finetune has no field 'epoch'; fields are: epochs" in err
    rc, err = run_cli(capsys, "validate", str(cfg), "--set", "seeds.x=3")
    assert rc == 2 and "seeds is not a section" in err
    rc, err = run_cli(capsys, "validate", str(cfg), "--set", "seeds")
    assert rc == 2 and "expected KEY=VALUE" in err
    config = load_config(str(cfg), ["schedules.1.steps=1", "finetune.epochs=3"])
    assert config.schedules[1].steps == 1
    rc, err = run_cli(capsys, "validate", str(cfg), "--set", "schedules.5.steps=2")
    assert rc == 2 and "schedules is a list of 2; use an index 0..1" in err
    rc, err = run_cli(capsys, "validate", str(cfg), "--set", "schedules.0.step=2")
    assert rc == 2 and "schedules.0 has no field 'step'; fields are: name, kind, steps" in err


def test_unknown_config_file_lists_builtins(capsys):
    rc, err = run_cli(capsys, "validate", "nope.yaml")
    assert rc == 2 and "quickstart" in err and "gradual_vs_instant" in err


def test_unwritable_storage(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    rc, err = run_cli(capsys, "run", str(write_config(tmp_path)), "--storage", str(blocker / "results"))
    assert rc == 2 and "cannot write experiments there" in err and "is not a directory" in err


def test_builtin_configs_validate(capsys):
    for name in ("quickstart", "gradual_pruning", "gradual_vs_instant", "cifar10_resnet20"):
        raw = __import__("yaml").safe_load(open(f"sweeps/configs/{name}.yaml"))
        raw["dataset"]["download"] = True  # CIFAR-10 is not on CI's disk
        cfg = validate(raw)
        assert expand(cfg)
    quick = load_config("quickstart")
    assert len(expand(quick)) == 150 and max(quick.sparsities) == 0.98 and len(quick.seed_list) == 10


def test_gradual_plan_splits_budget_evenly():
    cfg = validate({**TINY, "finetune": {"epochs": 8}, "schedules": [{"name": "g", "kind": "gradual", "steps": 4}],
                    "sparsities": [0.9]})
    phases = plan(cfg, expand(cfg)[0])
    assert [p.epochs for p in phases] == [2, 2, 2, 2]
    assert [p.prune_to for p in phases] == pytest.approx([1 - 0.1 ** (i / 4) for i in range(1, 5)])
    assert all(p.target == 0.9 for p in phases)


def test_ladder_budget_rule():
    cfg = validate({**TINY, "finetune": {"epochs": 3},
                    "schedules": [{"name": "i", "kind": "instant"}, {"name": "c", "kind": "cubic", "steps": 3},
                                  {"name": "l", "kind": "ladder"}],
                    "sparsities": [0.9, 0.5, 0.7], "seeds": 1})
    trials = expand(cfg)
    assert len(trials) == 3 + 3 + 1
    ladder = [t for t in trials if t.schedule_kind == "ladder"][0]
    rungs = plan(cfg, ladder)
    assert [(p.prune_to, p.epochs, p.target) for p in rungs] == [(0.5, 3, 0.5), (0.7, 3, 0.7), (0.9, 3, 0.9)]
    # instant and cubic trials get the ladder's cumulative budget at their rung
    assert [budget(cfg, s) for s in (0.5, 0.7, 0.9)] == [3, 6, 9]
    for t in trials:
        if t.schedule_kind != "ladder":
            assert sum(p.epochs for p in plan(cfg, t)) == budget(cfg, t.target_sparsity)
    no_ladder = validate({**TINY, "finetune": {"epochs": 3}, "schedules": [{"name": "i", "kind": "instant"}]})
    assert budget(no_ladder, 0.9) == 3


def test_config_error_type():
    with pytest.raises(ConfigError):
        validate({"name": "x"})


def test_resume_of_a_folder_that_is_no_experiment(tmp_path, capsys):
    rc, err = run_cli(capsys, "resume", str(tmp_path))
    assert rc == 2 and "not a prunesweep experiment (no prunesweep.yaml)" in err and err.count("\n") == 1


def test_lr_schedules_epoch_by_epoch():
    import math

    from sweeps.optimizers import schedule_lrs

    def lrs(kind, epochs, lr=0.1):
        return schedule_lrs(kind, lr, epochs)

    assert lrs("constant", 3) == [0.1, 0.1, 0.1]
    assert lrs("step", 8) == pytest.approx([0.1] * 4 + [0.01] * 2 + [0.001] * 2, rel=1e-12)
    assert lrs("step", 2) == pytest.approx([0.1, 0.001], rel=1e-12)  # both milestones at epoch 1
    cosine = [0.05 * (1 + math.cos(math.pi * e / 15)) for e in range(15)]
    assert lrs("cosine", 15) == pytest.approx(cosine, rel=1e-12)


# ---------------------------------------------------------------- issue #29: validation

BAD_NAME = ("allowed: 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' "
            "(an experiment is the folder <storage>/<name>)")


@pytest.mark.parametrize("name,shown", [(n, repr(n)) for n in ("../../x", "/abs/path", "..", ".", "a/b", "", ".hidden")]
                         + [("x" * 129, f"'{'x' * 37}...{'x' * 38}'")])
def test_an_experiment_name_is_one_folder_name(name, shown):
    from sweeps.config import check_experiment_name

    with pytest.raises(ConfigError) as caught:
        check_experiment_name(name, "--name")
    assert str(caught.value) == f"--name {shown}: {BAD_NAME}"
    with pytest.raises(ConfigError) as caught:
        validate({**TINY, "name": name})
    assert str(caught.value) == f"config error: name: {shown}: {BAD_NAME}"


def test_a_config_named_dot_dot_is_refused_before_anything_is_written(tmp_path, capsys):
    import yaml

    cfg = tmp_path / "dots.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "name": ".."}))
    storage = tmp_path / "deep" / "results"
    rc, err = run_cli(capsys, "run", str(cfg), "--storage", str(storage))
    assert rc == 2 and err == f"prunesweep: error: config error: name: '..': {BAD_NAME}\n"
    assert not (tmp_path / "deep").exists()


def test_a_good_experiment_name_passes():
    from sweeps.config import check_experiment_name

    assert check_experiment_name("gradual_vs-instant.v2", "--name") == "gradual_vs-instant.v2"
    assert check_experiment_name("x" * 128, "--name") == "x" * 128
    assert validate({**TINY, "name": "run.2"}).name == "run.2"


LAUGHS = """\
a: &a [x, x, x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
"""  # h stands for 10**8 x's, in a few hundred bytes: PyYAML shares each list


@pytest.mark.parametrize("field,value,expected", [
    ("sparsities", "*h", "config error: sparsities.0: Input should be a valid number (got [[[...], [...], [...], "
                         "[...], [...], [...], ...], [[...], [...], [...], [...], …); sparsities.1: "),
    ("seeds", "*h", "config error: seeds: entry 0 is [[[...], [...], [...], [...], [...], [...], ...], [[...], "
                    "[...], [...], [...], …; allowed: a count N >= 1"),
    ("model", "*h", "config error: model: Input should be a valid string (got [[[...], [...], [...], [...], [...], "
                    "[...], ...], [[...], [...], [...], [...], …); unknown fields a, b, c, d, e, f, g, "
                    "h; allowed here: name, model, model_args,"),
    ("model_args", "{depth: *h}", "config error: model_args: more than 10,000 values in all (YAML aliases counted as "
                                  "they expand); allowed: up to 10,000; unknown fields a, b,"),
])
def test_a_value_of_nested_aliases_is_echoed_cut_short(tmp_path, capsys, field, value, expected):
    import yaml

    config = {k: v for k, v in TINY.items() if k != field}
    path = tmp_path / "laughs.yaml"
    path.write_text(LAUGHS + yaml.safe_dump(config) + f"{field}: {value}\n")
    assert len(LAUGHS) < 500
    rc, err = run_cli(capsys, "validate", str(path))
    assert rc == 2 and err.count("\n") == 1 and len(err) < 500, err
    assert err.startswith(f"prunesweep: error: {expected}"), err


def test_a_long_override_is_echoed_cut_short(tmp_path, capsys):
    rc, err = run_cli(capsys, "validate", str(write_config(tmp_path)), "--set", "x" * 10_000)
    assert rc == 2 and err == f"prunesweep: error: --set '{'x' * 37}...{'x' * 38}': expected KEY=VALUE, e.g. " \
                              "--set finetune.epochs=2\n"
    rc, err = run_cli(capsys, "validate", str(write_config(tmp_path)), "--set", "seeds=[" + "1, " * 10_000 + "]")
    assert rc == 2 and len(err) < 300 and "seeds: duplicate seed(s) 1; allowed" in err, err


def test_sparsities_equal_as_floats_get_distinct_labels_or_are_refused():
    from analysis.schema import TrialPoint

    cfg = validate({**TINY, "sparsities": [0.5, 0.5000001, 0.0], "seeds": 1,
                    "schedules": [{"name": "gradual4", "kind": "gradual", "steps": 2}]})
    assert [p.label for p in expand(cfg)] == ["gradual4_s0.5_seed0", "gradual4_s0.5000001_seed0", "gradual4_s0_seed0"]
    assert TrialPoint("gradual4", "gradual", 4, 0.9, 3).label == "gradual4_s0.9_seed3"  # as :g wrote it
    assert TrialPoint("g", "gradual", 4, 1 - 0.8 ** 2, 3).label == "g_s0.3599999999999999_seed3"
    assert TrialPoint("g", "gradual", 4, 0.36, 3).label == "g_s0.36_seed3"
    with pytest.raises(ConfigError, match=r"^config error: sparsities: duplicate value\(s\) 0.5 \(equal as floats\)$"):
        validate({**TINY, "sparsities": [0.5, 0.50000000000000001]})  # the same float


def test_a_config_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    rc, err = run_cli(capsys, "validate", str(path))
    assert rc == 2
    assert err == (f"prunesweep: error: config {path}: not UTF-8 text (byte 0xff at offset 6); "
                   "allowed: a YAML file encoded as UTF-8\n")


@pytest.mark.parametrize("content,why", [
    (b"not a torch file", "is not a readable torch state_dict ("),
    ([], "holds [], not a torch state_dict (a mapping of parameter names to tensors)"),
    ({"fc.weight": "x"}, "holds {'fc.weight': 'x'}, not a torch state_dict (a mapping of parameter names to tensors)"),
    ({"fc.weight": None}, "holds {'fc.weight': None}, not a torch state_dict"),
    ({"conv1.weight": [1.0]}, "holds {'conv1.weight': [1.0]}, not a torch state_dict"),
])
def test_validate_refuses_the_dense_checkpoint_that_run_refuses_in_the_same_words(tmp_path, capsys, content, why):
    import torch

    checkpoint = tmp_path / "dense.pt"
    if isinstance(content, bytes):
        checkpoint.write_bytes(content)
    else:
        torch.save(content, checkpoint)
    cfg = write_config(tmp_path, dense={"checkpoint": str(checkpoint)})
    rc, validate_err = run_cli(capsys, "validate", str(cfg))
    assert rc == 2 and validate_err.startswith(f"prunesweep: error: dense.checkpoint '{checkpoint}' {why}")
    assert validate_err.count("\n") == 1, validate_err
    storage = tmp_path / "results"
    rc, run_err = run_cli(capsys, "run", str(cfg), "--storage", str(storage))
    assert rc == 2 and run_err == validate_err and not storage.exists()


def test_validate_refuses_a_checkpoint_of_another_shape(tmp_path, capsys):
    import torch

    from sweeps.models import build_model

    checkpoint = tmp_path / "dense.pt"
    torch.save(build_model("small_cnn", 10, 3).state_dict(), checkpoint)  # digits has one channel
    rc, err = run_cli(capsys, "validate", str(write_config(tmp_path, dense={"checkpoint": str(checkpoint)})))
    assert rc == 2 and err.startswith(f"prunesweep: error: dense.checkpoint '{checkpoint}' does not fit model "
                                      "'small_cnn' on digits (Error(s) in loading state_dict for SmallCNN: size "
                                      "mismatch for conv1.weight"), err
    torch.save(build_model("small_cnn", 10, 1).state_dict(), checkpoint)
    rc, err = run_cli(capsys, "validate", str(write_config(tmp_path, dense={"checkpoint": str(checkpoint)})))
    assert rc == 0, err


def test_validate_counts_a_million_trials(tmp_path, capsys):
    """Counts and epochs found without listing every trial, checked against sums done by hand."""
    n, seeds, epochs = 1000, 1000, 2
    sparsities = [round(0.9 * i / n, 6) for i in range(n)]
    cfg = write_config(tmp_path, sparsities=sparsities, seeds=seeds, finetune={"epochs": epochs},
                       schedules=[{"name": "g", "kind": "gradual", "steps": 2}])
    assert main(["validate", str(cfg)]) == 0
    dense, retraining = 2 * seeds, n * seeds * epochs  # dense.epochs is 2; a gradual trial trains finetune.epochs
    assert capsys.readouterr().out == (f"{cfg}: valid; 1000000 trials (1 schedule, 1000 sparsities, 1000 seeds); "
                                       "2,002,000 epochs to train (2,000 dense, 2,000,000 retraining)\n")
    config = load_config(str(cfg))
    assert trial_count(config) == n * seeds == 1_000_000
    assert epochs_to_train(config) == (dense, retraining) == (2_000, 2_000_000)
    small = validate({**TINY, "seeds": [5, 9, 2], "schedules": TINY["schedules"] + [{"name": "l", "kind": "ladder"}]})
    assert trial_count(small) == len(expand(small)) == 15


def test_validate_counts_a_million_trials_with_a_ladder_and_two_regimes(tmp_path, capsys):
    """A ladder's cumulative budget (the instant trial at rung r trains r * E epochs) and learning-rate
    rewinding, whose longest phase (n * E epochs) must fit in dense.epochs."""
    n, seeds, e = 500, 998, 2
    sparsities = [round(0.9 * i / n, 6) for i in range(n)]
    cfg = write_config(tmp_path, sparsities=sparsities, seeds=seeds, dense={"epochs": n * e},
                       finetune={"epochs": e, "retrain": ["finetune", "lr_rewind"]},
                       schedules=[{"name": "i", "kind": "instant"}, {"name": "l", "kind": "ladder"}])
    rc = main(["validate", str(cfg)])
    trials = 2 * seeds * (n + 1)
    per_seed_and_regime = sum(r * e for r in range(1, n + 1)) + n * e
    dense, retraining = n * e * seeds, 2 * seeds * per_seed_and_regime
    assert rc == 0
    assert capsys.readouterr().out == (
        f"{cfg}: valid; {trials} trials (2 schedules, 2 retraining regimes, {n} sparsities, {seeds} seeds); "
        f"{dense + retraining:,} epochs to train ({dense:,} dense, {retraining:,} retraining)\n")
    assert (trials, dense, retraining) == (999_996, 998_000, 501_994_000)
    too_long = write_config(tmp_path, "short_dense.yaml", sparsities=sparsities, seeds=seeds,
                            dense={"epochs": n * e - 1}, finetune={"epochs": e, "retrain": ["finetune", "lr_rewind"]},
                            schedules=[{"name": "i", "kind": "instant"}, {"name": "l", "kind": "ladder"}])
    rc, err = run_cli(capsys, "validate", str(too_long))
    assert rc == 2 and f"lr_rewind rewinds a prune's {n * e} retraining epochs to dense epoch {n * e - 1} - " in err
