"""The way users run it: relative data paths, object storage (a real S3 API on loopback),
checkpoints from a URI, downloads that cannot happen, and resume safety."""
import io
import json
import time

import pytest
import torch
import yaml

import pruning_core as pc

from analysis import completion, load_experiment, storage
from analysis.schema import CONFIG_FILE, DENSE_DIR, PROVENANCE, dense_file
from benchmarks.synthetic import without_md5_check, write_cifar10_format
from sweeps.cli import main
from sweeps.config import ConfigError, validate
from sweeps.data import load_dataset
from sweeps.models import build_model
from sweeps.preflight import preflight

from .conftest import TINY, tune_rows, write_config

CIFAR = {**TINY, "name": "cifar", "model": "small_cnn",
         "dataset": {"name": "cifar10", "root": "data/cifar10", "augment": True},
         "dense": {"epochs": 1, "batch_size": 32}, "finetune": {"epochs": 2, "batch_size": 32},
         "sparsities": [0.5], "seeds": 1}


def test_relative_dataset_root_from_another_working_directory(ray_session, tmp_path, monkeypatch):
    """``dataset.root: data/cifar10`` relative to where prunesweep starts; Tune runs each trial
    in a folder of its own and the Ray workers in yet another one, yet every trial reads it."""
    monkeypatch.chdir(tmp_path)
    write_cifar10_format(tmp_path / "data" / "cifar10", n_train=60, n_test=20, seed=2)
    (tmp_path / "cifar.yaml").write_text(yaml.safe_dump(CIFAR))
    load_dataset.cache_clear()
    with without_md5_check():  # generated files: torchvision's md5 comparison would refuse them on the driver
        assert main(["run", "cifar.yaml", "--storage", "results", "--name", "rel"]) == 0
    path = tmp_path / "results" / "rel"
    df = load_experiment(path)
    assert completion(df, path) == {"expected": 2, "started": 2, "finished": 2, "diverged": 0, "missing": 0}
    # the config trials got, and the experiment recorded, holds the resolved path
    recorded = yaml.safe_load((path / CONFIG_FILE).read_text())
    assert recorded["dataset"]["root"] == str(tmp_path / "data" / "cifar10")


def test_preflight_resolves_paths_and_checks_the_disk_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = validate(CIFAR)  # validation alone never looks at the disk
    assert config.dataset.root == "data/cifar10"
    with pytest.raises(ConfigError, match=r"^dataset.root '" + str(tmp_path / "data" / "cifar10")
                       + r"' holds no cifar10 \(cifar-10-batches-py, as torchvision reads them: RuntimeError: Dataset not found or corrupted.*\) and dataset.download is false"):
        preflight(config)
    write_cifar10_format(tmp_path / "data" / "cifar10", n_train=10, n_test=5)
    with pytest.raises(ConfigError, match=r"holds no cifar10"):  # the files are there, but not the real ones
        preflight(config)
    torch.save(build_model("small_cnn", 10, 3).state_dict(), tmp_path / "dense.pt")
    with without_md5_check():
        ready = preflight(validate({**CIFAR, "dense": {"checkpoint": "dense.pt"}}))
        assert ready.dataset.root == str(tmp_path / "data" / "cifar10")
        assert ready.dense.checkpoint == str(tmp_path / "dense.pt")
        assert preflight(ready) == ready
        with pytest.raises(ConfigError, match=r"^dense.checkpoint '.*missing.pt' is not a file$"):
            preflight(validate({**CIFAR, "dense": {"checkpoint": "missing.pt"}}))


