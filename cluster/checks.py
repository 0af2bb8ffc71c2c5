"""Schema-level checks of single cluster-kit files: one function per kind of file, each returning problems.

A problem is one line, `key: what is wrong (and the fix)`; cluster/validate.py prefixes the file name and adds
the cross-file checks. KubeRay manifests, Prometheus and Grafana files are checked for the keys their tools
need; Ray cluster-launcher configs against Ray's own JSON schema (ray/autoscaler/ray-schema.json, read from the
installed ray package without importing it); DeepSpeed's hostfile and .deepspeed_env against the formats its
runner parses; the Slurm script for its directives and its `cityscale train` call.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import yaml

KIT = Path(__file__).resolve().parent
REPO = KIT.parent
RAY_DASHBOARD_PORT = 8265  # Ray's default dashboard / Job Submission API port
RAY_METRICS_PORT = 8080  # `ray start --metrics-export-port` on every node (KubeRay's default too)
SHARD_ENTRYPOINT = "python -m data_shards.build"
SHARD_REQUIREMENTS = "ray/requirements-shards.txt"  # the shard job's packages, relative to cluster/
AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
NCCL_VARS = ("NCCL_SOCKET_IFNAME", "NCCL_IB_DISABLE", "NCCL_DEBUG")
HOSTFILE_LINE = re.compile(r"(\S+)\s+slots=(\d+)")  # DeepSpeed's runner: ^(\S+)\s+slots=(\d+)
ENV_LINE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=\S.*")
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or",
                "unless", "inf", "nan"}

Problems = list[str]


# ----------------------------------------------------------------------------- helpers

def get_key(doc: Any, dotted: str) -> Any:
    """doc["a"]["b"] for "a.b"; None when any part is missing."""
    for part in dotted.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    return doc


def _require(doc: Any, keys: tuple[str, ...]) -> Problems:
    return [f"{k}: missing (required)" for k in keys if get_key(doc, k) in (None, "", [], {})]


def port_of(target: str) -> int:
    """The port of a `host:port` target; -1 when there is none (the caller reports it)."""
    return int(target.rsplit(":", 1)[1]) if re.fullmatch(r".+:\d+", target) else -1


def ray_version_of_image(image: str) -> str:
    """'rayproject/ray:2.60.0-py311-cpu' -> '2.60.0'."""
    return image.rsplit(":", 1)[-1].split("-", 1)[0]


def promql_metrics(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (label matchers, ranges, groupings and functions removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = re.findall(r"(?<![\w$])([A-Za-z_:][\w:]*)\b(?!\s*\()", expr)
    return {n for n in names if n.lower() not in PROMQL_WORDS}


# ----------------------------------------------------------------------------- Ray

def check_raycluster(doc: Any) -> Problems:
    out = _require(doc, ("apiVersion", "kind", "metadata.name", "spec.rayVersion", "spec.headGroupSpec",
                         "spec.workerGroupSpecs"))
    if doc.get("apiVersion") != "ray.io/v1" or doc.get("kind") != "RayCluster":
        out.append("apiVersion/kind: must be ray.io/v1 RayCluster")
    groups = [("spec.headGroupSpec", get_key(doc, "spec.headGroupSpec") or {})]
    groups += [(f"spec.workerGroupSpecs[{i}]", g) for i, g in enumerate(get_key(doc, "spec.workerGroupSpecs") or [])]
    for where, group in groups:
        containers = get_key(group, "template.spec.containers") or []
        if not containers:
            out.append(f"{where}.template.spec.containers: missing (required)")
        for c in containers:
            if ray_version_of_image(c.get("image", "")) != get_key(doc, "spec.rayVersion"):
                out.append(f"{where} container {c.get('name')}: image {c.get('image')!r} is not Ray "
                           f"{get_key(doc, 'spec.rayVersion')} (spec.rayVersion): use the same version")
            if not any(get_key(e, "secretRef.name") for e in c.get("envFrom", [])):
                out.append(f"{where} container {c.get('name')}: envFrom.secretRef missing: the object storage "
                           f"credentials ({', '.join(AWS_VARS)}) come from a Secret")
        if get_key(group, "rayStartParams.metrics-export-port") != str(RAY_METRICS_PORT):
            out.append(f"{where}.rayStartParams.metrics-export-port: must be \"{RAY_METRICS_PORT}\" "
                       "(cluster/monitoring/prometheus.yml scrapes it)")
    for i, g in enumerate(get_key(doc, "spec.workerGroupSpecs") or []):
        out += [f"spec.workerGroupSpecs[{i}].{p}" for p in _require(g, ("groupName", "maxReplicas"))]
    head_ports = {p.get("containerPort") for c in get_key(doc, "spec.headGroupSpec.template.spec.containers") or []
                  for p in c.get("ports", [])}
    for port in (RAY_DASHBOARD_PORT, RAY_METRICS_PORT):
        if port not in head_ports:
            out.append(f"spec.headGroupSpec containers: containerPort {port} not exposed")
    return out


def check_rayjob(doc: Any) -> Problems:
    out = _require(doc, ("apiVersion", "kind", "metadata.name", "spec.entrypoint", "spec.runtimeEnvYAML"))
    if doc.get("apiVersion") != "ray.io/v1" or doc.get("kind") != "RayJob":
        out.append("apiVersion/kind: must be ray.io/v1 RayJob")
    if not (get_key(doc, "spec.clusterSelector") or get_key(doc, "spec.rayClusterSpec")):
        out.append("spec: needs clusterSelector (an existing RayCluster) or rayClusterSpec")
    entry = shlex.split(get_key(doc, "spec.entrypoint") or "")
    if " ".join(entry[:3]) != SHARD_ENTRYPOINT or "--config" not in entry:
        out.append(f"spec.entrypoint: must run `{SHARD_ENTRYPOINT} --config F ...`")
    try:
        env = yaml.safe_load(get_key(doc, "spec.runtimeEnvYAML") or "") or {}
    except yaml.YAMLError as e:
        return [*out, f"spec.runtimeEnvYAML: not valid YAML ({e.__class__.__name__})"]
    for key in ("working_dir", "pip"):
        if key not in env:
            out.append(f"spec.runtimeEnvYAML.{key}: missing (the job needs the code and its packages)")
    return out


@functools.cache
def _ray_schema() -> dict[str, Any]:
    """Ray's own JSON schema of cluster-launcher configs (shipped inside the ray package; not imported)."""
    spec = importlib.util.find_spec("ray")
    path = Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text())


