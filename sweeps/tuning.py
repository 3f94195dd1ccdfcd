"""Ray Tune's side of a sweep: the trainable with its resources, the Tuner, its reporter, callbacks
and run config, and what a fit ended with."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from analysis import attempts, storage
from analysis.messages import one_line
from analysis.schema import (EPOCH, PARAM, RETRAIN, SCHEDULE, SEED, TARGET_SPARSITY, TEST_ACCURACY, TrialPoint,
                             tune_points)

from . import console
from .config import ConfigError, SweepConfig
from .groups import LABEL, Grouping, trial_name
from .plan import trial_plan


def trial_dirname(trial) -> str:
    """Ray Tune's folder of ``trial``: :func:`trial_name`."""
    return trial_name(trial.trial_id, trial.config)


def _trainable(config: SweepConfig, dense_refs: dict, path: str, earlier: dict, done: set[str],
               grouping: Grouping, dtype: str | None, named: bool):
    """The trial function with the validated config, the dense models, the experiment's location,
    the ``earlier`` attempts of its points and those ``done`` before bound once
    (``tune.with_parameters``), and the trial's resources (a fused group's: :meth:`ResourcesConfig.of_group`).
    With ``named`` (an actor per trial), its actor's ``repr`` is the trial's name (:func:`trial_name`):
    Ray shows it in the dashboard's Actors view and before every line the trial prints; an actor
    that Ray Tune reuses for trial after trial keeps Tune's name for all (``train_prune_train``)."""
    from ray import tune
    from ray.tune.trainable.function_trainable import wrap_function

    from .trainable import chaos_from_env, train_prune_train

    cpu, gpu = config.resources.of_group(grouping.fused)
    bound = tune.with_parameters(train_prune_train, sweep=config, dense_refs=dense_refs, experiment=path,
                                 earlier=earlier, chaos=chaos_from_env(), done=frozenset(done), dtype=dtype,
                                 loud=console.verbose())

    class Trial(wrap_function(bound)):
        def __repr__(self):
            return trial_name(self.trial_id, self.config) if named else super().__repr__()

    resourced = tune.with_resources(Trial, {"cpu": cpu, "gpu": gpu})
    # Tune's trial names (train_prune_train_<id>) and the dashboard's Class column
    resourced.__name__ = resourced.__qualname__ = train_prune_train.__name__
    return resourced


def _reporter(fused: bool):
    """A compact progress table: the trial's point (a fused group's label), epoch, test accuracy
    (a group's: its members' mean)."""
    from ray import tune

    columns = ({LABEL: "fused group"} if fused else
               {f"{PARAM}/{SCHEDULE}": "schedule", f"{PARAM}/{RETRAIN}": "retrain",
                f"{PARAM}/{TARGET_SPARSITY}": "target", f"{PARAM}/{SEED}": "seed"})
    every, rows = console.table(console.verbose())
    return tune.CLIReporter(parameter_columns=columns,
                            metric_columns={EPOCH: "epoch", TEST_ACCURACY: "mean test_acc" if fused else "test_acc"},
                            max_report_frequency=every, max_progress_rows=rows, max_column_length=40 if fused else 20)


def _callbacks(points: int, done: set[str], fused: bool, trackers: list, experiment: str) -> list:
    """The sweep's Ray Tune callbacks: the progress line over ``points`` trial points (``done`` of
    them finished before; it also exports the counts as Ray metrics of ``experiment``), Tune's CSV and JSON loggers (its TensorBoard one only when asked for:
    thousands of trials need no event files by default) and the ``trackers`` (:func:`sweeps.trackers.callbacks`)."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from .progress import ProgressLine

    def weight(trial) -> int:  # the points a Tune trial trains that were not finished before
        return sum(p.label not in done for p in tune_points(trial.config))

    line = ProgressLine(points, done_before=len(done), weight=weight if fused else None, experiment=experiment)
    return [line, CSVLoggerCallback(), JsonLoggerCallback(), *trackers]


def _run_config(config: SweepConfig, path: str, callbacks: list, fused: bool):
    from ray import tune

    storage_path, name = storage.split(path)
    return tune.RunConfig(
        callbacks=callbacks,
        progress_reporter=_reporter(fused),
        name=name,
        storage_path=storage_path,
        failure_config=tune.FailureConfig(max_failures=config.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=config.checkpoint.keep),
        verbose=2 if console.verbose() else 1,
    )


@dataclass
class Outcome:
    """What a run or resume ended with: the experiment's path, Ray Tune's ResultGrid of this session's
    trials, the trials the sweep has, how many of them have finished (this session or before) and
    diverged, and the seeds whose dense training failed for good (seed: why)."""

    path: str
    results: object
    trials: int
    dense_failed: dict
    finished: int = 0
    diverged: int = 0


def _scan(config: SweepConfig, path: str, points: dict[str, TrialPoint]) -> list:
    """:func:`analysis.attempts.scan` of the experiment of ``config`` at ``path``, whose grid is
    ``points`` ({label: point}), its storage errors one line; trials of older experiments, whose
    reports lack their budget, are judged by the plan's."""

    def budget(label: str):
        return trial_plan(config, points[label]).total_epochs if label in points else None

    try:
        return attempts.scan(path, budget)
    except Exception as exc:  # an unreachable or refusing object store
        raise ConfigError(f"{path}: cannot read its trial folders ({one_line(exc)})") from None


