"""An experiment's own file (:data:`analysis.schema.CONFIG_FILE`, ``prunesweep.yaml``): the sweep
config it was started with and its provenance.

Needs only yaml, :mod:`analysis.storage` and :mod:`analysis.schema` (no pandas, no matplotlib), so
the sweeps driver reads experiments with it before, and without, analysing them.
"""
from __future__ import annotations

import yaml

from . import storage
from .messages import one_line
from .schema import CONFIG_FILE, split_provenance


class NotAnExperiment(ValueError):
    """The path holds no Ray Tune experiment."""


def read_experiment_file(path) -> tuple[dict, dict] | None:
    """``(config, provenance)`` from an experiment's ``prunesweep.yaml``, or None if it has none.
    Raises NotAnExperiment if the file is not a YAML mapping."""
    file = storage.join(storage.normalise(str(path)), CONFIG_FILE)
    if not storage.exists(file):
        return None
    try:
        document = yaml.safe_load(storage.read_bytes(file))
    except yaml.YAMLError as exc:
        raise NotAnExperiment(f"{file} is damaged: {one_line(exc)}") from None
    if not isinstance(document, dict):
        raise NotAnExperiment(f"{file} is damaged: not a mapping of config fields")
    return split_provenance(document)


def read_config(path) -> dict | None:
    """The sweep config an experiment was started with (its ``prunesweep.yaml``), or None."""
    found = read_experiment_file(path)
    return found[0] if found is not None else None
