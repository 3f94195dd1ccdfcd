"""Running a sweep: connect to Ray, share dense models, drive Ray Tune's Tuner, resume."""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass

import yaml

from analysis import storage
from analysis.schema import CONFIG_FILE, DENSE_DIR, DENSE_LOG, EPOCH, PARAM, PROVENANCE, SCHEDULE, SEED, \
    TARGET_SPARSITY, TEST_ACCURACY, TrialPoint, dense_file

from . import provenance
from .config import ConfigError, SweepConfig, expand, validate
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


def connect(options: RayOptions) -> bool:
    """Use the Ray already initialised here, connect to ``options.address``, or start a local one.

    Returns True if this call started (and so must shut down) the connection.
    """
    import ray

    if ray.is_initialized():
        return False
    if options.address:
        ray.init(address=options.address, log_to_driver=True)
    else:
        ctx = ray.init(include_dashboard=options.dashboard, dashboard_host=options.dashboard_host)
        url = getattr(ctx, "dashboard_url", None)
        if options.dashboard and url:
            print(f"Ray dashboard: http://{url}", flush=True)
            auth = os.environ.get("RAY_AUTH_MODE", "token").lower()
            if auth != "token" and options.dashboard_host not in ("127.0.0.1", "localhost"):
                print(f"warning: the dashboard listens on {options.dashboard_host} with RAY_AUTH_MODE={auth}: "
                      "anyone who reaches this machine can submit jobs", file=sys.stderr, flush=True)
    return True


@contextlib.contextmanager
def ray_session(config: SweepConfig, options: RayOptions):
    """Connect (:func:`connect`), refuse what the cluster cannot run (:func:`check_resources`),
    and shut down on the way out whatever this session started."""
    started = connect(options)
    try:
        check_resources(config, options.autoscale)
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def check_resources(config: SweepConfig, autoscale: bool = False) -> None:
    """Refuse, before any trial starts, a request the cluster can never meet."""
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
    elif res.gpu > 0:
        _check_gpu_visible(res.gpu)


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


def _train_dense_task(sweep: SweepConfig, seed: int, checkpoint_state: dict | None) -> dict:
    import ray
    import torch

    from .train import device_for, train_dense

    torch.set_num_threads(max(1, int(round(sweep.resources.cpu))))
    return train_dense(sweep, seed, device_for(ray.get_gpu_ids()), checkpoint_state=checkpoint_state)


def ensure_dense(config: SweepConfig, path: str, checkpoint_state: dict | None = None) -> dict:
    """One dense model per seed, trained once and stored under the experiment.

    Seeds whose file exists are loaded, the others are trained as Ray tasks (in parallel,
    with the trials' resources). A ``dense.checkpoint`` is read here, on the driver (it may be
    on an object store the workers cannot see; ``checkpoint_state`` if the caller read it), and
    shipped to the tasks through Ray. Returns ``{seed: ObjectRef}`` of the dense dicts.
    """
    import ray
    import torch

    from .train import dense_checkpoint

    refs, missing = {}, []
    for seed in config.seed_list:
        file = storage.join(path, DENSE_DIR, dense_file(seed))
        if storage.exists(file):
            refs[seed] = ray.put(torch.load(io.BytesIO(storage.read_bytes(file)), weights_only=False))
        else:
            missing.append(seed)
    if not missing:
        return refs
    task = ray.remote(_train_dense_task).options(num_cpus=config.resources.cpu, num_gpus=config.resources.gpu)
    what = "load" if config.dense.checkpoint else f"train ({config.dense.epochs} epochs)"
    print(f"dense models: {what} for seeds {missing}", flush=True)
    if config.dense.checkpoint and checkpoint_state is None:
        checkpoint_state = dense_checkpoint(config)
    loaded = ray.put(checkpoint_state) if checkpoint_state is not None else None
    pending = {task.remote(config, seed, loaded): seed for seed in missing}
    log_file = storage.join(path, DENSE_DIR, DENSE_LOG)
    log = storage.read_bytes(log_file) if storage.exists(log_file) else b""
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        seed = pending.pop(done[0])
        dense = ray.get(done[0])
        buf = io.BytesIO()
        torch.save(dense, buf)
        storage.write_bytes(storage.join(path, DENSE_DIR, dense_file(seed)), buf.getvalue())
        entry = {k: dense[k] for k in ("seed", "epochs", "test_accuracy", "test_loss", "seconds")}
        entry["finished_at"] = time.time()
        log += (json.dumps(entry) + "\n").encode()
        storage.write_bytes(log_file, log)
        refs[seed] = ray.put(dense)
        print(f"dense seed {seed}: test_accuracy {dense['test_accuracy']:.4f} ({dense['seconds']:.1f} s)", flush=True)
    return refs


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


