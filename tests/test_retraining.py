"""Retraining regimes (fine-tuning, learning-rate and weight rewinding, reinitialisation), geometric
sparsity grids and the ladder's budget rules, pinned against the dense schedule by hand (no Ray)."""
import io

import pytest
import torch

import pruning_core as pc
from sweeps.config import validate
from sweeps.dense_training import train_dense
from sweeps.plan import budget, expand, learning_rates
from sweeps.plan import phases as plan
from sweeps.regimes import REGIMES
from sweeps.torch_files import SNAPSHOTS as REWIND
from sweeps.trial import TrialRun

from .conftest import TINY

CPU = torch.device("cpu")
# dense: 4 epochs of SGD with the step schedule (x0.1 at epochs 2 and 3): 0.05, 0.05, 0.005, 0.0005
DENSE = {"epochs": 4, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
         "lr_schedule": "step", "batch_size": 64}
DENSE_LRS = [0.05, 0.05, 0.05 * 0.1, 0.05 * 0.1 * 0.1]
LADDER = {"name": "ladder", "kind": "ladder"}


def sweep_of(**finetune):
    return validate({**TINY, "dense": DENSE, "seeds": 1, "schedules": TINY["schedules"] + [LADDER],
                     "finetune": {"epochs": 2, "batch_size": 64, "optimizer": {"name": "adam", "lr": 0.001},
                                  **finetune}})


def point(sweep, schedule, retrain, target=None):
    return next(p for p in expand(sweep) if p.schedule == schedule and p.retrain == retrain
                and p.target_sparsity == target)


@pytest.fixture(scope="module")
def rewinding():
    """Every regime, both ladder budgets' worth of snapshots, and the dense model of seed 0."""
    sweep = sweep_of(retrain=list(REGIMES), ladder_budget="per_prune")
    return sweep, train_dense(sweep, 0, CPU)


def test_learning_rate_of_every_epoch_by_hand():
    """Fine-tuning keeps its own schedule; the rewinding regimes replay the dense schedule's last P
    epochs in every phase of P epochs (T = 4)."""
    sweep = sweep_of(retrain=list(REGIMES))  # cumulative: instant at 0.9 trains 4 epochs, like the ladder's 2 rungs
    lrs = {(p.schedule, p.retrain, p.target_sparsity):
           learning_rates(sweep, p.retrain, plan(sweep, p), p.schedule == "ladder") for p in expand(sweep)}
    for regime in ("lr_rewind", "weight_rewind", "reinit"):
        assert lrs["instant", regime, 0.5] == DENSE_LRS[2:]     # P = 2: dense epochs 2, 3
        assert lrs["instant", regime, 0.9] == DENSE_LRS          # P = 4: the whole dense schedule
        assert lrs["gradual2", regime, 0.5] == DENSE_LRS[3:] * 2  # two prunes of P = 1
        assert lrs["gradual2", regime, 0.9] == DENSE_LRS[2:] * 2  # two prunes of P = 2
        assert lrs["ladder", regime, None] == DENSE_LRS[2:] * 2   # a rung of P = 2 each
    assert lrs["instant", "finetune", 0.9] == [0.001] * 4 and lrs["ladder", "finetune", None] == [0.001] * 4

    # cosine restarts at every rung of a ladder; per prune, every schedule follows that same curve at a rung
    cosine = sweep_of(lr_schedule="cosine", ladder_budget="per_prune")
    curves = {(p.schedule, p.target_sparsity): learning_rates(cosine, "finetune", plan(cosine, p),
                                                                                  p.schedule == "ladder")
              for p in expand(cosine)}
    assert curves["ladder", None] == [0.001, 0.0005] * 2
    assert curves["instant", 0.9] == curves["gradual2", 0.9] == [0.001, 0.0005]
    # a ladder alone has nothing to compare at its rungs: cosine under the cumulative budget is fine
    alone = validate({**TINY, "dense": DENSE, "seeds": 1, "schedules": [LADDER],
                      "finetune": {"epochs": 2, "batch_size": 64, "lr_schedule": "cosine"}})
    assert learning_rates(alone, "finetune", plan(alone, expand(alone)[0]), True) == [0.001, 0.0005] * 2


