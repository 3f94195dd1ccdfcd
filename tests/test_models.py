"""Your model, your data: torchvision models and the user's own builder, checked before Ray starts,
shipped to Ray's workers, and swept on the datasets' real file formats."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import pruning_core as pc
from analysis import completion, final_results, load_experiment
from sweeps import provenance
from sweeps.cli import main
from sweeps.config import validate
from sweeps.data import load_dataset
from sweeps.models import build_model

from .conftest import TINY
from .helpers.formats import write_image_folder, write_mnist

USER_PACKAGE = '''
import os

import torch
from torch import nn

import sys

# each process that imports this: where from, and whether Ray put a copy of the package on its path
shipped = any("runtime_resources" in p and os.path.isfile(os.path.join(p, "mymodels", "nets.py")) for p in sys.path)
with open({log!r}, "a") as f:
    f.write(f"{{os.getpid()}} {{os.path.dirname(os.path.abspath(__file__))}} {{shipped}}\\n")


class Net(nn.Module):
    def __init__(self, num_classes, in_channels, width):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def build(num_classes, in_channels, width=8):
    return Net(num_classes, in_channels, width)


def wrong_width(num_classes, in_channels):
    return Net(num_classes + 3, in_channels, 4)


def not_a_module(num_classes, in_channels):
    return 42


NOT_CALLABLE = 3
'''

SHORT = {**TINY, "dense": {"epochs": 1, "batch_size": 32}, "finetune": {"epochs": 1, "batch_size": 32},
         "schedules": [{"name": "instant", "kind": "instant"}], "sparsities": [0.5], "seeds": 1}


RAY_LOG = re.compile(r"^(\x1b\[\d+m)?\(\w+ pid=\d+")


def write_user_package(folder: Path) -> Path:
    """``folder/mymodels/nets.py`` (a package of the user's), logging every import to ``folder/imports.log``."""
    (folder / "mymodels").mkdir(parents=True)
    (folder / "mymodels" / "__init__.py").write_text("")
    (folder / "mymodels" / "nets.py").write_text(USER_PACKAGE.format(log=str(folder / "imports.log")))
    return folder / "imports.log"


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    log = write_user_package(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path, log
    for name in [m for m in sys.modules if m == "mymodels" or m.startswith("mymodels.")]:
        del sys.modules[name]


def _refused(capsys, cfg: dict, folder: Path) -> str:
    (folder / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(folder / "c.yaml"), "--storage", str(folder / "results"), "--no-dashboard"]) == 2
    # Ray's workers of earlier tests may still print to this stderr: their lines name the worker
    err = [line for line in capsys.readouterr().err.splitlines() if not RAY_LOG.match(line)]
    assert len(err) == 1 and err[0].startswith("prunesweep: error: "), err
    assert not (folder / "results").exists()  # nothing written
    return err[0].removeprefix("prunesweep: error: ").strip()


@pytest.mark.parametrize("model,model_args,says", [
    ("nosuchmod:build", {}, r"^model 'nosuchmod:build': cannot import nosuchmod \(ModuleNotFoundError: No module "
                            r"named 'nosuchmod'\) from /"),
    ("mymodels.nets:missing", {}, r"^model 'mymodels.nets:missing': module mymodels.nets \(/.*nets.py\) has no 'missing'$"),
    ("mymodels.nets:NOT_CALLABLE", {}, r"^model 'mymodels.nets:NOT_CALLABLE': mymodels.nets.NOT_CALLABLE is a int, not a function$"),
    ("mymodels.nets:not_a_module", {}, r"^model 'mymodels.nets:not_a_module': mymodels.nets:not_a_module returned a int, "
                                       r"not a torch.nn.Module$"),
    ("mymodels.nets:wrong_width", {}, r"^model 'mymodels.nets:wrong_width': in training mode a batch of 2 digits images "
                                      r"gives shape \(2, 13\), not logits of shape \(2, 10\) for its 10 classes$"),
    ("mymodels.nets:build", {"depth": 3}, r"^model 'mymodels.nets:build': mymodels.nets:build\(10, 1, \*\*\{'depth': 3\}\) "
                                          r"raised TypeError: build\(\) got an unexpected keyword argument 'depth'$"),
    ("torchvision:inception_v3", {}, r"^model 'torchvision:inception_v3': a batch of digits images \(1x8x8\) fails in "
                                     r"its training forward \(RuntimeError: "),
    ("torchvision:googlenet", {"aux_logits": True}, r"^model 'torchvision:googlenet': a batch of digits images"),
    ("torchvision:resnet18", {"depth": 3}, r"^model 'torchvision:resnet18': torchvision cannot build it with model_args "
                                           r"\{'depth': 3\} \(TypeError: "),
])
def test_a_model_that_cannot_run_is_refused_before_ray(user_folder, capsys, model, model_args, says):
    folder, _ = user_folder
    err = _refused(capsys, {**SHORT, "model": model, "model_args": model_args}, folder)
    assert re.search(says, err), err


def test_a_model_with_auxiliary_outputs_is_refused_with_the_way_out(user_folder, capsys):
    folder, _ = user_folder
    write_image_folder(folder / "img", {"train": {"a": 2, "b": 2}, "test": {"a": 1}}, size=16)
    err = _refused(capsys, {**SHORT, "model": "torchvision:googlenet", "model_args": {"transform_input": False},
                            "dataset": {"name": "imagefolder", "root": "img", "image_size": 64}}, folder)
    assert err == ("model 'torchvision:googlenet': in training mode a batch of 2 imagefolder images gives a "
                   "GoogLeNetOutputs, not logits of shape (2, 2) for its 2 classes (a model with auxiliary outputs: "
                   "turn them off through model_args, e.g. aux_logits: false)")


def test_an_image_folder_that_cannot_be_read_is_refused_before_ray(tmp_path, capsys):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "test").mkdir()
    write_image_folder(tmp_path / "extra", {"train": {"a": 2, "b": 2}, "test": {"a": 1, "zebra": 1}}, size=8)
    write_image_folder(tmp_path / "notest", {"train": {"a": 2}}, size=8)
    for root, says in (("empty", "Couldn't find any class folder in " + str(tmp_path / "empty" / "train")),
                       ("extra", f"{tmp_path / 'extra' / 'test'} has classes that train/ lacks: zebra"),
                       ("notest", f"{tmp_path / 'notest'} has no test/ folder")):
        err = _refused(capsys, {**SHORT, "dataset": {"name": "imagefolder", "root": str(tmp_path / root),
                                                     "image_size": 8}}, tmp_path)
        assert err.startswith(f"dataset.root '{tmp_path / root}': ") and says in err, err
    write_image_folder(tmp_path / "bad", {"train": {"a": 2, "b": 2}, "test": {"a": 1}}, size=8)
    (tmp_path / "bad" / "train" / "b" / "0001.png").write_bytes(b"not a png at all")
    err = _refused(capsys, {**SHORT, "dataset": {"name": "imagefolder", "root": str(tmp_path / "bad"),
                                                 "image_size": 8}}, tmp_path)
    assert err.startswith(f"dataset.root '{tmp_path / 'bad'}': {tmp_path / 'bad' / 'train' / 'b' / '0001.png'} is not "
                          "an image Pillow can read (UnidentifiedImageError: "), err
    write_image_folder(tmp_path / "ok", {"train": {"a": 2, "b": 2}, "test": {"a": 1}}, size=8)
    err = _refused(capsys, {**SHORT, "dataset": {"name": "imagefolder", "root": str(tmp_path / "ok"),
                                                 "image_size": 8, "validation": 4}}, tmp_path)
    assert err == (f"dataset.validation must leave training images: {tmp_path / 'ok'} has 4, so the allowed "
                   "range is 0..3 (got 4)")


