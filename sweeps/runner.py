"""Running a sweep: connect to Ray, share dense models, drive Ray Tune's Tuner, resume."""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

import yaml

from analysis import storage
from analysis.schema import (CONFIG_FILE, EPOCH, PARAM, PROVENANCE, RETRAIN, SCHEDULE, SEED, TARGET_SPARSITY,
                             TEST_ACCURACY, TrialPoint)

from . import provenance
from .config import ConfigError, SweepConfig, expand, validate
from .models import builder_source
from .preflight import preflight


@dataclass(frozen=True)
class RayOptions:
    """Where and how a sweep gets its Ray: ``address`` (None starts a local Ray, with a dashboard
    on ``dashboard_host`` unless ``dashboard`` is off); ``autoscale``: the cluster adds nodes on
    demand, so resources it lacks now are requested rather than refused."""

    address: str | None = None
    dashboard: bool = True
    dashboard_host: str = "127.0.0.1"
    autoscale: bool = False


def worker_code(config: SweepConfig) -> dict | None:
    """Ray's runtime environment that ships the user's model builder (its top-level package, or its
    one file) to every worker, on this machine and on a cluster; None when there is nothing to ship,
    or when the Ray job this driver runs in (``ray job submit``) already ships code of its own
    (``--working-dir``, ``py_modules``), which Ray would refuse to merge with ours."""
    import json

    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    source = builder_source(config.model)
    job = json.loads(os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR, "{}")).get("runtime_env") or {}
    if not source or "working_dir" in job or "py_modules" in job:
        return None
    return {"py_modules": [source]}


def connect(options: RayOptions, runtime_env: dict | None = None) -> bool:
    """Use the Ray already initialised here, connect to ``options.address``, or start a local one,
    with ``runtime_env`` for this job's workers.

    Returns True if this call started (and so must shut down) the connection.
    """
    import ray

    if ray.is_initialized():
        return False
    if options.address:
        ctx = ray.init(address=options.address, log_to_driver=True, runtime_env=runtime_env)
        url = getattr(ctx, "dashboard_url", None)
        if url:
            print(f"Ray dashboard (on the cluster): http://{url}; {_token_hint(remote=True)}", flush=True)
    else:
        ctx = ray.init(include_dashboard=options.dashboard, dashboard_host=options.dashboard_host,
                       runtime_env=runtime_env)
        url = getattr(ctx, "dashboard_url", None)
        if options.dashboard and url:
            print(f"Ray dashboard: http://{url}; {_token_hint(remote=False)}", flush=True)
            if not _token_auth() and options.dashboard_host not in ("127.0.0.1", "localhost"):
                print(f"warning: the dashboard listens on {options.dashboard_host} without token authentication "
                      "(RAY_AUTH_MODE): anyone who reaches this machine can submit jobs", file=sys.stderr, flush=True)
    return True


AUTH_MODE_ENV = "RAY_AUTH_MODE"


def _token_auth() -> bool:
    """Whether this Ray session uses token authentication (Ray sets RAY_AUTH_MODE=token when it
    turns it on by default, as for a local cluster)."""
    return os.environ.get(AUTH_MODE_ENV, "").lower() == "token"


def _token_hint(remote: bool) -> str:
    """What the dashboard will ask for, and where to get it."""
    if not _token_auth():
        return "no token authentication (RAY_AUTH_MODE is not token)"
    where = ("the cluster's token (the ~/.ray/auth_token its nodes were started with; `ray get-auth-token` "
             "on the head prints it)" if remote else "the token `ray get-auth-token` prints (~/.ray/auth_token)")
    return (f"it asks for {where}. The sweep's trials are under Jobs when the sweep was submitted with "
            "`ray job submit`, else under Actors (one per running trial) and Tune's table printed here")


@contextlib.contextmanager
def ray_session(config: SweepConfig, options: RayOptions):
    """Connect (:func:`connect`), refuse what the cluster cannot run (:func:`check_resources`),
    and on the way out withdraw an autoscaler request it made and shut down what it started."""
    code = worker_code(config)
    started = connect(options, code)
    requested = False
    try:
        source = builder_source(config.model)
        if source and not (code and started):  # a builder prunesweep did not ship: can the workers import it?
            _check_importable(config.model, {"py_modules": [source]})
        requested = check_resources(config, options.autoscale)
        yield
    finally:
        if requested:  # Ray keeps a request until it is replaced: without this no GPU node would ever go
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=[])
        if started:
            import ray

            ray.shutdown()


