"""Running on a Ray cluster: a real two-node local cluster, and the cloud launcher config."""
import json
import os
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from analysis import completion, load_experiment
from sweeps.loops import LOGICAL_GPU_ENV

from .conftest import ROOT, run_helper, write_config


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


def test_cluster_yaml_could_run_today():
    """The properties a real launch needs, which Ray's schema does not check."""
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    types = config["available_node_types"]
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    # a pinned Ray image of this Ray and Python, CUDA on the workers; hosts with a driver and Docker
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert config["docker"]["head_image"] == f"rayproject/ray:{ray.__version__}-{python}-cpu"
    assert config["docker"]["worker_image"] == f"rayproject/ray:{ray.__version__}-{python}-gpu"
    dlami = "resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
    assert all(t["node_config"]["ImageId"] == dlami for t in types.values())
    # instance profiles: workers may write the bucket, the head may also launch and pass them
    profiles = {name: t["node_config"]["IamInstanceProfile"]["Arn"] for name, t in types.items()}
    assert profiles == {"head": "arn:aws:iam::ACCOUNT_ID:instance-profile/prunesweep-head",
                        "gpu_worker": "arn:aws:iam::ACCOUNT_ID:instance-profile/prunesweep-worker"}
    assert any("boto3" in cmd for cmd in config["head_setup_commands"])
    # spot GPU workers that go when idle, terminated rather than kept stopped
    assert all(t["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"} and t["min_workers"] == 0
               for t in workers)
    assert 0 < config["idle_timeout_minutes"] <= 30 and config["provider"]["cache_stopped_nodes"] is False
    # token authentication on every node, with one token distributed to all of them
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in cmd for cmd in starts if "ray start" in cmd)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("RAY_AUTH_MODE=token" in cmd and "bashrc" in cmd for cmd in config["setup_commands"])
    # no port beyond SSH open to the world: no rules of ours, the dashboard and Ray Client not exposed
    assert "security_group" not in config["provider"]
    text = " ".join(starts)
    assert "--dashboard-host=0.0.0.0" not in text and "ray-client-server-port" not in text


@pytest.mark.cluster
def test_autoscale_request_is_withdrawn_when_the_sweep_ends(ray_session):
    """``--autoscale`` asks the autoscaler for a node that fits a trial; Ray keeps such a request
    until it is replaced, so the session replaces it with none on the way out."""
    from ray._private.ray_constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.experimental.internal_kv import _internal_kv_get

    from sweeps import ray_connection
    from sweeps.config import validate

    from .conftest import TINY

    config = validate({**TINY, "resources": {"cpu": 1, "gpu": 0.5}})
    with ray_connection.ray_session(config, ray_connection.RayOptions(autoscale=True)):
        assert json.loads(_internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)) == [{"CPU": 1.0, "GPU": 0.5}]
    assert json.loads(_internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)) == []


@pytest.mark.cluster
def test_sweep_on_two_node_cluster(tmp_path):
    spread = write_config(tmp_path, "spread.yaml", seeds=1, finetune={"epochs": 2, "batch_size": 64})
    gpu = write_config(tmp_path, "gpu.yaml", seeds=1, sparsities=[0.5], finetune={"epochs": 2, "batch_size": 64},
                       resources={"cpu": 0.5, "gpu": 0.5})
    # the worker node's GPU is a logical Ray resource: let its trials train on the CPU
    env = {**os.environ, "PYTHONUNBUFFERED": "1", LOGICAL_GPU_ENV: "1"}
    result, out = run_helper("tests.helpers.multinode", [str(spread), str(gpu), str(tmp_path)], env)
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
