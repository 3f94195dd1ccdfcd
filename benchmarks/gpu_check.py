"""``make gpu-check``: on a machine with one CUDA GPU, run every test marked ``gpu`` and the GPU
benchmark (epoch times; fused vs one-after-another vs time-sliced packing; fused members' drift),
and write the figures to one JSON. Needs no network and installs nothing: torch, Ray and the
test dependencies must already be importable.

python -m benchmarks.gpu_check [--json FILE] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch


def run_gpu_tests() -> dict:
    """The tests marked ``gpu`` (``tests/test_gpu.py``, collected alone so that another module's
    dependency cannot stop them): their counts, seconds and the tail of their output."""
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "tests/test_gpu.py", "-m", "gpu", "-q",
                               "-p", "no:cacheprovider", "-p", "no:xdist", "-rfEs"], capture_output=True, text=True,
                              timeout=360)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return {"gpu_tests_rc": 124, "gpu_tests_s": time.perf_counter() - start, "gpu_tests": {},
                "gpu_tests_summary": "timed out after 360 s", "gpu_tests_tail": out[-4000:]}
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", summary)}
    return {"gpu_tests_rc": done.returncode, "gpu_tests_s": time.perf_counter() - start,
            "gpu_tests": counts, "gpu_tests_summary": summary, "gpu_tests_tail": (done.stdout + done.stderr)[-4000:]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__)
    p.add_argument("--json", default="gpu-check.json", help="where to write the figures (default gpu-check.json)")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not figures to quote")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"gpu-check: torch {torch.__version__} sees no CUDA device; run it on a machine with an NVIDIA GPU",
              file=sys.stderr)
        return 2
    from .bench import gpu_epoch_times
    from .fusion import drift, gpu_fusion

    started = time.perf_counter()
    figures = {"date": time.strftime("%Y-%m-%d"), "gpu_name": torch.cuda.get_device_name(0),
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"torch {torch.__version__}", "quick": args.quick}
    figures.update(run_gpu_tests())
    print(f"gpu tests: {figures['gpu_tests_summary']} ({figures['gpu_tests_s']:.0f} s)", flush=True)
    for part in (lambda: gpu_epoch_times(args.quick), lambda: gpu_fusion(args.quick),
                 lambda: drift(torch.device("cuda", 0))):
        figures.update(part())
        Path(args.json).write_text(json.dumps(figures, indent=2))  # what is measured survives a time limit
    figures["gpu_check_s"] = time.perf_counter() - started
    Path(args.json).write_text(json.dumps(figures, indent=2))
    for key, value in figures.items():
        if key != "gpu_tests_tail":
            print(f"{key:<48}{value if isinstance(value, (str, dict)) else f'{value:.4g}'}")
    return 0 if figures["gpu_tests_rc"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
