"""The Ray Tune trainable: one train-prune-train trial, checkpointed by the sweep's checkpoint policy."""
from __future__ import annotations

import io
import math
import os
import signal
import sys
import tempfile
from dataclasses import dataclass

import ray
import torch
from ray import tune

import pruning_core as pc
from analysis import schema, storage, trial_results
from analysis.attempts import point_label
from analysis.messages import one_line

from . import console, ray_metrics
from .config import SweepConfig
from .loops import device_for, set_dtype, use_cpus
from .plan import TrialPlan, trial_plan
from .torch_files import load_torch
from .trial import TrialRun

STATE_FILE = "state.pt"
CHAOS_ENV = "PRUNESWEEP_CHAOS_KILL_AT_EPOCH"
DIVERGE_ENV = "PRUNESWEEP_CHAOS_DIVERGE"
CHAOS_MARKER = ".chaos_killed"


@dataclass(frozen=True)
class Chaos:
    """Fault injection, for checking what a sweep survives: ``kill_at_epoch`` (``CHAOS_ENV=N``)
    SIGKILLs every trial's worker once, mid-epoch N+1; ``diverge`` (``DIVERGE_ENV=LABEL@N``) gives
    the trial named LABEL (its folder's suffix, e.g. ``gradual2_s0.9_seed1``) an infinite learning
    rate from epoch N on, so that its training really diverges."""

    kill_at_epoch: int | None = None
    diverge: tuple[str, int] | None = None

    def plan(self, plan: TrialPlan) -> TrialPlan:
        """``plan``, diverging from its epoch N on where ``diverge`` names its point."""
        if self.diverge is not None and self.diverge[0] == plan.point.label:
            return plan.with_lr_from(self.diverge[1], math.inf)
        return plan

    def apply(self, run: TrialRun, trial_dir: str) -> None:
        if self.kill_at_epoch is not None:
            kill_once_mid_epoch(run, self.kill_at_epoch, os.path.join(trial_dir, CHAOS_MARKER))


def chaos_from_env() -> Chaos:
    """The fault injection asked for by ``CHAOS_ENV`` and ``DIVERGE_ENV`` (none when unset)."""
    kill = os.environ.get(CHAOS_ENV)
    diverge = os.environ.get(DIVERGE_ENV)
    if diverge:
        label, _, epoch = diverge.rpartition("@")
        diverge = (label, int(epoch))
    return Chaos(int(kill) if kill else None, diverge or None)


def kill_once_mid_epoch(run: TrialRun, kill_at_epoch: int, marker: str) -> None:
    """Fault injection: SIGKILL this worker at the second optimizer step after ``kill_at_epoch``
    epochs (one training batch into the epoch), once per trial (``marker`` remembers it), as a
    real worker death mid-epoch would."""
    steps = 0

    def hook(optimizer, args, kwargs):
        nonlocal steps
        if run.epoch == kill_at_epoch and not os.path.exists(marker):
            steps += 1
            if steps == 2:
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)

    run.learner.add_step_hook(hook)