def param_space(config: SweepConfig) -> dict:
    """Only the trial point varies between trials (and is recorded in each trial's config)."""
    from ray import tune

    return {PARAM: tune.grid_search([p.to_dict() for p in expand(config)])}


def _reporter():
    """A compact progress table: the trial's point, epoch, test accuracy."""
    from ray import tune

    return tune.CLIReporter(
        parameter_columns={f"{PARAM}/{SCHEDULE}": "schedule", f"{PARAM}/{TARGET_SPARSITY}": "target",
                           f"{PARAM}/{SEED}": "seed"},
        metric_columns={EPOCH: "epoch", TEST_ACCURACY: "test_acc"},
        max_report_frequency=20,
    )


def _run_config(config: SweepConfig, storage_path: str, name: str):
    from ray import tune

    return tune.RunConfig(
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


def run(config: SweepConfig, storage_path: str, name: str | None = None, options: RayOptions = RayOptions()):
    """Run the sweep into ``<storage>/<name>``; returns Ray Tune's ResultGrid.

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
    from .train import dense_checkpoint

    config = preflight(config)
    checkpoint = dense_checkpoint(config) if config.dense.checkpoint else None
    with ray_session(config, options):
        _write_experiment_file(path, config, provenance.record(config))
        return _fit(config, path, storage_path, name, restore=False, checkpoint=checkpoint)


def resume(path: str, options: RayOptions = RayOptions(), force: bool = False):
    """Finish an interrupted experiment: finished trials stay, the rest continue from checkpoints.

    Refused when the config or the code differs from the experiment's start, unless ``force``.
    """
    path = _location(path, "resume")
    config, recorded = experiment_config(path)
    if not recorded:
        print(f"warning: {path} records no provenance (started before prunesweep recorded it): "
              "cannot check that config and code are unchanged", file=sys.stderr, flush=True)
    changed = provenance.differences(config, recorded) if recorded else []
    if changed and not force:
        raise ConfigError(f"resume {path}: {'; '.join(changed)}; its trials would not be comparable "
                          "(pass --force to resume anyway)")
    _check_storage(path)
    config = preflight(config)
    with ray_session(config, options):
        if changed:  # forced: say so in the experiment, for whoever analyses it
            _write_experiment_file(path, config, provenance.forced(recorded, changed))
        storage_path, name = storage.split(path)
        return _fit(config, path, storage_path, name, restore=True)


def _fit(config: SweepConfig, path: str, storage_path: str, name: str, restore: bool, checkpoint: dict | None = None):
    # Tune's classic reporter: one compact table instead of a config dump per trial
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from ray import tune

    dense_refs = ensure_dense(config, path, checkpoint)
    trainable = _trainable(config, dense_refs, path)
    if restore and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(config),
            tune_config=tune.TuneConfig(max_concurrent_trials=config.max_concurrent_trials, reuse_actors=True,
                                        trial_dirname_creator=trial_dirname),
            run_config=_run_config(config, storage_path, name),
        )
    return tuner.fit()
