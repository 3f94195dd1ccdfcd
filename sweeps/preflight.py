"""What a config names outside itself, checked once on the driver before Ray starts.

Local paths (``dataset.root``, ``dense.checkpoint``) are made absolute here, against the folder
``prunesweep`` was started from, so that trials, which Ray Tune runs in folders of their own,
read the same files; the config the trials get holds the resolved paths and never checks the
disk again. A dataset with ``download: true`` is downloaded here, once.
"""
from __future__ import annotations

import os
import shutil

from analysis import storage

from .config import ConfigError, SweepConfig
from .data import CIFAR10_FOLDER, download_cifar10


def resolve_paths(config: SweepConfig) -> SweepConfig:
    """``config`` with its local paths absolute (URIs unchanged)."""
    dataset, dense = config.dataset, config.dense
    if dataset.root is not None and not storage.is_uri(dataset.root):
        dataset = dataset.model_copy(update={"root": storage.normalise(dataset.root)})
    if dense.checkpoint is not None:
        try:
            dense = dense.model_copy(update={"checkpoint": storage.normalise(dense.checkpoint)})
        except ValueError as exc:
            raise ConfigError(f"dense.checkpoint: {exc}") from None
    return config.model_copy(update={"dataset": dataset, "dense": dense})


def _present(config: SweepConfig) -> bool:
    return os.path.isdir(os.path.join(config.dataset.root, CIFAR10_FOLDER))


def will_download(config: SweepConfig) -> bool:
    """Whether :func:`preflight` downloads the dataset (``download: true`` and not there yet)."""
    d = config.dataset
    return d.name == "cifar10" and d.download and not _present(config)


def _check_dataset(config: SweepConfig, download: bool) -> None:
    d = config.dataset
    if d.name != "cifar10":
        return
    if storage.is_uri(d.root):
        raise ConfigError(f"dataset.root {d.root!r}: cifar10 is read from a local folder, not a URI")
    if not d.download and not _present(config):
        raise ConfigError(f"dataset.root {d.root!r} holds no {CIFAR10_FOLDER} and dataset.download is false "
                          "(set dataset.download: true or point dataset.root at the folder that holds it)")
    if not (download and will_download(config)):
        return
    created = not os.path.exists(d.root)
    try:
        download_cifar10(d.root)
    except Exception as exc:  # URLError, a proxy's refusal, a corrupt archive, a full disk, ...
        if created:
            shutil.rmtree(d.root, ignore_errors=True)
        raise ConfigError(f"dataset.download: could not download cifar10 into {d.root!r} ({storage.one_line(exc)}); "
                          f"put {CIFAR10_FOLDER} there yourself and set dataset.download: false") from None


def _check_checkpoint(config: SweepConfig) -> None:
    path = config.dense.checkpoint
    if path is None:
        return
    try:
        found = storage.is_file(path)
    except Exception as exc:  # an unreachable object store, a malformed URI
        raise ConfigError(f"dense.checkpoint {path!r} cannot be read ({storage.one_line(exc)})") from None
    if not found:
        raise ConfigError(f"dense.checkpoint {path!r} is not a file")


def preflight(config: SweepConfig, download: bool = True) -> SweepConfig:
    """Resolve local paths, check the data (downloading it if asked and ``download``) and find the
    dense checkpoint; returns the config trials get. Raises :class:`ConfigError` naming the field."""
    config = resolve_paths(config)
    _check_dataset(config, download)
    _check_checkpoint(config)
    return config
