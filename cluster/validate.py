"""Validate the whole cluster kit, so a file edited by hand fails in CI, not on the cluster.

    python -m cluster.validate [CLUSTER_DIR]   # one line per problem (cluster/FILE: key: what is wrong)

Every YAML/JSON file under cluster/ must parse, and each known file passes its check (cluster/checks.py).
Cross-file checks keep the kit consistent: the RayJob targets the RayCluster, the shard job's package list
(cluster/ray/requirements-shards.txt) covers what data_shards.build imports and matches pyproject.toml, the
clusters run the submitting machine's Ray, and Prometheus scrapes Ray and the eval workers on the agreed ports,
outside the trainer ranks' range (configs.train / configs.eval). Grafana metric names are checked against a set
the caller passes in: the tests take it from the real exporters (this module imports only configs, STYLE.md).
"""

from __future__ import annotations

import ast
import functools
import json
import re
import sys
import tomllib
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from cluster.checks import (KIT, RAY_METRICS_PORT, REPO, SHARD_REQUIREMENTS, Problems, check_cluster_launcher,
                            check_compose, check_deepspeed_env, check_grafana, check_hostfile, check_launch_env,
                            check_prometheus, check_raycluster, check_rayjob, check_sbatch, env_keys, get_key,
                            hostfile_hosts, port_of, static_targets)
from configs.eval import WorkerConfig
from configs.train import MetricsConfig

EVAL_METRICS_PORT = 9500  # first eval worker's Prometheus port while configs.eval.WorkerConfig leaves it at 0


# ----------------------------------------------------------------------------- the shard job's packages

def requirement_lines(text: str) -> list[str]:
    """Requirement lines of a requirements file (comments and blank lines dropped)."""
    lines = (ln.split("#", 1)[0].strip() for ln in text.splitlines())
    return [ln for ln in lines if ln]


OURS = ("configs", "data_shards", "eval", "cluster", "trainer", "launcher")


def _source(module: str, repo: Path) -> Path | None:
    base = repo / module.replace(".", "/")
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


