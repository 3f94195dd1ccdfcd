"""The seam between plans and learners: a plan is plain data from the config and the point, and
TrialRun runs K plans on any learner of K members, each member ending on its own."""
import dataclasses
import math

import pytest
import torch

from sweeps.config import validate
from sweeps.dense_training import train_dense
from sweeps.learner import ModelLearner
from sweeps.plan import Start, expand, trial_plan
from sweeps.torch_files import SNAPSHOTS
from sweeps.trial import TrialRun

from .conftest import TINY

CPU = torch.device("cpu")
TIMING = ("epoch_time_s", "samples_per_s")


class OneAfterAnother:
    """A learner of K members that holds K one-model learners and runs each call member by member:
    the simplest learner of many, here to show that TrialRun needs nothing but the interface."""

    def __init__(self, learners):
        self.learners = learners
        self.members = len(learners)
        first = learners[0]
        self.layers, self.prunable_params = first.layers, first.prunable_params
        self.train_size, self.has_validation = first.train_size, first.has_validation

    def _each(self, method, values, *args):
        return [getattr(learner, method)([value], *args)[0] for learner, value in zip(self.learners, values)]

    def prune(self, targets):
        return self._each("prune", targets)

    def start(self, starts):
        for learner, start in zip(self.learners, starts):
            learner.start([start])

    def train_epoch(self, lrs):
        return self._each("train_epoch", lrs)

    def evaluate(self, which, split="test"):
        return self._each("evaluate", which, split)

    def measure(self, which):
        return self._each("measure", which)

    def model(self, member):
        return self.learners[member].model(0)

    def state(self):
        return {"members": [learner.state() for learner in self.learners]}

    def load_state(self, state):
        for learner, saved in zip(self.learners, state["members"]):
            learner.load_state(saved)


def _learner(sweep, plan, dense):
    return ModelLearner(sweep, CPU, plan.seeds, plan.optimizer, plan.batch_size, weights=dense["state_dict"],
                        snapshots=dense.get(SNAPSHOTS), seed=plan.point.seed)


def _without_timing(reports):
    """Reports without their timings, NaN written as "nan" (so that equal reports compare equal)."""
    return [{k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items() if k not in TIMING}
            for r in reports]


@pytest.fixture(scope="module")
def sweep_and_dense():
    sweep = validate({**TINY, "finetune": {"epochs": 4, "batch_size": 64, "retrain": ["finetune", "lr_rewind"]},
                      "dense": {"epochs": 4, "optimizer": {"name": "sgd", "lr": 0.05}, "batch_size": 64},
                      "schedules": [{"name": "instant", "kind": "instant"}, {"name": "gradual2", "kind": "gradual",
                                                                               "steps": 2}]})
    return sweep, train_dense(sweep, 0, CPU)


def test_a_plan_is_plain_data_from_the_config_and_the_point(sweep_and_dense):
    sweep, _ = sweep_and_dense
    point = next(p for p in expand(sweep) if p.schedule == "gradual2" and p.retrain == "lr_rewind" and p.seed == 0
                 and p.target_sparsity == 0.9)
    plan = trial_plan(sweep, point)
    assert plan == trial_plan(sweep, point)  # the same config and point plan the same trial
    assert [e.prune_to for e in plan.epochs] == [pytest.approx(1 - 0.1 ** 0.5), None, 0.9, None]  # gradual's steps
    # lr_rewind: each 2-epoch phase replays the dense cosine schedule's last 2 rates, fresh optimizer
    dense_lrs = [0.05 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert [e.lr for e in plan.epochs] == pytest.approx(dense_lrs[2:] * 2)
    assert [e.start for e in plan.epochs] == [Start(fresh_optimizer=True), None, Start(fresh_optimizer=True), None]
    assert plan.optimizer == sweep.dense.optimizer and plan.batch_size == sweep.dense.batch_size
    assert [e.checkpoint for e in plan.epochs] == [True] * 4  # about ten checkpoints a trial: every epoch of 4
    assert all(dataclasses.is_dataclass(e) for e in plan.epochs)


def test_k_plans_on_a_learner_of_k_members_equal_each_member_alone_and_end_on_their_own(sweep_and_dense):
    sweep, dense = sweep_and_dense
    points = [p for p in expand(sweep) if p.seed == 0 and p.target_sparsity == 0.9 and p.retrain == "finetune"]
    plans = [trial_plan(sweep, p) for p in points]
    plans[1] = plans[1].with_lr_from(3, math.inf)  # the second member diverges in its third epoch
    alone = []
    for plan in plans:
        run = TrialRun([plan], _learner(sweep, plan, dense), [dense["test_accuracy"]])
        reports = []
        while not run.done:
            reports += run.run_epoch()
        alone.append(reports)
    together = TrialRun(plans, OneAfterAnother([_learner(sweep, p, dense) for p in plans]),
                        [dense["test_accuracy"]] * 2)
    reports = []
    while not together.done:
        reports += together.run_epoch()
    mine = [[r for r in reports if r["schedule"] == p.schedule] for p in points]
    assert _without_timing(mine[0]) == _without_timing(alone[0]) and len(mine[0]) == 4
    assert _without_timing(mine[1]) == _without_timing(alone[1])
    assert [r["diverged"] for r in mine[1]] == [False, False, True] and together.diverged_at == [None, 3]


def test_a_run_of_k_members_resumes_from_its_state(sweep_and_dense):
    sweep, dense = sweep_and_dense
    points = [p for p in expand(sweep) if p.seed == 0 and p.target_sparsity == 0.9][:2]
    plans = [trial_plan(sweep, p) for p in points]

    def fresh():
        return TrialRun(plans, OneAfterAnother([_learner(sweep, p, dense) for p in plans]), [0.5, 0.5])

    whole, first = fresh(), fresh()
    expected = [r for _ in range(4) for r in whole.run_epoch()]
    got = [r for _ in range(2) for r in first.run_epoch()]
    second = fresh()
    second.load_state(first.state())
    while not second.done:
        got += second.run_epoch()
    assert _without_timing(got) == _without_timing(expected)


def test_plans_of_unequal_length_or_a_learner_of_other_size_are_refused(sweep_and_dense):
    sweep, dense = sweep_and_dense
    plan = trial_plan(sweep, expand(sweep)[0])
    with pytest.raises(ValueError, match="runs as many plans of one length"):
        TrialRun([plan, plan], _learner(sweep, plan, dense), [0.5, 0.5])
