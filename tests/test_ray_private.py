"""Every private Ray API prunesweep relies on (:mod:`sweeps.ray_private`) works on real Ray objects
of the version pyproject.toml pins: an upgrade that removes one fails here, naming it."""
import json
import re
from pathlib import Path

import pytest
import ray
from ray import tune
from ray.tune.search import SearchGenerator, Searcher

from sweeps import ray_private

ROOT = Path(__file__).resolve().parent.parent


class _Nothing(Searcher):
    def suggest(self, trial_id):
        return None


def test_job_runtime_env_reads_rays_job_config(monkeypatch):
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    assert ray_private.USES["job_runtime_env"] == ("ray._private.runtime_env.constants", "RAY_JOB_CONFIG_JSON_ENV_VAR")
    monkeypatch.delenv(RAY_JOB_CONFIG_JSON_ENV_VAR, raising=False)
    assert ray_private.job_runtime_env() == {}
    monkeypatch.setenv(RAY_JOB_CONFIG_JSON_ENV_VAR, json.dumps({"runtime_env": {"working_dir": "/x"}}))
    assert ray_private.job_runtime_env() == {"working_dir": "/x"}


def test_a_tuners_search_algorithm_and_callbacks_are_replaced(tmp_path):
    """``Tuner._local_tuner``, ``TunerInternal._tune_config`` and ``get_run_config`` on a real Tuner
    (a restored one is the same class)."""
    tuner = tune.Tuner(lambda config: None, tune_config=tune.TuneConfig(max_concurrent_trials=3),
                       run_config=tune.RunConfig(storage_path=str(tmp_path), name="x", callbacks=[tune.Callback()]))
    search = SearchGenerator(_Nothing())
    seen = []
    ray_private.replace_restored(tuner, search, lambda restored: seen.extend(restored) or ["mine"])
    internal = tuner._local_tuner
    assert internal._tune_config.search_alg is search and internal._tune_config.max_concurrent_trials is None
    assert internal.get_run_config().callbacks == ["mine"] and len(seen) == 1


def test_a_restored_search_generator_asks_its_searcher_again():
    generator = SearchGenerator(_Nothing())
    generator._finished = True  # what a restored generator of a finished grid holds
    ray_private.reopen_search(generator)
    assert generator._finished is False


def test_a_missing_private_api_is_one_clear_error():
    with pytest.raises(ray_private.RayChanged, match=r"has no ray.tune.search.search_generator.SearchGenerator._finished"
                                                     r".*tested with Ray 2\.60\.x"):
        ray_private.reopen_search(object())
    with pytest.raises(ray_private.RayChanged, match=r"ray.tune.tuner.Tuner._local_tuner \(its _tune_config"):
        ray_private.replace_restored(object(), None, list)


def test_ray_is_the_pinned_minor_version():
    pin = re.search(r'"ray\[tune,default\]==([0-9.]+)\.\*"', (ROOT / "pyproject.toml").read_text())
    assert pin and pin.group(1) == ray_private.RAY_VERSION_TESTED
    assert ray.__version__.startswith(ray_private.RAY_VERSION_TESTED + ".")