def test_reported_lr_is_the_dense_schedules(rewinding):
    sweep, dense = rewinding
    run = TrialRun.of_point(sweep, point(sweep, "ladder", "lr_rewind"), dense, CPU)
    reports = [r for _ in range(run.total_epochs) for r in run.run_epoch()]
    assert [r["lr"] for r in reports] == DENSE_LRS[2:] * 2
    assert [r["target_sparsity"] for r in reports] == [0.5, 0.5, 0.9, 0.9]
    assert all(r["retrain"] == "lr_rewind" for r in reports)
    assert isinstance(run.learner.optimizer, torch.optim.SGD) and run.learner.optimizer.defaults["momentum"] == 0.9
    assert run.learner.loader.batch_size == DENSE["batch_size"]  # the dense training's steps per epoch, replayed


def test_a_dense_model_without_the_snapshots_a_resume_needs_is_refused_before_ray(tmp_path):
    from sweeps.config import ConfigError
    from sweeps.preflight import check_snapshots
    from sweeps.torch_files import save_torch

    sweep = sweep_of(retrain=["finetune", "weight_rewind"], ladder_budget="per_prune")
    check_snapshots(sweep, str(tmp_path))  # nothing trained yet: nothing to check
    save_torch(str(tmp_path / "dense" / "seed_0.pt"), {"state_dict": {}, REWIND: {3: {}}})
    with pytest.raises(ConfigError, match=r"weight_rewind starts from dense epoch\(s\) 2, which .*seed_0.pt does not "
                                          r"hold \(it was trained for another config\)"):
        check_snapshots(sweep, str(tmp_path))
    check_snapshots(sweep_of(), str(tmp_path))  # fine-tuning needs none


def test_dense_keeps_only_the_snapshots_the_sweep_needs_and_its_resume_keeps_them(rewinding):
    sweep, dense = rewinding
    # per prune, instant's and the ladder's phases are 2 epochs (rewind to dense epoch 4 - 2), gradual2's 1 (to 3)
    assert sorted(dense[REWIND]) == [2, 3]
    saved = {}  # what the dense task writes after every epoch, serialised there and then

    def on_epoch(epoch, epochs, state):
        buf = io.BytesIO()
        torch.save(state(), buf)
        saved[epoch] = buf.getvalue()

    again = train_dense(sweep, 0, CPU, on_epoch=on_epoch)
    for epoch in (2, 3):
        model = torch.load(io.BytesIO(saved[epoch]), weights_only=False)["model"]
        assert torch.equal(again[REWIND][epoch]["conv1.weight"], model["conv1.weight"])
    # a dense training killed after epoch 3 goes on from its checkpoint, snapshots kept
    resumed = train_dense(sweep, 0, CPU, resume=torch.load(io.BytesIO(saved[3]), weights_only=False))
    assert sorted(resumed[REWIND]) == [2, 3]
    for key, value in dense[REWIND][2].items():
        assert torch.equal(resumed[REWIND][2][key], value), key
    assert torch.equal(resumed["state_dict"]["fc.weight"], dense["state_dict"]["fc.weight"])
    assert train_dense(sweep_of(), 0, CPU)[REWIND] == {}  # fine-tuning needs none


def _first_training_state(run):
    """The model's state at its first training forward pass: where the first phase starts from."""
    seen = {}

    def hook(module, args):
        if not seen:
            seen.update({k: v.detach().clone() for k, v in module.state_dict().items()})

    handle = run.learner.model(0).register_forward_pre_hook(hook)
    [report] = run.run_epoch()
    handle.remove()
    return seen, report


