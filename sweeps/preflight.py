"""What a config names outside itself, checked once on the driver before Ray starts.

Local paths (``dataset.root``, ``dense.checkpoint``) are made absolute here, against the folder
``prunesweep`` was started from, so that trials, which Ray Tune runs in folders of their own,
read the same files; the config the trials get holds the resolved paths and never checks the
disk again. A dataset with ``download: true`` is downloaded here, once. The model is built once
and one batch of the dataset's shape runs through it, in training and in evaluation mode.
"""
from __future__ import annotations

import os
import shutil

import torch

import pruning_core as pc
from analysis import storage
from analysis.messages import one_line, short
from analysis.schema import DENSE_DIR, dense_file

from .config import ConfigError, SweepConfig
from .datasets import (IMAGEFOLDER, SPECS, DatasetError, DatasetInfo, check_images, describe, download, missing,
                       parent_root, present, validation_problem)
from .models import ModelError, build_model
from .plan import rewind_epochs
from .torch_files import SNAPSHOTS, load_torch, read_checkpoint


def location(path: str, what: str) -> str:
    """``path`` normalised (:func:`analysis.storage.normalise`: local paths absolute), or a
    ConfigError naming ``what`` (the field or argument that gave it)."""
    try:
        return storage.normalise(path)
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def resolve_paths(config: SweepConfig) -> SweepConfig:
    """``config`` with its local paths absolute (URIs unchanged)."""
    dataset, dense = config.dataset, config.dense
    if dataset.root is not None and not storage.is_uri(dataset.root):
        dataset = dataset.model_copy(update={"root": storage.normalise(dataset.root)})
    if dense.checkpoint is not None:
        dense = dense.model_copy(update={"checkpoint": location(dense.checkpoint, "dense.checkpoint")})
    return config.model_copy(update={"dataset": dataset, "dense": dense})


def _torchvision_dataset(config: SweepConfig) -> bool:
    return SPECS[config.dataset.name].torchvision is not None


def will_download(config: SweepConfig) -> bool:
    """Whether :func:`preflight` downloads the dataset (``download: true`` and not there yet)."""
    d = config.dataset
    return _torchvision_dataset(config) and d.download and not present(d.name, d.root)


def _check_dataset(config: SweepConfig, download_now: bool) -> DatasetInfo:
    d = config.dataset
    if d.root is not None and storage.is_uri(d.root):
        raise ConfigError(f"dataset.root {d.root!r}: {d.name} is read from a local folder, not a URI")
    if _torchvision_dataset(config):
        why = missing(d.name, d.root)
        there = why is None
        parent = None if there else parent_root(d.name, d.root)
        if parent is not None:
            folder = os.path.relpath(os.path.abspath(d.root), parent).replace(os.sep, "/")  # MNIST, MNIST/raw
            raise ConfigError(f"dataset.root {d.root!r} is the {folder} folder itself: "
                              f"torchvision looks for it inside dataset.root; use its parent (dataset.root: {parent})")
        if not d.download and not there:
            raise ConfigError(f"dataset.root {d.root!r} holds no {d.name} ({SPECS[d.name].files}, as torchvision "
                              f"reads them: {why}) and dataset.download is false (set dataset.download: true or "
                              "point dataset.root at the folder that holds it)")
        if download_now and not there:
            created = not os.path.exists(d.root)
            try:
                download(d.name, d.root)
            except Exception as exc:  # URLError, a proxy's refusal, a corrupt archive, a full disk, ...
                if created:
                    shutil.rmtree(d.root, ignore_errors=True)
                raise ConfigError(f"dataset.download: could not download {d.name} into {d.root!r} "
                                  f"({one_line(exc)}); put {SPECS[d.name].files} there yourself and set "
                                  "dataset.download: false") from None
    try:
        info = describe(d)
        if d.name == IMAGEFOLDER:
            check_images(d.root, info.channels, info.image_size)
    except DatasetError as exc:
        raise ConfigError(f"dataset.root {d.root!r}: {exc}") from None
    problem = validation_problem(d.validation, info.train_size, d.root or d.name)
    if problem:
        raise ConfigError(problem)
    return info


def _logits_shape(output) -> str:
    return f"shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else f"a {type(output).__name__}"


AUX_HINT = " (a model with auxiliary outputs: turn them off through model_args, e.g. aux_logits: false)"


def _check_layer_patterns(config: SweepConfig, model: torch.nn.Module) -> None:
    """Refuse a ``pruning.include``/``exclude`` entry that names no prunable layer of the model
    (a pattern written for another model would otherwise change nothing, silently)."""
    layers = [u.name for u in pc.prunable_weights(model)]
    for field in ("include", "exclude"):
        for pattern in getattr(config.pruning, field) or []:
            if not pc.prunable_weights(model, include=[pattern]):
                shown = ", ".join(layers[:10]) + (f", ... ({len(layers)} in all)" if len(layers) > 10 else "")
                raise ConfigError(f"pruning.{field}: {pattern!r} matches no prunable layer of model "
                                  f"{config.model!r} (its prunable layers: {shown})")