def check_resources(config: SweepConfig, autoscale: bool = False) -> bool:
    """Refuse, before any trial starts, a request the cluster can never meet; with ``autoscale``,
    ask the autoscaler for a node that fits a trial instead. Returns whether it asked."""
    import ray

    total = ray.cluster_resources()
    res = config.resources
    if res.gpu > 0 and total.get("GPU", 0) == 0 and not autoscale:
        have = ", ".join(f"{k}={v:g}" for k, v in sorted(total.items()) if k in ("CPU", "GPU"))
        raise ConfigError(
            f"resources.gpu: each trial asks for {res.gpu:g} GPU but the Ray cluster has none ({have}); "
            "set resources.gpu: 0, connect to a cluster with GPUs (--address), or pass --autoscale if the "
            "cluster launcher adds GPU nodes on demand"
        )
    if res.cpu > total.get("CPU", 0) and not autoscale:
        raise ConfigError(f"resources.cpu: each trial asks for {res.cpu:g} CPUs but the cluster has {total.get('CPU', 0):g}")
    if autoscale and (res.gpu > 0 or res.cpu > total.get("CPU", 0)):
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[{"CPU": res.cpu, **({"GPU": res.gpu} if res.gpu else {})}])
        return True
    if res.gpu > 0:
        _check_gpu_visible(res.gpu)
    return False


def _import_builder(name: str) -> None:
    from .models import import_builder

    import_builder(name)


def _check_importable(name: str, code: dict) -> None:
    """Refuse a user model that the workers cannot import, where prunesweep did not ship it itself
    (a Ray this process already runs, a Ray job that ships code of its own)."""
    import ray
    from ray.exceptions import RayTaskError

    try:
        ray.get(ray.remote(_import_builder).options(num_cpus=0).remote(name))
    except RayTaskError as exc:
        cause = getattr(exc, "cause", None) or exc
        raise ConfigError(f"model {name!r}: the Ray workers cannot import it ({storage.one_line(cause)}); let "
                          f"prunesweep start or connect to Ray, or give the job runtime_env={code}") from None


def _gpu_device() -> str:
    import ray

    from .train import device_for

    return str(device_for(ray.get_gpu_ids()))


def _check_gpu_visible(gpu: float, timeout_s: float = 120) -> None:
    """One task with a trial's GPU share: refuse the sweep if torch there cannot see the GPU Ray
    gives it (rather than every trial failing and being retried)."""
    import ray
    from ray.exceptions import GetTimeoutError, RayTaskError

    probe = ray.remote(_gpu_device).options(num_cpus=0, num_gpus=gpu).remote()
    try:
        ray.get(probe, timeout=timeout_s)
    except GetTimeoutError:
        ray.cancel(probe, force=True)
        print(f"warning: no GPU came free within {timeout_s:g} s to check that torch sees it; going on",
              file=sys.stderr, flush=True)
    except RayTaskError as exc:
        cause = getattr(exc, "cause", None) or exc
        raise ConfigError(f"resources.gpu: {storage.one_line(cause)}") from None


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


def _run_config(config: SweepConfig, storage_path: str, name: str, callbacks: list):
    from ray import tune

    return tune.RunConfig(
        callbacks=callbacks,
        progress_reporter=_reporter(),
        name=name,
        storage_path=storage_path,
        failure_config=tune.FailureConfig(max_failures=config.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=config.checkpoint.keep),
        verbose=1,
    )


def experiment_config(path: str) -> tuple[SweepConfig, dict]:
    """The config an experiment was started with and its provenance (``<experiment>/prunesweep.yaml``)."""
    from analysis.load import NotAnExperiment, read_experiment_file

    try:
        found = read_experiment_file(path)
    except NotAnExperiment as exc:
        raise ConfigError(str(exc)) from None
    except Exception as exc:  # an unreachable or refusing object store
        raise ConfigError(f"{path}: cannot read the experiment ({storage.one_line(exc)})") from None
    if found is None:
        raise ConfigError(f"{path}: not a prunesweep experiment (no {CONFIG_FILE}); start one with `prunesweep run`")
    config, recorded = found
    return validate(config), recorded


