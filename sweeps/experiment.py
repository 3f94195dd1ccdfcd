"""An experiment's own files and the rules for opening one: where it lives, the config and
provenance it was started with (``prunesweep.yaml``), and :func:`reopen`, the checks that
``resume`` and ``extend`` make (once) before they touch it."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import yaml

from analysis import storage
from analysis.messages import one_line
from analysis.experiment_file import NotAnExperiment, read_experiment_file
from analysis.schema import CONFIG_FILE, PROVENANCE

from . import lock, provenance
from . import trackers as tracking
from .config import ConfigError, SweepConfig, validate
from .preflight import check_snapshots, location, preflight


def experiment_path(root: str, name: str) -> str:
    """Where the experiment ``name`` lives under ``--storage`` ``root`` (normalised): ``<storage>/<name>``."""
    return storage.join(root, name)


def check_storage(storage_path: str) -> None:
    """Refuse (ConfigError) a ``--storage`` or experiment location that cannot be written."""
    problem = storage.check_writable(storage_path)
    if problem:
        raise ConfigError(f"--storage {storage_path}: cannot write experiments there ({problem})")


def experiment_config(path: str) -> tuple[SweepConfig, dict]:
    """The config an experiment was started with and its provenance (``<experiment>/prunesweep.yaml``)."""
    try:
        found = read_experiment_file(path)
    except NotAnExperiment as exc:
        raise ConfigError(str(exc)) from None
    except Exception as exc:  # an unreachable or refusing object store
        raise ConfigError(f"{path}: cannot read the experiment ({one_line(exc)})") from None
    if found is None:
        raise ConfigError(f"{path}: not a prunesweep experiment (no {CONFIG_FILE}); start one with `prunesweep run`")
    config, recorded = found
    return validate(config), recorded


def write_experiment_file(path: str, config: SweepConfig, recorded: dict) -> None:
    """Write the experiment's ``prunesweep.yaml``: ``config`` and its provenance ``recorded``."""
    document = {**config.model_dump(mode="json"), PROVENANCE: recorded}
    storage.write_bytes(storage.join(path, CONFIG_FILE), yaml.safe_dump(document, sort_keys=False).encode())


def _unchanged(path: str, changed: list[str], force: bool, command: str) -> list[str]:
    """``changed``, how the config and code differ from the experiment's start
    (:func:`provenance.differences`); refused unless ``force``."""
    if changed and not force:
        raise ConfigError(f"{command} {path}: {'; '.join(changed)}; its trials would not be comparable "
                          f"(pass --force to {command} anyway)")
    return changed


def _trackers(recorded: dict, asked: list[str]) -> list[str]:
    """The trackers an experiment logged to (recorded at ``run``, ``resume`` and ``extend``) and those ``asked``."""
    known = recorded.get(provenance.TRACKERS) or []
    if not isinstance(known, list):
        raise ConfigError(f"provenance.trackers: {known!r} is not a list of trackers")
    return list(dict.fromkeys([*known, *asked]))


def check_unchanged(found: "Reopened", command: str) -> None:
    """Refuse to go on when the experiment's file changed since :func:`reopen` read it (another
    driver's ``extend`` ended meanwhile): call with the experiment's lease held."""
    if experiment_config(found.path) != (found.old, found.recorded):
        raise ConfigError(f"{command} {found.path}: its {CONFIG_FILE} changed while this command checked it "
                          "(another driver ran it meanwhile); run the command again")


def _code_outside(config: SweepConfig, path: str) -> None:
    """Refuse a stored config whose model builder would be imported from the experiment's own folder:
    only code the user has runs (the builder is located here without running it)."""
    from .models import ModelError, builder_source

    try:
        source = builder_source(config.model)
    except ModelError as exc:
        raise ConfigError(f"model {config.model!r}: {exc}") from None
    if source and not storage.is_uri(path) and (source + os.sep).startswith(os.path.abspath(path) + os.sep):
        raise ConfigError(f"model {config.model!r}: its code is {source}, inside the experiment {path}; prunesweep "
                          "runs only code you have, never an experiment's own files")


@dataclass(frozen=True)
class Reopened:
    """An experiment checked for continuing: where it is, the config it ran (``old``) and the one to
    run now (``config``: the same, or grown by ``extend``, paths resolved), its provenance, how the
    config or code changed (what ``--force`` went past), the trackers to log to, and what ``extend`` adds."""

    path: str
    old: SweepConfig
    config: SweepConfig
    recorded: dict
    changed: list[str]
    trackers: list[str]
    added: dict | None = None


def reopen(path: str, command: str, force: bool, trackers: list[str], grow=None) -> Reopened:
    """Check the experiment at ``path`` before ``command`` (resume or extend) continues it, before
    Ray starts: refuse a changed config or code unless ``force``, a config file edited since it ran
    (when it is to ``grow``: ``grow(old)`` returns the grown config and what it adds), storage that
    cannot be written, a tracker that cannot log, data or a model the config can no longer use, dense
    models that lack a snapshot the sweep rewinds to; warn when the experiment records no provenance."""
    path = location(path, command)
    if not force:  # refused before the checks below, which may take long (a dataset's images decoded)
        lock.refuse_if_held(path, command)
    old, recorded = experiment_config(path)
    _code_outside(old, path)
    differences = provenance.differences(old, recorded)
    config, added = old, None
    if grow is not None:
        edited = provenance.config_changed(old, recorded)
        if edited and differences == [edited]:  # the same code: the file itself was edited
            raise ConfigError(f"{command} {path}: {edited}: its {CONFIG_FILE} was edited, so it no longer says what "
                              "its trials ran (--force does not apply); restore the file, or start a new experiment")
        config, added = grow(old)
    changed = _unchanged(path, differences, force, command)
    check_storage(path)
    logged = _trackers(recorded, list(trackers))
    tracking.check(logged, path)
    config = preflight(config)
    if changed or provenance.unknown(recorded):  # else the same config and code wrote every snapshot it needs
        check_snapshots(old, path)
    if provenance.unknown(recorded):
        print(f"warning: {path} records no provenance of its code (started before prunesweep recorded it): "
              "cannot check that the code is unchanged", file=sys.stderr, flush=True)
    return Reopened(path, old, config, recorded, changed, logged, added)