def earlier_attempts(config: SweepConfig, path: str,
                     points: dict[str, TrialPoint]) -> tuple[set[str], dict[str, list[str]]]:
    """What an experiment's trial folders say (:func:`analysis.attempts.scan`): the points of the grid
    ``points`` finished, and for each other point the folders of its attempts, the furthest first
    (where it continues)."""
    tries = _scan(config, path, points)
    done = {a.point for a in tries if a.finished and a.point in points}
    earlier: dict[str, list[str]] = {}
    for a in sorted(tries, key=lambda a: (-a.epoch, a.trial_id)):
        if a.point not in done:
            earlier.setdefault(a.point, []).append(a.folder)
    return done, earlier


def fit(config: SweepConfig, path: str, restore: bool, checkpoint: dict | None = None,
        trackers: list[str] = (), grouping: Grouping = Grouping()) -> Outcome:
    """Run the sweep's grid with Ray Tune into the experiment at ``path``, one trial per point or per
    fused group (``grouping``: :mod:`sweeps.groups`); the dense models first
    (:class:`sweeps.dense_phase.DensePhase`). With ``restore``, what the experiment's own files say
    decides what runs (:func:`earlier_attempts`): every finished point stays as it is, every other
    point runs once, in a trial that continues from the newest readable checkpoint of its earlier
    attempts. Ray Tune's own experiment state (its pickles) is never read: it may be missing (a
    driver killed before Tune's first snapshot), cut short (a full disk) or not the user's."""
    # Tune's classic reporter: one compact table instead of a config dump per trial
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune

    from . import ray_private
    from . import trackers as tracking
    from .dense_phase import DensePhase, active
    from .search import GridSearch
    from .loops import dtype_from_env

    dtype = dtype_from_env()
    phase = DensePhase(config, path, checkpoint, grouping, dtype)
    points = [p for u in phase.units for p in u.points]
    by_label = {p.label: p for p in points}
    done, earlier = earlier_attempts(config, path, by_label) if restore else (set(), {})
    if restore:
        print(f"{path}: {len(done)} of {len(points)} trial points finished before; {len(points) - len(done)} to run"
              + (f", {sum(p in earlier for p in by_label.keys() - done)} of them from their checkpoints" if earlier else ""),
              flush=True)
    # with a searcher other than its grid, Tune keeps one trial waiting for resources unless told
    # otherwise: keep as many waiting as it would for the grid (what an autoscaler sees as demand)
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(max(200, int(ray.cluster_resources().get("CPU", 1) * 1.1))))
    added = tracking.callbacks(list(trackers), path)
    with active(phase.start()):
        named = _watched()
        tuner = tune.Tuner(
            _trainable(config, phase.refs, path, earlier, done, grouping, dtype, named),
            tune_config=tune.TuneConfig(search_alg=GridSearch(config.max_concurrent_trials, done=done), num_samples=-1,
                                        reuse_actors=not named, trial_dirname_creator=trial_dirname),
            run_config=_run_config(config, path, _callbacks(len(points), done, grouping.fused, added,
                                                            storage.name(path)), grouping.fused),
        )
        # the loggers are ours (:func:`_callbacks`)
        with (_environment(TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1", **tracking.environment(list(trackers))),
              ray_private.unforced_snapshots(), console.driver(console.verbose())):
            results = tuner.fit()
        phase.poll()
        ended = [a for a in _scan(config, path, by_label) if a.finished and a.point in by_label]
        return Outcome(path, results, len(points), dict(phase.failed), finished=len({a.point for a in ended}),
                       diverged=len({a.point for a in ended if a.diverged}))


def _watched() -> bool:
    """Whether the sweep's Ray runs a dashboard: then each trial gets an actor of its own, which the
    dashboard shows by the trial's name (:func:`_trainable`), at the cost of a worker started per
    trial (about 3 s here, torch imported again); without one Ray Tune reuses the actors."""
    from . import ray_private

    return ray_private.dashboard_url() is not None


@contextlib.contextmanager
def _environment(**values: str):
    """``os.environ`` with ``values`` set, as it was afterwards."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
