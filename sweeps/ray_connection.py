"""Connecting to Ray (a local one it starts, or a cluster), and refusing before any trial starts
what that Ray cannot run: resources it lacks, a GPU torch cannot see, a model its workers cannot import."""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

from analysis.messages import one_line

from . import console, ray_private
from .config import ConfigError, SweepConfig
from .models import builder_source, import_builder


@dataclass(frozen=True)
class RayOptions:
    """Where and how a sweep gets its Ray: ``address`` (None starts a local Ray, with a dashboard
    on ``dashboard_host`` unless ``dashboard`` is off); ``autoscale``: the cluster adds nodes on
    demand, so resources it lacks now are requested rather than refused. ``node_ip_address``: the
    address of a local Ray's node; a loopback one (the default) keeps every port of the local Ray
    on 127.0.0.1, ``"auto"`` lets Ray choose this machine's address, and with that or any other
    address Ray's ports listen on every interface."""

    address: str | None = None
    dashboard: bool = True
    dashboard_host: str = "127.0.0.1"
    autoscale: bool = False
    node_ip_address: str = "127.0.0.1"


def worker_code(config: SweepConfig) -> dict | None:
    """Ray's runtime environment that ships the user's model builder (its top-level package, or its
    one file) to every worker, on this machine and on a cluster; None when there is nothing to ship,
    or when the Ray job this driver runs in (``ray job submit``) already ships code of its own
    (``--working-dir``, ``py_modules``), which Ray would refuse to merge with ours."""
    source = builder_source(config.model)
    job = ray_private.job_runtime_env()
    if not source or "working_dir" in job or "py_modules" in job:
        return None
    return {"py_modules": [source]}


def connect(options: RayOptions, runtime_env: dict | None = None) -> bool:
    """Use the Ray already initialised here, connect to ``options.address``, or start a local one,
    with ``runtime_env`` for this job's workers; a Ray that cannot be started or reached is a
    :class:`ConfigError` that says which (``--address`` or the local Ray) and why. In every case
    the credentials in this driver's environment are kept out of the trials' runtime_env
    (:func:`sweeps.ray_private.keep_secrets_out_of_runtime_envs`), which Ray writes into its logs.

    Returns True if this call started (and so must shut down) the connection.
    """
    _own_token_auth(options)
    import ray

    ray_private.keep_secrets_out_of_runtime_envs()
    if ray.is_initialized():
        return False
    before = _children()
    try:
        if options.address:
            ctx = ray.init(address=options.address, log_to_driver=True, runtime_env=runtime_env,
                           logging_level=console.ray_logging_level(console.verbose()))
        else:
            ctx = _start_local(options, runtime_env)
    except ray_private.RayChanged:
        raise
    except Exception as exc:  # Ray raises Exception, RuntimeError, ConnectionError, TimeoutError, ValueError
        with contextlib.suppress(Exception):
            ray.shutdown()
        _end_started(before)  # what a start that failed half-way left running (ray.shutdown knows no node yet)
        if options.address:
            raise ConfigError(f"--address {options.address}: cannot connect to this Ray cluster ({one_line(exc)}); "
                              "is it running and reachable from here (ray status on its head node)?") from None
        raise ConfigError(f"local Ray: it did not start ({one_line(exc)}); its logs are under Ray's temp folder "
                          "(RAY_TMPDIR, default /tmp/ray), session_latest/logs") from None
    url = getattr(ctx, "dashboard_url", None)
    if options.address:
        if url:
            print(f"Ray dashboard (on the cluster): http://{url}; {_token_hint(remote=True)}", flush=True)
    elif options.dashboard and url:
        print(f"Ray dashboard: http://{url}; {_token_hint(remote=False)}", flush=True)
        if not _token_auth() and options.dashboard_host not in ("127.0.0.1", "localhost"):
            print(f"warning: the dashboard listens on {options.dashboard_host} without token authentication "
                  "(RAY_AUTH_MODE): anyone who reaches this machine can submit jobs", file=sys.stderr, flush=True)
    return True


def _own_token_auth(options: RayOptions) -> None:
    """Token authentication on for a local Ray this process will start, unless ``RAY_AUTH_MODE`` says
    otherwise: Ray's own default, set by prunesweep, which says so (:func:`_token_hint`), instead of
    by Ray with a warning to opt out. Ray reads the mode when it is imported: before that, or not at
    all (so :func:`ray_session` calls it before anything imports Ray, :func:`connect` for its own callers)."""
    if not options.address and "ray" not in sys.modules and not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault(AUTH_MODE_ENV, "token")