def check_cluster_launcher(doc: Any) -> Problems:
    try:
        jsonschema.validate(doc, _ray_schema())
    except jsonschema.ValidationError as e:
        return [f"{'.'.join(map(str, e.absolute_path)) or 'config'}: {e.message} (Ray's ray-schema.json)"]
    out = _require(doc, ("head_node_type", "available_node_types", "setup_commands", "head_start_ray_commands",
                         "worker_start_ray_commands"))
    if doc.get("head_node_type") not in (doc.get("available_node_types") or {}):
        out.append(f"head_node_type: {doc.get('head_node_type')!r} is not one of available_node_types")
    if f"--dashboard-port={RAY_DASHBOARD_PORT}" not in " ".join(doc.get("head_start_ray_commands") or []):
        out.append(f"head_start_ray_commands: `ray start --head` needs --dashboard-port={RAY_DASHBOARD_PORT}")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        if f"--metrics-export-port={RAY_METRICS_PORT}" not in " ".join(doc.get(key) or []):
            out.append(f"{key}: `ray start` needs --metrics-export-port={RAY_METRICS_PORT}")
    setup = " ".join(doc.get("setup_commands") or [])
    if SHARD_REQUIREMENTS not in setup or "install" not in setup:
        out.append(f"setup_commands: must install cluster/{SHARD_REQUIREMENTS} and the project")
    return out


# ----------------------------------------------------------------------------- monitoring

def check_prometheus(doc: Any) -> Problems:
    out = _require(doc, ("scrape_configs",))
    jobs = {j.get("job_name"): j for j in doc.get("scrape_configs") or []}
    for name in ("cityscale-train", "cityscale-eval", "ray"):
        if name not in jobs:
            out.append(f"scrape_configs: job {name!r} missing")
    for sd in get_key(jobs.get("cityscale-train", {}), "file_sd_configs") or [{}]:
        for pattern in sd.get("files") or [None]:
            if not pattern:
                out.append("cityscale-train.file_sd_configs.files: missing (the ranks' targets file)")
            elif any(c in "*?[" for c in str(Path(pattern).parent)):
                out.append(f"cityscale-train file_sd {pattern!r}: Prometheus allows a glob in the last segment only")
            elif not pattern.endswith((".json", ".yml", ".yaml")):
                out.append(f"cityscale-train file_sd {pattern!r}: must end in .json, .yml or .yaml")
    return out


def static_targets(doc: Any, job: str) -> list[str]:
    """host:port targets of one scrape job's static_configs."""
    for j in doc.get("scrape_configs") or []:
        if j.get("job_name") == job:
            return [t for sc in j.get("static_configs") or [] for t in sc.get("targets") or []]
    return []


