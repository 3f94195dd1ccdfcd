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


_CHECKED = ("cifar", "svhn")  # the torchvision.datasets modules that compare md5s of the extracted files


def skip_md5_check():
    """Let torchvision load generated files in this process: only its md5 comparison is skipped
    (the files must exist), for CIFAR-10/100 and SVHN. Also a Ray ``worker_process_setup_hook``
    for the test session's workers. Returns the checks it replaced."""
    import importlib

    originals = {}
    for name in _CHECKED:
        module = importlib.import_module(f"torchvision.datasets.{name}")
        originals[name] = module.check_integrity
        module.check_integrity = lambda path, md5=None: os.path.isfile(path)
    return originals


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
    import importlib

    originals = skip_md5_check()
    try:
        yield
    finally:
        for name, check in originals.items():
            importlib.import_module(f"torchvision.datasets.{name}").check_integrity = check


def write_experiment(root, schedules=("instant", "gradual2", "gradual4", "cubic4", "gradual8"),
                     sparsities=None, seeds: int = 100, epochs: int = 30, layers=None, seed: int = 0,
                     group: int = 1) -> int:
    """A finished experiment in prunesweep's real on-disk layout, without training anything:
    ``prunesweep.yaml``, an experiment-state file, and per trial a folder with its
    ``results.parquet`` (written by the writer the trials use) and Ray Tune's ``result.json``;
    with ``group`` > 1, the layout of a fused sweep: one folder per (schedule, sparsity) and group
    of ``group`` consecutive seeds, holding its members' rows, each with its member's trial id.

    Accuracies are drawn around a curve that falls with sparsity, a small per-schedule effect and
    per-seed noise; every declared metric is filled. Returns the number of trial points.
    """
    import json
    import yaml

    from analysis import schema, trial_results
    from analysis.attempts import point_label
    from sweeps.groups import group_label

    sparsities = list(sparsities or [round(0.5 + 0.025 * i, 3) for i in range(20)])
    layers = list(layers or [f"layer{i}" for i in range(22)])
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    config = {"name": os.path.basename(str(root)), "model": "resnet20", "dataset": {"name": "cifar10"},
              "schedules": [{"name": s, "kind": "instant" if s == "instant" else "gradual",
                             "steps": 1 if s == "instant" else 2} for s in schedules],
              "sparsities": sparsities, "seeds": seeds, "finetune": {"epochs": epochs}}
    if group > 1:
        groups = [list(range(seeds))[i:i + group] for i in range(0, seeds, group)]
        config["fuse"] = group
        config[schema.PROVENANCE] = {schema.FUSION: {schema.FUSION_SIZE: group, schema.FUSION_SEEDS: groups}}
    with open(os.path.join(root, schema.CONFIG_FILE), "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    with open(os.path.join(root, schema.EXPERIMENT_STATE_GLOB.replace("*", "synthetic")), "w") as f:
        json.dump({"trial_data": [], "runner_data": {}}, f)
    points = schema.trial_points(config)
    epoch = np.arange(1, epochs + 1)

    def reports_of(p) -> list[dict]:
        effect = 0.002 * schedules.index(p.schedule)
        final = 0.92 - 0.5 * max(0.0, p.target_sparsity - 0.85) ** 1.5 + effect + rng.normal(0, 0.004)
        acc = final - 0.05 * np.exp(-epoch / 5) + rng.normal(0, 0.002, epochs)
        layer = {name: float(min(0.999, p.target_sparsity * rng.uniform(0.9, 1.1))) for name in layers}
        return [{**p.report_fields(p.target_sparsity), "sparsity": p.target_sparsity,
                 "compression_ratio": schema.compression_ratio(p.target_sparsity), "step": 1, schema.EPOCH: int(e),
                 schema.BUDGET_EPOCHS: epochs, "lr": 0.01, "train_loss": float(1 - a), "train_accuracy": float(a),
                 "test_loss": float(1.1 - a), schema.TEST_ACCURACY: float(a), "dense_test_accuracy": 0.92,
                 "nonzero_params": 27000, "prunable_params": 270000, "epoch_time_s": 15.0,
                 "samples_per_s": 3300.0, schema.LAYER_SPARSITY: layer, schema.DIVERGED: False,
                 "node_id": "n0", "device": "cuda:0", "gpu_ids": ["0"]} for e, a in zip(epoch, acc)]

    cells: dict = {}
    for p in points:
        cells.setdefault((p.schedule, p.target_sparsity, p.seed // group), []).append(p)
    for i, members in enumerate(cells.values()):
        trial_id = f"00000_{i:05d}"
        if group > 1:
            label = group_label(members)
            tune_config = {schema.MEMBERS: [p.to_dict() for p in members]}
            reports = [{**r, schema.GROUP: trial_id} for p in members for r in reports_of(p)]
            ids = [schema.member_trial_id(trial_id, point_label(r)) for r in reports]
        else:
            label, tune_config = members[0].label, {schema.PARAM: members[0].to_dict()}
            reports = reports_of(members[0])
            ids = trial_id
        folder = os.path.join(root, f"{trial_id}_{label}")
        os.makedirs(folder)
        trial_results.write(os.path.join(folder, schema.TRIAL_RESULTS_FILE), ids, reports, layers)
        with open(os.path.join(folder, schema.RESULT_FILE), "w") as f:
            for r in reports[:epochs]:
                f.write(json.dumps({**schema.for_tune(r), "trial_id": trial_id, "training_iteration": r[schema.EPOCH],
                                    "config": tune_config}) + "\n")
    return len(points)