def test_a_pruning_pattern_that_names_no_layer_of_the_model_is_refused(tmp_path, capsys):
    err = _refused(capsys, {**SHORT, "model": "torchvision:resnet18", "pruning": {"exclude": ["features.0", "fc"]}},
                   tmp_path)
    assert err == ("pruning.exclude: 'features.0' matches no prunable layer of model 'torchvision:resnet18' (its "
                   "prunable layers: conv1, layer1.0.conv1, layer1.0.conv2, layer1.1.conv1, layer1.1.conv2, "
                   "layer2.0.conv1, layer2.0.conv2, layer2.0.downsample.0, layer2.1.conv1, layer2.1.conv2, ... "
                   "(21 in all))")
    err = _refused(capsys, {**SHORT, "pruning": {"include": ["layer3.*"]}}, tmp_path)
    assert err == ("pruning.include: 'layer3.*' matches no prunable layer of model 'small_cnn' (its prunable "
                   "layers: conv1, conv2, conv3, fc)")


def test_a_structure_that_cannot_apply_to_a_layer_is_refused_before_ray(tmp_path, capsys):
    err = _refused(capsys, {**SHORT, "pruning": {"structure": "2:4"}, "sparsities": [0.5]}, tmp_path)
    assert err == ("pruning.structure: 2:4: structure '2:4': layer 'conv1' has input dimension 1, not a multiple of "
                   "4; exclude it (model 'small_cnn')")
    err = _refused(capsys, {**SHORT, "model": "resnet20", "pruning": {"structure": "filters", "include": ["conv1"]}},
                   tmp_path)
    assert err == ("pruning.structure: filters: no convolution in scope can lose filters on its own ('conv1': its "
                   "channels meet another layer's in a residual add or product) (model 'resnet20')")


