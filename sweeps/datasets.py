"""The named datasets: what each one is (classes, channels, size, augmentation recipe) and how its
files are read, checked and downloaded.

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, no network). Fixed
  split: a permutation drawn with seed 0; the last 360 images are the test set.
- ``cifar10``, ``cifar100``, ``mnist``, ``fashion_mnist``, ``svhn``: torchvision's own dataset
  classes on their official files and splits (SVHN: ``train`` and ``test``; ``extra`` unused).
- ``imagefolder``: ``root/train/<class>/*`` and ``root/test/<class>/*`` (torchvision's
  ``ImageFolder``; any format Pillow reads), each image resized so that its shorter side is
  ``image_size`` and centre-cropped to a square, RGB unless ``channels: 1``. Class indices follow
  the sorted training folders; the test set may lack classes but never add one.
"""
from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import torch

from analysis.messages import one_line
from analysis.schema import DATASET_CLASSES, IMAGEFOLDER


@dataclass(frozen=True)
class DatasetSpec:
    """What a named dataset is; ``None`` where the data decides (an image folder)."""

    classes: int | None
    channels: int | None
    image_size: int | None
    train_size: int | None
    test_size: int | None
    pad: int | None  # random-crop padding of the standard augmentation (image folders: image_size // 8)
    flip: bool  # whether the standard augmentation flips horizontally
    augment: bool  # whether training augments by default
    torchvision: str | None = None  # the torchvision.datasets class that reads it
    files: str = ""  # what dataset.root must hold, for messages
    folder: str | None = None  # the dataset's own folder, which torchvision looks for inside dataset.root (None:
                               # its files lie in dataset.root itself, or the data decides)
    inner: str | None = None  # the folder inside ``folder`` that holds its files (MNIST's ``raw``), if any


DIGITS_TEST = 360
_C = DATASET_CLASSES  # the classes of each named dataset: analysis.schema, which the analysis reads too
SPECS = {
    "digits": DatasetSpec(_C["digits"], 1, 8, 1797 - DIGITS_TEST, DIGITS_TEST, 1, False, False),
    "cifar10": DatasetSpec(_C["cifar10"], 3, 32, 50000, 10000, 4, True, True, "CIFAR10", "cifar-10-batches-py",
                           "cifar-10-batches-py"),
    "cifar100": DatasetSpec(_C["cifar100"], 3, 32, 50000, 10000, 4, True, True, "CIFAR100", "cifar-100-python",
                            "cifar-100-python"),
    "mnist": DatasetSpec(_C["mnist"], 1, 28, 60000, 10000, 2, False, False, "MNIST", "MNIST/raw (the idx files)",
                         "MNIST", "raw"),
    "fashion_mnist": DatasetSpec(_C["fashion_mnist"], 1, 28, 60000, 10000, 2, True, False, "FashionMNIST",
                                 "FashionMNIST/raw (the idx files)", "FashionMNIST", "raw"),
    "svhn": DatasetSpec(_C["svhn"], 3, 32, 73257, 26032, 4, False, True, "SVHN",
                        "train_32x32.mat and test_32x32.mat"),
    IMAGEFOLDER: DatasetSpec(None, None, None, None, None, None, True, True, None,
                             "train/<class>/* and test/<class>/* image files"),
}


@dataclass(frozen=True)
class DatasetInfo:
    """What a configured dataset holds: the shape the model sees and the split sizes."""

    classes: int
    channels: int
    image_size: int
    train_size: int  # before a validation split is held out
    test_size: int
    pad: int
    flip: bool

    @property
    def bytes(self) -> int:
        """Size of every image as uint8 at ``image_size``."""
        return (self.train_size + self.test_size) * self.channels * self.image_size ** 2


def validation_problem(validation: int, train_size: int, where: str) -> str | None:
    """Why ``dataset.validation`` cannot be held out of ``where``'s ``train_size`` training images, or None."""
    if validation < train_size:
        return None
    return (f"dataset.validation must leave training images: {where} has {train_size}, so the allowed range is "
            f"0..{train_size - 1} (got {validation})")


class DatasetError(ValueError):
    """Data that cannot be read as configured; the message says what is wrong (the caller names the field)."""


# ------------------------------------------------------------------ torchvision's datasets

def _torchvision_split(name: str, root: str, train: bool, download: bool = False):
    from torchvision import datasets

    cls = getattr(datasets, SPECS[name].torchvision)
    if name == "svhn":
        return cls(root=root, split="train" if train else "test", download=download)
    return cls(root=root, train=train, download=download)


