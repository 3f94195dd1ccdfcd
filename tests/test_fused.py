"""Fused training: a group of K trial points trained as one computation is, member by member,
what each point is alone (float64: the same per-epoch reports to 1e-9 relative, across prunes,
rewinds, reinits, a member diverging and a resume mid-trial); in float32 it is deterministic and
differs from the unfused twins by rounding only. Models that cannot be fused are refused by name."""
import math

import pytest
import torch
from torch import nn

from sweeps.config import validate
from sweeps.dense_training import train_dense, train_dense_group
from sweeps.fused import FusedOptimizer, FusionError, check_fusable
from sweeps.models import build_model
from sweeps.plan import expand, trial_plan
from sweeps.trial import TrialRun

CPU = torch.device("cpu")
TIMING = ("epoch_time_s", "samples_per_s")

BASE = {
    "name": "fused", "model": "small_cnn", "dataset": {"name": "digits", "train_subset": 128},
    "dense": {"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.05, "weight_decay": 1e-3}, "batch_size": 32},
    "finetune": {"epochs": 2, "batch_size": 32, "retrain": ["finetune", "lr_rewind"],
                 "optimizer": {"name": "sgd", "lr": 0.03, "momentum": 0.8, "nesterov": True}},
    "schedules": [{"name": "instant", "kind": "instant"}], "sparsities": [0.5, 0.9], "seeds": 2,
}


@pytest.fixture
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _run(run: TrialRun, epochs: int | None = None) -> list[dict]:
    reports = []
    while not run.done and (epochs is None or run.epoch < epochs):
        reports += run.run_epoch()
    return reports


def _key(report: dict) -> tuple:
    """Which point a report is of (a ladder reports at each rung's target)."""
    ladder = report["schedule_kind"] == "ladder"
    return report["schedule"], report["retrain"], report["seed"], None if ladder else report["target_sparsity"]


def _close(alone: list[dict], fused: list[dict], rel: float) -> float:
    """The largest relative difference between two members' reports (asserting it is within ``rel``)."""
    assert [r["epoch"] for r in alone] == [r["epoch"] for r in fused]
    worst = 0.0
    for a, b in zip(alone, fused):
        assert a.keys() == b.keys()
        for key in a.keys() - set(TIMING):
            x, y = a[key], b[key]
            if isinstance(x, float) and not (math.isnan(x) and math.isnan(y)):
                worst = max(worst, abs(x - y) / max(abs(x), 1e-300))
                assert x == pytest.approx(y, rel=rel, abs=1e-12), (a[EPOCH_KEY], key, x, y)
            elif isinstance(x, float):
                continue
            else:
                assert x == y, (key, x, y)
    return worst


EPOCH_KEY = "epoch"


def _group_against_alone(config: dict, pick, diverge: int | None = None, resume_at: int | None = None) -> float:
    """Train the points ``pick`` chooses fused and each alone; the fused reports (with member
    ``diverge`` blowing up in its second epoch, and the group stopped after ``resume_at`` epochs and
    continued by a new run from its state) equal the alone ones member by member."""
    sweep = validate(config)
    seeds = sorted({p.seed for p in expand(sweep)})
    alone_dense = {s: train_dense(sweep, s, CPU) for s in seeds}
    for d, s in zip(train_dense_group(sweep, seeds, CPU), seeds):  # the dense phase fused, too
        _close([{"epoch": 0, "test_accuracy": alone_dense[s]["test_accuracy"], "test_loss": alone_dense[s]["test_loss"]}],
               [{"epoch": 0, "test_accuracy": d["test_accuracy"], "test_loss": d["test_loss"]}], 1e-9)
        for name, value in d["state_dict"].items():
            assert torch.allclose(value, alone_dense[s]["state_dict"][name], rtol=1e-9, atol=1e-12), name
    points = pick(expand(sweep))
    plans = [trial_plan(sweep, p) for p in points]
    if diverge is not None:
        plans[diverge] = plans[diverge].with_lr_from(2, math.inf)
    alone = [_run(TrialRun.of_point(sweep, p, alone_dense[p.seed], CPU, plan)) for p, plan in zip(points, plans)]
    denses = [alone_dense[p.seed] for p in points]
    run = TrialRun.of_points(sweep, points, denses, CPU, plans)
    fused = _run(run, resume_at)
    if resume_at is not None:
        state = run.state()
        run = TrialRun.of_points(sweep, points, denses, CPU, plans)
        run.load_state(state)
        fused += _run(run)
    worst = 0.0
    for point, own in zip(points, alone):
        mine = [r for r in fused if _key(r) == _key(own[0])]
        worst = max(worst, _close(own, mine, 1e-9))
    if diverge is not None:
        assert [r["diverged"] for r in alone[diverge]][-1] is True
        assert run.diverged_at[diverge] == alone[diverge][-1]["epoch"]
    return worst


def test_every_schedule_and_regime_of_two_seeds_fused_equals_each_alone_across_a_divergence_and_a_resume(float64):
    config = {**BASE, "finetune": {**BASE["finetune"], "epochs": 2, "lr_schedule": "constant",
                                   "retrain": ["finetune", "lr_rewind", "weight_rewind", "reinit"]},
              "dense": {**BASE["dense"], "epochs": 4},
              "schedules": [{"name": "instant", "kind": "instant"}, {"name": "gradual2", "kind": "gradual", "steps": 2},
                            {"name": "cubic2", "kind": "cubic", "steps": 2}, {"name": "ladder", "kind": "ladder"}]}

    def pick(points):
        at_09 = [p for p in points if p.target_sparsity in (0.9, None) and p.seed == 0]
        return at_09 + [p for p in points if p.seed == 1 and p.target_sparsity == 0.9 and p.schedule == "gradual2"]

    # 16 + 4 members of 4 epochs at 0.9 (the ladder's two rungs of 2); member 1 diverges in epoch 2;
    # the group resumes after epoch 3 (after a gradual member's second prune and the ladder's second rung)
    assert _group_against_alone(config, pick, diverge=1, resume_at=3) < 1e-9


@pytest.mark.parametrize("pruning, optimizer", [
    ({"structure": "filters", "criterion": "random", "scope": "layerwise"}, None),
    ({"structure": "2:4", "criterion": "magnitude_gradient", "gradient_batches": 2, "exclude": ["conv1"]},
     {"name": "adamw", "lr": 0.003, "weight_decay": 0.01}),
], ids=["filters-random", "2:4-gradient-adamw"])
def test_structured_pruning_random_and_gradient_criteria_fused_equal_each_alone(float64, pruning, optimizer):
    config = {**BASE, "pruning": pruning, "sparsities": [0.5] if pruning["structure"] == "2:4" else [0.5, 0.9],
              "schedules": [{"name": "instant", "kind": "instant"}, {"name": "gradual2", "kind": "gradual", "steps": 2}]}
    if optimizer:  # AdamW fine-tuning (rewinding regimes would replay the dense SGD: another kind)
        config["finetune"] = {**BASE["finetune"], "optimizer": optimizer, "retrain": ["finetune"]}
        # the first member diverges; the group resumes after its first epoch
        assert _group_against_alone(config, lambda points: points, diverge=0, resume_at=1) < 1e-9
    else:
        assert _group_against_alone(config, lambda points: points) < 1e-9


def test_a_fused_group_in_float32_is_deterministic_and_resumes_bit_for_bit_and_differs_by_rounding():
    sweep = validate({**BASE, "finetune": {**BASE["finetune"], "epochs": 3}, "dense": {**BASE["dense"], "epochs": 3}})
    dense = {s: train_dense(sweep, s, CPU) for s in (0, 1)}
    points = expand(sweep)

    def fused():
        return TrialRun.of_points(sweep, points, [dense[p.seed] for p in points], CPU)

    once, twice = _run(fused()), _run(fused())
    strip = lambda reports: [{k: v for k, v in r.items() if k not in TIMING} for r in reports]  # noqa: E731
    assert strip(once) == strip(twice)
    first = fused()
    resumed = _run(first, 1)
    second = fused()
    second.load_state(first.state())
    assert strip(resumed + _run(second)) == strip(once)
    # against the unfused twins: equal up to float32 rounding, amplified by training
    worst = 0.0
    for p in points:
        alone = _run(TrialRun.of_point(sweep, p, dense[p.seed], CPU))
        worst = max(worst, _close(alone, [r for r in once if _key(r) == _key(alone[0])], 1e-2))
    assert worst < 1e-2


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_the_fused_optimizer_steps_each_member_as_torchs_own_optimizer(float64, kind):
    from sweeps.config import OptimizerConfig
    from sweeps.optimizers import make_optimizer

    configs = [OptimizerConfig(name=kind, lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=False),
               OptimizerConfig(name=kind, lr=0.1, momentum=0.5, weight_decay=1e-2, nesterov=True),
               OptimizerConfig(name=kind, lr=0.1, momentum=0.0, weight_decay=5e-4, nesterov=False)]
    g = torch.Generator().manual_seed(0)
    start = torch.randn(3, 4, 5, generator=g)
    stacked = start.clone().requires_grad_(True)
    fused = FusedOptimizer(stacked, configs)
    own = [start[k].clone().requires_grad_(True) for k in range(3)]
    torch_opts = [make_optimizer(c, [p]) for c, p in zip(configs, own)]
    for step in range(6):
        grads = torch.randn(3, 4, 5, generator=g)
        lrs = [0.1 / (step + 1), 0.05, 0.2]
        if step == 3:  # member 2 starts a phase with a fresh optimizer
            fused.reset(2)
            torch_opts[2] = make_optimizer(configs[2], [own[2]])
        if step == 4:  # a checkpoint of the optimizer, loaded into a new one
            again = FusedOptimizer(stacked, configs)
            again.load_state_dict(fused.state_dict())
            fused = again
        stacked.grad = grads.clone()
        fused.step(lrs)
        for k in range(3):
            own[k].grad = grads[k].clone()
            for group in torch_opts[k].param_groups:
                group["lr"] = lrs[k]
            torch_opts[k].step()
    for k in range(3):
        torch.testing.assert_close(stacked[k], own[k], rtol=1e-12, atol=1e-14)
    # members 0 and 2 go on alone (member 1 left the group): their state and steps go with them
    kept = stacked.detach()[[0, 2]].clone().requires_grad_(True)
    fused = fused.select(kept, [0, 2])
    for _ in range(2):
        grads = torch.randn(3, 4, 5, generator=g)
        kept.grad = grads[[0, 2]].clone()
        fused.step([0.01, 0.02])
        for k, lr in ((0, 0.01), (2, 0.02)):
            own[k].grad = grads[k].clone()
            for group in torch_opts[k].param_groups:
                group["lr"] = lr
            torch_opts[k].step()
    torch.testing.assert_close(kept[0], own[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(kept[1], own[2], rtol=1e-12, atol=1e-14)
    # a prune clears the state at pruned positions, as pruning_core.clear_optimizer_state does
    mask = torch.rand(2, 4, 5, generator=g) > 0.5
    fused.clear_masked(mask)
    for value in fused.state.values():
        assert not value[~mask].any()


class _WithDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(144, 10))

    def forward(self, x):
        return self.head(self.features(x))


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.gate = _Gate()
        self.fc = nn.Linear(144, 10)

    def forward(self, x):
        return self.fc(self.gate(self.conv(x)).flatten(1))


class _Gate(nn.Module):
    def forward(self, x):
        return x if x.mean().item() > 0 else -x  # a Python branch on a value: vmap cannot batch it


def test_a_model_that_cannot_be_fused_is_refused_naming_the_layer():
    example = torch.randn(4, 1, 8, 8)
    with pytest.raises(FusionError, match=r"^layer head\.0 \(Dropout, p=0\.3\) draws random numbers"):
        check_fusable(_WithDropout(), example)
    with pytest.raises(FusionError, match=r"^layer gate \(_Gate\) cannot be fused \(RuntimeError: .*item"):
        check_fusable(_DataDependent(), example)
    check_fusable(build_model("resnet20"), torch.randn(2, 3, 32, 32))  # the option-A shortcut pads channels: fine
    check_fusable(build_model("torchvision:resnet18", 10, 1), torch.randn(2, 1, 32, 32))


def test_members_that_do_not_share_batch_size_or_optimizer_kind_are_refused():
    sweep = validate({**BASE, "finetune": {**BASE["finetune"], "batch_size": 16}})
    dense = train_dense(sweep, 0, CPU)
    ft = next(p for p in expand(sweep) if p.retrain == "finetune" and p.seed == 0)
    rewind = next(p for p in expand(sweep) if p.retrain == "lr_rewind" and p.seed == 0)
    with pytest.raises(FusionError, match=r"share their batch size; these have \[16, 32\]"):
        TrialRun.of_points(sweep, [ft, rewind], [dense, dense], CPU)
    adam = validate({**BASE, "finetune": {**BASE["finetune"], "optimizer": {"name": "adam", "lr": 1e-3}}})
    ft, rewind = (next(p for p in expand(adam) if p.retrain == r and p.seed == 0) for r in ("finetune", "lr_rewind"))
    with pytest.raises(FusionError, match="one optimizer kind; got adam, sgd"):
        TrialRun.of_points(adam, [ft, rewind], [dense, dense], CPU)


def test_whether_fusing_pays_is_measured_on_the_device_for_the_model():
    from sweeps.fused import speedup

    sweep = validate(BASE)
    ratio = speedup(sweep, 2, CPU, steps=1)
    assert math.isfinite(ratio) and 0.05 < ratio < 20  # a measured ratio of two step times, not a constant
