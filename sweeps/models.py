"""Models by name: the built-ins (the CIFAR ResNets of He et al. 2016 and a small CNN for the
embedded dataset), any classification model of ``torchvision.models`` (``torchvision:<name>``),
and the user's own builder (``package.module:function``).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys

import torch.nn.functional as F
from torch import nn

from analysis.messages import one_line


class _ShortcutA(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = _ShortcutA((planes - in_planes) // 2)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: 3 stages of 16/32/64 channels, n blocks each."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class SmallCNN(nn.Module):
    """Three conv layers and a classifier; fits 8x8 digits and 32x32 images alike."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


MODELS = {
    "small_cnn": lambda num_classes, in_channels: SmallCNN(num_classes, in_channels),
    **{
        f"resnet{d}": (lambda d: lambda num_classes, in_channels: CifarResNet(d, num_classes, in_channels))(d)
        for d in (20, 32, 44, 56, 110)
    },
}
TORCHVISION = "torchvision:"
_BUILDER = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def torchvision_models() -> list[str]:
    """Names of ``torchvision.models``' classification builders (``resnet18``, ``vit_b_16``, ...)."""
    from torchvision import models

    return models.list_models(module=models)


def check_name(name: str) -> str:
    """``name`` if it names a model in one of the three forms, else ValueError saying what is allowed."""
    if name.startswith(TORCHVISION):
        known = torchvision_models()
        if name[len(TORCHVISION):] in known:
            return name
        raise ValueError(f"torchvision has no classification model {name[len(TORCHVISION):]!r} "
                         f"(got {name!r}); it has {', '.join(known)}")
    if name in MODELS or _BUILDER.match(name):
        return name
    raise ValueError(f"{name!r} is none of a built-in ({', '.join(MODELS)}), torchvision:<name> "
                     "(e.g. torchvision:resnet18) or package.module:function (your own builder)")


def is_user_builder(name: str) -> bool:
    return name not in MODELS and not name.startswith(TORCHVISION)


class ModelError(ValueError):
    """A model that cannot be built as named; the message says why (the caller names the field)."""


OWN_PACKAGES = ("analysis", "benchmarks", "pruning_core", "sweeps")


def import_builder(name: str):
    """The user's builder function ``package.module:function``, imported with the folder prunesweep
    was started from on ``sys.path`` (after the installed packages, which it never shadows)."""
    module_name, _, attr = name.partition(":")
    if module_name.split(".")[0] in OWN_PACKAGES:
        raise ModelError(f"{module_name.split('.')[0]} is a package of prunesweep itself; give yours another name")
    here = os.getcwd()
    if here not in sys.path:
        sys.path.append(here)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ModuleNotFoundError, or anything the module raises while importing
        raise ModelError(f"cannot import {module_name} ({type(exc).__name__}: {one_line(exc)}) from {here}") from None
    builder = getattr(module, attr, None)
    if builder is None:
        raise ModelError(f"module {module_name} ({module.__file__}) has no {attr!r}")
    if not callable(builder):
        raise ModelError(f"{module_name}.{attr} is a {type(builder).__name__}, not a function")
    return builder


def _located(name: str) -> str:
    """The file or folder of a user builder's top-level package or module, found on the path
    :func:`import_builder` imports from, without running any of its code."""
    top = name.partition(":")[0].split(".")[0]
    if top in OWN_PACKAGES:
        raise ModelError(f"{top} is a package of prunesweep itself; give yours another name")
    here = os.getcwd()
    if here not in sys.path:
        sys.path.append(here)
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: located by the finders, not imported
    except (ImportError, ValueError) as exc:
        raise ModelError(f"cannot find {top} ({type(exc).__name__}: {one_line(exc)}) from {here}") from None
    if spec is None:
        raise ModelError(f"cannot import {top} (no module named {top!r}) from {here}")
    if spec.submodule_search_locations:  # a package, namespace packages included
        return os.path.abspath(list(spec.submodule_search_locations)[0])
    return os.path.abspath(spec.origin)


def builder_source(name: str) -> str | None:
    """The local file or folder that holds a user builder's top-level package, for Ray to ship to
    its workers (``py_modules``), found without importing it (the provenance check reads it before
    any of a stored config's code may run); None for built-in and torchvision models, and for code
    installed as a package (in site-packages), which the workers' environment must provide."""
    if not is_user_builder(name):
        return None
    path = _located(name)
    parts = path.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return None
    return os.path.abspath(path)


def _adapt_stem(model: nn.Module, in_channels: int) -> None:
    """Replace the first 3-channel convolution (torchvision's stem) by one with ``in_channels`` inputs."""
    for name, conv in model.named_modules():
        if isinstance(conv, nn.Conv2d) and conv.in_channels == 3:
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, nn.Conv2d(
                in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                conv.groups, conv.bias is not None, conv.padding_mode))
            return


def build_model(name: str, num_classes: int = 10, in_channels: int = 3, model_args: dict | None = None) -> nn.Module:
    """A fresh, randomly initialised model (uses torch's global RNG): a built-in, a torchvision
    classification model built with ``num_classes`` outputs and no pretrained weights (its first
    convolution takes ``in_channels`` inputs), or the user's ``function(num_classes, in_channels,
    **model_args)``. Raises :class:`ModelError` when it cannot be built."""
    model_args = dict(model_args or {})
    if name in MODELS:
        if model_args:
            raise ModelError(f"built-in model {name!r} takes no model_args (got {', '.join(model_args)})")
        return MODELS[name](num_classes, in_channels)
    if name.startswith(TORCHVISION):
        from torchvision import models

        try:
            model = models.get_model(name[len(TORCHVISION):], weights=None, num_classes=num_classes, **model_args)
        except Exception as exc:  # TypeError for an unknown argument, AssertionError or ValueError for a bad value
            raise ModelError(f"torchvision cannot build it with model_args {model_args} "
                             f"({type(exc).__name__}: {one_line(exc)})") from None
        if in_channels != 3:
            _adapt_stem(model, in_channels)
        return model
    builder = import_builder(check_name(name))
    try:
        model = builder(num_classes, in_channels, **model_args)
    except Exception as exc:
        raise ModelError(f"{name}({num_classes}, {in_channels}, **{model_args}) raised "
                         f"{type(exc).__name__}: {one_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{name} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def strip_data_parallel(state_dict: dict) -> dict:
    """Drop the ``module.`` prefix that ``nn.DataParallel`` checkpoints carry."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict
