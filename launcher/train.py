"""`cityscale train`: check the config, then run the real deepspeed launcher on `trainer.main`.

    cityscale train --config F --shards URL --run URL [--steps N] [--set k=v] [--nproc N]
                    [--hostfile H --num-nodes N --gpus-per-node G] [--dry-run]

Everything that can be wrong in the user's input (unknown key, wrong type, batch not divisible by the ranks,
missing or empty manifest, unknown model) is checked here first: one line, exit code 2, no process started.
Then it builds

    deepspeed [--num_gpus N | --hostfile H --num_nodes N --num_gpus G --master_addr A] --master_port P
              --no_local_rank --module trainer.main --config F --set ...

Multi-node runs go through DeepSpeed's own pdsh/ssh runner: the hostfile's first N hosts, G ranks on each;
MASTER_ADDR / MASTER_PORT from the environment are passed on (see cluster/deepspeed/env.example), so every
node agrees on the rendezvous. Hosts that do not resolve and local metrics ports already in use are reported
before anything starts.

What the ranks run on is decided on the target hosts, not here (a CPU login node may launch GPU hosts):
`--accelerator auto` (the default, config key deepspeed.accelerator) sets nothing and DeepSpeed detects CUDA
on each host, falling back to its CPU accelerator (ranks talking gloo) where there is none; `cuda` or `cpu`
sets DS_ACCELERATOR for every rank (through a DeepSpeed environment file for --hostfile runs, which DeepSpeed's
pdsh runner exports on every node). DeepSpeed's launcher sizes the local pool from the accelerator's device
count and `--num_gpus N` trims (or widens) it to N ranks, so the same flag gives N CPU ranks. For runs on this
machine OMP_NUM_THREADS is set to cores / ranks so the ranks do not oversubscribe the cores. The launcher also writes the Prometheus file_sd
target list of the ranks' endpoints to RUN/prometheus_targets.json. `--dry-run` prints the command, the
resolved config and the generated DeepSpeed config, and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
from pathlib import Path


from configs.loader import ConfigError, dump_yaml, read_yaml
from configs.train import TrainConfig, load_train_config
from trainer import preflight
from data_shards.storage import join, write_text
from trainer.ds_config import deepspeed_config

TARGETS_FILE = "prometheus_targets.json"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cityscale train", description="DeepSpeed ZeRO contrastive pretraining.")
    p.add_argument("--config", required=True, help="trainer YAML, e.g. configs/train/tiny-cpu.yaml")
    p.add_argument("--shards", required=True, help="shard folder holding manifest.json (local or s3://)")
    p.add_argument("--run", required=True, help="run folder for logs and checkpoints (local or s3://)")
    p.add_argument("--steps", type=int, help="optimizer steps (run.steps)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--nproc", type=int, default=1, help="ranks on this machine (without --hostfile)")
    p.add_argument("--hostfile", help="DeepSpeed hostfile (`host slots=N` lines) for several machines")
    p.add_argument("--num-nodes", type=int, help="with --hostfile: use the first N hosts (default: all)")
    p.add_argument("--gpus-per-node", type=int, help="with --hostfile: ranks per node (default: each host's slots)")
    p.add_argument("--accelerator", choices=("auto", "cuda", "cpu"),
                   help="what the ranks run on (deepspeed.accelerator; default auto: detected on each target host)")
    p.add_argument("--dry-run", action="store_true", help="print command and configs, start nothing")
    return p


def hostfile_ranks(path: str) -> list[tuple[str, int]]:
    """(host, slots) per line of a DeepSpeed hostfile."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        raise ConfigError(f"--hostfile {path!r} cannot be read: pass an existing file of `host slots=N` lines") from None
    hosts = []
    for line in (ln.strip() for ln in lines):
        if line and not line.startswith("#"):
            match = re.fullmatch(r"(\S+)\s+slots=(\d+)", line)
            if not match:
                raise ConfigError(f"--hostfile {path!r}: bad line {line!r}: expected `host slots=N`")
            hosts.append((match.group(1), int(match.group(2))))
    if not hosts:
        raise ConfigError(f"--hostfile {path!r} lists no hosts: add `host slots=N` lines")
    return hosts


def select_hosts(hosts: list[tuple[str, int]], num_nodes: int | None, gpus_per_node: int | None) -> list[tuple[str, int]]:
    """The hosts and ranks per host a multi-node run uses: the first `num_nodes`, `gpus_per_node` each."""
    num_nodes = len(hosts) if num_nodes is None else num_nodes
    if not 1 <= num_nodes <= len(hosts):
        raise ConfigError(f"--num-nodes {num_nodes}: the hostfile lists {len(hosts)} hosts; pass 1..{len(hosts)}")
    chosen = hosts[:num_nodes]
    if gpus_per_node is None:
        return chosen
    short = [h for h, slots in chosen if slots < gpus_per_node]
    if gpus_per_node < 1 or short:
        raise ConfigError(f"--gpus-per-node {gpus_per_node}: host {short[0] if short else '?'} has fewer slots; "
                          "raise its slots= in the hostfile or lower --gpus-per-node")
    return [(h, gpus_per_node) for h, _ in chosen]


def check_hosts_resolve(hosts: list[tuple[str, int]]) -> None:
    """Every hostfile host must resolve, or pdsh fails later with a less helpful message."""
    for host, _ in hosts:
        try:
            socket.getaddrinfo(host, None)
        except OSError:
            raise ConfigError(f"hostfile host {host!r} does not resolve: fix the name or add it to /etc/hosts") from None


def check_ports_free(host: str, ports: list[int]) -> None:
    """Local metrics ports must be free before the ranks start (each rank binds base + rank)."""
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                raise ConfigError(f"config key 'metrics.port_base': port {port} on {host} is in use: pass "
                                  "--set metrics.port_base=<free port> (or 0 to disable the endpoints)") from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_command(args: argparse.Namespace, overrides: list[str]) -> list[str]:
    runner = Path(sys.executable).with_name("deepspeed")
    if not runner.exists():
        raise ConfigError(f"the deepspeed launcher is not installed next to {sys.executable}: pip install deepspeed")
    if args.hostfile:
        where = ["--hostfile", args.hostfile]
        where += ["--num_nodes", str(args.num_nodes)] if args.num_nodes else []
        where += ["--num_gpus", str(args.gpus_per_node)] if args.gpus_per_node else []
        where += ["--master_addr", os.environ["MASTER_ADDR"]] if os.environ.get("MASTER_ADDR") else []
    else:
        where = ["--num_gpus", str(args.nproc)]
    port = os.environ.get("MASTER_PORT") or str(_free_port())
    config = os.path.abspath(args.config) if os.path.exists(args.config) else args.config
    sets = [item for kv in overrides for item in ("--set", kv)]
    return [str(runner), *where, "--master_port", port, "--no_local_rank", "--module", "trainer.main",
            "--config", config, *sets]


def launch_env(accelerator: str, nproc: int, hostfile: bool) -> dict[str, str]:
    """Environment additions for the deepspeed launcher and the ranks it starts on this machine: the accelerator
    when one is named (auto: none, DeepSpeed detects it on the target), and for local runs a thread count that
    does not oversubscribe the cores."""
    env = {} if accelerator == "auto" else {"DS_ACCELERATOR": accelerator}
    if not hostfile:
        env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return env


