"""Synthetic data in the real on-disk formats, for the benchmarks and the test suite.

prunesweep itself never imports this module.
"""
from __future__ import annotations

import contextlib
import os
import pickle

import numpy as np


def write_cifar10_format(root, n_train: int = 100, n_test: int = 50, seed: int = 0) -> str:
    """Write random images in torchvision's on-disk CIFAR-10 format (``cifar-10-batches-py``).

    Five pickled training batches, one test batch and ``batches.meta``, exactly as the real
    archive lays them out. torchvision's md5 check does not know these files, so they load only
    inside :func:`without_md5_check`.
    """
    rng = np.random.RandomState(seed)
    folder = os.path.join(str(root), "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)

    def batch(n, label):
        data = rng.randint(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.randint(0, 10, size=n).tolist()
        # the real files are Python 2 pickles whose str keys torchvision reads with latin1
        return {"batch_label": label, "labels": labels, "data": data,
                "filenames": [f"img_{i}.png" for i in range(n)]}

    sizes = [n_train // 5 + (1 if i < n_train % 5 else 0) for i in range(5)]
    for i, n in enumerate(sizes, start=1):
        with open(os.path.join(folder, f"data_batch_{i}"), "wb") as f:
            pickle.dump(batch(n, f"training batch {i} of 5"), f)
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        pickle.dump(batch(n_test, "testing batch 1 of 1"), f)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": 10000, "num_vis": 3072}, f)
    return folder


def skip_md5_check():
    """Let torchvision load generated files in this process: only its md5 comparison is skipped
    (the files must exist). Also a Ray ``worker_process_setup_hook`` for the test session's workers.
    Returns the check it replaced."""
    import torchvision.datasets.cifar as tv_cifar

    original = tv_cifar.check_integrity
    tv_cifar.check_integrity = lambda path, md5=None: os.path.isfile(path)
    return original


def write_cifar10_archive(path, n_train: int = 100, n_test: int = 50, seed: int = 0) -> str:
    """Write ``cifar-10-python.tar.gz`` as the real download is laid out (``cifar-10-batches-py/``
    inside), with :func:`write_cifar10_format`'s files; returns the archive's md5."""
    import hashlib
    import tarfile
    import tempfile

    with tempfile.TemporaryDirectory() as staging:
        folder = write_cifar10_format(staging, n_train, n_test, seed)
        with tarfile.open(path, "w:gz") as tar:
            tar.add(folder, arcname=os.path.basename(folder))
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


@contextlib.contextmanager
def without_md5_check():
    """:func:`skip_md5_check` for the duration of a ``with`` block."""
    import torchvision.datasets.cifar as tv_cifar

    original = skip_md5_check()
    try:
        yield
    finally:
        tv_cifar.check_integrity = original
