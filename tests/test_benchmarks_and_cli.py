"""The benchmark code runs (a smoke run, never a timing assertion) and the local-Ray CLI path."""
import json
import os
import re
import signal
import subprocess
import sys

import pytest

from analysis import load_experiment
from benchmarks.bench import main as bench_main

from .conftest import ROOT, write_config


def test_benchmarks_quick_smoke(ray_session, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench_main(["--quick", "--json", str(out), "--address", ray_session.address_info["address"]]) == 0
    figures = json.loads(out.read_text())
    for key in ("loader_speedup", "mask_overhead", "compact_latency_ratio_50", "compact_latency_ratio_75",
                "compact_macs_ratio_50", "prune_speedup", "prune_speedup_vs_vectorised_numpy",
                "prune_fraction_of_epoch", "tune_overhead_tiny", "state_bytes_per_trial",
                "tune_bare_state_bytes_per_trial", "state_vs_bare_tune", "checkpoint_bytes_per_trial",
                "checkpoint_bytes_left_per_trial", "analysis_400_s", "analysis_400_peak_mb",
                "streamed_vs_in_memory", "folder_decode_images_per_s", "analysis_fused_400_s",
                "quickstart_fused_vs_unfused", "quickstart_fused_state_bytes_per_point",
                "quickstart_unfused_state_bytes_per_point"):
        assert isinstance(figures[key], float) and figures[key] > 0, key
    table = capsys.readouterr().out
    assert 0.2 < figures["compact_macs_ratio_50"] < 0.6 and figures["compact_macs_ratio_75"] < figures["compact_macs_ratio_50"]
    assert "mask_overhead" in table and "compact_latency_ratio_75" in table and "GPU: none" in table and "analysis_400_s" in table
    assert "streamed_vs_in_memory" in table and figures["folder_source"] in ("random", "cifar10")
    assert figures["analysis_400_rows"] == figures["analysis_fused_400_rows"] == 400 * 30
    assert figures["quickstart_fused_tune_trials"] * 2 == figures["quickstart_unfused_tune_trials"] == 2
    assert "quickstart_fused_vs_unfused" in table and "analysis_fused_400_s" in table
    assert "parallel_efficiency" not in figures  # measured in full runs only


@pytest.mark.ray
def test_run_starts_local_ray_with_dashboard_and_shuts_it_down(tmp_path):
    cfg = write_config(tmp_path, seeds=1, sparsities=[0.5], finetune={"epochs": 2, "batch_size": 64})
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sweeps", "run", str(cfg), "--storage", str(tmp_path), "--name", "local"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=180)
    finally:
        try:  # anything the driver left behind in its process group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == 0, out[-3000:]
    assert re.search(r"Ray dashboard: http://127\.0\.0\.1:\d+", out), out[-3000:]
    assert f"analyse them with: prunesweep analyze {tmp_path / 'local'}" in out
    assert load_experiment(tmp_path / "local")["trial_id"].nunique() == 2
