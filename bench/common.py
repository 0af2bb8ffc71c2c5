"""Helpers shared by the bench/ scripts: machine load, thread settings, child processes, steady-state rates.

Benchmarks here run on a small shared machine, often next to other work. Each contender therefore runs in its
own child process with the same thread settings, its output goes to a log file that stays behind for
inspection, and every figure is a steady-state rate (warm-up steps dropped) printed next to the machine load
at the start, so a reader can tell a slow run from a busy machine.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-m", "launcher.cli"]


def machine_load() -> str:
    """`uptime`-style load line: 1/5/15-minute load averages over the number of cores."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"


def thread_env(threads: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment with the intra-op thread count of torch (OpenMP and MKL) pinned."""
    env = dict(os.environ if base is None else base)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def run_logged(cmd: Sequence[str], log_path: str, *, env: dict[str, str], cwd: str = REPO,
               timeout: float = 900.0) -> str:
    """Run `cmd`, writing stdout+stderr to `log_path`; return the output, or exit with the log's tail on failure."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        try:
            proc = subprocess.run(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            sys.exit(f"bench: {cmd[0]} ... did not finish within {timeout:.0f} s; see {log_path}")
    with open(log_path) as log:
        text = log.read()
    if proc.returncode != 0:
        tail = "\n".join(text.splitlines()[-25:])
        sys.exit(f"bench: command failed with exit code {proc.returncode} (full log: {log_path}):\n{tail}")
    return text


def rate(step_seconds: Sequence[float], batch: int) -> float:
    """Samples per second over these steps (total samples over total wall time)."""
    if not step_seconds:
        raise ValueError("no measured steps: raise --steps")
    return batch * len(step_seconds) / sum(step_seconds)


def quiet_rate(step_seconds: Sequence[float], batch: int) -> float:
    """Samples per second of a first-quartile step: the speed when other processes leave the cores alone.

    On a shared machine a step that another process preempts can take several times longer (OpenMP threads
    spin at barriers waiting for a descheduled peer), so the mean mostly measures the neighbours; the fast
    quartile of many steps is a steadier estimate of the program's own speed (timeit's min, less extreme).
    """
    if len(step_seconds) < 2:
        return rate(step_seconds, batch)
    return batch / statistics.quantiles(step_seconds, n=4, method="inclusive")[0]


class Stopwatch:
    """Wall-clock step timer: `lap()` returns the seconds since the previous lap (or since creation)."""

    def __init__(self) -> None:
        self._last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        return seconds


def prepare_shards(out: str, tiles: int, size: int, city: str = "Evalton", nuisance: str = "none") -> str:
    """Synthetic city (seed 0, `cityscale synth --nuisance` level, `none` = the look the recorded eval figures
    were measured on) -> shards in out/shards, the city in out/synth (cached: reused when manifest.json exists)."""
    shards, synth = os.path.join(out, "shards"), os.path.join(out, "synth")
    if os.path.exists(os.path.join(shards, "manifest.json")):
        return shards
    shutil.rmtree(synth, ignore_errors=True)
    print(f"bench: synthesising {tiles} tiles and building shards in {shards} ...", flush=True)
    logs = os.path.join(out, "logs")
    run_logged(CLI + ["synth", "--out", synth, "--city", city, "--tiles", str(tiles), "--seed", "0",
                      "--size", str(size), "--nuisance", nuisance, "--no-progress"], os.path.join(logs, "synth.log"),
               env=thread_env(2))
    run_logged(CLI + ["shards", "build", "--captions", f"{synth}/captions/{city}_captions.json",
                      "--images", f"{synth}/images", "--indicators", f"{synth}/downstream_task/{city}.csv",
                      "--out", shards, "--image-size", str(size), "--no-progress"],
               os.path.join(logs, "build.log"), env=thread_env(2))
    return shards
