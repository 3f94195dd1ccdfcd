"""Speed figures measured side by side in one run: ratios, never absolute timing goals in tests.

python -m benchmarks [--quick] [--json FILE] [--address ADDR]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

import pruning_core as pc
from sweeps.config import DatasetConfig, validate
from sweeps.data import DeviceLoader, load_dataset
from sweeps.models import build_model
from sweeps.dense_training import train_dense
from sweeps.plan import expand
from sweeps.trial import TrialRun

from .fusion import cpu_fusion, drift, gpu_fusion
from .synthetic import without_md5_check, write_cifar10_format

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def loader_speedup(quick: bool, device: torch.device) -> dict:
    """Images/s: our on-device tensor loader with crop+flip vs torchvision's CIFAR10 + DataLoader."""
    import torchvision.datasets.cifar as tv_cifar
    from torch.utils.data import DataLoader
    from torchvision import transforms

    n = 1024 if quick else 10000
    with tempfile.TemporaryDirectory() as root:
        write_cifar10_format(root, n_train=n, n_test=100)
        with without_md5_check():
            tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                     transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
            ds = tv_cifar.CIFAR10(root, train=True, download=False, transform=tf)
            loader = DataLoader(ds, batch_size=128, shuffle=True, num_workers=2)

            def torchvision_epoch():
                for xb, yb in loader:
                    xb.to(device), yb.to(device)
            tv = n / _median_time(torchvision_epoch, 1 if quick else 2)
            load_dataset.cache_clear()
            data = load_dataset(DatasetConfig(name="cifar10", root=root)).to(device)
            load_dataset.cache_clear()
    ours_loader = DeviceLoader(data, 128, torch.Generator(device=device).manual_seed(0), augment=True)

    def ours_epoch():
        for xb, yb in ours_loader:
            pass
        if device.type == "cuda":
            torch.cuda.synchronize()
    ours = n / _median_time(ours_epoch, 3)
    return {"loader_images_per_s": ours, "torchvision_images_per_s": tv, "loader_speedup": ours / tv}


def _png_folder(root: str, n_train: int, n_test: int) -> str:
    """An image folder of 32x32 PNGs in 10 classes: CIFAR-10's own images where
    ``PRUNESWEEP_CIFAR_ROOT`` holds it, else random ones (noise: larger files, slower to decode)."""
    from PIL import Image

    cifar = os.environ.get("PRUNESWEEP_CIFAR_ROOT")
    if cifar:
        from torchvision.datasets import CIFAR10

        splits = {split: CIFAR10(cifar, train=split == "train") for split in ("train", "test")}
        images = {s: (d.data[:n], d.targets[:n]) for (s, d), n in zip(splits.items(), (n_train, n_test))}
    else:
        rng = np.random.default_rng(0)
        images = {s: (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).tolist())
                  for s, n in (("train", n_train), ("test", n_test))}
    for split, (x, y) in images.items():
        for i, (pixels, label) in enumerate(zip(x, y)):
            folder = os.path.join(root, split, f"class{label}")
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(pixels).save(os.path.join(folder, f"{i:05d}.png"))
    return "cifar10" if cifar else "random"