def train_prune_train(config: dict, sweep: SweepConfig, dense_refs: dict, experiment: str,
                      earlier: dict | None = None, chaos: Chaos = Chaos(), done: frozenset = frozenset(),
                      dtype: str | None = None, loud: bool = False) -> None:
    """Tune function trainable of one trial point (``config[PARAM]``) or, in a fused experiment, of
    a group of points trained as one computation (``config[MEMBERS]``: :mod:`sweeps.groups`).
    ``sweep``, the config validated on the driver, the dense models, the experiment's location, the
    folders of earlier attempts of each point (``earlier``: {label: folders, furthest first}) and the
    points finished before (``done``: a resumed group trains on with them, but records them no more)
    arrive once through ``tune.with_parameters``. Continues from the newest readable checkpoint
    (:func:`checkpoints`): Tune's when it restarts a trial, else an earlier attempt's.

    Ray Tune gets the few numbers of :data:`analysis.schema.TUNE_METRICS` every epoch (a group's: its
    epoch and its members' mean test accuracy); every report of every point, whole, goes to the
    trial's results file, rewritten at each checkpoint (every ``checkpoint.every_epochs``) and at the
    end, when each pruned model is saved compactly too. Each point's epoch, sparsity, test accuracy
    and state are Ray metrics (:mod:`sweeps.ray_metrics`). Ray's own INFO lines (a checkpoint
    written, each epoch) are printed only when ``loud`` (``-v``: :mod:`sweeps.console`).
    """
    console.quiet_ray_loggers(loud)
    points = schema.tune_points(config)
    grouped = schema.MEMBERS in config
    set_dtype(dtype)
    use_cpus(sweep.resources.of_group(grouped)[0])
    context = tune.get_context()
    trial_dir = context.get_trial_dir()
    files = TrialFiles(storage.join(experiment, os.path.basename(trial_dir)), context.get_trial_id(), grouped)
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    device = device_for(gpu_ids)
    plans = [chaos.plan(trial_plan(sweep, p)) for p in points]
    denses = ray.get([dense_refs[p.seed] for p in points])

    def fresh() -> TrialRun:
        return TrialRun.of_points(sweep, points, denses, device, plans, fused=grouped)

    run = fresh()
    history = []
    checkpoint = tune.get_checkpoint()
    before = list(dict.fromkeys(f for p in points for f in (earlier or {}).get(p.label, [])))
    candidates = checkpoints(checkpoint, files.folder, before)
    recorded = [k for k, p in enumerate(points) if p.label not in done]  # the members this trial records
    for candidate, state in readable(candidates):
        if state.get("done"):
            # finished before the driver recorded it: record and announce the final result again, train nothing
            files.write_results(_kept(state["history"], done), run.learner.layers)
            last = {point_label(r): r for r in state["history"]}  # each point's last report
            tune.report(_for_tune(list(last.values()), run.total_epochs))
            return
        try:
            run.load_state(state)
        except Exception as exc:  # a state of another layout (an experiment resumed with --force)
            print(f"checkpoint {candidate} does not fit this trial ({one_line(exc)}); trying the one kept before it",
                  file=sys.stderr, flush=True)
            run = fresh()
            continue
        history = state["history"]
        if candidate != candidates[0] or checkpoint is None:
            print(f"continuing from {candidate} (epoch {run.epoch})", flush=True)
        break
    else:
        if candidates:
            print("no checkpoint of this trial can be used: it starts from the beginning", file=sys.stderr, flush=True)
    where = {"node_id": ray.get_runtime_context().get_node_id(), "device": str(device), "gpu_ids": gpu_ids,
             **({schema.GROUP: files.trial_id} if grouped else {})}
    chaos.apply(run, trial_dir)
    experiment_name, name = storage.name(experiment), os.path.basename(trial_dir)
    while not run.done:
        reports = [_checked({**r, **where}) for r in run.run_epoch()]
        history += reports
        ray_metrics.trial_epoch(experiment_name, name, [r for r in reports if point_label(r) not in done], run.done)
        for r in reports:
            if r.get(schema.DIVERGED) and grouped:
                print(f"{point_label(r)} diverged in epoch {r[schema.DIVERGED_EPOCH]}: it ends there; the other "
                      "members go on", file=sys.stderr, flush=True)
        summary = _for_tune(reports, run.total_epochs)
        if run.done:
            for k in recorded:
                if run.diverged_at[k] is None:
                    files.write_model(run.learner.model(k), points[k].label)
            files.write_results(_kept(history, done), run.learner.layers)  # last: a finished results file is a finished trial
            _report(summary, {"done": True, "history": history})
        elif plans[0].epochs[run.epoch - 1].checkpoint:
            files.write_results(_kept(history, done), run.learner.layers)
            _report(summary, {**run.state(), "history": history})
        else:
            tune.report(summary)


