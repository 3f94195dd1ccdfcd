"""Small datasets written in their real on-disk formats, for torchvision's own classes to read:
MNIST/Fashion-MNIST idx files, CIFAR-100 pickles, SVHN ``.mat`` files and an image folder of PNGs.
Each writer returns what it wrote, as (images N x C x H x W uint8, labels) per split."""
from __future__ import annotations

import os
import pickle
import struct

import numpy as np


def _images(rng, n: int, channels: int, size: int) -> np.ndarray:
    return rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8)


def write_mnist(root, folder: str = "MNIST", n_train: int = 64, n_test: int = 32, seed: int = 0) -> dict:
    """``root/<folder>/raw/`` with the four uncompressed idx files (``folder``: MNIST or FashionMNIST)."""
    rng = np.random.default_rng(seed)
    raw = os.path.join(root, folder, "raw")
    os.makedirs(raw, exist_ok=True)
    written = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x, y = _images(rng, n, 1, 28), rng.integers(0, 10, n).astype(np.uint8)
        with open(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), "wb") as f:
            f.write(struct.pack(">IIII", 0x0803, n, 28, 28) + x.tobytes())
        with open(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), "wb") as f:
            f.write(struct.pack(">II", 0x0801, n) + y.tobytes())
        written[split] = (x, y.astype(np.int64))
    return written


def write_cifar100(root, n_train: int = 64, n_test: int = 32, seed: int = 0) -> dict:
    """``root/cifar-100-python/{train,test,meta}`` pickles, as the real archive holds them."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x, fine = _images(rng, n, 3, 32), rng.integers(0, 100, n)
        entry = {"filenames": [f"{split}_{i}.png" for i in range(n)], "batch_label": f"{split} batch",
                 "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(), "data": x.reshape(n, -1)}
        with open(os.path.join(folder, split), "wb") as f:
            pickle.dump(entry, f)
        written[split] = (x, fine.astype(np.int64))
    with open(os.path.join(folder, "meta"), "wb") as f:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)],
                     "coarse_label_names": [f"super{i}" for i in range(20)]}, f)
    return written


def write_svhn(root, n_train: int = 64, n_test: int = 32, seed: int = 0) -> dict:
    """``root/{train,test}_32x32.mat``: ``X`` as 32 x 32 x 3 x N, ``y`` as N x 1 with digit 0 stored as 10."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x, y = _images(rng, n, 3, 32), rng.integers(0, 10, n)
        y[:3] = 0  # the label every reader must map back from 10
        savemat(os.path.join(root, f"{split}_32x32.mat"),
                {"X": x.transpose(2, 3, 1, 0), "y": np.where(y == 0, 10, y).reshape(-1, 1).astype(np.uint8)})
        written[split] = (x, y.astype(np.int64))
    return written


def write_image_folder(root, counts: dict, size: int = 16, channels: int = 3, seed: int = 0,
                       sizes: list[tuple[int, int]] | None = None) -> dict:
    """``root/<split>/<class>/<i>.png`` for ``counts = {split: {class: n}}``. Images are ``size``
    square (so they read back exactly), or cycle through ``sizes`` (width, height) when given.
    Returns ``{split: {class: [images as C x H x W uint8 arrays]}}``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = {}
    for split, classes in counts.items():
        written[split] = {}
        for name, n in classes.items():
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            written[split][name] = []
            for i in range(n):
                w, h = sizes[i % len(sizes)] if sizes else (size, size)
                pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
                Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(os.path.join(folder, f"{i:04d}.png"))
                written[split][name].append(pixels.transpose(2, 0, 1))
    return written
