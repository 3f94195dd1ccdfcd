"""The three commands that run trials: ``run`` a new experiment, ``resume`` an interrupted one,
``extend`` one by seeds, sparsities and schedules. Each refuses what it can before Ray starts
(:mod:`sweeps.preflight`, :func:`sweeps.experiment.reopen`), then connects
(:mod:`sweeps.ray_connection`) and fits (:mod:`sweeps.tuning`)."""
from __future__ import annotations

from analysis import storage

from . import provenance
from . import trackers as tracking
from .config import ConfigError, SweepConfig
from .experiment import check_storage, experiment_path, reopen, write_experiment_file
from .extend import grow
from .preflight import dense_checkpoint, location, preflight
from .ray_connection import RayOptions, ray_session
from .tuning import Outcome, fit


def run(config: SweepConfig, storage_path: str, name: str | None = None, options: RayOptions = RayOptions(),
        trackers: list[str] = ()) -> Outcome:
    """Run the sweep into ``<storage>/<name>``, logging to ``trackers`` (:mod:`sweeps.trackers`) too.

    Everything that can be refused (storage, paths, data, checkpoint, resources) is refused
    before the experiment folder is made."""
    root = location(storage_path, "--storage")
    path = experiment_path(root, name or config.name)
    check_storage(root)
    if storage.exists(path):
        raise ConfigError(
            f"experiment {path} already exists: continue it with `prunesweep resume {path}` "
            "or choose another --name"
        )
    tracking.check(trackers, path)
    config = preflight(config)
    checkpoint = dense_checkpoint(config) if config.dense.checkpoint else None
    with ray_session(config, options):
        write_experiment_file(path, config, provenance.with_trackers(provenance.record(config), trackers))
        return fit(config, path, restore=False, checkpoint=checkpoint, trackers=trackers)


def resume(path: str, options: RayOptions = RayOptions(), force: bool = False, trackers: list[str] = ()) -> Outcome:
    """Finish an interrupted experiment: finished trials stay, the rest continue from checkpoints,
    logging to the trackers it logged to and ``trackers``.

    Refused when the config or the code differs from the experiment's start, unless ``force``.
    """
    found = reopen(path, "resume", force, trackers)
    config, recorded = found.config, found.recorded
    with ray_session(config, options):
        updated = provenance.forced(recorded, config, found.changed) if found.changed else recorded  # forced: say so
        updated = provenance.with_trackers(updated or provenance.legacy(config), found.trackers)
        if updated != recorded:
            write_experiment_file(found.path, config, updated)
        return fit(config, found.path, restore=True, trackers=found.trackers)


def extend(path: str, overrides: list[str], options: RayOptions = RayOptions(), force: bool = False,
           trackers: list[str] = ()) -> Outcome:
    """Grow an experiment, finished or interrupted, by the seeds, sparsities and schedules that
    ``overrides`` add (:func:`sweeps.extend.grow` refuses anything else), and run what it lacks:
    Ray Tune restores the experiment, its unfinished trials continue from their checkpoints and the
    new trials join it; dense models are trained only for new seeds; finished trials stay as they are.
    Its ``prunesweep.yaml`` becomes the grown config.

    ``force`` goes past changed code (and a config whose hash changed with it: a newer prunesweep
    may fill in new defaults), never past a ``prunesweep.yaml`` edited since the experiment ran
    with the same code: extend grows the grid that ran, so that old and new trials compare."""
    found = reopen(path, "extend", force, trackers, grow=lambda old: grow(old, overrides))
    added = found.added
    what = "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in added.items() if k != "trials" and v)
    print(f"extend {found.path}: adds {what}: {added['trials']} new trials", flush=True)
    with ray_session(found.config, options):
        grown = provenance.extended(found.recorded, found.old, found.config, added, found.changed)
        write_experiment_file(found.path, found.config, provenance.with_trackers(grown, found.trackers))
        # only the experiment's own seeds have trials that Tune restarts at once
        return fit(found.config, found.path, restore=True, trackers=found.trackers, wait_for=found.old.seed_list)
