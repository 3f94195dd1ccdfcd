"""Shared fixtures: one real local Ray per test session, shut down by process id."""
import json
import os
import signal
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


FAULTS = {"injected": 0, "survived": 0, "trials_lost": 0}

# The test tiers (pyproject.toml declares the markers): a test that uses the session's Ray or a fixture
# built on it is `ray`, one that uses the S3 server `s3`; tests that start Ray or a cluster by other means
# say so themselves; `gpu` tests need CUDA (skipped where there is none; make gpu-check runs them).
# Everything else is `unit`: `make test-fast` runs those, and they may not start Ray.
TIERS = ("ray", "s3", "cluster", "gpu")
RAY_FIXTURES = {"ray_session", "tiny_experiment", "reference"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & RAY_FIXTURES:
            item.add_marker(pytest.mark.ray)
        if "s3" in fixtures:
            item.add_marker(pytest.mark.s3)
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(pytest.mark.unit)
        if item.get_closest_marker("gpu") and not _cuda():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU: run make gpu-check on a machine with one"))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _unit_tests_start_no_ray(request, monkeypatch):
    """A `unit` test that starts Ray is mis-tiered: it fails, saying so."""
    if request.node.get_closest_marker("unit") is not None:
        import ray

        def refuse(*args, **kwargs):
            raise RuntimeError(f"{request.node.nodeid} starts Ray but is not marked ray: mark it, or use ray_session")

        monkeypatch.setattr(ray, "init", refuse)


def record_fault(survived: bool, trials_lost: int) -> None:
    """Count one injected fault for the fault figures printed at the end of the test run."""
    FAULTS["injected"] += 1
    FAULTS["survived"] += int(survived)
    FAULTS["trials_lost"] += trials_lost


def pytest_sessionfinish(session):
    """Under pytest-xdist, a worker hands its fault figures to the controller (:func:`pytest_testnodedown`)."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["faults"] = dict(FAULTS)


# the modules whose tests share the session's tiny sweep (`tiny_experiment`): under pytest-xdist
# (`make test`, by module) they run as one unit on one worker, so that the sweep is built once
TINY_MODULES = ("test_analysis", "test_extend", "test_real_path", "test_sweeps_ray")


class _XdistHooks:
    """The controller's pytest-xdist hooks (registered only where xdist runs): the fault figures the
    workers hand over, and work units by module with the tiny sweep's modules as one."""

    @staticmethod
    def pytest_testnodedown(node, error):
        for key, value in getattr(node, "workeroutput", {}).get("faults", {}).items():
            FAULTS[key] += value

    @staticmethod
    def pytest_xdist_make_scheduler(config, log):
        if config.getvalue("dist") != "loadscope":
            return None
        from xdist.scheduler import LoadScopeScheduling

        class ByModule(LoadScopeScheduling):
            def _split_scope(self, nodeid):
                module = nodeid.split("::", 1)[0]
                return "tiny sweep" if Path(module).stem in TINY_MODULES else module

        return ByModule(config, log)


def pytest_configure(config):
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks())


def pytest_terminal_summary(terminalreporter):
    if FAULTS["injected"]:
        terminalreporter.write_line(
            f"fault figures: faults injected {FAULTS['injected']}, survived {FAULTS['survived']}, "
            f"trials lost {FAULTS['trials_lost']}")


def ray_pids():
    """Process ids of the Ray daemons this process's local node started."""
    from ray._private import worker

    node = worker._global_node
    pids = []
    if node is not None:
        for infos in node.all_processes.values():
            pids += [info.process.pid for info in infos if info.process is not None]
    return pids


