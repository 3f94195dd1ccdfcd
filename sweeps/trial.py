"""A trial run: plans (:mod:`sweeps.plan`) carried out epoch by epoch by a learner
(:mod:`sweeps.learner`), and the report of every epoch.

Nothing here imports Ray: the Tune trainable (:mod:`sweeps.trainable`) and the benchmarks drive
the same :class:`TrialRun`. It runs K plans of one architecture on a learner of K members (one
report per member and epoch); each member ends on its own, when its budget is trained or when it
diverges (its loss or weights stop being finite), without changing any other member.
"""
from __future__ import annotations

from typing import Sequence

import torch

from analysis.schema import (BUDGET_EPOCHS, DIVERGED, DIVERGED_EPOCH, EPOCH, LAYER_SPARSITY, TEST_ACCURACY,
                             compression_ratio)

from .learner import Learner, ModelLearner
from .plan import Epoch, TrialPlan, trial_plan
from .torch_files import SNAPSHOTS


class TrialRun:
    """Run ``plans`` (one per member, of equal length) on ``learner``: call :meth:`run_epoch` until
    :attr:`done`. ``dense_accuracies`` are the members' dense models' test accuracies (reported
    beside every epoch). :meth:`state` and :meth:`load_state` hold everything needed to continue
    bit for bit."""

    def __init__(self, plans: Sequence[TrialPlan], learner: Learner, dense_accuracies: Sequence[float]):
        if len({p.total_epochs for p in plans}) != 1 or learner.members != len(plans):
            raise ValueError(f"a learner of {learner.members} member(s) runs as many plans of one length; "
                             f"got {len(plans)} of {sorted({p.total_epochs for p in plans})} epochs")
        self.plans, self.learner, self.dense_accuracies = list(plans), learner, list(dense_accuracies)
        self.total_epochs = plans[0].total_epochs
        self.epoch = 0  # epochs done
        self.diverged_at: list[int | None] = [None] * len(plans)

    @classmethod
    def of_point(cls, sweep, point, dense: dict, device: torch.device, plan: TrialPlan | None = None) -> "TrialRun":
        """The run of one trial point from its seed's ``dense`` model (a dict from
        :func:`sweeps.dense_training.train_dense`) on ``device``: its plan (``plan``, if given, else
        :func:`sweeps.plan.trial_plan`) on a :class:`~sweeps.learner.ModelLearner`."""
        plan = plan or trial_plan(sweep, point)
        learner = ModelLearner(sweep, device, plan.seeds, plan.optimizer, plan.batch_size, weights=dense["state_dict"],
                               snapshots=dense.get(SNAPSHOTS), seed=point.seed)
        return cls([plan], learner, [dense["test_accuracy"]])

    @classmethod
    def of_points(cls, sweep, points, denses: Sequence[dict], device: torch.device,
                  plans: Sequence[TrialPlan] | None = None, fused: bool | None = None) -> "TrialRun":
        """The run of a group of trial points, each from its seed's dense model in ``denses``: one
        point as :meth:`of_point`, several (or one, with ``fused``) fused on a
        :class:`~sweeps.fused.FusedLearner` (they must share batch size, optimizer kind and epoch
        count, else :class:`~sweeps.fused.FusionError`)."""
        plans = list(plans) if plans is not None else [trial_plan(sweep, p) for p in points]
        if not len(points) == len(plans) == len(denses):
            raise ValueError(f"one plan and one dense model per point; got {len(points)} points, {len(plans)} plans "
                             f"and {len(denses)} dense models")
        if len(plans) == 1 and not fused:
            return cls.of_point(sweep, points[0], denses[0], device, plans[0])
        from .fused import FusedLearner, FusionError

        for what, values in (("batch size", {p.batch_size for p in plans}), ("epochs", {p.total_epochs for p in plans})):
            if len(values) > 1:
                raise FusionError(f"fused trial points share their {what}; these have {sorted(values)}")
        learner = FusedLearner(sweep, device, [p.seeds for p in plans], [p.optimizer for p in plans],
                               plans[0].batch_size, weights=[d["state_dict"] for d in denses],
                               snapshots=[d.get(SNAPSHOTS) for d in denses], seed_of=[p.seed for p in points])
        return cls(plans, learner, [d["test_accuracy"] for d in denses])

    @property
    def done(self) -> bool:
        """Every member has trained its whole budget or diverged."""
        return self.epoch >= self.total_epochs or all(d is not None for d in self.diverged_at)

    def _running(self) -> list[bool]:
        return [d is None for d in self.diverged_at]

    def run_epoch(self) -> list[dict]:
        """Prune where a phase starts now, train one epoch, evaluate; returns the epoch's report of
        every member still running (a member whose loss or weights stop being finite reports
        ``diverged`` instead, and ends)."""
        steps = [plan.epochs[self.epoch] for plan in self.plans]
        reports: list[dict | None] = [None] * len(steps)
        running = self._running()
        targets = [s.prune_to if go else None for s, go in zip(steps, running)]
        if any(t is not None for t in targets):
            pruned = self.learner.prune(targets)
            for k, ok in enumerate(pruned):
                if ok is False:  # not finite before the prune: the epoch it would have begun
                    reports[k] = self._diverged(k, steps[k], self.epoch + 1)
                    running[k] = False
            self.learner.start([s.start if ok else None for s, ok in zip(steps, pruned)])
        stats = self.learner.train_epoch([s.lr if go else None for s, go in zip(steps, running)])
        self.epoch += 1
        for k, st in enumerate(stats):
            if st is not None and not st.finite:
                reports[k] = self._diverged(k, steps[k], self.epoch, lr=st.lr, train_loss=st.loss)
                running[k] = False
        tests = self.learner.evaluate(running)
        measured = self.learner.measure(running)
        vals = self.learner.evaluate(running, split="val") if self.learner.has_validation else [None] * len(steps)
        for k, go in enumerate(running):
            if go:
                reports[k] = self._report(k, steps[k], stats[k], tests[k], vals[k], measured[k])
        return [r for r in reports if r is not None]

    def _fields(self, k: int, step: Epoch) -> dict:
        return {**self.plans[k].point.report_fields(step.target), "step": step.step}

    def _diverged(self, k: int, step: Epoch, epoch: int, **seen) -> dict:
        """End member ``k`` at ``epoch``: the report of a trial whose loss or weights are no longer finite."""
        self.diverged_at[k] = epoch
        return {**self._fields(k, step), EPOCH: epoch, BUDGET_EPOCHS: self.total_epochs, DIVERGED: True,
                DIVERGED_EPOCH: epoch, "dense_test_accuracy": self.dense_accuracies[k],
                "prunable_params": self.learner.prunable_params, **seen}

    def _report(self, k: int, step: Epoch, stats, test, val, measured: dict) -> dict:
        sparsity = measured["sparsity"]
        validation = {"val_loss": val[0], "val_accuracy": val[1]} if val is not None else {}
        return {
            **self.plans[k].point.report_fields(step.target),
            "sparsity": sparsity,
            "compression_ratio": compression_ratio(sparsity),
            "step": step.step,
            EPOCH: self.epoch,
            BUDGET_EPOCHS: self.total_epochs,
            "lr": stats.lr,
            "train_loss": stats.loss,
            "train_accuracy": stats.accuracy,
            "test_loss": test[0],
            TEST_ACCURACY: test[1],
            **validation,
            "dense_test_accuracy": self.dense_accuracies[k],
            DIVERGED: False,
            "nonzero_params": measured["nonzero_params"],
            "prunable_params": self.learner.prunable_params,
            "epoch_time_s": stats.seconds,
            "samples_per_s": self.learner.train_size / stats.seconds,
            LAYER_SPARSITY: measured["layer_sparsity"],
            **({"compact_macs": measured["compact_macs"]} if "compact_macs" in measured else {}),
        }

    def state(self) -> dict:
        """The learner's state, the epochs done and which members diverged when."""
        return {**self.learner.state(), "epoch": self.epoch, "diverged_at": list(self.diverged_at)}

    def load_state(self, state: dict) -> None:
        self.learner.load_state(state)
        self.epoch = state["epoch"]
        diverged = state.get("diverged_at")
        self.diverged_at = list(diverged) if isinstance(diverged, list) else [diverged]  # one member's, before K
