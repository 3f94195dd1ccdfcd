"""Every private Ray API prunesweep relies on, in one place (each used on real Ray objects in
``tests/test_ray_private.py``, so that a Ray upgrade that removes one fails there, naming it).
``pyproject.toml`` pins Ray to the minor version these were read from.

Ray Tune restores an experiment's search algorithm and callbacks from the pickles written at its
start and has no public way to replace them; prunesweep must (``extend`` grows the grid, a resume
adds its trackers), so it reaches into the restored Tuner here.
"""
from __future__ import annotations

import json
import os

RAY_VERSION_TESTED = "2.60"

# (module, attribute): what each use below needs, for the test and for a clear error
USES = {
    "job_runtime_env": ("ray._private.runtime_env.constants", "RAY_JOB_CONFIG_JSON_ENV_VAR"),
    "restored_tuner": ("ray.tune.tuner", "Tuner._local_tuner (its _tune_config and get_run_config())"),
    "search_finished": ("ray.tune.search.search_generator", "SearchGenerator._finished"),
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


def replace_restored(tuner, search_alg, callbacks) -> None:
    """Give a restored ``tuner`` a fresh search algorithm (it limits concurrency itself) and
    ``callbacks(restored_callbacks)`` in place of those it restored."""
    try:
        internal = tuner._local_tuner
        internal._tune_config.search_alg = search_alg
        internal._tune_config.max_concurrent_trials = None
        run_config = internal.get_run_config()
    except AttributeError as exc:
        raise _missing("restored_tuner", exc) from None
    run_config.callbacks = callbacks(run_config.callbacks or [])


def reopen_search(generator) -> None:
    """Make a restored ``SearchGenerator`` ask its searcher again instead of keeping the
    "finished" it saved (the grid may have grown since: ``prunesweep extend``)."""
    if not hasattr(generator, "_finished"):
        raise _missing("search_finished", AttributeError("_finished"))
    generator._finished = False