def _children() -> set[int]:
    import psutil  # Ray's own dependency (ray/thirdparty_files when not installed)

    return {p.pid for p in psutil.Process().children()}


def _end_started(before: set[int], grace_s: float = 3) -> None:
    """End the processes (and theirs) that this process started since ``before`` (its children then)."""
    import psutil

    started = [p for p in psutil.Process().children() if p.pid not in before]
    for parent in list(started):
        with contextlib.suppress(psutil.Error):
            started += parent.children(recursive=True)
    for proc in started:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(started, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace_s)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _start_local(options: RayOptions, runtime_env: dict | None):
    """``ray.init`` starting a local Ray whose node is ``options.node_ip_address`` (loopback: every
    port on 127.0.0.1 only, :func:`sweeps.ray_private.loopback_node`; "auto": Ray's choice)."""
    import ray

    kwargs = dict(include_dashboard=options.dashboard, dashboard_host=options.dashboard_host, runtime_env=runtime_env,
                  logging_level=console.ray_logging_level(console.verbose()))
    ip = options.node_ip_address
    if ip in LOOPBACK:
        with ray_private.loopback_node():
            return ray.init(_node_ip_address="127.0.0.1", **kwargs)
    if ip != "auto":
        kwargs["_node_ip_address"] = ip
    ctx = ray.init(**kwargs)
    print(f"warning: the local Ray's ports (GCS, raylet, object manager, agents) listen on every interface "
          f"(node address {ip}){'' if _token_auth() else ' without token authentication (RAY_AUTH_MODE)'}",
          file=sys.stderr, flush=True)
    return ctx


AUTH_MODE_ENV = "RAY_AUTH_MODE"


def _token_auth() -> bool:
    """Whether this Ray session uses token authentication (Ray sets RAY_AUTH_MODE=token when it
    turns it on by default, as for a local cluster)."""
    return os.environ.get(AUTH_MODE_ENV, "").lower() == "token"


def ray_command() -> str:
    """The ``ray`` command of this Python's environment, by its full path where it is not the one on PATH."""
    import shutil

    beside = os.path.join(os.path.dirname(sys.executable), "ray")
    if os.path.exists(beside) and shutil.which("ray") != beside:
        return beside
    return "ray"


def _token_hint(remote: bool) -> str:
    """What the dashboard will ask for, where to get it, and where the sweep shows in it."""
    if not _token_auth():
        auth = "no token authentication (RAY_AUTH_MODE is not token)"
    elif remote:
        auth = ("it asks for the cluster's token (the ~/.ray/auth_token its nodes were started with; "
                "`ray get-auth-token` on the head prints it)")
    else:
        auth = (f"it asks for the token `{ray_command()} get-auth-token` prints (~/.ray/auth_token; "
                f"{AUTH_MODE_ENV}=disabled turns it off)")
    return (f"{auth}. Actors: one per running trial, named by its folder; Tasks: dense_seeds...; Metrics: "
            "ray_prunesweep_* where Prometheus and Grafana are set up (see README, Watching a sweep)")


def check_dashboard_agent() -> None:
    """Say so when the local node's dashboard agent could not serve HTTP (its port taken, as by another
    Ray on this machine): the dashboard then shows no logs and no node pages, and Ray says nothing.
    A diagnosis only: a Ray whose internals it cannot read is left unchecked."""
    try:
        port, wanted = ray_private.dashboard_agent_port()
    except ray_private.RayChanged:
        return
    if port == -1:
        print(f"warning: Ray's dashboard agent could not listen on port {wanted} (another "
              "Ray on this machine holds it?), so the dashboard shows no logs or node pages; the sweep itself is "
              "not affected. Stop the other Ray once this sweep ends (`ps -ef | grep raylet` shows them), or pass "
              "--no-dashboard", file=sys.stderr, flush=True)


@contextlib.contextmanager
def ray_session(config: SweepConfig, options: RayOptions):
    """Connect (:func:`connect`), refuse what the cluster cannot run (:func:`check_resources`),
    and on the way out withdraw an autoscaler request it made and shut down what it started."""
    _own_token_auth(options)
    code = worker_code(config)
    started = connect(options, code)
    requested = False
    try:
        if started and not options.address and options.dashboard:
            check_dashboard_agent()
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
        raise ConfigError(f"model {name!r}: the Ray workers cannot import it ({one_line(cause)}); let "
                          f"prunesweep start or connect to Ray, or give the job runtime_env={code}") from None


def _gpu_device() -> str:
    import ray

    from .loops import device_for

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
        raise ConfigError(f"resources.gpu: {one_line(cause)}") from None