def deepspeed_env_file(env: dict[str, str], folder: str) -> dict[str, str]:
    """For --hostfile runs with a named accelerator: a DeepSpeed environment file holding the user's own
    (`.deepspeed_env` in the working folder or home, as DeepSpeed looks them up) plus DS_ACCELERATOR, which the
    pdsh runner exports on every node. Returns the launcher's environment additions (DS_ENV_FILE)."""
    if "DS_ACCELERATOR" not in env:
        return {}
    name = os.environ.get("DS_ENV_FILE", ".deepspeed_env")
    lines = []
    for base in (os.path.expanduser("~"), "."):
        path = os.path.join(base, name)
        if os.path.isfile(path):
            lines += [ln for ln in Path(path).read_text().splitlines() if ln.strip()
                      and not ln.startswith("DS_ACCELERATOR=")]
    out = os.path.join(folder, "deepspeed_env")
    Path(out).write_text("\n".join([*lines, f"DS_ACCELERATOR={env['DS_ACCELERATOR']}"]) + "\n")
    return {"DS_ENV_FILE": os.path.abspath(out)}


def prometheus_targets(cfg: TrainConfig, hosts: list[tuple[str, int]]) -> list[dict]:
    """file_sd entries: one target per rank, port = port_base + global rank."""
    run = cfg.run.dir.rstrip("/").rsplit("/", 1)[-1]
    targets, rank = [], 0
    for host, slots in hosts:
        address = cfg.metrics.host if host == "localhost" else host
        targets += [f"{address}:{cfg.metrics.port_base + rank + i}" for i in range(slots)]
        rank += slots
    return [{"targets": targets, "labels": {"job": "cityscale-train", "run": run}}]


def _write_targets(cfg: TrainConfig, hosts: list[tuple[str, int]]) -> None:
    write_text(join(cfg.run.dir, TARGETS_FILE), json.dumps(prometheus_targets(cfg, hosts), indent=1))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.nproc < 1:
        raise ConfigError(f"--nproc {args.nproc}: must be >= 1")
    overrides = [*args.set, f"run.shards={args.shards}", f"run.dir={args.run}"]
    overrides += [f"run.steps={args.steps}"] if args.steps is not None else []
    overrides += [f"deepspeed.accelerator={args.accelerator}"] if args.accelerator else []
    cfg = load_train_config(args.config, overrides)
    if (args.num_nodes or args.gpus_per_node) and not args.hostfile:
        raise ConfigError("--num-nodes/--gpus-per-node need --hostfile (cluster/deepspeed/hostfile.example); "
                          "use --nproc on one machine")
    hosts = (select_hosts(hostfile_ranks(args.hostfile), args.num_nodes, args.gpus_per_node) if args.hostfile
             else [("localhost", args.nproc)])
    world_size = sum(slots for _, slots in hosts)
    preflight.check(cfg, world_size)
    ds_dict = deepspeed_config(batch=cfg.batch, optim=cfg.optim, schedule=cfg.schedule, zero=cfg.deepspeed,
                               steps=cfg.run.steps, world_size=world_size,
                               overrides=read_yaml(cfg.deepspeed.overrides) if cfg.deepspeed.overrides else None)
    command = build_command(args, overrides)
    env = launch_env(cfg.deepspeed.accelerator, args.nproc, bool(args.hostfile))
    if args.dry_run:
        print("# command\n" + " ".join(f"{k}={v}" for k, v in env.items()) + " " + shlex.join(command))
        print("# resolved config\n" + dump_yaml(cfg) + "# deepspeed config\n" + json.dumps(ds_dict, indent=1))
        return 0
    if args.hostfile:
        check_hosts_resolve(hosts)
    elif cfg.metrics.port_base:
        check_ports_free(cfg.metrics.host, [cfg.metrics.port_base + r for r in range(world_size)])
    if cfg.metrics.port_base:
        _write_targets(cfg, hosts)
    with tempfile.TemporaryDirectory(prefix="cityscale-launch-") as folder:
        if args.hostfile:
            env |= deepspeed_env_file(env, folder)
        return subprocess.run(command, env={**os.environ, **env}, check=False).returncode


__all__ = ["main", "build_command", "launch_env", "deepspeed_env_file", "prometheus_targets", "hostfile_ranks", "select_hosts"]