def read_torchvision(name: str, root: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of a torchvision dataset as (uint8 images N x C x H x W, int64 labels)."""
    ds = _torchvision_split(name, root, train)
    x = torch.as_tensor(np.ascontiguousarray(ds.data))
    if x.ndim == 3:  # MNIST-like: N x H x W
        x = x.unsqueeze(1)
    elif x.shape[-1] == 3:  # CIFAR: N x H x W x C (SVHN is already N x C x H x W)
        x = x.permute(0, 3, 1, 2)
    labels = ds.labels if name == "svhn" else ds.targets
    return x.contiguous(), torch.as_tensor(np.asarray(labels), dtype=torch.long)


def download(name: str, root: str) -> None:
    """Download and verify a torchvision dataset into ``root`` (torchvision's own download), once
    per machine: under an inter-process file lock (kept in the temp folder, so ``root`` needs no
    lock file), the first process downloads and the others wait and find the files there."""
    from filelock import FileLock

    key = hashlib.sha256(f"{name}:{os.path.abspath(root)}".encode()).hexdigest()[:16]
    with FileLock(os.path.join(tempfile.gettempdir(), f"prunesweep-download-{key}.lock")):
        for train in (True, False):  # SVHN downloads each split on its own
            _torchvision_split(name, root, train, download=True)


def missing(name: str, root: str) -> str | None:
    """Why ``root`` does not hold the dataset's files as torchvision reads and checks them (md5s
    where it keeps them), or None when it does."""
    try:
        for train in (True, False):
            _torchvision_split(name, root, train)
    except Exception as exc:  # torchvision's "Dataset not found or corrupted", a truncated file, ...
        return f"{type(exc).__name__}: {one_line(exc)}"
    return None


def parent_root(name: str, root: str) -> str | None:
    """The folder to give as ``dataset.root`` when ``root`` is the dataset's own folder that torchvision
    looks for inside it (:attr:`DatasetSpec.folder`: ``.../cifar-10-batches-py``, ``.../MNIST``) or
    the folder inside that holds its files (:attr:`DatasetSpec.inner`: ``.../MNIST/raw``), else None
    (also for a dataset without such a folder, an unknown name, or a root that is no path)."""
    spec = SPECS.get(name)
    if spec is None or spec.folder is None or not isinstance(root, (str, os.PathLike)):
        return None
    path = os.path.normpath(os.path.abspath(root))
    parent, last = os.path.split(path)
    if spec.inner is not None and last == spec.inner:
        parent, last = os.path.split(parent)
        if last != spec.folder:
            return None
    return parent if last == spec.folder else None


def present(name: str, root: str) -> bool:
    """Whether ``root`` holds the dataset's files, as torchvision reads and checks them."""
    return missing(name, root) is None


# ------------------------------------------------------------------ image folders

def _open_image(mode: str, path: str):
    from PIL import Image

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert(mode)
    except Exception as exc:  # a truncated or foreign file: say which one
        raise OSError(f"{path}: cannot read it as an image ({type(exc).__name__}: {exc})") from exc


DECODE_CHECK = 2000  # images of an image folder that preflight decodes in full (a seeded sample beyond)


def check_images(root: str, channels: int, image_size: int) -> None:
    """Refuse a file of an image folder that a trial could not read, once, before any trial reads
    it: raise DatasetError naming the first one. Every file's header is opened (about 30 us a file);
    a truncated file has a good header and fails only when decoded, so the images are also decoded
    in full as trials decode them: every image of a folder of up to :data:`DECODE_CHECK`, else a
    random sample of that many (seed 0), which the message then says."""
    import random

    from PIL import Image

    train, test = image_folders(root, channels, image_size)
    paths = [path for path, _ in train.samples + test.samples]
    for path in paths:
        try:
            with Image.open(path):
                pass
        except Exception as exc:
            raise DatasetError(f"{path} is not an image Pillow can read ({type(exc).__name__}: {one_line(exc)})") \
                from None
    sampled = len(paths) > DECODE_CHECK
    decoded = sorted(random.Random(0).sample(range(len(paths)), DECODE_CHECK)) if sampled else range(len(paths))
    for i in decoded:
        try:
            _open_image("L" if channels == 1 else "RGB", paths[i])
        except OSError as exc:
            cause = exc.__cause__ or exc
            found = (f", found in a random sample (seed 0) of {DECODE_CHECK:,} of its {len(paths):,} images that "
                     "preflight decodes" if sampled else "")
            raise DatasetError(f"{paths[i]} cannot be decoded ({type(cause).__name__}: {one_line(cause)}){found}; "
                               "every image a trial reads must decode") from None


def _folder(root: str, split: str, channels: int, image_size: int):
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise DatasetError(f"{root} has no {split}/ folder (an image folder holds train/<class>/* and test/<class>/*)")
    transform = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size),
                                    transforms.PILToTensor()])
    try:
        return ImageFolder(folder, transform=transform, allow_empty=split == "test",
                           loader=functools.partial(_open_image, "L" if channels == 1 else "RGB"))
    except FileNotFoundError as exc:  # no class folders, or a training class without images
        raise DatasetError(f"{folder}: {exc}") from None


@functools.lru_cache(maxsize=4)
def image_folders(root: str, channels: int, image_size: int):
    """The train and test ``ImageFolder`` of ``root``, the test set's labels renumbered to the
    training classes' indices (a test set that lacks a class keeps the others' indices). Listed
    once per process (like :func:`sweeps.data.load_dataset`): describing, checking and loading a
    folder of a million files each walk it otherwise."""
    train = _folder(root, "train", channels, image_size)
    test = _folder(root, "test", channels, image_size)
    extra = sorted(set(test.classes) - set(train.classes))
    if extra:
        raise DatasetError(f"{os.path.join(root, 'test')} has classes that train/ lacks: {', '.join(extra)}")
    if not test.samples:
        raise DatasetError(f"{os.path.join(root, 'test')} holds no images")
    index = [train.class_to_idx[c] for c in test.classes]
    test.samples = [(path, index[t]) for path, t in test.samples]
    test.imgs, test.targets = test.samples, [t for _, t in test.samples]
    test.classes, test.class_to_idx = train.classes, train.class_to_idx
    return train, test


# ------------------------------------------------------------------ what a config holds

def describe(config) -> DatasetInfo:
    """Classes, channels, image size and split sizes of a (path-resolved) ``DatasetConfig``.
    For an image folder this lists its files (no image is decoded); raises DatasetError."""
    spec = SPECS[config.name]
    if config.name != IMAGEFOLDER:
        return DatasetInfo(spec.classes, spec.channels, spec.image_size, spec.train_size, spec.test_size, spec.pad,
                           spec.flip)
    channels = config.channels or 3
    train, test = image_folders(config.root, channels, config.image_size)
    return DatasetInfo(len(train.classes), channels, config.image_size, len(train), len(test),
                       max(1, config.image_size // 8), spec.flip)
