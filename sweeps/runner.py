"""The three commands that run trials: ``run`` a new experiment, ``resume`` an interrupted one,
``extend`` one by seeds, sparsities and schedules. Each refuses what it can before Ray starts
(:mod:`sweeps.preflight`, :func:`sweeps.experiment.reopen`), then connects
(:mod:`sweeps.ray_connection`) and fits (:mod:`sweeps.tuning`)."""
from __future__ import annotations

from analysis import storage
from analysis.schema import LOCK_FILE

from . import lock, provenance
from . import trackers as tracking
from .config import ConfigError, SweepConfig, check_experiment_name
from .experiment import check_storage, check_unchanged, experiment_path, reopen, write_experiment_file
from .extend import grow
from .groups import Grouping, resolve, slots
from .loops import dtype_from_env
from .preflight import dense_checkpoint, location, preflight
from .ray_connection import RayOptions, ray_session
from .tuning import Outcome, fit


def run(config: SweepConfig, storage_path: str, name: str | None = None, options: RayOptions = RayOptions(),
        trackers: list[str] = ()) -> Outcome:
    """Run the sweep into ``<storage>/<name>``, logging to ``trackers`` (:mod:`sweeps.trackers`) too.

    Everything that can be refused (storage, paths, data, checkpoint, resources) is refused
    before the experiment's file is written; from before Ray starts the run holds the experiment's
    lease (:mod:`sweeps.lock`), so a second ``run`` of the same experiment is refused."""
    root = location(storage_path, "--storage")
    path = experiment_path(root, check_experiment_name(name, "--name") if name is not None else config.name)
    check_storage(root)
    _refuse_existing(path)
    tracking.check(trackers, path)
    dtype_from_env()
    config = preflight(config)
    checkpoint = dense_checkpoint(config) if config.dense.checkpoint else None
    grouping = resolve(config)
    with lock.held(path, "run"):
        _refuse_existing(path)  # again under the lease: another driver may have started it meanwhile
        with ray_session(config, options):
            grouping = grouping.filling(slots(config))
            recorded = provenance.with_fusion(provenance.with_trackers(provenance.record(config), trackers), grouping)
            write_experiment_file(path, config, recorded)
            return fit(config, path, restore=False, checkpoint=checkpoint, trackers=trackers, grouping=grouping)


def _refuse_existing(path: str) -> None:
    """Refuse to ``run`` into an experiment that exists (anything in its folder but a lease)."""
    if storage.exists(path) and (not storage.is_dir(path) or set(storage.list_dir(path)) - {LOCK_FILE}):
        lock.refuse_if_held(path, "run", then="start another --name, or wait until it ends and resume it")
        raise ConfigError(f"experiment {path} already exists: continue it with `prunesweep resume {path}` "
                          "or choose another --name")


def resume(path: str, options: RayOptions = RayOptions(), force: bool = False, trackers: list[str] = ()) -> Outcome:
    """Finish an interrupted experiment: finished trials stay, the rest continue from checkpoints,
    logging to the trackers it logged to and ``trackers``.

    Refused when the config or the code differs from the experiment's start, or while another
    driver holds the experiment (:mod:`sweeps.lock`), unless ``force``.
    """
    dtype_from_env()
    found = reopen(path, "resume", force, trackers)
    config, recorded = found.config, found.recorded
    grouping = Grouping.of_record(recorded)
    with lock.held(found.path, "resume", force):
        check_unchanged(found, "resume")
        with ray_session(config, options):
            updated = provenance.forced(recorded, config, found.changed) if found.changed else recorded  # forced: say so
            updated = provenance.with_trackers(updated or provenance.legacy(config), found.trackers)
            if updated != recorded:
                write_experiment_file(found.path, config, updated)
            return fit(config, found.path, restore=True, trackers=found.trackers, grouping=grouping)


def extend(path: str, overrides: list[str], options: RayOptions = RayOptions(), force: bool = False,
           trackers: list[str] = ()) -> Outcome:
    """Grow an experiment, finished or interrupted, by the seeds, sparsities and schedules that
    ``overrides`` add (:func:`sweeps.extend.grow` refuses anything else), and run what it lacks:
    its unfinished trials continue from their checkpoints and the new trials join them; dense models
    are trained only for new seeds; finished trials stay as they are.
    Its ``prunesweep.yaml`` becomes the grown config.

    ``force`` goes past another driver's lease (:mod:`sweeps.lock`) and changed code (and a config whose hash changed with it: a newer prunesweep
    may fill in new defaults), never past a ``prunesweep.yaml`` edited since the experiment ran
    with the same code: extend grows the grid that ran, so that old and new trials compare."""
    dtype_from_env()
    found = reopen(path, "extend", force, trackers, grow=lambda old: grow(old, overrides))
    added = found.added
    recorded = Grouping.of_record(found.recorded)  # a record it cannot read is refused before Ray starts
    what = "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in added.items() if k != "trials" and v)
    print(f"extend {found.path}: adds {what}: {added['trials']} new trials", flush=True)
    with lock.held(found.path, "extend", force):
        check_unchanged(found, "extend")
        with ray_session(found.config, options):
            grouping = recorded.grown(found.config.seed_list, slots(found.config))
            grown = provenance.extended(found.recorded, found.old, found.config, added, found.changed)
            grown = provenance.with_fusion(provenance.with_trackers(grown, found.trackers), grouping)
            write_experiment_file(found.path, found.config, grown)
            return fit(found.config, found.path, restore=True, trackers=found.trackers, grouping=grouping)