def test_weight_rewinding_restores_the_dense_weights_of_epoch_t_minus_p_where_kept(rewinding):
    sweep, dense = rewinding
    run = TrialRun.of_point(sweep, point(sweep, "instant", "weight_rewind", 0.9), dense, CPU)
    start, report = _first_training_state(run)
    snapshot = dense[REWIND][2]
    # the masks are those of magnitude pruning of the final dense weights
    final = TrialRun.of_point(sweep, point(sweep, "instant", "finetune", 0.9), dense, CPU).learner.model(0)
    pc.prune(final, 0.9)
    for name, module in pc.prunable_modules(final):
        mask = start[f"{name}.weight_mask"]
        assert torch.equal(mask, module.weight_mask)
        assert torch.equal(start[f"{name}.weight"], snapshot[f"{name}.weight"] * mask)
    others = [k for k in snapshot if not k.endswith(".weight") or k.replace(".weight", ".weight_mask") not in start]
    assert any("running_mean" in k for k in others) and any(k.endswith("bn1.weight") for k in others)
    for key in others:  # biases, BatchNorm affine parameters and running statistics: exactly the snapshot's
        assert torch.equal(start[key], snapshot[key]), key
    assert report["sparsity"] == pytest.approx(0.9, abs=1e-4) and report["lr"] == DENSE_LRS[2]


def test_reinit_starts_every_phase_from_one_fresh_initialisation(rewinding):
    sweep, dense = rewinding
    run = TrialRun.of_point(sweep, point(sweep, "instant", "reinit", 0.5), dense, CPU)
    first = run.learner.start_weights(run.plans[0].epochs[0].start)
    rng = torch.get_rng_state()
    again = run.learner.start_weights(run.plans[0].epochs[0].start)
    assert torch.equal(torch.get_rng_state(), rng)  # drawn aside: the trial's own RNG stream is untouched
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["conv1.weight"], dense["state_dict"]["conv1.weight"])
    start, _ = _first_training_state(run)
    mask = start["conv2.weight_mask"]
    assert torch.equal(start["conv2.weight"], first["conv2.weight"] * mask)