def kill_pids(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_helper(module: str, args: list[str], env: dict, timeout: float = 240) -> tuple[dict, str]:
    """Run ``python -m <module> <args>`` (a tests.helpers script that starts a Ray of its own) in a
    session of its own, killed whole if it outlives ``timeout``; end the process ids its result lists
    (``pids``: whatever its Ray left behind). Returns its last ``RESULT {json}`` line's object and its output."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert lines, out[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    kill_pids(result.get("pids", []))
    return result, out


class S3:
    """A real S3 API (moto's standalone server) on 127.0.0.1, reached the standard AWS way."""

    def __init__(self):
        import logging
        import socket

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "prunesweep-test",
                    "AWS_SECRET_ACCESS_KEY": "prunesweep-test", "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self):
        import boto3

        return boto3.client("s3")

    def bucket(self, name: str) -> str:
        """A new empty bucket; returns its ``s3://`` URI."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def keys(self, bucket: str) -> list[str]:
        listing = self.client().list_objects_v2(Bucket=bucket)
        return sorted(o["Key"] for o in listing.get("Contents", []))


@pytest.fixture(scope="session")
def s3():
    """The test session's S3 server; its endpoint and credentials are in the environment
    (before Ray starts, so trials and subprocess drivers reach it too)."""
    server = S3()
    server.server.start()
    os.environ.update(server.env)
    yield server
    server.server.stop()


@pytest.fixture(scope="session")
def ray_session(s3):
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # the tests' generated CIFAR-10 files pass torchvision's md5 check in Ray's workers too
    ctx = ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2,
                   runtime_env={"worker_process_setup_hook": "benchmarks.synthetic.skip_md5_check"})
    pids = ray_pids()
    yield ctx
    ray.shutdown()
    kill_pids(pids)


TINY = {
    "name": "tiny",
    "model": "small_cnn",
    "dataset": {"name": "digits", "train_subset": 512},
    "dense": {"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.05}, "batch_size": 64},
    "finetune": {"epochs": 2, "batch_size": 64},
    "schedules": [{"name": "instant", "kind": "instant"}, {"name": "gradual2", "kind": "gradual", "steps": 2}],
    "sparsities": [0.5, 0.9],
    "seeds": 2,
    "resources": {"cpu": 1},
    "max_failures": 3,
}


def tune_rows(trial_dir) -> list[dict]:
    """What Ray Tune recorded of a trial (its ``result.json``), one dict per report."""
    from analysis.schema import RESULT_FILE

    return [json.loads(line) for line in (Path(trial_dir) / RESULT_FILE).read_text().splitlines() if line.strip()]


def uninterrupted(experiment):
    """Every report the experiment's trials give when each runs from start to end in this process
    (one thread, as a trial with ``resources.cpu: 1`` does; from the experiment's own dense models),
    in the columns and row order :func:`analysis.load_experiment` gives the experiment's own: the
    reference an interrupted run of it must equal."""
    import io

    import pandas as pd
    import torch

    from analysis import storage, trial_results
    from analysis.completeness import in_point_order
    from analysis.load import with_arms
    from analysis.schema import DENSE_DIR, dense_file
    from sweeps.experiment import experiment_config
    from sweeps.plan import expand
    from sweeps.trial import TrialRun

    config, _ = experiment_config(str(experiment))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tables = []
    try:
        for i, point in enumerate(expand(config)):
            file = storage.join(str(experiment), DENSE_DIR, dense_file(point.seed))
            dense = torch.load(io.BytesIO(storage.read_bytes(file)), map_location="cpu", weights_only=False)
            run = TrialRun.of_point(config, point, dense, torch.device("cpu"))
            reports = []
            while not run.done:
                reports += run.run_epoch()
            tables.append(trial_results.to_table(f"in-process-{i}", reports, run.learner.layers))
    finally:
        torch.set_num_threads(threads)
    return with_arms(in_point_order(pd.concat([t.to_pandas() for t in tables], ignore_index=True)))


def write_config(folder: Path, name="tiny.yaml", **changes) -> Path:
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    for key, value in changes.items():
        node = cfg
        parts = key.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    path = folder / name
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def tiny_experiment(ray_session, tmp_path_factory):
    """A small real sweep (instant, gradual and a ladder; 2 seeds) shared by several tests."""
    from sweeps.cli import main

    folder = tmp_path_factory.mktemp("tiny")
    cfg = write_config(folder, schedules=TINY["schedules"] + [{"name": "ladder", "kind": "ladder"}])
    assert main(["run", str(cfg), "--storage", str(folder / "results"), "--name", "tiny"]) == 0
    return folder / "results" / "tiny"