def _write_experiment_file(path: str, config: SweepConfig, recorded: dict) -> None:
    document = {**config.model_dump(mode="json"), PROVENANCE: recorded}
    storage.write_bytes(storage.join(path, CONFIG_FILE), yaml.safe_dump(document, sort_keys=False).encode())


def _location(path: str, what: str) -> str:
    """``path`` normalised (:func:`analysis.storage.normalise`), or a ConfigError naming ``what``."""
    try:
        return storage.normalise(path)
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def _check_storage(storage_path: str) -> None:
    problem = storage.check_writable(storage_path)
    if problem:
        raise ConfigError(f"--storage {storage_path}: cannot write experiments there ({problem})")


def run(config: SweepConfig, storage_path: str, name: str | None = None, options: RayOptions = RayOptions(),
        trackers: list[str] = ()):
    """Run the sweep into ``<storage>/<name>``, logging to ``trackers`` (:mod:`sweeps.trackers`) too;
    returns its :class:`Outcome`.

    Everything that can be refused (storage, paths, data, checkpoint, resources) is refused
    before the experiment folder is made."""
    storage_path = _location(storage_path, "--storage")
    name = name or config.name
    path = storage.join(storage_path, name)
    _check_storage(storage_path)
    if storage.exists(path):
        raise ConfigError(
            f"experiment {path} already exists: continue it with `prunesweep resume {path}` "
            "or choose another --name"
        )
    from . import trackers as tracking
    from .train import dense_checkpoint

    tracking.check(trackers, path)
    config = preflight(config)
    checkpoint = dense_checkpoint(config) if config.dense.checkpoint else None
    with ray_session(config, options):
        _write_experiment_file(path, config, provenance.with_trackers(provenance.record(config), trackers))
        return _fit(config, path, storage_path, name, restore=False, checkpoint=checkpoint, trackers=trackers)


def _unchanged(path: str, changed: list[str], force: bool, command: str) -> list[str]:
    """``changed``, how the config and code differ from the experiment's start
    (:func:`provenance.differences`); refused unless ``force``."""
    if changed and not force:
        raise ConfigError(f"{command} {path}: {'; '.join(changed)}; its trials would not be comparable "
                          f"(pass --force to {command} anyway)")
    return changed


def _warn_unknown(path: str, recorded: dict) -> None:
    """Say, once nothing more is refused, that an experiment from before provenance cannot be checked."""
    if provenance.unknown(recorded):
        print(f"warning: {path} records no provenance of its code (started before prunesweep recorded it): "
              "cannot check that the code is unchanged", file=sys.stderr, flush=True)


def _trackers(recorded: dict, asked: list[str]) -> list[str]:
    """The trackers an experiment logged to (recorded at ``run``, ``resume`` and ``extend``) and those ``asked``."""
    known = recorded.get(provenance.TRACKERS) or []
    if not isinstance(known, list):
        raise ConfigError(f"provenance.trackers: {known!r} is not a list of trackers")
    return list(dict.fromkeys([*known, *asked]))


def resume(path: str, options: RayOptions = RayOptions(), force: bool = False, trackers: list[str] = ()):
    """Finish an interrupted experiment: finished trials stay, the rest continue from checkpoints,
    logging to the trackers it logged to and ``trackers``.

    Refused when the config or the code differs from the experiment's start, unless ``force``.
    """
    from . import trackers as tracking

    path = _location(path, "resume")
    config, recorded = experiment_config(path)
    changed = _unchanged(path, provenance.differences(config, recorded), force, "resume")
    _check_storage(path)
    logged = _trackers(recorded, list(trackers))
    tracking.check(logged, path)
    config = preflight(config)
    if changed or provenance.unknown(recorded):  # the same config and code wrote every snapshot its trials need
        from .dense import check_snapshots

        check_snapshots(config, path)
    _warn_unknown(path, recorded)
    with ray_session(config, options):
        updated = provenance.forced(recorded, config, changed) if changed else recorded  # forced: say so
        updated = provenance.with_trackers(updated or provenance.legacy(config), logged)
        if updated != recorded:
            _write_experiment_file(path, config, updated)
        storage_path, name = storage.split(path)
        return _fit(config, path, storage_path, name, restore=True, trackers=logged)


