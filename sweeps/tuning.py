"""Ray Tune's side of a sweep: the trainable with its resources, the Tuner (new or restored), its
reporter, callbacks and run config, and what a fit ended with."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from analysis import storage
from analysis.schema import EPOCH, PARAM, RETRAIN, SCHEDULE, SEED, TARGET_SPARSITY, TEST_ACCURACY, TrialPoint

from . import legacy, ray_private
from .config import SweepConfig
from .plan import expand


def trial_dirname(trial) -> str:
    """Short, readable trial folder names: ``<id>_<schedule>_s<target>_seed<n>``."""
    return f"{trial.trial_id}_{TrialPoint.from_dict(trial.config[PARAM]).label}"


def _trainable(config: SweepConfig, dense_refs: dict, path: str):
    """The trial function with the validated config, the dense models and the experiment's
    location bound once (``tune.with_parameters``), and the trial's resources."""
    from ray import tune

    from .trainable import chaos_from_env, train_prune_train

    resources = {"cpu": config.resources.cpu, "gpu": config.resources.gpu}
    bound = tune.with_parameters(train_prune_train, sweep=config, dense_refs=dense_refs, experiment=path,
                                 chaos=chaos_from_env())
    return tune.with_resources(bound, resources)


def _reporter():
    """A compact progress table: the trial's point, epoch, test accuracy."""
    from ray import tune

    return tune.CLIReporter(
        parameter_columns={f"{PARAM}/{SCHEDULE}": "schedule", f"{PARAM}/{RETRAIN}": "retrain",
                           f"{PARAM}/{TARGET_SPARSITY}": "target", f"{PARAM}/{SEED}": "seed"},
        metric_columns={EPOCH: "epoch", TEST_ACCURACY: "test_acc"},
        max_report_frequency=20,
    )


def _callbacks(trials: int, trackers: list, restored: list = ()) -> list:
    """The sweep's Ray Tune callbacks: the progress line over ``trials``, Tune's CSV and JSON loggers
    (its TensorBoard one only when asked for: thousands of trials need no event files by default), the
    ``trackers`` (:func:`sweeps.trackers.callbacks`), and those of the ``restored`` experiment that
    ``trackers`` do not replace."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from .progress import ProgressLine

    fresh = {type(c) for c in trackers}  # rebuilt for where the experiment is now, replacing restored ones
    kept = [c for c in restored if not isinstance(c, ProgressLine) and type(c) not in fresh]
    wanted = [CSVLoggerCallback(), JsonLoggerCallback()]
    return [ProgressLine(trials), *kept, *(c for c in wanted if not any(type(k) is type(c) for k in kept)), *trackers]


def _run_config(config: SweepConfig, path: str, callbacks: list):
    from ray import tune

    storage_path, name = storage.split(path)
    return tune.RunConfig(
        callbacks=callbacks,
        progress_reporter=_reporter(),
        name=name,
        storage_path=storage_path,
        failure_config=tune.FailureConfig(max_failures=config.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=config.checkpoint.keep),
        verbose=1,
    )


@dataclass
class Outcome:
    """What a run or resume ended with: the experiment's path, Ray Tune's ResultGrid, the trials the
    sweep has, and the seeds whose dense training failed for good (seed: why)."""

    path: str
    results: object
    trials: int
    dense_failed: dict


def fit(config: SweepConfig, path: str, restore: bool, checkpoint: dict | None = None, trackers: list[str] = (),
        wait_for: list[int] | None = None) -> Outcome:
    """Run the sweep's grid with Ray Tune into the experiment at ``path``: a new Tuner, or (``restore``)
    the experiment's own, continued (its unfinished trials from their checkpoints) with the grid as
    ``config`` has it now; the dense models first (:class:`sweeps.dense_phase.DensePhase`), waiting
    for those of the seeds ``wait_for`` before a restored trial starts."""
    # Tune's classic reporter: one compact table instead of a config dump per trial
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune

    from . import trackers as tracking
    from .dense_phase import DensePhase, active
    from .search import GridSearch

    points = expand(config)
    # with a searcher other than its grid, Tune keeps one trial waiting for resources unless told
    # otherwise: keep as many waiting as it would for the grid (what an autoscaler sees as demand)
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(max(200, int(ray.cluster_resources().get("CPU", 1) * 1.1))))
    added = tracking.callbacks(list(trackers), path)
    with active(DensePhase(config, path, checkpoint).start()) as phase:
        if restore:
            # restored trials start at once: their dense models must exist first, and the trainings
            # still running (new seeds') must hold their resources before those trials take them
            phase.wait(wait_for)
            phase.wait_reserved()
        trainable = _trainable(config, phase.refs, path)
        if restore and tune.Tuner.can_restore(path):
            legacy.alias_moved_modules()
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
            # a fresh GridSearch (restored from the experiment's searcher state, including experiments begun
            # before it existed) hands out the grid as it is now (extend grows it); the callbacks count that
            # grid and add this session's trackers
            ray_private.replace_restored(tuner, GridSearch(config.max_concurrent_trials),
                                         lambda restored: _callbacks(len(points), added, restored))
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=GridSearch(config.max_concurrent_trials), num_samples=-1,
                                            reuse_actors=True, trial_dirname_creator=trial_dirname),
                run_config=_run_config(config, path, _callbacks(len(points), added)),
            )
        # the loggers are ours (:func:`_callbacks`)
        with _environment(TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1", **tracking.environment(list(trackers))):
            results = tuner.fit()
        phase.poll()
        return Outcome(path, results, len(points), dict(phase.failed))


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
