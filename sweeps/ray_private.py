"""Every private Ray API prunesweep relies on, in one place (each used on real Ray objects in
``tests/test_ray_private.py``, so that a Ray upgrade that removes one fails there, naming it).
``pyproject.toml`` pins Ray to the minor version these were read from.

"""
from __future__ import annotations

import contextlib
import json
import os

RAY_VERSION_TESTED = "2.60"

# (module, attribute): what each use below needs, for the test and for a clear error
USES = {
    "job_runtime_env": ("ray._private.runtime_env.constants", "RAY_JOB_CONFIG_JSON_ENV_VAR"),
    "propagated_env": ("ray.tune.execution.class_cache", "ENV_VARS_TO_PROPAGATE"),
    "loopback_node": ("ray._private.ray_constants", "ENABLE_RAY_CLUSTER"),
    "dashboard_url": ("ray._private.worker", "get_dashboard_url"),
    "dashboard_agent_port": ("ray._private.worker", "global_worker.node.dashboard_agent_listen_port"),
    "unforced_snapshots": ("ray.tune.execution.experiment_state", "_ExperimentCheckpointManager.on_trial_checkpoint"),
}


class RayChanged(RuntimeError):
    """A private Ray API prunesweep relies on is gone: this Ray is not the version prunesweep was tested with."""


def _missing(use: str, exc: Exception) -> RayChanged:
    import ray

    module, attribute = USES[use]
    return RayChanged(f"Ray {ray.__version__} has no {module}.{attribute} ({type(exc).__name__}: {exc}); prunesweep "
                      f"was tested with Ray {RAY_VERSION_TESTED}.x: install that (pip install 'ray[tune,default]=="
                      f"{RAY_VERSION_TESTED}.*')")


def job_runtime_env() -> dict:
    """The runtime environment of the Ray job this driver runs in (``ray job submit``), or {}."""
    try:
        from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR
    except ImportError as exc:
        raise _missing("job_runtime_env", exc) from None
    return json.loads(os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR, "{}")).get("runtime_env") or {}


# names of environment variables that hold secrets (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
# AWS_SESSION_TOKEN, ...), matched in upper case
SECRET_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "CREDENTIAL")


def keep_secrets_out_of_runtime_envs() -> list[str]:
    """Stop Ray Tune copying credentials from the driver's environment into the ``runtime_env``
    (``env_vars``) of every trial actor (``ray/tune/execution/class_cache.py``: ``ENV_VARS_TO_PROPAGATE``
    names AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SECURITY_TOKEN, AWS_SESSION_TOKEN): Ray's
    runtime env agent writes every runtime_env it creates, in full, into its log
    (``<temp dir>/session_*/logs/runtime_env_agent.log``), and the cluster's state API shows it.
    Trials find credentials as every other process does: the environment they inherit from the
    node (a local Ray's is this driver's), ~/.aws, an instance role. For this process; returns the
    names it stopped copying."""
    try:
        from ray.tune.execution import class_cache

        names = class_cache.ENV_VARS_TO_PROPAGATE
        secret = sorted(n for n in names if any(word in n.upper() for word in SECRET_WORDS))
        names.difference_update(secret)
    except (ImportError, AttributeError, TypeError) as exc:
        raise _missing("propagated_env", exc) from None
    return secret


@contextlib.contextmanager
def loopback_node():
    """While a local Ray starts, keep a loopback ``ray.init(_node_ip_address=...)`` as it is: on
    Linux Ray replaces 127.0.0.1 by this machine's address (``services.resolve_ip_for_localhost``,
    unless ``ray_constants.ENABLE_RAY_CLUSTER`` is off, as on macOS and Windows), and a node with
    that address listens on every interface; a loopback node binds every port of its GCS, raylet,
    object manager and agents to 127.0.0.1."""
    try:
        from ray._private import ray_constants

        before = ray_constants.ENABLE_RAY_CLUSTER
    except (ImportError, AttributeError) as exc:
        raise _missing("loopback_node", exc) from None
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


@contextlib.contextmanager
def unforced_snapshots():
    """While a sweep runs, Ray Tune snapshots its experiment state on its own period only, not also
    each time a trial has saved ``CheckpointConfig(num_to_keep)`` checkpoints since the last
    snapshot (``_ExperimentCheckpointManager.on_trial_checkpoint``). That forcing keeps Tune's
    snapshot naming checkpoints that still exist, for ``Tuner.restore``; prunesweep never restores
    from Tune's state (:func:`sweeps.tuning.fit` reads the experiment's own files), and with trials
    that checkpoint every few seconds it rewrote the whole state every few seconds (and warned about
    it, hundreds of times a sweep)."""
    try:
        from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

        before = _ExperimentCheckpointManager.on_trial_checkpoint
    except (ImportError, AttributeError) as exc:
        raise _missing("unforced_snapshots", exc) from None
    _ExperimentCheckpointManager.on_trial_checkpoint = lambda self, trial: None
    try:
        yield
    finally:
        _ExperimentCheckpointManager.on_trial_checkpoint = before


def dashboard_agent_port() -> tuple[int | None, int]:
    """The port the dashboard agent of this driver's node serves HTTP on (the dashboard's Logs view
    and node pages go through it), -1 when it could not start its HTTP server (the port was taken,
    as by another Ray on the same machine), None when this process is no Ray driver; and the port
    it asks for by default."""
    try:
        from ray._private import ray_constants, worker

        node = worker.global_worker.node
        return (None if node is None else node.dashboard_agent_listen_port,
                ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT)
    except (ImportError, AttributeError) as exc:
        raise _missing("dashboard_agent_port", exc) from None


def dashboard_url() -> str | None:
    """The address of the dashboard of the Ray this driver is connected to, None when it runs none."""
    try:
        from ray._private import worker

        return worker.get_dashboard_url() or None
    except AttributeError as exc:
        raise _missing("dashboard_url", exc) from None
