"""The CIFAR-10 path through torchvision, on small data written in the real on-disk format."""
import pickle

import pytest
import torch

from benchmarks.synthetic import without_md5_check, write_cifar10_format
from sweeps.config import DatasetConfig, validate
from sweeps.data import load_dataset, random_crop_flip
from sweeps.dense_training import train_dense
from sweeps.plan import expand
from sweeps.trial import TrialRun


@pytest.fixture
def cifar_root(tmp_path):
    write_cifar10_format(tmp_path, n_train=60, n_test=20, seed=1)
    # the files are real CIFAR-10 format but not the real images: skip only the md5 comparison
    load_dataset.cache_clear()
    with without_md5_check():
        yield tmp_path
    load_dataset.cache_clear()


def test_cifar10_loads_through_torchvision(cifar_root):
    data = load_dataset(DatasetConfig(name="cifar10", root=str(cifar_root)))
    assert data.x_train.shape == (60, 3, 32, 32) and data.x_test.shape == (20, 3, 32, 32)
    with open(cifar_root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        first = pickle.load(f, encoding="latin1")
    assert data.y_train[:12].tolist() == first["labels"][:12]
    # held raw (uint8, as in the file), normalised per channel with the training set's statistics
    assert data.x_train.dtype == torch.uint8
    raw = torch.tensor(first["data"][0], dtype=torch.uint8).view(3, 32, 32)
    assert torch.equal(data.x_train[0], raw)
    normal = data.normalise(data.x_train)
    assert normal.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert normal.std(dim=(0, 2, 3)).sub(1).abs().max() < 1e-3


def test_resnet20_trial_on_cifar_format(cifar_root):
    cfg = validate({"name": "c", "model": "resnet20", "dataset": {"name": "cifar10", "root": str(cifar_root)},
                    "dense": {"epochs": 1, "batch_size": 32}, "finetune": {"epochs": 2, "batch_size": 32},
                    "schedules": [{"name": "g", "kind": "gradual", "steps": 2}], "sparsities": [0.8]})
    assert cfg.dataset.augments  # crop + flip by default on CIFAR
    dense = train_dense(cfg, 0, torch.device("cpu"))
    run = TrialRun.of_point(cfg, expand(cfg)[0], dense, torch.device("cpu"))
    metrics = [r for _ in range(2) for r in run.run_epoch()]
    assert run.done and metrics[-1]["sparsity"] == pytest.approx(round(0.8 * 268336) / 268336)
    assert metrics[0]["step"] == 1 and metrics[1]["step"] == 2


def test_batch_augmentation_is_a_crop_and_flip():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4) + 1
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, 1, g)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(2):
        windows = [padded[i, :, r:r + 4, c:c + 4] for r in range(3) for c in range(3)]
        candidates = windows + [w.flip(-1) for w in windows]
        assert any(torch.equal(out[i], w) for w in candidates)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(random_crop_flip(x, 1, g1), random_crop_flip(x, 1, g2))


def test_validation_split_is_held_out_of_training(cifar_root):
    whole = load_dataset(DatasetConfig(name="cifar10", root=str(cifar_root)))
    data = load_dataset(DatasetConfig(name="cifar10", root=str(cifar_root), train_subset=30, validation=12))
    # the last 12 training images are the validation split; training takes the first 30 of the rest
    assert torch.equal(data.x_val, whole.x_train[-12:]) and torch.equal(data.y_val, whole.y_train[-12:])
    assert torch.equal(data.x_train, whole.x_train[:30])
    assert torch.equal(data.x_test, whole.x_test)
    # normalised with the statistics of what is trained on
    normal = data.normalise(data.x_train)
    assert normal.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert whole.x_val is None


def test_trial_reports_validation_metrics(tmp_path):
    from sweeps.data import DIGITS_TEST

    sweep = validate({"name": "v", "model": "small_cnn", "dataset": {"name": "digits", "validation": 200},
                      "dense": {"epochs": 1, "batch_size": 64}, "finetune": {"epochs": 1, "batch_size": 64},
                      "schedules": [{"name": "instant", "kind": "instant"}], "sparsities": [0.5]})
    dense = train_dense(sweep, 0, torch.device("cpu"))
    run = TrialRun.of_point(sweep, expand(sweep)[0], dense, torch.device("cpu"))
    assert run.learner.data.x_train.shape[0] == 1797 - DIGITS_TEST - 200 and run.learner.data.x_val.shape[0] == 200
    [metrics] = run.run_epoch()
    assert 0 <= metrics["val_accuracy"] <= 1 and metrics["val_loss"] > 0
    # what is reported is this model's accuracy on exactly the held-out images, in eval mode
    run.learner.model(0).eval()
    with torch.no_grad():
        for split, x, y in (("val", run.learner.data.x_val, run.learner.data.y_val), ("test", run.learner.data.x_test, run.learner.data.y_test)):
            correct = int((run.learner.model(0)(run.learner.data.normalise(x)).argmax(1) == y).sum())
            assert metrics[f"{split}_accuracy"] == correct / y.shape[0], split