@functools.cache
def third_party_imports(module: str, repo: Path = REPO) -> frozenset[str]:
    """Top-level names of the third-party modules `module` needs, following our own imports (ast, nothing runs)."""
    seen, found, todo = set(), set(), [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        path = _source(name, repo)
        if name in seen or path is None:
            continue
        seen.add(name)
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            for n in names:
                top = n.split(".")[0]
                if top in OURS:
                    todo.append(n)
                elif top not in sys.stdlib_module_names:
                    found.add(top)
    return frozenset(found)


def _pyproject_requirements(repo: Path) -> dict[str, Requirement]:
    deps = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["dependencies"]
    return {canonicalize_name(r.name): r for r in map(Requirement, deps)}


@functools.cache
def _distributions() -> dict[str, list[str]]:
    """Import name -> installed distributions (scanning them takes a second: once per process)."""
    return metadata.packages_distributions()


def check_shard_requirements(text: str, repo: Path = REPO) -> Problems:
    """The shard job's package list covers what data_shards.build imports and matches pyproject.toml."""
    try:
        listed = {canonicalize_name(r.name): r for r in map(Requirement, requirement_lines(text))}
    except InvalidRequirement as e:
        return [f"not a requirement: {e}"]
    project = _pyproject_requirements(repo)
    dists = _distributions()
    out = []
    for top in sorted(third_party_imports("data_shards.build", repo)):
        names = {canonicalize_name(d) for d in dists.get(top, [top])}
        if not names & (set(listed) | {"ray"}):
            out.append(f"data_shards.build imports {top!r}: add {sorted(names)[0]} to the list")
    for name, req in listed.items():
        if name not in project or str(project[name]) != str(req):
            out.append(f"{req}: not as in pyproject.toml ({project.get(name, 'absent')}): keep the two equal")
    return out + ([] if "s3fs" in listed else ["s3fs: missing (fsspec needs it for s3:// URLs)"])


# ----------------------------------------------------------------------------- the kit as a whole

def _prometheus_ports(prom: Any, hosts: list[tuple[str, int]]) -> Problems:
    """Ray and eval targets on the agreed ports, none inside the trainer ranks' range (configs.train)."""
    out = [f"job ray target {t}: port must be {RAY_METRICS_PORT} (--metrics-export-port of cluster/ray/*.yaml)"
           for t in static_targets(prom, "ray") if port_of(t) != RAY_METRICS_PORT]
    eval_base = WorkerConfig().metrics_port or EVAL_METRICS_PORT
    ports = [port_of(t) for t in static_targets(prom, "cityscale-eval")]
    if ports != list(range(eval_base, eval_base + len(ports))) or not ports:
        out.append(f"job cityscale-eval: targets must use ports {eval_base}, {eval_base + 1}, ... (worker i serves "
                   "WorkerConfig.metrics_port + i)")
    base = MetricsConfig().port_base
    train = range(base, base + sum(slots for _, slots in hosts))
    clash = sorted({port_of(t) for job in ("ray", "cityscale-eval") for t in static_targets(prom, job)} & set(train))
    return out + [f"port {p}: inside the trainer ranks' ports {train.start}..{train.stop - 1} "
                  "(configs.train MetricsConfig.port_base + rank)" for p in clash]


def check_consistency(docs: dict[str, Any]) -> dict[str, Problems]:
    """Cross-file checks, keyed by the file a problem is reported on."""
    cluster, job, launcher, prom = (_doc(docs, rel, dict) for rel in (
        "ray/kuberay-raycluster.yaml", "ray/kuberay-rayjob.yaml", "ray/aws-cluster.yaml", "monitoring/prometheus.yml"))
    out: dict[str, Problems] = {}
    name = (get_key(job, "spec.clusterSelector") or {}).get("ray.io/cluster")
    if name is not None and name != get_key(cluster, "metadata.name"):
        out.setdefault("ray/kuberay-rayjob.yaml", []).append(
            f"spec.clusterSelector: {name!r} is not the RayCluster of kuberay-raycluster.yaml")
    if runtime_env(job).get("pip") != requirement_lines(_doc(docs, SHARD_REQUIREMENTS, str)):
        out.setdefault("ray/kuberay-rayjob.yaml", []).append(
            f"spec.runtimeEnvYAML.pip: must list cluster/{SHARD_REQUIREMENTS} exactly")
    installed = metadata.version("ray")
    pinned = re.findall(r"ray\[default\]==([\w.]+)", " ".join(launcher.get("setup_commands") or []))
    for where, version in (("ray/kuberay-raycluster.yaml", get_key(cluster, "spec.rayVersion")),
                           ("ray/aws-cluster.yaml", pinned[0] if pinned else None)):
        if version != installed:
            out.setdefault(where, []).append(f"Ray {version}: the cluster must run the submitting machine's Ray "
                                             f"{installed}: use that version")
    hosts = hostfile_hosts(_doc(docs, "deepspeed/hostfile.example", str))[0]
    out["monitoring/prometheus.yml"] = _prometheus_ports(prom, hosts)
    launch = set(env_keys(_doc(docs, "deepspeed/env.example", str), prefix="export "))
    ranks = set(env_keys(_doc(docs, "deepspeed/deepspeed_env.example", str)))
    out["deepspeed/env.example"] = [f"{k}: also in deepspeed_env.example: keep each variable in one file"
                                    for k in sorted(launch & ranks)]
    return out


def runtime_env(rayjob: Any) -> dict[str, Any]:
    """The RayJob's runtimeEnvYAML as a dict ({} when absent or broken: check_rayjob reports that)."""
    try:
        env = yaml.safe_load(get_key(rayjob, "spec.runtimeEnvYAML") or "")
    except yaml.YAMLError:
        return {}
    return env if isinstance(env, dict) else {}


def _doc(docs: dict[str, Any], rel: str, kind: type) -> Any:
    """docs[rel] when it parsed to `kind`, else an empty `kind` (its own check reports the problem)."""
    doc = docs.get(rel)
    return doc if isinstance(doc, kind) else kind()


def checks(known_metrics: set[str] | None, root: Path = KIT) -> dict[str, Callable[[Any], Problems]]:
    """File (relative to `root`, the cluster/ folder) -> its check."""
    return {
        "ray/kuberay-raycluster.yaml": check_raycluster,
        "ray/kuberay-rayjob.yaml": check_rayjob,
        "ray/aws-cluster.yaml": check_cluster_launcher,
        "monitoring/prometheus.yml": check_prometheus,
        "monitoring/grafana-dashboard.json": lambda doc: check_grafana(doc, known_metrics),
        "monitoring/docker-compose.yml": lambda doc: check_compose(doc, root / "monitoring"),
        SHARD_REQUIREMENTS: check_shard_requirements,
        "deepspeed/hostfile.example": check_hostfile,
        "deepspeed/deepspeed_env.example": check_deepspeed_env,
        "deepspeed/env.example": check_launch_env,
        "slurm/train.sbatch": check_sbatch,
    }


UNPARSED = object()  # stands for a file that failed to parse (already reported)


def load_kit(root: Path = KIT) -> tuple[dict[str, Any], Problems]:
    """Every YAML/JSON file under `root` parsed, the other checked files as text; parse errors as problems."""
    docs: dict[str, Any] = {}
    problems = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        try:
            if path.suffix in (".yaml", ".yml"):
                docs[rel] = yaml.safe_load(path.read_text())
            elif path.suffix == ".json":
                docs[rel] = json.loads(path.read_text())
            elif rel in checks(None, root):
                docs[rel] = path.read_text()
        except (yaml.YAMLError, json.JSONDecodeError) as e:
            docs[rel] = UNPARSED
            problems.append(f"cluster/{rel}: does not parse ({e.__class__.__name__}: {str(e).splitlines()[0]})")
    return docs, problems


def validate_kit(known_metrics: set[str] | None = None, root: Path = KIT) -> Problems:
    """All problems of the kit under `root`, one line each: `cluster/FILE: key: what is wrong`."""
    docs, problems = load_kit(root)
    for rel, check in checks(known_metrics, root).items():
        doc = docs.get(rel)
        if rel not in docs:
            problems.append(f"cluster/{rel}: missing")
        elif doc is UNPARSED:
            continue
        elif rel.endswith((".yaml", ".yml", ".json")) and not isinstance(doc, dict):
            problems.append(f"cluster/{rel}: top level must be a mapping")
        else:
            problems += [f"cluster/{rel}: {p}" for p in check(doc)]
    for rel, found in check_consistency(docs).items():
        problems += [f"cluster/{rel}: {p}" for p in found]
    return problems


def main(argv: list[str] | None = None) -> int:
    """`python -m cluster.validate [CLUSTER_DIR]`: print every problem; exit 0 when there is none, else 1."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) > 1 or argv[:1] in (["-h"], ["--help"]):
        print("usage: python -m cluster.validate [CLUSTER_DIR]   (default: this checkout's cluster/)",
              file=sys.stderr)
        return 2
    root = Path(argv[0]) if argv else KIT
    if not root.is_dir():
        print(f"cluster.validate: {root} is not a folder: pass the cluster/ folder to check", file=sys.stderr)
        return 2
    problems = validate_kit(root=root)
    for line in problems:
        print(line)
    print(f"cluster kit: {len(problems)} problem(s)" if problems else "cluster kit: OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
