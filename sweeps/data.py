"""A trial's data: held as uint8 tensors (on the trial's device), or streamed from an image folder
too large for memory; batched, augmented and normalised on the device the same way on both paths.

Which dataset is what, and how its files are read, is :mod:`sweeps.datasets`. An optional
validation split is the last ``validation`` images of the training set, held out of training;
``train_subset`` then takes the first images of what remains (an image folder is put in a fixed
random order first, seed 0, as its files come sorted by class). Images are normalised per channel
with the (remaining) training set's mean and standard deviation; an image folder's come from at
most :data:`STATS_IMAGES` evenly spaced training images.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import datasets
from .datasets import DIGITS_TEST, IMAGEFOLDER, SPECS  # noqa: F401  (DIGITS_TEST: the digits split)

STATS_IMAGES = 5000
DECODE_BATCH = 256


@dataclass
class TensorData:
    """A dataset as tensors, stored raw (uint8 where the files are, 4x smaller than float) with
    the training set's per-channel ``mean``/``std``; batches are normalised as they are drawn."""

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
    flip: bool = True  # augmentation flips horizontally

    streamed = False

    @property
    def in_channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def train_size(self) -> int:
        return self.x_train.shape[0]

    @property
    def has_validation(self) -> bool:
        return self.x_val is not None

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        out = (x.to(torch.get_default_dtype()) - self.mean) / self.std
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw images and labels of the ``test`` or ``val`` split."""
        return (self.x_test, self.y_test) if name == "test" else (self.x_val, self.y_val)

    def batches(self, split: str, batch_size: int):
        """Raw ``(images, labels)`` of the ``test`` or ``val`` split, in order."""
        x, y = self.split(split)
        for i in range(0, x.shape[0], batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]

    def train_batches(self, order: torch.Tensor, batch_size: int):
        """Raw ``(images, labels)`` of the training set in ``order``, in :func:`batch_bounds`."""
        if order.device != self.x_train.device:
            order = order.to(self.x_train.device)
        for start, end in batch_bounds(order.shape[0], batch_size):
            idx = order[start:end]
            yield self.x_train[idx], self.y_train[idx]

    def to(self, device, channels_last: bool = False) -> "TensorData":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        tensors = {f.name: move(getattr(self, f.name)) for f in dataclasses.fields(self)
                   if isinstance(getattr(self, f.name), torch.Tensor)}
        return dataclasses.replace(self, **tensors, channels_last=channels_last)


@dataclass
class StreamedData:
    """An image folder read from disk as it is trained on: ``DataLoader`` workers decode and resize,
    the device augments and normalises (as for :class:`TensorData`, so both give the same batches)."""

    train: torch.utils.data.Dataset
    test: torch.utils.data.Dataset
    val: torch.utils.data.Dataset | None
    num_classes: int
    in_channels: int
    pad: int
    flip: bool
    mean: torch.Tensor
    std: torch.Tensor
    workers: int
    device: torch.device = torch.device("cpu")
    channels_last: bool = False

    streamed = True
    normalise = TensorData.normalise

    @property
    def train_size(self) -> int:
        return len(self.train)

    @property
    def has_validation(self) -> bool:
        return self.val is not None

    def _load(self, dataset, batch_sampler):
        from torch.utils.data import DataLoader

        # its own generator: a DataLoader otherwise seeds its workers from torch's global RNG, which
        # would then differ from the in-memory path's (dropout, the random criterion)
        loader = DataLoader(dataset, batch_sampler=batch_sampler, num_workers=self.workers,
                            pin_memory=self.device.type == "cuda", generator=torch.Generator())
        for xb, yb in loader:
            yield xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)

    def batches(self, split: str, batch_size: int):
        dataset = self.test if split == "test" else self.val
        n = len(dataset)
        yield from self._load(dataset, [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)])

    def train_batches(self, order: torch.Tensor, batch_size: int):
        order = order.tolist()
        yield from self._load(self.train, [order[start:end] for start, end in batch_bounds(len(order), batch_size)])

    def to(self, device, channels_last: bool = False) -> "StreamedData":
        device = torch.device(device)
        return dataclasses.replace(self, mean=self.mean.to(device), std=self.std.to(device), device=device,
                                   channels_last=channels_last)


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each training batch of ``n`` images: ``batch_size`` at a time, except that a
    last batch of one image joins the one before (BatchNorm cannot train on a single image whose
    feature maps have shrunk to 1x1, as a torchvision model's do on small images)."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [(start, starts[i + 1] if i + 1 < len(starts) else n) for i, start in enumerate(starts)]


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of ``x`` (N, C, H, W), one channel at a time."""
    means, stds = [], []
    for c in range(x.shape[1]):
        xc = x[:, c].float()
        means.append(xc.mean())
        stds.append(xc.std().clamp_min(1e-6))
    return torch.stack(means).view(1, -1, 1, 1), torch.stack(stds).view(1, -1, 1, 1)


