"""Fused training (:mod:`sweeps.fused`) against the alternatives, side by side in one run: K models
trained one after another in one process, and (on a GPU) K processes sharing the GPU as Ray's
fractional ``resources.gpu`` packs them (time-sliced); and how far fused members drift from
their unfused twins in float32.

Every way times the project's own training step (:func:`sweeps.loops.train_step`,
:func:`sweeps.fused.train_step`) on the same synthetic batches: SGD with momentum, batch 128,
and on CUDA bf16 autocast with channels_last, as trials train.
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import torch

from sweeps.config import OptimizerConfig
from sweeps.fused import measure_steps
from sweeps.loops import place, train_step
from sweeps.models import build_model
from sweeps.optimizers import make_optimizer

SGD = OptimizerConfig(name="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4)
SHAPES = {"small_cnn": (1, 8, 8), "resnet20": (3, 32, 32), "resnet56": (3, 32, 32)}  # digits-sized, CIFAR-sized
BATCH = 128


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _models(name: str, k: int, device: torch.device) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [place(build_model(name, 10, SHAPES[name][0]), device) for _ in range(k)]


def _batches(name: str, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(k, BATCH, *SHAPES[name], generator=g).to(device)
    y = torch.randint(0, 10, (k, BATCH), generator=g).to(device)
    return x, y


def step_times(name: str, k: int, device: torch.device, steps: int) -> dict:
    """Median seconds of one training step of K models ``name``: fused, and one after another."""
    x, y = _batches(name, k, device)
    return measure_steps(lambda: _models(name, 1, device)[0], x, y, device, steps, SGD)


def fused_throughput(quick: bool, device: torch.device, models: tuple[str, ...], ks: tuple[int, ...]) -> dict:
    """Per model and K: the fused step's throughput over K models stepped one after another (> 1:
    fusion is faster), and both steps' seconds."""
    out = {}
    for name in models:
        heavy = name != "small_cnn" and device.type == "cpu"
        steps = 1 if quick else (3 if heavy else 20)
        for k in ks:
            t = step_times(name, k, device, steps)
            prefix = f"{'gpu_' if device.type == 'cuda' else ''}fused_{name}_k{k}"
            out[f"{prefix}_speedup"] = t["separate"] / t["fused"]
            out[f"{prefix}_fused_step_s"] = t["fused"]
            out[f"{prefix}_separate_step_s"] = t["separate"]
    return out


def time_sliced_worker(name: str, steps: int, device: str) -> None:
    """One of :func:`time_sliced_step_s`'s processes: warm up, say ``ready``, wait for a line on
    stdin, train ``steps`` steps, print the start and end times."""
    device = torch.device(device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # as a trial given one CPU
    [model] = _models(name, 1, device)
    opt = make_optimizer(SGD, model.parameters())
    x, y = _batches(name, 1, device)
    xb = x[0].contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x[0]
    for _ in range(2):
        train_step(model, opt, xb, y[0], device)
    _sync(device)
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.time()
    for _ in range(steps):
        train_step(model, opt, xb, y[0], device)
    _sync(device)
    print(f"{start} {time.time()}", flush=True)


def time_sliced_step_s(name: str, k: int, steps: int, device: str = "cuda:0") -> float:
    """Seconds per step of K processes each training one model on the one ``device`` at once (on a
    GPU, what Ray's fractional GPUs do without MPS): from their common start to the last one's end, per step."""
    code = f"from benchmarks.fusion import time_sliced_worker as w; w({name!r}, {steps}, {device!r})"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(k)]
    watchdog = threading.Timer(600, lambda: [p.kill() for p in procs])  # a worker stuck starting CUDA, say
    watchdog.start()

    def line(p, what: str) -> str:
        text = p.stdout.readline().strip()
        if not text:
            raise RuntimeError(f"a time-sliced worker ended before {what} (exit code {p.wait()})")
        return text

    try:
        for p in procs:
            line(p, "it was ready")
        for p in procs:  # all warm: go together
            p.stdin.write("go\n")
            p.stdin.flush()
        spans = [tuple(map(float, line(p, "its steps were done").split())) for p in procs]
        for p in procs:
            p.wait(timeout=60)
    finally:
        watchdog.cancel()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return (max(e for _, e in spans) - min(s for s, _ in spans)) / steps