def data_paths(quick: bool) -> dict:
    """An image folder of 32x32 PNGs held in memory vs streamed from disk (``DataLoader`` with 2
    workers decoding, the same augmentation on the device): seconds per training epoch of the
    small CNN (batch 128, crop+flip; the cheapest model, so the data path weighs most), and how
    fast the folder decodes into memory."""
    from sweeps.loops import train_epoch

    n = 256 if quick else 10000
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as root:
        source = _png_folder(root, n, n // 5)
        config = DatasetConfig(name="imagefolder", root=root, image_size=32, workers=2)
        load_dataset.cache_clear()
        start = time.perf_counter()
        in_memory = load_dataset(config)
        decode = time.perf_counter() - start
        streamed = load_dataset(config.model_copy(update={"in_memory_max_gb": 1e-9}))
        load_dataset.cache_clear()
        model = build_model("small_cnn", 10, 3)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def epoch(data):
            return lambda: train_epoch(model, DeviceLoader(data, 128, torch.Generator().manual_seed(0), True),
                                       optimizer, cpu)
        repeats = 1 if quick else 3
        memory_s, streamed_s = _median_time(epoch(in_memory), repeats), _median_time(epoch(streamed), repeats)
    return {"streamed_epoch_s": streamed_s, "in_memory_epoch_s": memory_s, "streamed_vs_in_memory": streamed_s / memory_s,
            "folder_decode_images_per_s": (n + n // 5) / decode, "folder_images": n, "folder_source": source}


def _train_step_time(model, optimizer, x, y, repeats):
    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    step()
    return _median_time(step, repeats)


def mask_overhead(quick: bool) -> dict:
    """Training-step time of a 90%-pruned ResNet-20 (gradient hooks and the attached optimizer keep the
    pruned weights at zero) / dense."""
    torch.manual_seed(0)
    batch = 32 if quick else 128
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    dense = build_model("resnet20")
    pruned = copy.deepcopy(dense)
    pc.prune(pruned, 0.9)
    opt_d = torch.optim.SGD(dense.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    opt_p = pc.attach_optimizer(pruned, torch.optim.SGD(pruned.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4))
    for model, opt in ((dense, opt_d), (pruned, opt_p)):
        _train_step_time(model, opt, x, y, 1)  # warm-up
    td, tp = [], []
    for _ in range(3 if quick else 15):  # alternated single steps, so drift hits both alike
        td.append(_train_step_time(dense, opt_d, x, y, 1))
        tp.append(_train_step_time(pruned, opt_p, x, y, 1))
    return {"dense_step_s": statistics.median(td), "masked_step_s": statistics.median(tp),
            "mask_overhead": statistics.median(p / d for p, d in zip(tp, td))}


def compaction_speedup(quick: bool) -> dict:
    """CPU inference latency of ResNet-20 with 50% and 75% of its filters pruned: masked (zero
    filters still computed) vs compacted (``pc.compact``: the filters removed), interleaved."""
    torch.manual_seed(0)
    batch = 32 if quick else 128
    x = torch.randn(batch, 3, 32, 32)
    out = {}
    for sparsity in (0.5, 0.75):
        masked = build_model("resnet20").eval()
        pc.prune(masked, sparsity, structure="filters", scope="layerwise", example_inputs=x[:2])
        small = pc.compact(masked, x[:2]).eval()
        tag = f"{round(sparsity * 100)}"
        masked_s, compact_s = [], []
        with torch.no_grad():
            for model in (masked, small):
                model(x)  # warm-up
            for _ in range(3 if quick else 15):
                masked_s.append(_median_time(lambda: masked(x), 1))
                compact_s.append(_median_time(lambda: small(x), 1))
        out[f"masked_{tag}_forward_s"] = statistics.median(masked_s)
        out[f"compact_{tag}_forward_s"] = statistics.median(compact_s)
        out[f"compact_latency_ratio_{tag}"] = statistics.median(c / m for c, m in zip(compact_s, masked_s))
        out[f"compact_macs_ratio_{tag}"] = (pc.sparsity_report(small, (3, 32, 32))["macs_dense"]
                                            / pc.sparsity_report(masked, (3, 32, 32))["macs_dense"])
    return out


def semi_structured_speedup(quick: bool) -> dict:
    """On a CUDA GPU: a 2:4-pruned fp16 Linear through ``torch.sparse.to_sparse_semi_structured``
    vs the same weight dense (the matmul time of ``F.linear``)."""
    from torch.sparse import to_sparse_semi_structured

    device = torch.device("cuda", 0)
    features, tokens = (2048, 2048) if quick else (8192, 8192)
    layer = torch.nn.Linear(features, features, bias=False).half().to(device)
    pc.prune(layer, 0.5, structure="2:4")
    pc.make_permanent(layer)
    x = torch.randn(tokens, features, dtype=torch.half, device=device)
    dense_w = layer.weight.detach()
    sparse_w = to_sparse_semi_structured(dense_w)

    def timed(weight):
        def run():
            F.linear(x, weight)
            torch.cuda.synchronize()
        run()
        return _median_time(run, 5 if quick else 20)
    dense_s, sparse_s = timed(dense_w), timed(sparse_w)
    assert torch.allclose(F.linear(x, sparse_w), F.linear(x, dense_w), rtol=1e-2, atol=1e-1)
    return {"gpu_linear_2to4_dense_s": dense_s, "gpu_linear_2to4_sparse_s": sparse_s,
            "gpu_semi_structured_speedup": dense_s / sparse_s}


def original_prune(model, sparsity: float) -> None:
    """The original notebooks' global threshold, in the pattern they grew from (the widely copied
    port of arXiv:1606.09274): every parameter named 'weight' (BatchNorm scales too) copied to the
    CPU and appended to a Python list, one ``np.percentile``, then a float mask per parameter."""
    values = []
    for name, p in model.named_parameters():
        if "weight" in name:
            values += list(p.detach().cpu().abs().numpy().flatten())
    threshold = np.percentile(np.array(values), sparsity * 100)
    for name, p in model.named_parameters():
        if "weight" in name:
            p.data.mul_((p.data.abs() > threshold).float())


def vectorised_numpy_prune(model, sparsity: float) -> None:
    """The same threshold without the Python list: one ``np.concatenate``, then the percentile."""
    weights = [p for name, p in model.named_parameters() if "weight" in name]
    flat = np.concatenate([p.detach().cpu().numpy().ravel() for p in weights])
    threshold = np.percentile(np.abs(flat), sparsity * 100)
    for p in weights:
        p.data.mul_((p.data.abs() > threshold).float())


def prune_speedup(quick: bool) -> dict:
    """Global magnitude pruning of a ResNet-56 to 90%: the original numpy percentile (and a
    vectorised one) vs pruning_core.prune, each on fresh copies, interleaved."""
    torch.manual_seed(0)
    base = build_model("resnet56")
    ways = {"original": original_prune, "vectorised_numpy": vectorised_numpy_prune, "pruning_core": pc.prune}
    times = {name: [] for name in ways}
    for _ in range(5 if quick else 25):
        for name, fn in ways.items():
            times[name].append(_median_time(lambda m=copy.deepcopy(base), fn=fn: fn(m, 0.9), 1))
    t_original, t_vec, t_ours = (statistics.median(times[name]) for name in ways)
    ratio = lambda slow: statistics.median(a / b for a, b in zip(times[slow], times["pruning_core"]))  # noqa: E731
    # an epoch of ResNet-56 on CIFAR-10 here: 391 steps of batch 128, timed on a few steps
    model = build_model("resnet56")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    batch = 16 if quick else 128
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    step = _train_step_time(model, opt, x, y, 2 if quick else 3)
    epoch = step * (128 / batch) * 391
    return {"original_prune_s": t_original, "vectorised_numpy_prune_s": t_vec, "prune_s": t_ours,
            "prune_speedup": ratio("original"), "prune_speedup_vs_vectorised_numpy": ratio("vectorised_numpy"),
            "resnet56_cpu_epoch_s_estimate": epoch, "prune_fraction_of_epoch": t_ours / epoch}


def _bench_config(epochs: int, trials: int, concurrent: int, model: str = "resnet20") -> dict:
    sparsities = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98][:trials]
    return {"name": "bench", "model": model, "dataset": {"name": "digits"},
            "dense": {"epochs": 1, "batch_size": 64}, "finetune": {"epochs": epochs, "batch_size": 64},
            "schedules": [{"name": "instant", "kind": "instant"}], "sparsities": sparsities, "seeds": 1,
            "resources": {"cpu": 1}, "max_concurrent_trials": concurrent}


def plain_loop(config_file: str) -> None:
    """The same trials back to back in one Python loop, no Ray: dense once, then each trial."""
    sweep = validate(yaml.safe_load(Path(config_file).read_text()))
    torch.set_num_threads(1)
    dense = train_dense(sweep, 0, torch.device("cpu"))
    for trial in expand(sweep):
        run = TrialRun.of_point(sweep, trial, dense, torch.device("cpu"))
        while not run.done:
            run.run_epoch()


def _timed_process(cfg: dict, plain: bool, address: str | None) -> float:
    """Wall time of a fresh Python process (interpreter and imports included, both ways)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.yaml"
        path.write_text(yaml.safe_dump(cfg))
        if plain:
            cmd = [sys.executable, "-c", "import sys; from benchmarks.bench import plain_loop; plain_loop(sys.argv[1])",
                   str(path)]
        else:
            cmd = [sys.executable, "-m", "sweeps", "run", str(path), "--storage", folder, "--name", "b",
                   "--no-dashboard"] + (["--address", address] if address else [])
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start


def _through_prunesweep(cfg: dict, address: str | None) -> float:
    return _timed_process(cfg, False, address)


def tune_overhead(quick: bool, address: str | None) -> dict:
    """Wall time through ``prunesweep run`` (Ray start, checkpoints every epoch, one trial at a
    time) / the same trials in a plain loop; and (not ``quick``) 2 concurrent trials vs 1 through
    prunesweep."""
    # one digits epoch of ResNet-20 takes about 0.9 s on one core here
    model = "small_cnn" if quick else "resnet20"
    sizes = {"tiny": 3} if quick else {"5s": 6, "30s": 34}
    trials = 2 if quick else 4
    out = {}
    for label, epochs in sizes.items():
        cfg = _bench_config(epochs, trials, 1, model)
        plain = _timed_process(cfg, True, None)
        serial = _through_prunesweep(cfg, address)
        out[f"tune_overhead_{label}"] = serial / plain
        out[f"plain_loop_s_{label}"] = plain
        out[f"prunesweep_s_{label}"] = serial
        out[f"trial_s_{label}"] = plain / trials
    if quick:  # a smoke run: the 2-at-a-time sweep is the same path with another config value
        return out
    label = list(sizes)[-1]  # the longest trials: least start-up in the figure
    parallel = _through_prunesweep(_bench_config(sizes[label], trials, 2, model), address)
    out["parallel_efficiency"] = out[f"prunesweep_s_{label}"] / parallel
    out["serial_s"] = out[f"prunesweep_s_{label}"]
    out["parallel_s"] = parallel
    return out


def gpu_epoch_times(quick: bool) -> dict:
    """On a GPU: seconds per CIFAR-sized epoch (50,000 images) of ResNet-20/56 with the fast path
    (data on the device, batch crop/flip, bf16 autocast, channels_last)."""
    from sweeps.data import TensorData, channel_stats
    from sweeps.loops import prepare, train_epoch

    device = torch.device("cuda", 0)
    n = 5000 if quick else 50000
    out = {}
    for name in ("resnet20", "resnet56"):
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
        mean, std = channel_stats(x)
        data = TensorData(x, torch.randint(0, 10, (n,), generator=g), x[:100], torch.randint(0, 10, (100,)),
                          10, 4, mean, std)
        model, data = prepare(build_model(name), data, device)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loader = DeviceLoader(data, 128, torch.Generator(device=device).manual_seed(0), augment=True)

        def epoch():
            train_epoch(model, loader, opt, device)
            torch.cuda.synchronize()
        epoch()  # warm-up: cuDNN autotuning, allocator
        out[f"gpu_{name}_epoch_s"] = _median_time(epoch, 1 if quick else 3) * (50000 / n)
    return out


def gpu_figures(quick: bool, address: str | None) -> dict:
    """On a GPU: :func:`gpu_epoch_times`, and trials per hour with 1, 2, 4 and 8 trials packed on
    the one GPU through fractional ``resources.gpu``."""
    out = gpu_epoch_times(quick)
    epochs, trials = (2, 4) if quick else (10, 8)
    for pack in (1, 2, 4, 8):
        cfg = _bench_config(epochs, trials, pack)
        cfg.update(dataset={"name": "cifar10", "root": os.environ.get("PRUNESWEEP_CIFAR_ROOT", "data/cifar10"),
                                              "download": False, "train_subset": 10000})
        cfg["resources"] = {"cpu": 1, "gpu": 1 / pack}
        if not (Path(cfg["dataset"]["root"]) / "cifar-10-batches-py").is_dir():
            out["gpu_trials_per_hour"] = "skipped: set PRUNESWEEP_CIFAR_ROOT to a CIFAR-10 folder"
            break
        seconds = _through_prunesweep(cfg, address)
        out[f"gpu_trials_per_hour_{pack}"] = trials * 3600 / seconds
    return out


def analyse_experiment(path: str) -> None:
    """Time ``load_experiment`` + ``summarize`` + ``compare_all`` on ``path`` and print, as JSON, the
    seconds, the rows and this process's peak memory (run in a fresh process by :func:`analysis_at_scale`)."""
    import resource

    import analysis

    start = time.perf_counter()
    df = analysis.load_experiment(path)
    loaded = time.perf_counter()
    analysis.summarize(df)
    analysis.compare_all(df)
    end = time.perf_counter()
    print(json.dumps({"load_s": loaded - start, "stats_s": end - loaded, "rows": len(df),
                      "trials": int(df["trial_id"].nunique()), "columns": df.shape[1],
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _scale(points: int) -> str:
    return f"{points // 1000}k" if points >= 1000 and points % 1000 == 0 else str(points)


def analysis_at_scale(quick: bool, group: int = 1, seeds: int | None = None) -> dict:
    """The analysis of a 10,000-point experiment (5 schedules x 20 sparsities x 100 seeds, 30 epochs
    each, ResNet-20's 22 layers; ``seeds`` more or fewer) in the real on-disk layout (``group`` > 1:
    a fused sweep's, one folder per group of that many seeds), in a fresh process: seconds and peak
    memory of loading it and computing every summary and paired comparison."""
    from .synthetic import write_experiment

    seeds = seeds or (4 if quick else 100)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "experiment")
        start = time.perf_counter()
        trials = write_experiment(path, seeds=seeds, epochs=30, group=group)
        written = time.perf_counter() - start
        code = "import sys; from benchmarks.bench import analyse_experiment; analyse_experiment(sys.argv[1])"
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code, path], check=True, capture_output=True, text=True).stdout
        wall = time.perf_counter() - start
    got = json.loads(out.strip().splitlines()[-1])
    key = f"{'fused_' if group > 1 else ''}{_scale(trials)}"
    return {f"analysis_{key}_s": got["load_s"] + got["stats_s"], f"analysis_{key}_load_s": got["load_s"],
            f"analysis_{key}_stats_s": got["stats_s"], f"analysis_{key}_process_s": wall,
            f"analysis_{key}_peak_mb": got["peak_mb"], f"analysis_{key}_points": trials,
            f"analysis_{key}_rows": got["rows"], f"analysis_{key}_write_s": written}


def sweep_fusion(quick: bool, address: str | None, fuse: int = 5) -> dict:
    """The quickstart (``make sweep``'s config; ``quick``: 2 seeds, one schedule and sparsity) through ``prunesweep
    run`` twice, side by side: each point alone, and fused in groups of up to ``fuse`` seeds. Wall
    time of each, Ray Tune's experiment state per trial point, and how far float32 rounding moves the
    results: each point's final test accuracy, and each arm's mean at each sparsity."""
    import analysis

    overrides = (["seeds=2", "sparsities=[0.5]", "dense.epochs=1", "finetune.epochs=2",
                  "schedules=[{name: instant, kind: instant}]"] if quick else [])
    out, finals = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for name, value in (("unfused", "off"), ("fused", str(fuse))):
            command = [sys.executable, "-m", "sweeps", "run", "quickstart", "--storage", folder, "--name", name,
                       "--no-dashboard", "--set", f"fuse={value}"]
            command += [a for o in overrides for a in ("--set", o)] + (["--address", address] if address else [])
            start = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            out[f"quickstart_{name}_s"] = time.perf_counter() - start
            state, trials = _state_bytes(Path(folder) / name)
            df = analysis.load_experiment(Path(folder) / name)
            points = df["trial_id"].nunique()
            out[f"quickstart_{name}_state_bytes_per_point"] = state / points
            out[f"quickstart_{name}_tune_trials"] = trials
            finals[name] = analysis.final_results(df).set_index(["arm", "target_sparsity", "seed"])["test_accuracy"]
    gap = (finals["fused"] - finals["unfused"]).abs()
    means = (finals["fused"].groupby(level=[0, 1]).mean() - finals["unfused"].groupby(level=[0, 1]).mean()).abs()
    out.update({"quickstart_fused_vs_unfused": out["quickstart_fused_s"] / out["quickstart_unfused_s"],
                "quickstart_fuse": fuse, "quickstart_points": int(len(gap)),
                "quickstart_fused_points_differing": int((gap > 0).sum()),
                "quickstart_fused_max_point_diff_pts": 100 * float(gap.max()),
                "quickstart_fused_max_mean_diff_pts": 100 * float(means.max())})
    return out


def _state_bytes(experiment: Path) -> tuple[int, int]:
    """(bytes of the newest experiment-state file, trials in it)."""
    from analysis.schema import EXPERIMENT_STATE_GLOB

    state = sorted(experiment.glob(EXPERIMENT_STATE_GLOB))[-1]
    return state.stat().st_size, len(json.loads(state.read_text())["trial_data"])


def bare_tune_trial(folder: str, address: str | None = None) -> None:
    """Four Ray Tune trials that report once, with a one-byte checkpoint (one kept), and nothing of
    their own: the smallest experiment state Tune keeps per trial. In this process, on the Ray it
    already uses, else on ``address`` or a local one (shut down afterwards)."""
    import ray
    from ray import tune

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, **({} if address else {"num_cpus": 2, "include_dashboard": False}),
                 log_to_driver=False)

    def trial(config):
        with tempfile.TemporaryDirectory() as d:
            Path(d, "x").write_bytes(b"x")
            tune.report({}, checkpoint=tune.Checkpoint.from_directory(d))

    try:
        tune.Tuner(trial, param_space={"x": tune.grid_search(list(range(4)))},
                   run_config=tune.RunConfig(name="bare", storage_path=folder, verbose=0,
                                             checkpoint_config=tune.CheckpointConfig(num_to_keep=1))).fit()
    finally:
        if started:
            ray.shutdown()


def sweep_storage(quick: bool, address: str | None) -> dict:
    """A real small sweep through ``prunesweep run`` with the default checkpoint policy: ResNet-20
    (on digits), the built-in ``cifar10_resnet20`` recipe's optimizer and schedules, one sparsity,
    30 fine-tuning epochs. Tune's experiment state per trial (beside a bare Tune trial's, measured
    in the same run), and checkpoint bytes per trial: uploaded (each checkpoint Tune recorded) and
    left in storage at the end, against the policy before (every epoch, ten kept, the final one full)."""
    from analysis.schema import PRUNED_MODEL_FILE, RESULT_FILE

    epochs = 6 if quick else 30
    recipe = yaml.safe_load((Path(__file__).resolve().parent.parent / "sweeps" / "configs" / "cifar10_resnet20.yaml")
                            .read_text())
    cfg = {"name": "storage", "model": "small_cnn" if quick else "resnet20", "dataset": {"name": "digits"},
           "dense": {"epochs": 1, "batch_size": 64},
           "pruning": {**recipe["pruning"], "exclude": ["conv1", "fc"]} if quick else recipe["pruning"],
           "finetune": {**recipe["finetune"], "epochs": epochs, "batch_size": 64},
           "schedules": recipe["schedules"][:1] if quick else recipe["schedules"],
           "sparsities": [0.9], "seeds": 1, "resources": {"cpu": 1}}
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "storage.yaml"
        config.write_text(yaml.safe_dump(cfg))
        subprocess.run([sys.executable, "-m", "sweeps", "run", str(config), "--storage", folder, "--name", "s",
                        "--no-dashboard"] + (["--address", address] if address else []),
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        experiment = Path(folder) / "s"
        state, trials = _state_bytes(experiment)
        bare_tune_trial(folder, address)
        bare, bare_trials = _state_bytes(Path(folder) / "bare")
        uploaded = left = full = 0
        for trial in (p for p in experiment.iterdir() if (p / RESULT_FILE).exists()):
            sizes = {c.name: sum(f.stat().st_size for f in c.rglob("*") if f.is_file())
                     for c in trial.glob("checkpoint_*")}
            rows = [json.loads(line) for line in (trial / RESULT_FILE).read_text().splitlines()]
            written = [r["checkpoint_dir_name"] for r in rows if r.get("should_checkpoint")]
            full = max(full, *sizes.values())  # the kept checkpoint before the final, compact one
            uploaded += sum(sizes.get(name, full) for name in written)
            left += sum(sizes.values()) + (trial / PRUNED_MODEL_FILE).stat().st_size
        before = full * epochs  # every epoch a full checkpoint, ten of them kept
    return {"state_bytes_per_trial": state / trials, "tune_bare_state_bytes_per_trial": bare / bare_trials,
            "state_vs_bare_tune": (state / trials) / (bare / bare_trials),
            "checkpoint_bytes_per_trial": uploaded / trials, "checkpoint_bytes_left_per_trial": left / trials,
            "checkpoint_bytes_per_trial_before": before, "checkpoint_bytes_left_per_trial_before": full * min(10, epochs),
            "checkpoint_upload_reduction": before / (uploaded / trials), "full_checkpoint_bytes": full,
            "storage_sweep_epochs": epochs}


GOALS = {"loader_speedup": ">= 1 (higher is better)", "mask_overhead": "<= 1.10", "prune_speedup": ">= 10",
         "compact_latency_ratio_50": "< 1 (lower is better)", "compact_latency_ratio_75": "< 1 (lower is better)",
         "prune_speedup_vs_vectorised_numpy": "(context)",
         "tune_overhead_30s": "< 1.3", "parallel_efficiency": "-> 2 on 2 cores",
         "analysis_10k_s": "< 30 s, < 2048 MB peak", "state_vs_bare_tune": "state < 10 KB/trial (issue #17)",
         "analysis_fused_10k_s": "< 20 s (issue #31)", "analysis_fused_100k_s": "< 120 s, < 4096 MB peak (issue #31)",
         "quickstart_fused_vs_unfused": "<= 0.75 (issue #31)",
         "quickstart_fused_state_bytes_per_point": "< 5 KB/point fused (issue #31)",
         "checkpoint_upload_reduction": "(context)", "streamed_vs_in_memory": "(context)",
         "gpu_fused_resnet20_k8_speedup": ">= 5 (issue #30)"}
GOALS.update({f"fused_{m}_k{k}_speedup": "> 1: fusion pays on this CPU" for m in ("small_cnn", "resnet20")
              for k in (2, 4, 8)})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not figures to quote")
    p.add_argument("--json", help="write the figures to this JSON file")
    p.add_argument("--address", help="Ray cluster for the prunesweep runs (default: a local Ray each)")
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    cpu = torch.device("cpu")
    figures = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
               f"{os.cpu_count()} cores, torch {torch.__version__}", "quick": args.quick}
    figures.update(loader_speedup(args.quick, cpu))
    if torch.cuda.is_available():
        gpu = loader_speedup(args.quick, torch.device("cuda"))
        figures.update({f"gpu_{k}": v for k, v in gpu.items()})
        figures["gpu_name"] = torch.cuda.get_device_name(0)
        figures.update(gpu_figures(args.quick, args.address))
        figures.update(semi_structured_speedup(args.quick))
        figures.update(gpu_fusion(args.quick))
        figures.update(drift(torch.device("cuda", 0)))
    else:
        figures["gpu_name"] = None
    figures.update(cpu_fusion(args.quick))
    figures.update(mask_overhead(args.quick))
    figures.update(compaction_speedup(args.quick))
    figures.update(prune_speedup(args.quick))
    figures.update(tune_overhead(args.quick, args.address))
    figures.update(sweep_storage(args.quick, args.address))
    figures.update(analysis_at_scale(args.quick))
    figures.update(analysis_at_scale(args.quick, group=4 if args.quick else 10))
    if not args.quick:
        figures.update(analysis_at_scale(args.quick, group=10, seeds=1000))
    figures.update(sweep_fusion(args.quick, args.address))
    figures.update(data_paths(args.quick))

    rows = [("loader_speedup", "loader_images_per_s", "torchvision_images_per_s", "images/s"),
            ("mask_overhead", "masked_step_s", "dense_step_s", "s/step"),
            ("compact_latency_ratio_50", "compact_50_forward_s", "masked_50_forward_s", "s/batch"),
            ("compact_latency_ratio_75", "compact_75_forward_s", "masked_75_forward_s", "s/batch"),
            ("prune_speedup", "original_prune_s", "prune_s", "s"),
            ("prune_speedup_vs_vectorised_numpy", "vectorised_numpy_prune_s", "prune_s", "s"),
            ("prune_fraction_of_epoch", "prune_s", "resnet56_cpu_epoch_s_estimate", "s")]
    rows += [(k, f"prunesweep_s_{k.split('_')[-1]}", f"plain_loop_s_{k.split('_')[-1]}", "s")
             for k in figures if k.startswith("tune_overhead_")]
    if "parallel_efficiency" in figures:
        rows.append(("parallel_efficiency", "serial_s", "parallel_s", "s"))
    for key in [k for k in figures if k.endswith("_speedup") and "fused_" in k and not k.startswith("gpu_")]:
        rows.append((key, key.replace("_speedup", "_separate_step_s"), key.replace("_speedup", "_fused_step_s"),
                     "s/step"))
    rows.append(("streamed_vs_in_memory", "streamed_epoch_s", "in_memory_epoch_s", "s"))
    rows.append(("state_vs_bare_tune", "state_bytes_per_trial", "tune_bare_state_bytes_per_trial", "bytes"))
    rows.append(("checkpoint_upload_reduction", "checkpoint_bytes_per_trial_before", "checkpoint_bytes_per_trial",
                 "bytes"))
    scales = [k[: -len("_peak_mb")] for k in figures if k.startswith("analysis_") and k.endswith("_peak_mb")]
    rows += [(f"{scale}_s", f"{scale}_load_s", f"{scale}_stats_s", "s (sum)") for scale in scales]
    rows.append(("quickstart_fused_vs_unfused", "quickstart_fused_s", "quickstart_unfused_s", "s"))
    rows.append(("quickstart_fused_state_bytes_per_point", "quickstart_fused_state_bytes_per_point",
                 "quickstart_unfused_state_bytes_per_point", "bytes"))
    print(f"prunesweep benchmarks, {figures['date']}, {figures['machine']}, GPU: {figures['gpu_name'] or 'none'}"
          + (" (quick: smoke sizes)" if args.quick else ""))
    print(f"{'figure':<36}{'ratio':>10}   {'numerator':>14} {'denominator':>14}  unit      goal")
    for key, num, den, unit in rows:
        print(f"{key:<36}{figures[key]:>10.4g}   {figures[num]:>14.4g} {figures[den]:>14.4g}  {unit:<9} "
              f"{GOALS.get(key, '')}")
    for key in [k for k in figures if "_drift_" in k and not k.startswith("gpu_")]:
        print(f"{key:<36}{figures[key]:>10.4g}")
    for key in (*(f"{scale}_peak_mb" for scale in scales), "quickstart_fused_max_point_diff_pts",
                "quickstart_fused_max_mean_diff_pts", "checkpoint_bytes_left_per_trial", "checkpoint_bytes_left_per_trial_before",
                "full_checkpoint_bytes", "folder_decode_images_per_s"):
        print(f"{key:<36}{figures[key]:>10.4g}")
    for key, value in figures.items():
        if key.startswith("gpu_") and key != "gpu_name":
            print(f"{key:<36}{value if isinstance(value, str) else f'{value:.4g}'}  {GOALS.get(key, '')}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0