def _check_structure(config: SweepConfig, model: torch.nn.Module, batch: torch.Tensor) -> None:
    """Refuse a structure that cannot apply to the layers in scope: N:M on a layer whose input is
    not a multiple of M, filters on a model with no conv that can lose filters on its own."""
    p = config.pruning
    try:
        units = pc.units_in_scope(model, p.structure, p.include, p.exclude)
        if p.structure == "filters":
            pc.filter_units(model, units, batch)
    except ValueError as exc:
        raise ConfigError(f"pruning.structure: {p.structure}: {exc} (model {config.model!r})") from None


def check_model(config: SweepConfig, info: DatasetInfo) -> None:
    """Build the model once and run a batch of two images of the dataset's shape through it, in
    training and in evaluation mode: each must give one logit per class; ConfigError otherwise."""
    name, d = config.model, config.dataset
    try:
        model = build_model(name, info.classes, info.channels, config.model_args)
    except ModelError as exc:
        raise ConfigError(f"model {name!r}: {exc}") from None
    _check_layer_patterns(config, model)
    shape = (2, info.channels, info.image_size, info.image_size)
    batch = torch.zeros(shape)
    for mode in ("training", "evaluation"):
        model.train(mode == "training")
        try:
            with torch.no_grad():
                output = model(batch)
        except Exception as exc:
            hint = AUX_HINT if getattr(model, "aux_logits", False) and mode == "training" else ""
            raise ConfigError(f"model {name!r}: a batch of {d.name} images ({'x'.join(map(str, shape[1:]))}) fails "
                              f"in its {mode} forward ({type(exc).__name__}: {one_line(exc)}){hint}") from None
        if not (isinstance(output, torch.Tensor) and tuple(output.shape) == (2, info.classes)):
            hint = AUX_HINT if not isinstance(output, torch.Tensor) else ""
            raise ConfigError(f"model {name!r}: in {mode} mode a batch of 2 {d.name} images gives "
                              f"{_logits_shape(output)}, not logits of shape (2, {info.classes}) for its "
                              f"{info.classes} classes{hint}")
    _check_structure(config, model, batch)
    if isinstance(config.fuse, int):
        _check_fusable(config, model, batch)


def _check_fusable(config: SweepConfig, model: torch.nn.Module, batch: torch.Tensor) -> None:
    """Refuse ``fuse: N`` for a model that cannot train fused (:func:`sweeps.fused.check_fusable`,
    in float32: what fails only under a GPU's bf16 autocast falls back to float32 there, saying so)."""
    from .fused import FusionError, check_fusable

    try:
        check_fusable(model, batch, mixed=False)
    except FusionError as exc:
        raise ConfigError(f"fuse: {config.fuse}: {exc}; set fuse: off to train each point alone") from None


def _check_checkpoint(config: SweepConfig) -> None:
    path = config.dense.checkpoint
    if path is None:
        return
    try:
        found = storage.is_file(path)
    except Exception as exc:  # an unreachable object store, a malformed URI
        raise ConfigError(f"dense.checkpoint {path!r} cannot be read ({one_line(exc)})") from None
    if not found:
        raise ConfigError(f"dense.checkpoint {path!r} is not a file")


def preflight(config: SweepConfig, download: bool = True) -> SweepConfig:
    """Resolve local paths, check the data (downloading it if asked and ``download``) and find the
    dense checkpoint; returns the config trials get. Raises :class:`ConfigError` naming the field."""
    config = resolve_paths(config)
    check_model(config, _check_dataset(config, download))
    _check_checkpoint(config)
    return config


def dense_checkpoint(sweep: SweepConfig) -> dict:
    """``dense.checkpoint``'s state_dict, checked to fit the config's model exactly (every key and
    shape); raises ConfigError naming the field otherwise. Run on the driver, before anything is
    written."""
    path = sweep.dense.checkpoint
    try:
        state = read_checkpoint(path)
    except Exception as exc:  # a truncated or foreign file, an unreadable URI
        raise ConfigError(f"dense.checkpoint {path!r} is not a readable torch state_dict "
                          f"({one_line(exc)})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ConfigError(f"dense.checkpoint {path!r} holds {short(state)}, not a torch state_dict (a mapping "
                          "of parameter names to tensors)")
    info = describe(sweep.dataset)
    try:
        build_model(sweep.model, info.classes, info.channels, sweep.model_args).load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"dense.checkpoint {path!r} does not fit model {sweep.model!r} on {sweep.dataset.name} "
                          f"({one_line(exc)})") from None
    return state


def check_snapshots(config: SweepConfig, path: str) -> None:
    """Refuse (ConfigError) a dense model in the experiment that lacks a snapshot the sweep's weight
    rewinding starts from (one trained for another config, resumed with ``--force``), before Ray starts."""
    needed = set(rewind_epochs(config))
    if not needed:
        return
    for seed in config.seed_list:
        file = storage.join(path, DENSE_DIR, dense_file(seed))
        if storage.exists(file):
            try:
                dense = load_torch(file)
            except Exception as exc:  # cut short, or more than data
                raise ConfigError(f"dense model of seed {seed}: {file} cannot be read ({one_line(exc)}); restore it, "
                                  "or move it out of the experiment to train it again") from None
            lacking = sorted(needed - set(dense.get(SNAPSHOTS, {})))
            if lacking:
                raise ConfigError(f"finetune.retrain: weight_rewind starts from dense epoch(s) "
                                  f"{', '.join(map(str, lacking))}, which {file} does not hold (it was trained for "
                                  "another config); delete it to train it again, or drop weight_rewind")