def test_download_that_cannot_happen_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # a proxy that refuses every connection
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    cfg = {**CIFAR, "dataset": {"name": "cifar10", "root": "nodata", "download": True}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    start = time.monotonic()
    assert main(["run", "c.yaml", "--storage", "results"]) == 2
    assert time.monotonic() - start < 30
    err = _errors(capsys)
    assert len(err) == 1 and err[0].startswith("prunesweep: error: dataset.download: could not download cifar10 "
                                               f"into '{tmp_path / 'nodata'}'"), err
    assert not (tmp_path / "results").exists() and not (tmp_path / "nodata").exists()


def _errors(capsys) -> list[str]:
    """prunesweep's own stderr lines (Ray's workers of earlier tests may print there too)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("prunesweep")]


def _s3_run(args, capsys):
    start = time.monotonic()
    rc = main(args)
    return rc, time.monotonic() - start, _errors(capsys)


def test_unwritable_bucket_is_refused_before_ray_starts(s3, tmp_path, capsys):
    import boto3

    cfg = str(write_config(tmp_path))
    rc, seconds, err = _s3_run(["run", cfg, "--storage", "s3://no-such-bucket/prefix", "--no-dashboard"], capsys)
    assert rc == 2 and seconds < 10, (rc, seconds, err)
    assert len(err) == 1 and err[0].startswith("prunesweep: error: --storage s3://no-such-bucket/prefix: cannot "
                                               "write experiments there (") and "bucket does not exist" in err[0]

    read_only = s3.bucket("read-only")
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::read-only/*"}]}
    boto3.client("s3").put_bucket_policy(Bucket="read-only", Policy=json.dumps(policy))
    rc, seconds, err = _s3_run(["run", cfg, "--storage", f"{read_only}/prefix", "--no-dashboard"], capsys)
    assert rc == 2 and seconds < 10, (rc, seconds, err)
    assert len(err) == 1 and "--storage s3://read-only/prefix: cannot write experiments there" in err[0]
    assert "ACCESS_DENIED" in err[0]
    assert s3.keys("read-only") == []


def test_dense_checkpoint_from_s3_is_read_by_the_driver(ray_session, s3, tmp_path):
    bucket = s3.bucket("checkpoints")
    torch.manual_seed(7)
    model = build_model("small_cnn", 10, 1)
    buf = io.BytesIO()
    torch.save({"state_dict": model.state_dict()}, buf)
    storage.write_bytes(f"{bucket}/models/dense.pt", buf.getvalue())
    cfg = write_config(tmp_path, dense={"checkpoint": f"{bucket}/models/dense.pt"}, seeds=1, sparsities=[0.5],
                       schedules=[{"name": "instant", "kind": "instant"}])
    assert main(["run", str(cfg), "--storage", str(tmp_path / "r"), "--name", "ckpt"]) == 0
    dense = torch.load(tmp_path / "r" / "ckpt" / DENSE_DIR / dense_file(0), weights_only=False)
    assert dense["epochs"] == 0
    for name, value in model.state_dict().items():
        assert torch.equal(dense["state_dict"][name], value), name
    assert completion(load_experiment(tmp_path / "r" / "ckpt"), tmp_path / "r" / "ckpt")["missing"] == 0


def test_resume_refuses_a_changed_config_unless_forced(tiny_experiment, tmp_path, capsys):
    import shutil

    copy = tmp_path / "tiny"
    shutil.copytree(tiny_experiment, copy)
    document = yaml.safe_load((copy / CONFIG_FILE).read_text())
    assert set(document[PROVENANCE]) == {"config_sha256", "prunesweep_version", "code_sha256", "git_revision",
                                         "started_at"}
    document["finetune"]["epochs"] = 4
    (copy / CONFIG_FILE).write_text(yaml.safe_dump(document, sort_keys=False))
    assert main(["resume", str(copy)]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "the config differs from the one the run started with" in err[0]
    assert "--force" in err[0]

    document["finetune"]["epochs"] = 2
    document[PROVENANCE]["code_sha256"] = "0" * 64  # as if the run had started with other code
    (copy / CONFIG_FILE).write_text(yaml.safe_dump(document, sort_keys=False))
    assert main(["resume", str(copy)]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "the code differs from the run's start (sha256 000000000000 at git revision" in err[0]
    assert main(["resume", str(copy), "--force"]) == 0
    forced = yaml.safe_load((copy / CONFIG_FILE).read_text())[PROVENANCE]["forced_resumes"]
    assert len(forced) == 1 and forced[0]["differences"][0].startswith("the code differs")


def test_absurd_learning_rate_diverges_into_a_final_report():
    """Real divergence (no injection): the run ends with a ``diverged`` report, nothing raises."""
    from sweeps.dense_training import train_dense
    from sweeps.plan import expand
    from sweeps.trial import TrialRun

    sweep = validate({**TINY, "dense": {"epochs": 1, "batch_size": 64},
                      "finetune": {"epochs": 4, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 1e30}}})
    point = [p for p in expand(sweep) if p.schedule == "gradual2"][0]
    dense = train_dense(sweep, 0, torch.device("cpu"))
    run = TrialRun.of_point(sweep, point, dense, torch.device("cpu"))
    [report] = run.run_epoch()
    assert run.done and report["diverged"] is True and report["diverged_epoch"] == report["epoch"] == 1
    assert report["budget_epochs"] == 4 and not report["train_loss"] < float("inf")
    assert run.load_state(run.state()) is None and run.done  # a restored diverged run stays ended

    # weights that are not finite when a prune is due: ends at the epoch reached, before pruning
    poisoned = {**dense, "state_dict": {k: v.clone() for k, v in dense["state_dict"].items()}}
    next(v for k, v in poisoned["state_dict"].items() if k.endswith("weight")).view(-1)[0] = float("nan")
    run = TrialRun.of_point(sweep, point, poisoned, torch.device("cpu"))
    [report] = run.run_epoch()
    assert report["diverged"] is True and report["epoch"] == report["diverged_epoch"] == 1 and run.done
    assert all(pc.get_mask(m) is None for _, m in pc.prunable_modules(run.learner.model(0)))  # nothing pruned


def test_diverged_trial_ends_is_not_retried_and_is_counted(ray_session, tmp_path, monkeypatch):
    from sweeps.trainable import DIVERGE_ENV

    from analysis import compare, summarize
    from analysis.report import write_report

    cfg = write_config(tmp_path, finetune={"epochs": 4, "batch_size": 64}, sparsities=[0.9], max_failures=3)
    monkeypatch.setenv(DIVERGE_ENV, "gradual2_s0.9_seed1@2")  # an infinite learning rate from its epoch 2
    assert main(["run", str(cfg), "--storage", str(tmp_path), "--name", "div"]) == 0
    path = tmp_path / "div"
    df = load_experiment(path)
    bad = df[df["diverged"].astype(bool)]
    assert len(bad) == 1
    trial = df[df["trial_id"] == bad.iloc[0]["trial_id"]]
    # epoch 1 trained normally, epoch 2 diverged and ended the trial; it ran once (no retry)
    assert trial["epoch"].tolist() == [1, 2] and trial["diverged"].tolist() == [False, True]
    assert trial["diverged_epoch"].iloc[-1] == 2
    (folder,) = path.glob("*_gradual2_s0.9_seed1")
    assert [r["iterations_since_restore"] for r in tune_rows(folder)] == [1, 2]
    assert trial[["schedule", "seed"]].iloc[-1].tolist() == ["gradual2", 1]
    assert completion(df, path) == {"expected": 4, "started": 4, "finished": 4, "diverged": 1, "missing": 0}
    summary = summarize(df).set_index("schedule")
    assert summary.loc["gradual2", "n"] == 1 and summary.loc["gradual2", "diverged"] == 1
    assert summary.loc["instant", "n"] == 2 and summary.loc["instant", "diverged"] == 0
    assert compare(df, "gradual2", "instant")["n_pairs"].tolist() == [1]
    report = open(write_report(path)["report"]).read()
    assert "**1 trial(s) diverged**" in report and "gradual2 at 0.9: 1" in report
    # resume has nothing to do: the diverged trial is not run again
    results = {p.parent.name: p.read_text() for p in path.glob("*/result.json")}
    monkeypatch.delenv(DIVERGE_ENV)
    assert main(["resume", str(path)]) == 0
    assert {p.parent.name: p.read_text() for p in path.glob("*/result.json")} == results


def test_a_gpu_torch_cannot_see_is_an_error_not_a_silent_cpu_run(monkeypatch):
    from sweeps.loops import LOGICAL_GPU_ENV, device_for

    if torch.cuda.is_available():
        assert device_for(["0"]) == torch.device("cuda", 0)
        return
    monkeypatch.delenv(LOGICAL_GPU_ENV, raising=False)
    with pytest.raises(RuntimeError, match=r"Ray assigned GPU\(s\) \['0'\] to this trial but torch .* sees no CUDA "
                                           f"device .*set {LOGICAL_GPU_ENV}=1"):
        device_for(["0"])
    monkeypatch.setenv(LOGICAL_GPU_ENV, "1")
    assert device_for(["0"]) == torch.device("cpu")
    assert device_for([]) == torch.device("cpu")


@pytest.fixture
def cifar_mirror(tmp_path):
    """CIFAR-10's archive (generated files, the real layout) served over HTTP on 127.0.0.1,
    counting the complete downloads (torchvision first opens the URL to follow redirects and
    closes it after the headers)."""
    import http.server
    import threading

    from benchmarks.synthetic import write_cifar10_archive

    served = tmp_path / "mirror"
    served.mkdir()
    md5 = write_cifar10_archive(served / "cifar-10-python.tar.gz", n_train=40, n_test=10)
    downloads = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = (served / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                for i in range(0, len(data), 16384):  # slowly, so that loads at once overlap
                    self.wfile.write(data[i:i + 16384])
                    time.sleep(0.03)
            except (BrokenPipeError, ConnectionResetError):
                return
            downloads.append(self.path)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/cifar-10-python.tar.gz"
    yield url, md5, downloads
    server.shutdown()


def test_download_happens_once_per_node_however_many_load_at_once(cifar_mirror, tmp_path):
    import os
    import subprocess
    import sys

    from .conftest import ROOT

    url, md5, downloads = cifar_mirror
    root = tmp_path / "data"
    env = {**os.environ, "no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"}
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-m", "tests.helpers.download", str(root), url, md5, str(go)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(3)]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("go.ready-*"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()  # all three are waiting: they start loading at once
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 and "LOADED 40" in out for p, out in zip(procs, outs)), outs
    assert downloads == ["/cifar-10-python.tar.gz"]  # one download, the other two waited and read it


def test_preflight_downloads_a_relative_root_once(cifar_mirror, tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    url, md5, downloads = cifar_mirror
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setattr(CIFAR10, "url", url)
    monkeypatch.setattr(CIFAR10, "tgz_md5", md5)
    config = validate({**CIFAR, "dataset": {"name": "cifar10", "root": "fresh", "download": True}})
    with without_md5_check():
        ready = preflight(config)
        assert ready.dataset.root == str(tmp_path / "fresh")
        assert (tmp_path / "fresh" / "cifar-10-batches-py" / "data_batch_5").is_file()
        assert preflight(config) == ready  # found there now: not downloaded again
    deadline = time.monotonic() + 5
    while not downloads and time.monotonic() < deadline:  # the server thread records after its last write
        time.sleep(0.01)
    assert downloads == ["/cifar-10-python.tar.gz"]


def test_a_checkpoint_that_does_not_fit_the_model_is_refused_before_anything_is_written(tmp_path, capsys):
    torch.save(build_model("resnet20", 10, 3).state_dict(), tmp_path / "resnet20.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    for file, says in (("resnet20.pt", "does not fit model 'small_cnn' on digits (Error(s) in loading state_dict"),
                       ("garbage.pt", "is not a readable torch state_dict")):
        cfg = write_config(tmp_path, dense={"checkpoint": str(tmp_path / file)})
        assert main(["run", str(cfg), "--storage", str(tmp_path / "r"), "--no-dashboard"]) == 2
        err = _errors(capsys)
        assert len(err) == 1 and err[0].startswith(f"prunesweep: error: dense.checkpoint '{tmp_path / file}' ")
        assert says in err[0], err
        assert not (tmp_path / "r").exists()


def test_validate_says_a_download_would_happen_and_downloads_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = {**CIFAR, "dataset": {"name": "cifar10", "root": "later", "download": True}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["validate", "c.yaml"]) == 0
    out = capsys.readouterr().out
    assert "c.yaml: valid; 2 trials" in out and f"run will download cifar10 into {tmp_path / 'later'} first" in out
    assert not (tmp_path / "later").exists()


@pytest.mark.parametrize("args,line", [
    (["--storage", "s3://"], "prunesweep: error: --storage: 's3://' names no bucket or location after s3://"),
    (["--set", "dense.checkpoint=s3://", "--set", "dense.epochs=null"],
     "prunesweep: error: dense.checkpoint: 's3://' names no bucket or location after s3://"),
])
def test_a_uri_without_a_location_is_one_line(tmp_path, capsys, args, line):
    cfg = str(write_config(tmp_path))
    storage_args = [] if "--storage" in args else ["--storage", str(tmp_path / "r")]
    assert main(["run", cfg, *storage_args, *args, "--no-dashboard"]) == 2
    assert _errors(capsys) == [line]
    assert main(["resume", "s3://"]) == 2
    assert _errors(capsys) == ["prunesweep: error: resume: 's3://' names no bucket or location after s3://"]
