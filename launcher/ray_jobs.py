"""Submit the shard build to a Ray cluster through Ray's Job Submission API, stream its logs, return its status.

`cityscale shards build --ray-address http://HEAD:8265 ...` lands here: the same options become the entrypoint
`python -m data_shards.build ...` of a Ray job whose runtime env uploads this checkout as the working dir (so
relative paths in the options resolve inside it) and forwards the standard AWS variables, so the job reaches
the same object store. The logs are streamed until the job ends; the exit status is the driver's exit code
(0 done, 1 no usable sample, 2 configuration error). Ctrl-C stops the job on the cluster.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from pathlib import Path

from ray.exceptions import AuthenticationError
from ray.job_submission import JobStatus, JobSubmissionClient

from configs.loader import ConfigError

ROOT = Path(__file__).resolve().parents[1]
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_REGION", "AWS_DEFAULT_REGION")
EXCLUDES = [".venv", ".git", "bench_out", "demo_out", "shards_out", "**/__pycache__"]


def runtime_env(pip_requirements: str | None) -> dict:
    """This checkout as working dir, the AWS variables set here, and optionally a pip requirements file."""
    env = {"working_dir": str(ROOT), "excludes": EXCLUDES,
           "env_vars": {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}}
    if pip_requirements:
        env["pip"] = pip_requirements
    return env


def connect(address: str) -> JobSubmissionClient:
    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        raise ConfigError(f"--ray-address {address!r} wants a token: set RAY_AUTH_TOKEN to the cluster's token "
                          "(Ray token authentication)") from None
    except (ConnectionError, RuntimeError, ValueError) as e:
        reason = str(e).splitlines()[0][:160] if str(e) else e.__class__.__name__
        raise ConfigError(f"--ray-address {address!r} is unreachable ({reason}): start the Ray head "
                          "(`ray start --head`) or pass the dashboard address http://HEAD:8265") from None


async def _stream(client: JobSubmissionClient, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def entrypoint(build_argv: list[str]) -> str:
    """The shell command the Ray job runs on the cluster."""
    return shlex.join(["python", "-m", "data_shards.build", *build_argv])


def _submit(client: JobSubmissionClient, command: str, env: dict, wait_seconds: float = 90.0) -> str:
    """Submit, waiting while a freshly started head has no job agent yet (Ray answers 500 "No available agent")."""
    deadline = time.time() + wait_seconds
    while True:
        try:
            return client.submit_job(entrypoint=command, runtime_env=env)
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.time() > deadline:
                raise
            time.sleep(2)


def submit_and_follow(address: str, build_argv: list[str], pip_requirements: str | None = None) -> int:
    """Run `python -m data_shards.build BUILD_ARGV` as a Ray job; returns the driver's exit code."""
    client = connect(address)
    command = entrypoint(build_argv)
    job_id = _submit(client, command, runtime_env(pip_requirements))
    print(f"submitted Ray job {job_id} to {address}: {command}", file=sys.stderr)
    try:
        asyncio.run(_stream(client, job_id))
    except KeyboardInterrupt:
        client.stop_job(job_id)
        raise
    info = client.get_job_info(job_id)
    if info.status == JobStatus.SUCCEEDED:
        return 0
    print(f"Ray job {job_id} ended {info.status.value}: {info.message}", file=sys.stderr)
    return info.driver_exit_code if info.driver_exit_code not in (None, 0) else 1