def test_torchvision_models_take_the_datas_channels_and_classes():
    for name in ("resnet18", "mobilenet_v3_small", "vit_b_32"):
        args = {"image_size": 32} if name.startswith("vit") else {}
        model = build_model(f"torchvision:{name}", 7, 1, args)
        assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 7)
    stem = build_model("torchvision:resnet18", 10, 1).conv1
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride) == (1, 64, (7, 7), (2, 2))


def test_pruning_and_macs_are_right_for_depthwise_and_attention_layers():
    model = build_model("torchvision:mobilenet_v3_small", 10, 3)
    x = torch.randn(2, 3, 32, 32)
    pc.prune(model, 0.5, structure="filters", scope="layerwise", example_inputs=x)
    # a depthwise conv goes with the conv feeding it: the same channels, whole filters
    units, skipped = pc.filter_units(model, pc.units_in_scope(model, "filters"), x)
    unit = next(u for u in units if len(u.convs) > 1)
    (root, _), (conv, _) = unit.convs
    assert conv.groups == conv.in_channels == conv.out_channels > 1
    kept = pc.get_mask(conv).flatten(1).all(1)
    assert torch.equal(kept, pc.get_mask(root).flatten(1).all(1))
    assert kept.sum() == conv.out_channels - round(0.5 * conv.out_channels)
    assert "a depthwise conv: pruned with the conv feeding it" in skipped.values()
    assert any("residual add or product" in why for why in skipped.values())  # the squeeze-excitation blocks
    name = next(n for n, m in model.named_modules() if m is conv)
    shapes = {}
    conv.register_forward_hook(lambda m, i, out: shapes.update(out=out.shape))
    report = pc.sparsity_report(model, (3, 32, 32))
    row = next(r for r in report["layers"] if r["name"] == name)
    # each output value of a depthwise filter takes k*k inputs of its own channel: weights x positions
    assert row["macs_dense"] == conv.weight.numel() * shapes["out"][2] * shapes["out"][3]
    assert row["macs_sparse"] == int(pc.get_mask(conv).sum()) * shapes["out"][2] * shapes["out"][3]
    vit = build_model("torchvision:vit_b_32", 10, 3, {"image_size": 64})
    report = pc.sparsity_report(vit, (3, 64, 64))
    attention = next(r for r in report["layers"] if r["name"].endswith("self_attention.out_proj"))
    assert attention["macs_dense"] == 768 * 768 * (4 + 1)  # four patches and the class token
    # Swin applies its attention layers' weights with F.linear, never calling those modules
    swin = pc.sparsity_report(build_model("torchvision:swin_t", 10, 3), (3, 64, 64))
    assert all(r["macs_dense"] > 0 for r in swin["layers"]), [r["name"] for r in swin["layers"] if not r["macs_dense"]]

    class Twice(nn.Module):  # one weight used twice in a forward pass counts twice
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x):
            return torch.nn.functional.linear(self.fc(x), self.fc.weight)
    assert pc.sparsity_report(Twice(), (6,))["macs_dense"] == 2 * 36


