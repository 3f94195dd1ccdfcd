"""Datasets held as tensors, and a loader that batches and augments on the trial's device.

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, no network).
  Fixed split: a permutation drawn with seed 0; the last 360 images are the test set, the
  other 1,437 the training set.
- ``cifar10``: ``torchvision.datasets.CIFAR10`` (50,000 train / 10,000 test, the official
  split), read once into one uint8 tensor.

An optional validation split is the last ``validation`` images of the training set, held out
of training; ``train_subset`` then takes the first images of what remains. Both datasets are
normalised per channel with the (remaining) training set's mean and standard deviation.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

DIGITS_TEST = 360
TRAIN_SIZES = {"digits": 1797 - DIGITS_TEST, "cifar10": 50000}
DATASET_SHAPES = {"digits": (10, 1), "cifar10": (10, 3)}  # (classes, image channels)


@dataclass
class TensorData:
    """A dataset as tensors, stored raw (CIFAR as uint8, 4x smaller than float) with the
    training set's per-channel ``mean``/``std``; batches are normalised as they are drawn."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    pad: int  # random-crop padding for augmentation
    mean: torch.Tensor  # (1, C, 1, 1), in the raw tensors' scale
    std: torch.Tensor
    channels_last: bool = False
    x_val: torch.Tensor | None = None  # the held-out validation split, if any
    y_val: torch.Tensor | None = None

    @property
    def in_channels(self) -> int:
        return self.x_train.shape[1]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        out = (x.float() - self.mean) / self.std
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw images and labels of the ``test`` or ``val`` split."""
        return (self.x_test, self.y_test) if name == "test" else (self.x_val, self.y_val)

    def to(self, device, channels_last: bool = False) -> "TensorData":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return TensorData(move(self.x_train), move(self.y_train), move(self.x_test), move(self.y_test),
                          self.num_classes, self.pad, move(self.mean), move(self.std), channels_last,
                          move(self.x_val), move(self.y_val))


def _split_train(x, y, x_test, y_test, num_classes, pad, train_subset, validation) -> TensorData:
    """Hold the last ``validation`` training images out, keep the first ``train_subset`` of the
    rest, and normalise with the statistics of what is trained on."""
    n = x.shape[0] - validation
    x_val, y_val = (x[n:], y[n:]) if validation else (None, None)
    x_train, y_train = x[:n][:train_subset], y[:n][:train_subset]
    mean, std = channel_stats(x_train)
    return TensorData(x_train, y_train, x_test, y_test, num_classes, pad, mean, std, x_val=x_val, y_val=y_val)


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of ``x`` (N, C, H, W), one channel at a time."""
    means, stds = [], []
    for c in range(x.shape[1]):
        xc = x[:, c].float()
        means.append(xc.mean())
        stds.append(xc.std().clamp_min(1e-6))
    return torch.stack(means).view(1, -1, 1, 1), torch.stack(stds).view(1, -1, 1, 1)


def load_digits_data(train_subset: int | None = None, validation: int = 0) -> TensorData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.from_numpy(np.random.RandomState(0).permutation(len(y)))
    x, y = x[order], y[order]
    return _split_train(x[:-DIGITS_TEST], y[:-DIGITS_TEST], x[-DIGITS_TEST:], y[-DIGITS_TEST:], 10, 1,
                        train_subset, validation)


CIFAR10_FOLDER = "cifar-10-batches-py"


def download_cifar10(root: str) -> None:
    """Download and verify CIFAR-10 into ``root`` (torchvision's own download), once per machine:
    under an inter-process file lock (kept in the temp folder, so ``root`` needs no lock file),
    the first process downloads and the others wait and find the files there."""
    import hashlib
    import tempfile

    from filelock import FileLock
    from torchvision.datasets import CIFAR10

    key = hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:16]
    with FileLock(os.path.join(tempfile.gettempdir(), f"prunesweep-download-{key}.lock")):
        CIFAR10(root=root, train=False, download=True)


def load_cifar10_data(root: str, download: bool = False, train_subset: int | None = None,
                      validation: int = 0) -> TensorData:
    """CIFAR-10 from ``root``; with ``download``, fetched first unless it is there and verified
    (:func:`download_cifar10`: a folder another process is still extracting is waited for)."""
    from torchvision.datasets import CIFAR10

    if download:
        download_cifar10(root)

    def as_tensors(train: bool):
        ds = CIFAR10(root=root, train=train)
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return x, torch.tensor(ds.targets, dtype=torch.long)

    x_train, y_train = as_tensors(True)
    x_test, y_test = as_tensors(False)
    return _split_train(x_train, y_train, x_test, y_test, 10, 4, train_subset, validation)


@functools.lru_cache(maxsize=4)
def load_dataset(name: str, root: str | None = None, download: bool = False,
                 train_subset: int | None = None, validation: int = 0) -> TensorData:
    """The named dataset as CPU tensors (cached per process)."""
    if name == "digits":
        return load_digits_data(train_subset, validation)
    if name == "cifar10":
        return load_cifar10_data(root, download, train_subset, validation)
    raise ValueError(f"dataset must be one of digits, cifar10; got {name!r}")


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Per-image random crop (zero padding of ``pad``) and horizontal flip, for a whole batch."""
    b, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad))
    shifts = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=dev)
    rows = (shifts[0, :, None] + torch.arange(h, device=dev)).view(b, 1, h, 1)
    cols = (shifts[1, :, None] + torch.arange(w, device=dev)).view(b, 1, 1, w)
    out = padded[torch.arange(b, device=dev).view(b, 1, 1, 1), torch.arange(c, device=dev).view(1, c, 1, 1), rows, cols]
    flip = torch.rand(b, generator=generator, device=dev) < 0.5
    return torch.where(flip.view(b, 1, 1, 1), out.flip(3), out)


class DeviceLoader:
    """Shuffled, normalised mini-batches of a dataset already on the device, augmented
    (crop with zero padding, then flip, as torchvision does before ``Normalize``) in whole batches.

    The order and augmentation come from ``generator`` alone, so a run is repeatable and a
    checkpoint of the generator's state resumes the exact data stream.
    """

    def __init__(self, data: TensorData, batch_size: int, generator: torch.Generator, augment: bool = False):
        self.data, self.batch_size = data, batch_size
        self.generator, self.augment = generator, augment

    def __len__(self):
        return -(-self.data.x_train.shape[0] // self.batch_size)

    def __iter__(self):
        x, y = self.data.x_train, self.data.y_train
        order = torch.randperm(x.shape[0], generator=self.generator, device=self.generator.device)
        if order.device != x.device:
            order = order.to(x.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            xb = x[idx]
            if self.augment:
                xb = random_crop_flip(xb, self.data.pad, self.generator)
            yield self.data.normalise(xb), y[idx]
