"""`cityscale shards build --ray-address http://...`: a real Ray head with its dashboard on 127.0.0.1, the build
submitted through the Job Submission API, logs streamed, exit status returned; and the refusals."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher import cli
from launcher.shards import split_submission

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A separate Ray head (`ray start --head --block`) on loopback ports of its own, so it does not collide with
    the test session's Ray; terminating the blocking process tears it down."""
    port, dashboard, agent = _free_port(), _free_port(), _free_port()
    # node address 127.0.0.2: Ray rewrites 127.0.0.1 to the machine's non-loopback address (docs/pitfalls.md,
    # "Ray multi-node on one machine"), and nothing here may talk to that address.
    # no token to hand around on a throwaway loopback head; no RAY_* variables of the session's own Ray; and
    # `python` on PATH is this venv's, as a cluster image's python is the one with the project installed
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, "RAY_AUTH_MODE": "disabled",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                             "--port", str(port), "--node-ip-address", "127.0.0.2", "--num-cpus", "2",
                             "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(dashboard), "--dashboard-agent-listen-port", str(agent)],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        address = f"http://127.0.0.1:{dashboard}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                from ray.job_submission import JobSubmissionClient
                JobSubmissionClient(address).list_jobs()
                break
            except Exception:
                time.sleep(2)
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _city(tmp_path: Path) -> tuple[list[str], Path]:
    from data_shards.synth import synthesize

    city = tmp_path / "city"
    synthesize(str(city), "Jobtown", tiles=60, seed=1, size=32, progress=False)
    args = ["--captions", str(city / "captions/Jobtown_captions.json"), "--images", str(city / "images"),
            "--indicators", str(city / "downstream_task/Jobtown.csv"), "--no-progress"]
    return args, city


@pytest.mark.slow
def test_build_submitted_as_a_ray_job(ray_head, tmp_path, capfd):
    args, _ = _city(tmp_path)
    out = tmp_path / "shards"
    code = cli.main(["shards", "build", *args, "--out", str(out), "--ray-address", ray_head])
    captured = capfd.readouterr()
    assert code == 0, captured.err[-2000:]
    assert "submitted Ray job" in captured.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(s["samples"] for s in manifest["shards"]) == 60
    # a failing job's exit status comes back: no usable sample is exit 1
    empty = tmp_path / "empty"
    (empty / "images" / "Jobtown").mkdir(parents=True)
    (empty / "caps.json").write_text("[[]]")
    (empty / "ind.csv").write_text("satellite_img_name,BD09 coordinate,WGS84 coordinate,population (unit)\n")
    code = cli.main(["shards", "build", "--captions", str(empty / "caps.json"), "--images", str(empty / "images"),
                     "--indicators", str(empty / "ind.csv"), "--out", str(tmp_path / "none"), "--no-progress",
                     "--ray-address", ray_head])
    assert code == 1


def test_unreachable_dashboard_is_one_line_exit_2(tmp_path, capsys):
    args, _ = _city(tmp_path)
    code = cli.main(["shards", "build", *args, "--out", str(tmp_path / "s"),
                     "--ray-address", f"http://127.0.0.1:{_free_port()}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--ray-address" in err and "unreachable" in err and len(err.splitlines()) == 1


def test_only_dashboard_addresses_are_submitted():
    assert split_submission(["--out", "x", "--ray-address", "http://h:8265"]) == ("http://h:8265", None, ["--out", "x"])
    assert split_submission(["--out", "x", "--ray-address", "auto"]) == (None, None,
                                                                         ["--out", "x", "--ray-address", "auto"])


def test_dry_run_prints_the_job_and_the_resolved_config(tmp_path, capsys):
    args, _ = _city(tmp_path)
    code = cli.main(["shards", "build", *args, "--out", str(tmp_path / "s"), "--set", "split.block_size=4",
                     "--ray-address", "http://head.example:8265", "--ray-pip", "cluster/ray/requirements-shards.txt",
                     "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and not (tmp_path / "s").exists()
    assert "# Ray job on http://head.example:8265\npython -m data_shards.build --captions" in out
    assert '"pip": "cluster/ray/requirements-shards.txt"' in out and "block_size: 4" in out