def extend(path: str, overrides: list[str], options: RayOptions = RayOptions(), force: bool = False,
           trackers: list[str] = ()):
    """Grow an experiment, finished or interrupted, by the seeds, sparsities and schedules that
    ``overrides`` add (:func:`sweeps.extend.grow` refuses anything else), and run what it lacks:
    Ray Tune restores the experiment, its unfinished trials continue from their checkpoints and the
    new trials join it; dense models are trained only for new seeds; finished trials stay as they are.
    Returns the :class:`Outcome` of the grown grid; its ``prunesweep.yaml`` is the grown config.

    ``force`` goes past changed code (and a config whose hash changed with it: a newer prunesweep
    may fill in new defaults), never past a ``prunesweep.yaml`` edited since the experiment ran
    with the same code: extend grows the grid that ran, so that old and new trials compare."""
    from . import trackers as tracking
    from .extend import grow

    path = _location(path, "extend")
    old, recorded = experiment_config(path)
    differences = provenance.differences(old, recorded)
    edited = provenance.config_changed(old, recorded)
    if edited and differences == [edited]:  # the same code: the file itself was edited
        raise ConfigError(f"extend {path}: {edited}: its {CONFIG_FILE} was edited, so it no longer says what its "
                          "trials ran (--force does not apply); restore the file, or start a new experiment")
    config, added = grow(old, overrides)
    changed = _unchanged(path, differences, force, "extend")
    _check_storage(path)
    logged = _trackers(recorded, list(trackers))
    tracking.check(logged, path)
    config = preflight(config)
    if changed or provenance.unknown(recorded):
        from .dense import check_snapshots

        check_snapshots(old, path)
    _warn_unknown(path, recorded)
    what = "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in added.items() if k != "trials" and v)
    print(f"extend {path}: adds {what}: {added['trials']} new trials", flush=True)
    with ray_session(config, options):
        grown = provenance.extended(recorded, old, config, added, changed)
        _write_experiment_file(path, config, provenance.with_trackers(grown, logged))
        storage_path, name = storage.split(path)
        # only the experiment's own seeds have trials that Tune restarts at once
        return _fit(config, path, storage_path, name, restore=True, trackers=logged, wait_for=old.seed_list)


@dataclass
class Outcome:
    """What a run or resume ended with: Ray Tune's ResultGrid, the trials the sweep has, and the
    seeds whose dense training failed for good (seed: why)."""

    results: object
    trials: int
    dense_failed: dict


def _fit(config: SweepConfig, path: str, storage_path: str, name: str, restore: bool,
         checkpoint: dict | None = None, trackers: list[str] = (), wait_for: list[int] | None = None) -> Outcome:
    # Tune's classic reporter: one compact table instead of a config dump per trial
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune

    from . import trackers as tracking
    from .dense import DensePhase, GridSearch, active

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
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
            # Tune restores the search algorithm and callbacks pickled at the experiment's start and has
            # no API to replace them: a fresh GridSearch (restored from the experiment's searcher state,
            # including experiments begun before it existed) hands out the grid as it is now (extend
            # grows it); the callbacks count that grid and add this session's trackers
            internal = tuner._local_tuner
            internal._tune_config.search_alg = GridSearch(config.max_concurrent_trials)
            internal._tune_config.max_concurrent_trials = None  # GridSearch limits them itself
            run_config = internal.get_run_config()
            run_config.callbacks = _callbacks(len(points), added, run_config.callbacks or [])
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=GridSearch(config.max_concurrent_trials), num_samples=-1,
                                            reuse_actors=True, trial_dirname_creator=trial_dirname),
                run_config=_run_config(config, storage_path, name, _callbacks(len(points), added)),
            )
        # the loggers are ours (:func:`_callbacks`)
        with _environment(TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1", **tracking.environment(list(trackers))):
            results = tuner.fit()
        phase.poll()
        return Outcome(results, len(points), dict(phase.failed))


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