def check_grafana(doc: Any, known_metrics: set[str] | None = None) -> Problems:
    """Panels with PromQL targets; with `known_metrics`, every metric a panel reads must be in it."""
    out = _require(doc, ("title", "uid", "panels"))
    for panel in doc.get("panels") or []:
        if panel.get("type") == "row":
            continue
        where = f"panels[{panel.get('title')!r}]"
        if not panel.get("targets"):
            out.append(f"{where}.targets: missing (required)")
        for t in panel.get("targets") or []:
            names = promql_metrics(t.get("expr", ""))
            if not names:
                out.append(f"{where}.targets[{t.get('refId')}].expr: reads no metric")
            unknown = sorted(names - known_metrics) if known_metrics is not None else []
            unknown += sorted(n for n in names if not n.startswith("cityscale_"))
            for name in unknown:
                out.append(f"{where}.targets[{t.get('refId')}]: metric {name!r} is not exported by cityscale")
    return out


def check_compose(doc: Any, folder: Path) -> Problems:
    """docker-compose.yml: every mounted file of this checkout exists."""
    out = _require(doc, ("services.prometheus", "services.grafana"))
    for name, service in (doc.get("services") or {}).items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0]
            if source.startswith(".") and not (folder / source).exists():
                out.append(f"services.{name}.volumes: {source!r} does not exist next to docker-compose.yml")
    return out


# ----------------------------------------------------------------------------- DeepSpeed and Slurm

def hostfile_hosts(text: str) -> tuple[list[tuple[str, int]], Problems]:
    """(host, slots) of a DeepSpeed hostfile, and its problems (DeepSpeed rejects bad lines and duplicates)."""
    hosts, out = [], []
    for n, line in enumerate((ln.strip() for ln in text.splitlines()), 1):
        if not line or line.startswith("#"):
            continue
        m = HOSTFILE_LINE.fullmatch(line)
        if not m or int(m.group(2)) < 1:
            out.append(f"line {n}: {line!r} is not `host slots=N` with N >= 1")
        elif m.group(1) in dict(hosts):
            out.append(f"line {n}: host {m.group(1)!r} listed twice")
        else:
            hosts.append((m.group(1), int(m.group(2))))
    return hosts, out + ([] if hosts else ["no `host slots=N` line"])


def check_hostfile(text: str) -> Problems:
    return hostfile_hosts(text)[1]


def env_keys(text: str, *, prefix: str = "") -> list[str]:
    """Variable names of `[prefix]KEY=VALUE` lines."""
    return [ln[len(prefix):].split("=", 1)[0] for ln in text.splitlines() if ln.startswith(prefix) and "=" in ln]


def check_deepspeed_env(text: str) -> Problems:
    """DeepSpeed splits every line of .deepspeed_env at '=': no comments, no blank lines."""
    out = [f"line {n}: {ln!r} is not KEY=VALUE (DeepSpeed reads every line; no comments or blank lines)"
           for n, ln in enumerate(text.splitlines(), 1) if not ENV_LINE.fullmatch(ln)]
    keys = env_keys(text)
    out += [f"{k}: missing" for k in (*AWS_VARS, *NCCL_VARS) if k not in keys]
    return out + [f"{k}: set twice" for k in sorted({k for k in keys if keys.count(k) > 1})]


def check_launch_env(text: str) -> Problems:
    keys = env_keys(text, prefix="export ")
    return [f"{k}: missing (export {k}=...)" for k in ("MASTER_ADDR", "MASTER_PORT") if k not in keys]


def check_sbatch(text: str) -> Problems:
    directives = dict(re.findall(r"^#SBATCH\s+--([\w-]+)(?:=(\S+))?", text, flags=re.M))
    out = [f"#SBATCH --{k}: missing" for k in ("nodes", "gpus-per-node") if k not in directives]
    gpus = re.search(r"^GPUS_PER_NODE=(\d+)", text, flags=re.M)
    if not gpus or gpus.group(1) != directives.get("gpus-per-node"):
        out.append("GPUS_PER_NODE: must equal #SBATCH --gpus-per-node")
    if "scontrol show hostnames" not in text or "SLURM_JOB_NODELIST" not in text:
        out.append("hostfile: build it with `scontrol show hostnames \"$SLURM_JOB_NODELIST\"`")
    if not re.search(r"^\s*cityscale train\b.*--hostfile", text, flags=re.M | re.S):
        out.append("must run `cityscale train --hostfile ...`")
    return out


def sbatch_train_args(text: str) -> list[str]:
    """The argument words of the script's `cityscale train` call (continuation lines joined)."""
    joined = text.replace("\\\n", " ")
    line = next(ln for ln in joined.splitlines() if ln.strip().startswith("cityscale train"))
    return shlex.split(line)[2:]
