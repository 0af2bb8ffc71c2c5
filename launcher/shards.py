"""`cityscale shards build`: on a local Ray instance, or submitted to a cluster as a Ray job.

With `--ray-address http(s)://HEAD:8265` (a Ray dashboard address) the build is submitted through the Job
Submission API (launcher/ray_jobs.py) and followed to its end; with any other address (`auto`, `HOST:6379`) or
none, `data_shards.build` runs here and joins that cluster or starts a local Ray instance.
"""

from __future__ import annotations

import argparse

import json
import shlex

from configs.loader import ConfigError, dump_yaml
from data_shards import build
from launcher import ray_jobs


def split_submission(argv: list[str]) -> tuple[str | None, str | None, list[str]]:
    """(dashboard address or None, pip requirements file or None, the build's own options)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--ray-address", default=None)
    p.add_argument("--ray-pip", default=None)
    p.add_argument("--dry-run", action="store_true")
    known, rest = p.parse_known_args(argv)
    address = known.ray_address
    if address and address.startswith(("http://", "https://")):
        return address, known.ray_pip, rest
    if known.ray_pip:
        raise ConfigError("--ray-pip goes with a dashboard address: pass --ray-address http://HEAD:8265")
    return None, None, [a for a in argv if a != "--dry-run"]


def dry_run(address: str | None, pip_file: str | None, build_argv: list[str]) -> int:
    """Print what would run (the Ray job or the local build) and the resolved build config; start nothing."""
    cfg = build.config_from_args(build.parser().parse_args(build_argv))
    if address:
        print(f"# Ray job on {address}")
        print(ray_jobs.entrypoint(build_argv))
        print("# runtime env")
        print(json.dumps(ray_jobs.runtime_env(pip_file), indent=1))
    else:
        print("# local build")
        print(shlex.join(["python", "-m", "data_shards.build", *build_argv]))
    print("# resolved config")
    print(dump_yaml(cfg), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    if "-h" in argv or "--help" in argv:
        build.parser().print_help()
        print("\nlauncher options:\n  --ray-address http://HEAD:8265   submit as a Ray job (Job Submission API) and "
              "stream its logs\n  --ray-pip FILE                   with a dashboard address: pip requirements the "
              "job installs (e.g. cluster/ray/requirements-shards.txt)\n  --dry-run                        print the "
              "job or build command and the resolved config, start nothing")
        raise SystemExit(0)  # as argparse does for --help
    address, pip_file, build_argv = split_submission(argv)
    if "--dry-run" in argv:
        return dry_run(address, pip_file, build_argv)
    if address is None:
        return build.main(build_argv)
    build.parser().parse_args(build_argv)  # option mistakes surface here, before anything is submitted
    return ray_jobs.submit_and_follow(address, build_argv, pip_file)
