"""The named datasets, each written in its real on-disk format and read through torchvision's own
classes; image folders held in memory or streamed, with the same batches either way."""
import numpy as np
import pytest
import torch

from benchmarks.synthetic import without_md5_check
from sweeps.config import DatasetConfig, validate
from sweeps.data import DeviceLoader, StreamedData, TensorData, batch_bounds, load_dataset
from sweeps.datasets import parent_root
from sweeps.dense_training import train_dense
from sweeps.loops import evaluate

from .conftest import TINY
from .helpers.formats import write_cifar100, write_image_folder, write_mnist, write_svhn


@pytest.fixture(autouse=True)
def fresh_cache():
    load_dataset.cache_clear()
    yield
    load_dataset.cache_clear()


def _same(data: TensorData, written: dict) -> None:
    for split, (x, y) in written.items():
        got_x, got_y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
        assert got_x.dtype == torch.uint8 and torch.equal(got_x, torch.from_numpy(x))
        assert torch.equal(got_y, torch.from_numpy(y))


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_like_idx_files(tmp_path, name, folder):
    written = write_mnist(tmp_path, folder, n_train=40, n_test=12, seed=3)
    data = load_dataset(DatasetConfig(name=name, root=str(tmp_path)))
    _same(data, written)
    assert (data.num_classes, data.in_channels, data.pad) == (10, 1, 2)
    assert not DatasetConfig(name=name, root="x").augments  # none unless asked
    assert data.flip == (name == "fashion_mnist")  # digits are not mirror images; clothes are


def test_cifar100_pickles(tmp_path):
    written = write_cifar100(tmp_path, n_train=30, n_test=10, seed=4)
    with without_md5_check():  # the files are generated, not the real ones
        data = load_dataset(DatasetConfig(name="cifar100", root=str(tmp_path)))
    _same(data, written)
    assert (data.num_classes, data.pad, data.flip) == (100, 4, True)
    assert DatasetConfig(name="cifar100", root="x").augments


def test_svhn_mat_files_map_label_10_to_0(tmp_path):
    written = write_svhn(tmp_path, n_train=30, n_test=10, seed=5)
    with without_md5_check():
        data = load_dataset(DatasetConfig(name="svhn", root=str(tmp_path)))
    _same(data, written)
    assert data.y_train[:3].tolist() == [0, 0, 0]
    assert (data.num_classes, data.pad, data.flip) == (10, 4, False)  # crop, no flip: digits again


def _folder_config(root, **extra) -> DatasetConfig:
    return DatasetConfig(name="imagefolder", root=str(root), image_size=16, **extra)


def test_image_folder_in_memory_exact_pixels_fixed_order_and_training_class_indices(tmp_path):
    counts = {"train": {"cat": 5, "dog": 4, "emu": 3}, "test": {"cat": 2, "emu": 2}}  # test lacks dog
    written = write_image_folder(tmp_path, counts, size=16, seed=6)
    data = load_dataset(_folder_config(tmp_path, validation=2))
    assert isinstance(data, TensorData)
    files = [(img, i) for i, c in enumerate(("cat", "dog", "emu")) for img in written["train"][c]]
    order = np.random.RandomState(0).permutation(len(files))  # the documented fixed order
    expected = [files[i] for i in order]
    assert torch.equal(data.x_train, torch.from_numpy(np.stack([img for img, _ in expected[:10]])))
    assert data.y_train.tolist() == [c for _, c in expected[:10]]
    assert data.y_val.tolist() == [c for _, c in expected[10:]]
    assert data.y_test.tolist() == [0, 0, 2, 2]  # emu keeps the training index 2
    assert (data.num_classes, data.in_channels, data.pad, data.flip) == (3, 3, 2, True)


def test_image_folder_resizes_the_shorter_side_and_centre_crops_and_reads_grayscale(tmp_path):
    from PIL import Image
    from torchvision.transforms import CenterCrop, PILToTensor, Resize

    write_image_folder(tmp_path, {"train": {"a": 2, "b": 2}, "test": {"a": 1, "b": 1}}, seed=7,
                       sizes=[(40, 24), (20, 50)])
    data = load_dataset(_folder_config(tmp_path, channels=1))
    assert data.x_train.shape == (4, 1, 16, 16) and data.x_test.shape == (2, 1, 16, 16)
    with Image.open(tmp_path / "test" / "a" / "0000.png") as im:
        expected = PILToTensor()(CenterCrop(16)(Resize(16)(im.convert("L"))))
    assert torch.equal(data.x_test[0], expected)