def gpu_fusion(quick: bool) -> dict:
    """On CUDA: ResNet-20 and ResNet-56, K = 1, 4, 8, 16 fused vs one after another vs K
    time-sliced processes; each as the throughput ratio over one after another."""
    device = torch.device("cuda", 0)
    ks = (1, 4) if quick else (1, 4, 8, 16)
    out = fused_throughput(quick, device, ("resnet20", "resnet56"), ks)
    steps = 3 if quick else 20
    for name in ("resnet20", "resnet56"):
        for k in ks:
            sliced = time_sliced_step_s(name, k, steps)
            prefix = f"gpu_fused_{name}_k{k}"
            out[f"gpu_time_sliced_{name}_k{k}_step_s"] = sliced
            out[f"gpu_time_sliced_{name}_k{k}_speedup"] = out[f"{prefix}_separate_step_s"] / sliced
    return out


def drift(device: torch.device, model: str = "resnet20", k: int = 4) -> dict:
    """Fused members against their unfused twins after one epoch of dense training in float32
    (digits, batch 128): the largest absolute weight difference, the largest relative one per
    tensor (norm of the difference over the tensor's norm) and the largest test-accuracy difference;
    on the CPU, beside them the same for the unfused trainings run with another thread count
    (rounding that is not fusion's, amplified by training alike)."""
    from sweeps.config import validate
    from sweeps.dense_training import train_dense, train_dense_group

    sweep = validate({"name": "drift", "model": model, "dataset": {"name": "digits"},
                      "dense": {"epochs": 1, "batch_size": BATCH, "optimizer": {"name": "sgd", "lr": 0.05}},
                      "finetune": {"epochs": 1}, "schedules": [{"name": "instant", "kind": "instant"}],
                      "sparsities": [0.5], "seeds": k})
    alone = [train_dense(sweep, s, device) for s in range(k)]
    fused = train_dense_group(sweep, list(range(k)), device)
    prefix = f"{'gpu_' if device.type == 'cuda' else ''}fused_drift_{model}_k{k}"
    out = {f"{prefix}_{key}": value for key, value in _differences(alone, fused).items()}
    if device.type == "cpu":  # context: the same unfused trainings on one thread instead of this process's
        threads = torch.get_num_threads()
        torch.set_num_threads(1 if threads > 1 else 2)
        try:
            other = [train_dense(sweep, s, device) for s in range(k)]
        finally:
            torch.set_num_threads(threads)
        out.update({f"unfused_threads_drift_{model}_k{k}_{key}": value
                    for key, value in _differences(alone, other).items()})
    return out


def _differences(a_models: list[dict], b_models: list[dict]) -> dict:
    pairs = [(a["state_dict"][n].double(), b["state_dict"][n].double()) for a, b in zip(a_models, b_models)
             for n in a["state_dict"] if a["state_dict"][n].is_floating_point()]
    return {"max_weight_diff": max((a - b).abs().max().item() for a, b in pairs),
            "max_relative_weight_diff": max(((a - b).norm() / a.norm().clamp_min(1e-30)).item() for a, b in pairs),
            "max_test_accuracy_diff": max(abs(a["test_accuracy"] - b["test_accuracy"])
                                          for a, b in zip(a_models, b_models))}


def cpu_fusion(quick: bool) -> dict:
    """On the CPU: small CNN and ResNet-20, K = 1, 2, 4, 8 fused vs one after another; two
    one-thread processes sharing the CPU (small CNN); the float32 drift after one epoch."""
    cpu = torch.device("cpu")
    out = fused_throughput(quick, cpu, ("small_cnn",) if quick else ("small_cnn", "resnet20"),
                           (1, 2) if quick else (1, 2, 4, 8))
    # two processes of one thread each, as two trials of resources.cpu: 1 share this machine
    sliced = time_sliced_step_s("small_cnn", 2, 3 if quick else 20, "cpu")
    out["time_sliced_small_cnn_k2_step_s"] = sliced
    out["time_sliced_small_cnn_k2_speedup"] = out["fused_small_cnn_k2_separate_step_s"] / sliced
    out.update(drift(cpu, "small_cnn" if quick else "resnet20", k=2 if quick else 4))
    return out


def main(argv=None) -> int:
    """``python -m benchmarks.fusion [--quick] [--json FILE]``: the fusion figures alone (``make bench`` has them too)."""
    import argparse
    import json
    import os
    import platform
    from pathlib import Path

    p = argparse.ArgumentParser(prog="python -m benchmarks.fusion", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not figures to quote")
    p.add_argument("--json", help="write the figures to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    figures = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
               f"{os.cpu_count()} cores, torch {torch.__version__}", **cpu_fusion(args.quick)}
    if torch.cuda.is_available():
        figures["gpu_name"] = torch.cuda.get_device_name(0)
        figures.update(gpu_fusion(args.quick))
        figures.update(drift(torch.device("cuda", 0)))
    print(f"fused training, {figures['date']}, {figures['machine']}")
    for key, value in figures.items():
        if key not in ("date", "machine"):
            print(f"{key:<60}{value if isinstance(value, str) else f'{value:.4g}'}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
