"""Every private Ray API prunesweep relies on (:mod:`sweeps.ray_private`) works on real Ray objects
of the version pyproject.toml pins: an upgrade that removes one fails here, naming it."""
import json
import re
from pathlib import Path

import pytest
import ray
from sweeps import ray_private

ROOT = Path(__file__).resolve().parent.parent


def test_job_runtime_env_reads_rays_job_config(monkeypatch):
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    assert ray_private.USES["job_runtime_env"] == ("ray._private.runtime_env.constants", "RAY_JOB_CONFIG_JSON_ENV_VAR")
    monkeypatch.delenv(RAY_JOB_CONFIG_JSON_ENV_VAR, raising=False)
    assert ray_private.job_runtime_env() == {}
    monkeypatch.setenv(RAY_JOB_CONFIG_JSON_ENV_VAR, json.dumps({"runtime_env": {"working_dir": "/x"}}))
    assert ray_private.job_runtime_env() == {"working_dir": "/x"}


def test_a_missing_private_api_is_one_clear_error(monkeypatch):
    from ray._private.runtime_env import constants

    monkeypatch.delattr(constants, "RAY_JOB_CONFIG_JSON_ENV_VAR")
    with pytest.raises(ray_private.RayChanged, match=r"has no ray._private.runtime_env.constants."
                                                     r"RAY_JOB_CONFIG_JSON_ENV_VAR.*tested with Ray 2\.60\.x"):
        ray_private.job_runtime_env()


def test_ray_is_the_pinned_minor_version():
    pin = re.search(r'"ray\[tune,default\]==([0-9.]+)\.\*"', (ROOT / "pyproject.toml").read_text())
    assert pin and pin.group(1) == ray_private.RAY_VERSION_TESTED
    assert ray.__version__.startswith(ray_private.RAY_VERSION_TESTED + ".")


def test_trials_checkpointing_force_no_snapshot_of_tunes_state():
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    def forced_after_two_checkpoints() -> bool:
        manager = _ExperimentCheckpointManager(storage=None, checkpoint_period="auto", sync_every_n_trial_checkpoints=2)
        manager.on_trial_checkpoint("trial")
        manager.on_trial_checkpoint("trial")
        return manager._should_force_sync_up

    assert forced_after_two_checkpoints()  # Tune's own rule: a snapshot each num_to_keep checkpoints
    with ray_private.unforced_snapshots():
        assert not forced_after_two_checkpoints()
    assert forced_after_two_checkpoints()


def test_dashboard_agent_port_of_no_driver_is_none():
    from ray._private import ray_constants

    if ray.is_initialized():  # the session's Ray in this process: a real port, or -1 where another Ray holds it
        port, _ = ray_private.dashboard_agent_port()
        assert port == -1 or port > 0
    else:
        assert ray_private.dashboard_agent_port() == (None, ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT)


def test_dashboard_url_of_the_sessions_ray_is_none(ray_session):
    assert ray_private.dashboard_url() is None  # started with include_dashboard=False: trials reuse actors