def _split_train(x, y, x_test, y_test, info, train_subset, validation, sampled_stats: bool = False) -> TensorData:
    """Hold the last ``validation`` training images out, keep the first ``train_subset`` of the
    rest, and normalise with the statistics of what is trained on (with ``sampled_stats``, of its
    :func:`_stats_sample`)."""
    n = x.shape[0] - validation
    x_val, y_val = (x[n:], y[n:]) if validation else (None, None)
    x_train, y_train = x[:n][:train_subset], y[:n][:train_subset]
    mean, std = channel_stats(x_train[_stats_sample(x_train.shape[0])] if sampled_stats else x_train)
    return TensorData(x_train, y_train, x_test, y_test, info.classes, info.pad, mean, std, x_val=x_val, y_val=y_val,
                      flip=info.flip)


def _digits() -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.from_numpy(np.random.RandomState(0).permutation(len(y)))
    x, y = x[order], y[order]
    return x[:-DIGITS_TEST], y[:-DIGITS_TEST], x[-DIGITS_TEST:], y[-DIGITS_TEST:]


def _decode(dataset, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of ``dataset`` as one uint8 tensor (decoded by ``workers`` processes), and its labels."""
    from torch.utils.data import DataLoader

    xs, ys = [], []
    for xb, yb in DataLoader(dataset, batch_size=DECODE_BATCH, num_workers=workers, generator=torch.Generator()):
        xs.append(xb)
        ys.append(yb)
    return torch.cat(xs), torch.cat(ys)


def _folder_order(n: int) -> list[int]:
    """The fixed order an image folder's training images are split and trained in."""
    return np.random.RandomState(0).permutation(n).tolist()


def _stats_sample(n: int) -> list[int]:
    """Which of ``n`` training images (in training order) an image folder's statistics come from."""
    return np.linspace(0, n - 1, min(n, STATS_IMAGES)).round().astype(int).tolist()


def _image_folder(config, info) -> TensorData | StreamedData:
    from torch.utils.data import Subset

    train, test = datasets.image_folders(config.root, info.channels, config.image_size)
    order = _folder_order(len(train))
    n = len(order) - config.validation
    train_idx, val_idx = order[:n][:config.train_subset], order[n:]
    if info.bytes <= config.in_memory_max_gb * 1e9:
        x, y = _decode(train, config.workers)
        x, y = x[order], y[order]
        x_test, y_test = _decode(test, config.workers)
        return _split_train(x, y, x_test, y_test, info, config.train_subset, config.validation, sampled_stats=True)
    training = Subset(train, train_idx)
    sample, _ = _decode(Subset(training, _stats_sample(len(training))), config.workers)
    mean, std = channel_stats(sample)
    return StreamedData(training, test, Subset(train, val_idx) if config.validation else None, info.classes,
                        info.channels, info.pad, info.flip, mean, std, config.workers)


@functools.lru_cache(maxsize=4)
def load_dataset(config) -> TensorData | StreamedData:
    """The dataset a (path-resolved) ``DatasetConfig`` names, on the CPU (cached per process);
    downloaded first where ``download`` is set and it is not there."""
    info = datasets.describe(config)
    if config.name == IMAGEFOLDER:
        return _image_folder(config, info)
    if config.name == "digits":
        parts = _digits()
    else:
        if config.download:
            datasets.download(config.name, config.root)
        parts = (*datasets.read_torchvision(config.name, config.root, True),
                 *datasets.read_torchvision(config.name, config.root, False))
    return _split_train(*parts, info, config.train_subset, config.validation)


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Per-image random crop (zero padding of ``pad``) and, with ``flip``, horizontal flip, for a whole batch."""
    b, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad))
    shifts = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=dev)
    rows = (shifts[0, :, None] + torch.arange(h, device=dev)).view(b, 1, h, 1)
    cols = (shifts[1, :, None] + torch.arange(w, device=dev)).view(b, 1, 1, w)
    out = padded[torch.arange(b, device=dev).view(b, 1, 1, 1), torch.arange(c, device=dev).view(1, c, 1, 1), rows, cols]
    if not flip:
        return out
    flipped = torch.rand(b, generator=generator, device=dev) < 0.5
    return torch.where(flipped.view(b, 1, 1, 1), out.flip(3), out)


class DeviceLoader:
    """Shuffled, normalised mini-batches of a dataset (held on the device, or streamed to it),
    augmented on the device in whole batches (crop with zero padding, then flip where the
    dataset's recipe flips, as torchvision does before ``Normalize``).

    The order and augmentation come from ``generator`` alone, so a run is repeatable, a checkpoint
    of the generator's state resumes the exact data stream, and both data paths give the same batches.
    """

    def __init__(self, data: TensorData | StreamedData, batch_size: int, generator: torch.Generator,
                 augment: bool = False):
        self.data, self.batch_size = data, batch_size
        self.generator, self.augment = generator, augment

    def __len__(self):
        return len(batch_bounds(self.data.train_size, self.batch_size))

    def __iter__(self):
        order = torch.randperm(self.data.train_size, generator=self.generator, device=self.generator.device)
        for xb, yb in self.data.train_batches(order, self.batch_size):
            if self.augment:
                xb = random_crop_flip(xb, self.data.pad, self.generator, self.data.flip)
            yield self.data.normalise(xb), yb