def test_streamed_image_folder_gives_the_same_batches_and_metrics_as_in_memory(tmp_path):
    write_image_folder(tmp_path, {"train": {"a": 23, "b": 17}, "test": {"a": 6, "b": 5}}, seed=8)
    in_memory = load_dataset(_folder_config(tmp_path, validation=5, train_subset=30))
    streamed = load_dataset(_folder_config(tmp_path, validation=5, train_subset=30, in_memory_max_gb=1e-6,
                                           workers=1))
    assert isinstance(streamed, StreamedData) and streamed.train_size == in_memory.train_size == 30
    assert torch.equal(streamed.mean, in_memory.mean) and torch.equal(streamed.std, in_memory.std)
    loaders = [DeviceLoader(d, 8, torch.Generator().manual_seed(1), augment=True) for d in (in_memory, streamed)]
    for (xa, ya), (xb, yb) in zip(*loaders, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # MobileNetV3 has dropout (torch's global RNG: streaming must not draw from it) and 1x1 feature
    # maps at 16 px, so a batch of 29 leaves a last batch of one, which joins the one before
    sweep = validate({**TINY, "model": "torchvision:mobilenet_v3_small",
                      "dataset": _folder_config(tmp_path, validation=5, train_subset=30).model_dump(),
                      "dense": {"epochs": 2, "batch_size": 29}})
    streamed_sweep = sweep.model_copy(update={"dataset": sweep.dataset.model_copy(
        update={"in_memory_max_gb": 1e-6, "workers": 1})})
    a = train_dense(sweep, 0, torch.device("cpu"))
    b = train_dense(streamed_sweep, 0, torch.device("cpu"))
    assert a["test_accuracy"] == b["test_accuracy"] and a["test_loss"] == b["test_loss"]
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 2))
    assert evaluate(model, in_memory, torch.device("cpu"), split="val") == evaluate(model, streamed, torch.device("cpu"), split="val")


def test_a_last_batch_of_one_joins_the_batch_before():
    assert batch_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert batch_bounds(9, 3) == [(0, 3), (3, 6), (6, 9)]
    assert batch_bounds(1, 4) == [(0, 1)] and batch_bounds(5, 4) == [(0, 5)]