def test_user_model_code_changes_are_resume_differences(user_folder):
    folder, _ = user_folder
    config = validate({**SHORT, "model": "mymodels.nets:build", "model_args": {"width": 4}})
    recorded = provenance.record(config)
    assert provenance.differences(config, recorded) == []
    with open(folder / "mymodels" / "nets.py", "a") as f:
        f.write("\n# a change\n")
    changed = provenance.differences(config, recorded)
    assert len(changed) == 1 and changed[0].startswith("the code of model mymodels.nets:build differs")


def test_a_ray_already_running_whose_workers_cannot_import_the_model_is_refused(ray_session, user_folder, capsys):
    folder, _ = user_folder
    err = _refused(capsys, {**SHORT, "model": "mymodels.nets:build"}, folder)
    assert err.startswith("model 'mymodels.nets:build': the Ray workers cannot import it "
                          "(cannot import mymodels.nets (ModuleNotFoundError: No module named 'mymodels')"), err
    assert f"runtime_env={{'py_modules': ['{folder / 'mymodels'}']}}" in err


def test_user_model_sweep_from_its_folder_ships_the_code_to_rays_workers(ray_session, tmp_path):
    log = write_user_package(tmp_path)
    cfg = {**SHORT, "name": "mine", "model": "mymodels.nets:build", "model_args": {"width": 6}, "seeds": 2}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-m", "sweeps", "run", "mine.yaml", "--storage", "results",
                           "--address", ray_session.address_info["address"]],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = load_experiment(tmp_path / "results" / "mine")
    assert completion(df, tmp_path / "results" / "mine")["finished"] == 2
    final = final_results(df)
    assert sorted(c for c in final.columns if c.startswith("layer_sparsity.")) == ["layer_sparsity.conv",
                                                                                   "layer_sparsity.fc"]
    imports = [line.split() for line in log.read_text().splitlines()]
    driver = [i for i in imports if i[2] == "False"]
    workers = [i for i in imports if i[2] == "True"]
    # the driver imported it from the folder; every worker that built it has the copy Ray shipped
    # (py_modules) on its path. On this one machine Ray also puts the driver's folder first on the
    # workers' path, so they import from there; on a cluster's other nodes, where the folder is
    # not, the shipped copy is what they import (without py_modules, no worker here has it)
    assert len(driver) == 1 and driver[0][1] == str(tmp_path / "mymodels"), imports
    assert workers and len(driver) + len(workers) == len(imports), imports


