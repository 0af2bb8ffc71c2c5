"""`cityscale train` as operators use it on a cluster: multi-node dry runs and launch-time refusals."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import s3fs
import yaml

from launcher import cli
from tests.shard_fixtures import into_shards, make_samples, write_shard_folder

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/train/tiny-cpu.yaml")
HOSTFILE = str(ROOT / "cluster/deepspeed/hostfile.example")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("shards")
    write_shard_folder(root, {"train": into_shards(make_samples(1024, size=8), [512, 512])})
    return str(root)


def test_dry_run_4_nodes_x_8_gpus_batch_arithmetic(capsys, shards, tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "gpu-node-0")
    monkeypatch.setenv("MASTER_PORT", "29555")
    code = cli.main(["train", "--config", TINY, "--shards", shards, "--run", str(tmp_path / "run"),
                     "--hostfile", HOSTFILE, "--num-nodes", "4", "--gpus-per-node", "8", "--dry-run",
                     "--set", "batch.global_batch=1024", "--set", "batch.micro_batch=16"])
    out = capsys.readouterr().out
    assert code == 0
    command = out.split("# resolved config")[0]
    assert f"--hostfile {HOSTFILE} --num_nodes 4 --num_gpus 8 --master_addr gpu-node-0 --master_port 29555" in command
    resolved = yaml.safe_load(out.split("# resolved config")[1].split("# deepspeed config")[0])
    ds = json.loads(out.split("# deepspeed config")[1])
    world = 4 * 8
    assert resolved["batch"] == {"global_batch": 1024, "micro_batch": 16}
    assert ds["train_micro_batch_size_per_gpu"] == 16
    assert ds["gradient_accumulation_steps"] == 1024 // (16 * world) == 2
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world


def test_batch_that_does_not_divide_32_ranks_is_refused(capsys, shards, tmp_path):
    code = cli.main(["train", "--config", TINY, "--shards", shards, "--run", str(tmp_path / "run"),
                     "--hostfile", HOSTFILE, "--num-nodes", "4", "--gpus-per-node", "8", "--dry-run",
                     "--set", "batch.global_batch=1000", "--set", "batch.micro_batch=8"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "'batch.micro_batch'" in err


@pytest.mark.parametrize("flags,needle", [
    (["--num-nodes", "5"], "--num-nodes 5"),
    (["--num-nodes", "2", "--gpus-per-node", "9"], "--gpus-per-node 9"),
])
def test_hostfile_selection_errors(capsys, shards, tmp_path, flags, needle):
    code = cli.main(["train", "--config", TINY, "--shards", shards, "--run", str(tmp_path / "r"),
                     "--hostfile", HOSTFILE, "--dry-run", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1


def test_num_nodes_without_hostfile_is_refused(capsys, shards, tmp_path):
    code = cli.main(["train", "--config", TINY, "--shards", shards, "--run", str(tmp_path / "r"), "--num-nodes", "2"])
    assert code == 2 and "--hostfile" in capsys.readouterr().err


def test_unknown_host_is_one_line_before_anything_starts(capsys, shards, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("no-such-host.invalid slots=2\n")
    run = tmp_path / "run"
    code = cli.main(["train", "--config", TINY, "--shards", shards, "--run", str(run), "--hostfile", str(hostfile)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no-such-host.invalid" in err and len(err.splitlines()) == 1
    assert not run.exists()


def test_metrics_port_in_use_is_one_line(capsys, shards, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = cli.main(["train", "--config", TINY, "--shards", shards, "--run", str(tmp_path / "r"),
                         "--nproc", "2", "--set", f"metrics.port_base={port}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"port {port}" in err and "metrics.port_base" in err


@pytest.fixture
def fresh_s3_clients():
    """s3fs caches filesystems per options, not per environment: drop the one pointing at the dead port."""
    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


def test_unreachable_object_store_is_one_line(capsys, tmp_path, monkeypatch, fresh_s3_clients):
    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    code = cli.main(["train", "--config", TINY, "--shards", "s3://nobucket/shards", "--run", str(tmp_path / "r"),
                     "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "object store unreachable" in err and len(err.splitlines()) == 1