def test_a_truncated_or_foreign_file_is_refused_with_the_readers_reason(tmp_path, capsys):
    from sweeps.cli import main

    write_mnist(tmp_path / "mnist", n_train=10, n_test=5)
    images = tmp_path / "mnist" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:100])  # torchvision checks no md5 for MNIST: the read fails
    root = tmp_path / "mnist"
    assert main(["validate", "quickstart", "--set", "dataset.name=mnist", "--set", f"dataset.root={root}"]) == 2
    assert capsys.readouterr().err == (
        f"prunesweep: error: dataset.root '{root}' holds no mnist (MNIST/raw (the idx files), as torchvision reads "
        "them: RuntimeError: shape '[10, 28, 28]' is invalid for input of size 84) and dataset.download is false "
        "(set dataset.download: true or point dataset.root at the folder that holds it)\n")
    (tmp_path / "svhn").mkdir()
    for split in ("train", "test"):
        (tmp_path / "svhn" / f"{split}_32x32.mat").write_bytes(b"not a MATLAB file")
    with without_md5_check():  # past the md5 comparison, scipy's reader itself refuses the file
        assert main(["validate", "quickstart", "--set", "dataset.name=svhn",
                     "--set", f"dataset.root={tmp_path / 'svhn'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"prunesweep: error: dataset.root '{tmp_path / 'svhn'}' holds no svhn (train_32x32.mat and "
                          "test_32x32.mat, as torchvision reads them: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "RuntimeError: Dataset not found" not in err, err


def _truncate(path) -> None:
    """Keep a PNG's header and cut its body: Pillow opens it, and fails only when decoding it."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_a_truncated_image_is_refused_once_by_validate_naming_the_file(tmp_path, capsys):
    from PIL import Image

    from sweeps.cli import main

    root = tmp_path / "images"
    write_image_folder(root, {"train": {"a": 3, "b": 3}, "test": {"a": 1, "b": 1}}, seed=9)
    bad = root / "train" / "b" / "0001.png"
    _truncate(bad)
    with Image.open(bad) as im:  # the header still reads: a header check alone passes it
        assert im.size == (16, 16)
    argv = ["validate", "quickstart", "--set", "dataset.name=imagefolder", "--set", f"dataset.root={root}",
            "--set", "dataset.image_size=16"]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"prunesweep: error: dataset.root '{root}': {bad} cannot be decoded (OSError: image file is truncated); "
        "every image a trial reads must decode\n")
    write_image_folder(root, {"train": {"b": 3}}, seed=9)  # the file written whole again
    assert main(argv) == 0, capsys.readouterr().err


def test_a_large_image_folder_is_decoded_in_a_seeded_sample(tmp_path, monkeypatch):
    from sweeps import datasets

    write_image_folder(tmp_path, {"train": {"a": 6, "b": 6}, "test": {"a": 2}}, seed=10)
    for path in sorted((tmp_path / "train").rglob("*.png")):
        _truncate(path)
    monkeypatch.setattr(datasets, "DECODE_CHECK", 3)
    with pytest.raises(datasets.DatasetError) as caught:
        datasets.check_images(str(tmp_path), 3, 16)
    message = str(caught.value)
    assert message.endswith(" cannot be decoded (OSError: image file is truncated), found in a random sample "
                            "(seed 0) of 3 of its 14 images that preflight decodes; every image a trial reads "
                            "must decode"), message
    samples = datasets.image_folders(str(tmp_path), 3, 16)[0].samples
    first = sorted(__import__("random").Random(0).sample(range(14), 3))[0]
    assert message.startswith(f"{samples[first][0]} cannot be decoded")  # the sample's first, as the seed draws it


def test_parent_root_names_the_folder_above_a_datasets_own_folder(tmp_path):
    for name in ("digits", "svhn", "imagefolder", "no such dataset"):  # their files lie in dataset.root itself
        assert parent_root(name, str(tmp_path / "cifar-10-batches-py")) is None
        assert parent_root(name, str(tmp_path / "MNIST" / "raw")) is None
    assert parent_root("cifar10", str(tmp_path / "cifar-10-batches-py")) == str(tmp_path)
    assert parent_root("cifar10", str(tmp_path / "cifar-10-batches-py") + "/") == str(tmp_path)
    assert parent_root("cifar10", str(tmp_path / "cifar-10-batches-py" / "raw")) is None  # no level below it
    assert parent_root("cifar10", str(tmp_path / "cifar-10-batches-py" / "x" / "y")) is None
    assert parent_root("cifar10", str(tmp_path / "cifar-100-python")) is None
    assert parent_root("cifar100", str(tmp_path / "cifar-100-python")) == str(tmp_path)
    assert parent_root("cifar10", str(tmp_path)) is None
    assert parent_root("mnist", str(tmp_path / "MNIST")) == str(tmp_path)
    assert parent_root("mnist", str(tmp_path / "MNIST" / "raw")) == str(tmp_path)
    assert parent_root("mnist", str(tmp_path / "other" / "raw")) is None
    assert parent_root("mnist", str(tmp_path / "FashionMNIST" / "raw")) is None
    assert parent_root("fashion_mnist", str(tmp_path / "FashionMNIST" / "raw")) == str(tmp_path)
    assert parent_root("mnist", "/MNIST") == "/"


def test_a_root_at_the_mnist_raw_folder_is_refused_naming_it_and_its_parent(tmp_path):
    from sweeps.config import ConfigError
    from sweeps.preflight import preflight

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    with pytest.raises(ConfigError) as refused:
        preflight(validate({**TINY, "dataset": {"name": "mnist", "root": str(raw), "download": False}}), download=False)
    assert str(refused.value) == (f"dataset.root {str(raw)!r} is the MNIST/raw folder itself: torchvision looks for it "
                                  f"inside dataset.root; use its parent (dataset.root: {tmp_path})")
