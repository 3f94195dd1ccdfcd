"""Running on a Ray cluster: a real two-node local cluster, and the cloud launcher config."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jsonschema
import ray
import yaml

from analysis import completion, load_experiment
from sweeps.train import LOGICAL_GPU_ENV

from .conftest import ROOT, write_config


def test_cluster_yaml_is_valid_for_rays_launcher():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert workers and all(t["resources"]["GPU"] == 1 and t["max_workers"] >= 1 for t in workers)
    assert any("pip install -e ." in cmd for cmd in config["setup_commands"])
    assert any("--dashboard-host=127.0.0.1" in cmd for cmd in config["head_start_ray_commands"])


def test_sweep_on_two_node_cluster(tmp_path):
    spread = write_config(tmp_path, "spread.yaml", seeds=1, finetune={"epochs": 2, "batch_size": 64})
    gpu = write_config(tmp_path, "gpu.yaml", seeds=1, sparsities=[0.5], finetune={"epochs": 2, "batch_size": 64},
                       resources={"cpu": 0.5, "gpu": 0.5})
    # the worker node's GPU is a logical Ray resource: let its trials train on the CPU
    env = {**os.environ, "PYTHONUNBUFFERED": "1", LOGICAL_GPU_ENV: "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.multinode", str(spread), str(gpu), str(tmp_path)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    line = [l for l in out.splitlines() if l.startswith("RESULT ")]
    assert line, out[-3000:]
    result = json.loads(line[-1][len("RESULT "):])
    for pid in result["pids"]:  # whatever the cluster left behind
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert result["codes"] == [0, 0], out[-3000:]
    df = load_experiment(tmp_path / "spread")
    assert completion(df, tmp_path / "spread") == {"expected": 4, "started": 4, "finished": 4, "diverged": 0,
                                                   "missing": 0}
    assert df["node_id"].nunique() == 2, "trials did not use both nodes"
    g = load_experiment(tmp_path / "gpu")
    assert g["trial_id"].nunique() == 2
    # fractional GPU requests were scheduled on the node that declares the (logical) GPU
    assert set(g["node_id"]) == {result["gpu_node"]}
    assert all(list(ids) == ["0"] for ids in g["gpu_ids"])