def _kept(history: list[dict], done) -> list[dict]:
    """The reports of ``history`` of points not finished before (``done``: recorded by an earlier attempt)."""
    return [r for r in history if point_label(r) not in done] if done else history


def _for_tune(reports: list[dict], budget: int) -> dict:
    """What Ray Tune gets of an epoch's ``reports``: a single trial's own few numbers
    (:func:`analysis.schema.for_tune`); a group's epoch, budget and its running members' mean test accuracy."""
    if len(reports) == 1 and schema.GROUP not in reports[0]:
        return schema.for_tune(reports[0])
    healthy = [r[schema.TEST_ACCURACY] for r in reports if not r.get(schema.DIVERGED)]
    out = {schema.EPOCH: max(r[schema.EPOCH] for r in reports), schema.BUDGET_EPOCHS: budget}
    if healthy:
        out[schema.TEST_ACCURACY] = sum(healthy) / len(healthy)
    return out


@dataclass(frozen=True)
class TrialFiles:
    """What a trial writes into its folder in the experiment's storage, beside Ray Tune's files."""

    folder: str
    trial_id: str
    grouped: bool = False  # a fused group's: each row's trial id is its member's (:func:`analysis.schema.member_trial_id`)

    def write_results(self, history: list[dict], layers: list[str]) -> None:
        ids = ([schema.member_trial_id(self.trial_id, point_label(r)) for r in history] if self.grouped else self.trial_id)
        trial_results.write(storage.join(self.folder, schema.TRIAL_RESULTS_FILE), ids, history, layers)

    def write_model(self, model, label: str) -> None:
        """A finished point's pruned model, compactly (:func:`pruning_core.save_pruned`)."""
        buf = io.BytesIO()
        pc.save_pruned(model, buf)
        name = schema.pruned_model_file(label if self.grouped else None)
        storage.write_bytes(storage.join(self.folder, name), buf.getvalue())


def _checkpoints(folder: str) -> list[str]:
    """The checkpoint folders Ray Tune kept in a trial folder in storage, the newest first."""
    return sorted((n for n in storage.list_dir(folder) if n.startswith("checkpoint_")), reverse=True)


def checkpoints(checkpoint, folder: str, earlier: list[str]) -> list[str]:
    """Where a trial may continue from, the newest first: Ray Tune's ``checkpoint`` when it restarts
    the trial and those kept before it (in ``folder``, the trial's folder in storage), then the
    checkpoints of the ``earlier`` attempts of its point (folders, furthest first)."""
    own = []
    if checkpoint is not None:
        newest = os.path.basename(checkpoint.path.rstrip("/"))
        own = [storage.join(folder, n) for n in _checkpoints(folder) if n <= newest]
    return own + [storage.join(f, n) for f in earlier for n in _checkpoints(f)]


def readable(candidates: list[str]):
    """``(checkpoint, state)`` of each of ``candidates`` that can be read, in order; one that cannot
    (cut short, or holding more than data: :func:`sweeps.torch_files.load_torch`) is passed over, saying so."""
    for candidate in candidates:
        try:
            yield candidate, load_torch(storage.join(candidate, STATE_FILE))
        except Exception as exc:
            print(f"checkpoint {candidate} cannot be read ({one_line(exc)}); trying the one kept before it",
                  file=sys.stderr, flush=True)


def _report(report: dict, state: dict) -> None:
    """Report to Tune with a checkpoint holding ``state``."""
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state, os.path.join(folder, STATE_FILE))
        tune.report(schema.for_tune(report), checkpoint=tune.Checkpoint.from_directory(folder))


def _checked(report: dict) -> dict:
    """``report`` if every name in it is a declared metric (:data:`analysis.schema.METRICS`)."""
    unknown = schema.undeclared(report)
    if unknown:
        raise ValueError(f"reported metric(s) {', '.join(unknown)} are not declared in analysis.schema.METRICS")
    return report