@pytest.mark.parametrize("model,dataset", [
    ("torchvision:resnet18", "imagefolder"),
    ("torchvision:mobilenet_v3_small", "mnist"),  # depthwise convolutions; one input channel
])
def test_torchvision_model_short_sweep(ray_session, tmp_path, model, dataset):
    if dataset == "mnist":
        write_mnist(tmp_path / "data", n_train=48, n_test=16)
        data = {"name": "mnist", "root": str(tmp_path / "data")}
    else:
        write_image_folder(tmp_path / "data", {"train": {"a": 24, "b": 24}, "test": {"a": 8, "b": 8}}, size=16)
        # streamed: DataLoader workers decoding inside Ray's trial and dense-training processes
        data = {"name": "imagefolder", "root": str(tmp_path / "data"), "image_size": 16, "in_memory_max_gb": 1e-6}
    cfg = {**SHORT, "name": dataset, "model": model, "dataset": data, "pruning": {"exclude": []}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    load_dataset.cache_clear()
    assert main(["run", str(tmp_path / "c.yaml"), "--storage", str(tmp_path / "results")]) == 0
    df = final_results(load_experiment(tmp_path / "results" / dataset))
    assert len(df) == 1 and abs(df["sparsity"].iloc[0] - 0.5) < 1e-3
    layers = [c for c in df.columns if c.startswith("layer_sparsity.")]
    expected = [n for n, _ in pc.prunable_modules(build_model(model, 2 if dataset != "mnist" else 10,
                                                              3 if dataset != "mnist" else 1))]
    assert sorted(layers) == sorted(f"layer_sparsity.{n}" for n in expected)


def _readme_block(section: str, language: str) -> str:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    part = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return part.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def test_the_readmes_own_model_and_data_example_validates(tmp_path, monkeypatch, capsys):
    (tmp_path / "mymodels").mkdir()
    (tmp_path / "mymodels" / "__init__.py").write_text("")
    (tmp_path / "mymodels" / "nets.py").write_text(_readme_block("Your own model and data", "python"))
    (tmp_path / "flowers.yaml").write_text(_readme_block("Your own model and data", "yaml"))
    write_image_folder(tmp_path / "data" / "flowers", {"train": {c: 170 for c in ("daisy", "rose", "tulip")},
                                                       "test": {c: 4 for c in ("daisy", "rose", "tulip")}}, size=20)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        assert main(["validate", "flowers.yaml"]) == 0
        assert "flowers.yaml: valid; 40 trials" in capsys.readouterr().out
        assert main(["validate", "flowers.yaml", "--set", "model=torchvision:resnet18", "--set", "model_args={}",
                     "--set", "pruning.exclude=[conv1, fc]"]) == 0
    finally:
        for name in [m for m in sys.modules if m == "mymodels" or m.startswith("mymodels.")]:
            del sys.modules[name]


def test_a_torchvision_dense_checkpoint_must_fit_the_model_built_for_the_data(tmp_path, capsys):
    from sweeps.preflight import dense_checkpoint

    torch.save(build_model("torchvision:mobilenet_v3_small", 10, 1).state_dict(), tmp_path / "fits.pt")
    torch.save(build_model("torchvision:mobilenet_v3_small", 1000, 3).state_dict(), tmp_path / "imagenet.pt")
    cfg = {**SHORT, "model": "torchvision:mobilenet_v3_small"}
    state = dense_checkpoint(validate({**cfg, "dense": {"checkpoint": str(tmp_path / "fits.pt")}}))
    assert state["features.0.0.weight"].shape == (16, 1, 3, 3)
    err = _refused(capsys, {**cfg, "dense": {"checkpoint": str(tmp_path / "imagenet.pt")}}, tmp_path)
    assert err.startswith(f"dense.checkpoint '{tmp_path / 'imagenet.pt'}' does not fit model "
                          "'torchvision:mobilenet_v3_small' on digits"), err


def test_the_builder_is_shipped_unless_the_ray_job_ships_code_itself(user_folder, monkeypatch):
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    from sweeps.ray_connection import worker_code

    folder, _ = user_folder
    config = validate({**SHORT, "model": "mymodels.nets:build"})
    assert worker_code(config) == {"py_modules": [str(folder / "mymodels")]}
    assert worker_code(validate({**SHORT, "model": "torchvision:resnet18"})) is None
    for shipped in ({"working_dir": "gcs://_ray_pkg_abc.zip"}, {"py_modules": ["gcs://_ray_pkg_def.zip"]}):
        monkeypatch.setenv(RAY_JOB_CONFIG_JSON_ENV_VAR, '{"runtime_env": %s}' % __import__("json").dumps(shipped))
        assert worker_code(config) is None  # `ray job submit --working-dir .`: the job carries the code
