"""Issue #29: no credential in any file Ray or prunesweep writes, a local Ray that listens on
127.0.0.1 only, and a Ray that cannot start or be reached is one line naming it, with no Ray
process left behind. Each test runs prunesweep in a process of its own, with Ray's temp folder
(RAY_TMPDIR) one of its own: the session's Ray (ray_session) may already run in this one."""
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import TINY, write_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ray_tmp():
    """A Ray temp folder of the test's own (short: Ray's socket paths must fit in 107 bytes); any
    Ray process still running from it afterwards is killed, and fails the test."""
    folder = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    yield folder
    left = _ray_processes(folder)
    for proc in left:
        proc.kill()
    shutil.rmtree(folder, ignore_errors=True)
    assert not left, f"Ray processes left running: {[p.info['name'] for p in left]}"


def _ray_processes(folder: str) -> list:
    """Processes whose command line names ``folder`` (every Ray daemon and worker names its temp folder)."""
    import psutil

    return [p for p in psutil.process_iter(["name", "cmdline"]) if folder in " ".join(p.info["cmdline"] or [])]


def _prunesweep(args, env, timeout=240):
    return subprocess.run([sys.executable, "-m", "sweeps", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _python(code, env, timeout=120):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.ray
def test_no_credential_reaches_rays_session_folder_or_the_experiment(s3, tmp_path, ray_tmp):
    """Ray Tune copies AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN into every
    trial actor's runtime_env, which Ray's runtime env agent logs in full (runtime_env_agent.log)."""
    secrets = {"AWS_ACCESS_KEY_ID": "AKIAHARDENING29KEYID", "AWS_SECRET_ACCESS_KEY": "hardening29/secret+Zq8vN3xWq",
               "AWS_SESSION_TOKEN": "hardening29-session-token-Pw4"}
    bucket = s3.bucket("hardening")
    config = write_config(tmp_path, seeds=1, schedules=TINY["schedules"][:1], sparsities=[0.5], dense__epochs=1,
                          finetune__epochs=1)
    env = {**os.environ, **s3.env, **secrets, "RAY_TMPDIR": ray_tmp}
    done = _prunesweep(["run", str(config), "--storage", f"{bucket}/x", "--no-dashboard"], env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    wanted = [v.encode() for v in secrets.values()]
    agent_logs = list(Path(ray_tmp).rglob("runtime_env_agent.log"))
    assert agent_logs and b"Creating runtime env" in agent_logs[0].read_bytes()  # the trials' envs are logged there
    found = [str(f) for f in Path(ray_tmp).rglob("*") if f.is_file() and any(w in f.read_bytes() for w in wanted)]
    assert not found, f"credentials in Ray's session folder: {found}"
    keys = s3.keys("hardening")
    assert any(k.endswith("result.json") for k in keys), keys
    client = s3.client()
    found = [k for k in keys if any(w in client.get_object(Bucket="hardening", Key=k)["Body"].read() for w in wanted)]
    assert not found, f"credentials in the experiment: {found}"
    assert not any(w.decode() in done.stdout + done.stderr for w in wanted)


LISTENING = """
import json, os, psutil, ray
from sweeps.ray_connection import RayOptions, connect
from tests.conftest import kill_pids, ray_pids

assert connect(RayOptions())
ray.get(ray.remote(lambda: 0).remote())  # a worker listens too
started = ray_pids()
pids = set(started) | {os.getpid()}
for pid in list(pids):
    try:
        pids |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        pass
found = set()
for c in psutil.net_connections(kind="inet"):
    if c.status == psutil.CONN_LISTEN and c.pid in pids:
        try:
            name = psutil.Process(c.pid).name()
        except psutil.Error:
            name = "?"
        found.add((c.laddr.ip, c.laddr.port, name))
print("LISTENING " + json.dumps(sorted(found)))
ray.shutdown()
kill_pids(started)
"""


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


@pytest.mark.ray
def test_a_local_ray_listens_on_loopback_only(ray_tmp):
    """Every port of the Ray that connect() starts (GCS, raylet, object manager, agents, dashboard,
    workers, the driver's core worker) is bound to 127.0.0.1, not to every interface."""
    done = _python(LISTENING, {**os.environ, "RAY_TMPDIR": ray_tmp})
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("LISTENING "))
    listening = json.loads(line.removeprefix("LISTENING "))
    names = {name for _, _, name in listening}
    assert {"gcs_server", "raylet"} <= names, listening
    wide = [entry for entry in listening if not _loopback(entry[0])]
    assert not wide, f"listening beyond loopback: {wide}"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ray
def test_an_unreachable_address_is_one_line_naming_it_and_leaves_nothing_in_the_bucket(s3, tmp_path, ray_tmp):
    port = _closed_port()
    bucket = s3.bucket("unreachable")
    config = write_config(tmp_path, seeds=1, schedules=TINY["schedules"][:1], sparsities=[0.5])
    # Ray's own waits for a GCS, made short (by default it tries for many minutes)
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_gcs_server_port_wait_time_s": "1",
           "RAY_py_gcs_connect_timeout_s": "2", "RAY_gcs_rpc_server_connect_timeout_s": "1"}
    done = _prunesweep(["run", str(config), "--storage", f"{bucket}/results", "--no-dashboard",
                        "--address", f"127.0.0.1:{port}"], env, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    error = [x for x in done.stderr.splitlines() if x.startswith("prunesweep: error:")]
    assert len(error) == 1 and error[0].startswith(f"prunesweep: error: --address 127.0.0.1:{port}: "), done.stderr
    assert s3.keys("unreachable") == []  # not the experiment's lease, not the storage probe


STARTUP_TIMEOUT = """
import psutil
from sweeps.config import ConfigError
from sweeps.ray_connection import RayOptions, connect

try:
    connect(RayOptions(dashboard=False))
except ConfigError as exc:
    print("ERROR " + str(exc))
print("CHILDREN " + str([p.name() for p in psutil.Process().children(recursive=True)]))
"""


@pytest.mark.ray
def test_a_local_ray_that_times_out_starting_is_one_line_and_leaves_nothing_running(ray_tmp):
    """GCS given no time to come up (RAY_gcs_server_port_wait_time_s=0): connect() says so in one
    line naming the local Ray, and ends the GCS it started (in this process, not only at its exit)."""
    done = _python(STARTUP_TIMEOUT, {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_gcs_server_port_wait_time_s": "0"})
    assert done.returncode == 0, done.stderr[-3000:]
    error = [x for x in done.stdout.splitlines() if x.startswith("ERROR ")]
    assert len(error) == 1 and error[0].startswith("ERROR local Ray: "), done.stdout + done.stderr[-2000:]
    assert "Timed out" in error[0]
    assert "CHILDREN []" in done.stdout, done.stdout


def test_ray_tune_is_stopped_copying_credentials_into_runtime_envs():
    """The private uses behind the fixes (sweeps.ray_private), on this Ray: Tune's list of variables
    it copies into every trial actor's runtime_env loses the credentials and keeps the rest."""
    from ray.tune.execution import class_cache

    from sweeps import ray_private

    assert ray_private.USES["propagated_env"] == ("ray.tune.execution.class_cache", "ENV_VARS_TO_PROPAGATE")
    removed = ray_private.keep_secrets_out_of_runtime_envs()
    names = class_cache.ENV_VARS_TO_PROPAGATE
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"} & names
    assert set(removed) <= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"}
    assert "RAY_CHDIR_TO_TRIAL_DIR" in names
    assert ray_private.keep_secrets_out_of_runtime_envs() == []


def test_a_loopback_node_address_is_kept_while_a_local_ray_starts():
    import ray
    from ray._private import ray_constants, services

    from sweeps import ray_private

    assert ray_private.USES["loopback_node"] == ("ray._private.ray_constants", "ENABLE_RAY_CLUSTER")
    before = ray_constants.ENABLE_RAY_CLUSTER
    with ray_private.loopback_node():
        assert ray_constants.ENABLE_RAY_CLUSTER is False
        if not ray.is_initialized():  # (else Ray answers with the running node's address)
            assert services.resolve_ip_for_localhost("127.0.0.1") == "127.0.0.1"
    assert ray_constants.ENABLE_RAY_CLUSTER == before