@pytest.mark.parametrize("stop", [2, 3])  # at a phase boundary (the next epoch prunes and rewinds), mid-phase
def test_resume_of_a_rewinding_trial_reproduces_its_numbers(rewinding, stop):
    sweep, dense = rewinding
    p = point(sweep, "ladder", "weight_rewind")  # two rungs of two epochs
    whole = TrialRun.of_point(sweep, p, dense, CPU)
    expected = [r for _ in range(whole.total_epochs) for r in whole.run_epoch()]
    first = TrialRun.of_point(sweep, p, dense, CPU)
    for _ in range(stop):
        first.run_epoch()
    buf = io.BytesIO()
    torch.save(first.state(), buf)
    second = TrialRun.of_point(sweep, p, dense, CPU)
    second.load_state(torch.load(io.BytesIO(buf.getvalue()), weights_only=False))
    rest = []
    while not second.done:
        rest.extend(second.run_epoch())
    timing = ("epoch_time_s", "samples_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in rest] == \
           [{k: v for k, v in r.items() if k not in timing} for r in expected[stop:]]


def test_geometric_grid_prunes_exact_counts():
    sweep = validate({**TINY, "dense": {"epochs": 1, "batch_size": 64}, "seeds": 1, "schedules": [LADDER],
                      "finetune": {"epochs": 1, "batch_size": 64}, "sparsities": {"geometric": 0.2, "levels": 4}})
    assert sweep.sparsities == [0.2, 0.36, 0.488, 0.5904]  # 1 - 0.8^l, exactly as written
    run = TrialRun.of_point(sweep, expand(sweep)[0], train_dense(sweep, 0, CPU), CPU)
    counts = []
    while not run.done:
        run.run_epoch()
        counts.append(sum(int((~m.weight_mask).sum()) for _, m in pc.prunable_modules(run.learner.model(0))))
    assert counts == [round(s * run.learner.prunable_params) for s in sweep.sparsities]


@pytest.mark.parametrize("policy", ["cumulative", "per_prune"])
def test_budgets_under_both_ladder_policies(policy):
    sweep = sweep_of(ladder_budget=policy)
    sweep = validate({**sweep.model_dump(mode="json"), "sparsities": [0.5, 0.8, 0.9]})
    ladder = plan(sweep, point(sweep, "ladder", "finetune"))
    assert [p.epochs for p in ladder] == [2, 2, 2]
    for rung, target in enumerate([0.5, 0.8, 0.9]):
        spent = sum(p.epochs for p in ladder[:rung + 1])
        expected = spent if policy == "cumulative" else 2  # per prune: every prune gets finetune.epochs
        for schedule in ("instant", "gradual2"):
            phases = plan(sweep, point(sweep, schedule, "finetune", target))
            assert sum(p.epochs for p in phases) == budget(sweep, target) == expected


def test_gradient_scoring_leaves_batchnorm_statistics_untouched():
    sweep = validate({**TINY, "seeds": 1, "pruning": {"criterion": "gradient", "gradient_batches": 3},
                      "schedules": [{"name": "instant", "kind": "instant"}]})
    dense = train_dense(sweep, 0, CPU)
    run = TrialRun.of_point(sweep, expand(sweep)[0], dense, CPU)
    start, _ = _first_training_state(run)
    norms = [k for k in dense["state_dict"] if "running" in k or "num_batches" in k]
    assert len(norms) == 9
    for key in norms:
        assert torch.equal(start[key], dense["state_dict"][key]), key
    assert start["bn1.num_batches_tracked"] == dense["state_dict"]["bn1.num_batches_tracked"]
    # and the gradients were taken in training mode, as before
    model = run.learner.model(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    assert pc.accumulate_gradients(model.train(), [(x, y)]) == 1
    assert model.conv1.weight.grad.abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_filter_pruned_trials_report_compact_macs_and_n_m_trials_end_exact():
    sweep = validate({**TINY, "seeds": 1, "pruning": {"structure": "filters", "scope": "layerwise"}})
    run = TrialRun.of_point(sweep, point(sweep, "gradual2", "finetune", 0.9), train_dense(sweep, 0, CPU), CPU)
    dense_macs = pc.sparsity_report(run.learner.model(0), (1, 8, 8))["macs_dense"]
    reports = []
    for _ in range(2):  # what the trial reports is the compacted model's count, after each prune
        reports.extend(run.run_epoch())
        small = pc.compact(run.learner.model(0), torch.zeros(2, 1, 8, 8))
        assert reports[-1]["compact_macs"] == pc.sparsity_report(small, (1, 8, 8))["macs_dense"]
    assert dense_macs > reports[0]["compact_macs"] > reports[1]["compact_macs"]
    assert all(run.learner.model(0).get_submodule(f"bn{i}").weight_mask.sum() == round(0.1 * 16 * (1 if i == 1 else 2))
               for i in (1, 2, 3))  # 90% of every conv's filters, and their norms' channels

    sweep = validate({**TINY, "seeds": 1, "sparsities": [0.5], "pruning": {"structure": "2:4", "exclude": ["conv1"]}})
    run = TrialRun.of_point(sweep, point(sweep, "gradual2", "finetune", 0.5), train_dense(sweep, 0, CPU), CPU)
    for epoch in range(2):
        [report] = run.run_epoch()
        assert "compact_macs" not in report
        for name in ("conv2", "conv3", "fc"):
            groups = pc.get_mask(run.learner.model(0).get_submodule(name))
            groups = (groups.movedim(1, -1) if groups.dim() > 2 else groups).reshape(-1, 4).sum(1)
            assert (groups >= 2).all() if epoch == 0 else (groups == 2).all()
    assert report["sparsity"] == pytest.approx(0.5 * (1 - 16 * 9 / run.learner.prunable_params))


@pytest.mark.parametrize("retrain", ["weight_rewind", "reinit"])
def test_filter_pruning_with_rewinding_regimes_keeps_norm_masks(retrain):
    sweep = validate({**TINY, "seeds": 1, "dense": DENSE, "pruning": {"structure": "filters", "scope": "layerwise"},
                      "finetune": {"epochs": 2, "batch_size": 64, "retrain": [retrain]}})
    run = TrialRun.of_point(sweep, point(sweep, "gradual2", retrain, 0.5), train_dense(sweep, 0, CPU), CPU)
    while not run.done:
        run.run_epoch()
    keep = pc.get_mask(run.learner.model(0).conv2).flatten(1).all(1)
    assert torch.all(run.learner.model(0).bn2.weight[~keep] == 0) and torch.all(run.learner.model(0).bn2.bias[~keep] == 0)
    assert int((~keep).sum()) == 16
