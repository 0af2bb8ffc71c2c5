"""The cluster kit (cluster/) parses, has the keys its tools need, and agrees with the code it launches.

Schema checks run through cluster.validate on the shipped files (they must be clean) and on broken copies (each
check must catch its mistake). Agreement with the code uses the real parts: metric names come from the trainer's
and the eval workers' Prometheus exporters, the RayJob entrypoint is parsed by the shard builder's own parser and
its runtime env by Ray's, the file_sd list comes from the launcher, the Slurm script's flags from
`cityscale train --help`. No cluster is started: these are fast, file-level tests.
"""

from __future__ import annotations

import shlex
import shutil
from fnmatch import fnmatch
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cluster.checks import (KIT, RAY_DASHBOARD_PORT, RAY_METRICS_PORT, hostfile_hosts, port_of, promql_metrics,
                            sbatch_train_args)
from cluster.validate import load_kit, requirement_lines, runtime_env, third_party_imports, validate_kit
from configs.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def _text(rel: str) -> str:
    return (KIT / rel).read_text()


def _dashboard_metrics() -> set[str]:
    dashboard = load_kit()[0]["monitoring/grafana-dashboard.json"]
    return {name for panel in dashboard["panels"] for t in panel.get("targets", [])
            for name in promql_metrics(t["expr"])}


def _exported(registry) -> set[str]:
    """Names a registry exports, declared series included: counters as NAME_total, as PromQL sees them."""
    families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    names = {s.name for f in families for s in f.samples}
    return names | {f.name + "_total" if f.type == "counter" else f.name for f in families}


@pytest.fixture(scope="module")
def exported_metrics(tmp_path_factory) -> set[str]:
    """What the trainer's and the eval workers' real Prometheus exporters export (no HTTP endpoint needed)."""
    from eval.metrics import EvalMetrics
    from trainer.metrics import PrometheusSink

    sink = PrometheusSink("127.0.0.1", 0, run="kit", rank=0)
    try:
        sink.log({"samples": 8.0, "skipped/corrupt_image": 1.0, "loss": 2.0}, step=1)
        names = _exported(sink.registry)
    finally:
        sink.close()
    evals = EvalMetrics(str(tmp_path_factory.mktemp("eval") / "log.jsonl"), port=0)
    return names | _exported(evals.registry)


# ----------------------------------------------------------------------------- the shipped kit

def test_every_yaml_and_json_file_parses_and_passes_its_schema_check():
    docs, parse_problems = load_kit()
    files = {p.relative_to(KIT).as_posix() for ext in ("*.yaml", "*.yml", "*.json") for p in KIT.rglob(ext)}
    assert len(files) >= 7 and files <= set(docs), "every YAML/JSON file under cluster/ is loaded"
    assert parse_problems == []
    assert validate_kit() == []


def test_dashboard_reads_only_metrics_the_trainer_and_eval_workers_export(exported_metrics):
    used = _dashboard_metrics()
    assert {"cityscale_train_samples_total", "cityscale_eval_r2"} <= exported_metrics
    assert used <= exported_metrics, f"not exported by trainer/ or eval/metrics.py: {sorted(used - exported_metrics)}"
    assert validate_kit(known_metrics=exported_metrics) == []


def test_dashboard_has_the_panels_an_operator_reads():
    dashboard = load_kit()[0]["monitoring/grafana-dashboard.json"]
    exprs = {t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])}
    per_rank = [e for e in exprs if "cityscale_train_samples_total" in e and "rank" in e]
    total = [e for e in exprs if "cityscale_train_samples_total" in e and "rank" not in e]
    assert per_rank and total, "samples/s per rank and in total"
    assert {"cityscale_train_data_wait_share", "cityscale_train_loss", "cityscale_train_learning_rate",
            "cityscale_eval_r2", "cityscale_eval_checkpoint_step",
            "cityscale_eval_publish_to_report_seconds"} <= _dashboard_metrics()
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"datasource", "run"}


def test_rayjob_entrypoint_is_a_valid_shard_build_and_its_runtime_env_is_valid_for_ray():
    from ray.runtime_env import RuntimeEnv

    from data_shards.build import config_from_args, parser

    job = load_kit()[0]["ray/kuberay-rayjob.yaml"]
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:3] == ["python", "-m", "data_shards.build"]
    cfg = config_from_args(parser().parse_args(words[3:]))  # ConfigError / SystemExit on a bad flag or key
    assert cfg.ray.address == "auto", "inside a Ray job, join the job's cluster"
    assert cfg.output.uri.startswith("s3://")
    assert (ROOT / words[words.index("--config") + 1]).is_file()
    env = RuntimeEnv(**runtime_env(job))
    assert env["pip"]["packages"] == requirement_lines(_text("ray/requirements-shards.txt"))


def test_shard_job_packages_cover_what_the_builder_imports():
    imports = third_party_imports("data_shards.build")
    assert {"ray", "fsspec"} <= imports and "torch" not in imports, "the builder needs no torch on the nodes"
    assert not any(n.startswith(("data_shards", "configs")) for n in imports)


def test_ray_ports_match_ray_and_the_monitoring_config():
    from ray._private.ray_constants import DEFAULT_DASHBOARD_PORT

    assert RAY_DASHBOARD_PORT == DEFAULT_DASHBOARD_PORT
    docs = load_kit()[0]
    head = docs["ray/kuberay-raycluster.yaml"]["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["metrics-export-port"] == str(RAY_METRICS_PORT)
    ray_job = next(j for j in docs["monitoring/prometheus.yml"]["scrape_configs"] if j["job_name"] == "ray")
    assert [port_of(t) for sc in ray_job["static_configs"] for t in sc["targets"]] == [RAY_METRICS_PORT]
    assert "--metrics-export-port=8080" in " ".join(docs["ray/aws-cluster.yaml"]["worker_start_ray_commands"])


def test_launcher_file_sd_list_matches_the_prometheus_job():
    from launcher.train import TARGETS_FILE, prometheus_targets

    prom = load_kit()[0]["monitoring/prometheus.yml"]
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "cityscale-train")
    pattern = job["file_sd_configs"][0]["files"][0]
    assert fnmatch(f"r1{Path(TARGETS_FILE).suffix}", Path(pattern).name), "the copied targets file is picked up"
    hosts = hostfile_hosts(_text("deepspeed/hostfile.example"))[0]
    cfg = TrainConfig()
    groups = prometheus_targets(cfg, hosts)
    targets = [t for g in groups for t in g["targets"]]
    base = cfg.metrics.port_base
    assert [port_of(t) for t in targets] == list(range(base, base + 32)), "4 hosts x 8 slots: base + global rank"
    assert targets[8] == f"gpu-node-1:{base + 8}"
    assert {g["labels"]["job"] for g in groups} == {job["job_name"]}


def test_slurm_script_calls_cityscale_train_with_flags_it_has(capsys):
    from launcher.train import main as train_main

    args = sbatch_train_args(_text("slurm/train.sbatch"))
    assert {"--hostfile", "--num-nodes", "--gpus-per-node"} <= set(args)
    with pytest.raises(SystemExit):
        train_main(["--help"])
    help_text = capsys.readouterr().out
    flags = [a for a in args if a.startswith("--")]
    assert [f for f in flags if f not in help_text] == [], "flags `cityscale train` does not have"


def test_deepspeed_env_example_is_what_deepspeeds_runner_reads():
    lines = (KIT / "deepspeed/deepspeed_env.example").read_text().splitlines(keepends=True)
    pairs = dict(line.split("=", maxsplit=1) for line in lines)  # DeepSpeed's runner does exactly this per line
    assert {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
            "NCCL_SOCKET_IFNAME", "NCCL_IB_DISABLE", "NCCL_DEBUG"} <= set(pairs)
    assert all(k.isidentifier() for k in pairs)


def test_promql_metric_names():
    assert promql_metrics('sum by (run, rank) (rate(cityscale_train_samples_total{run=~"$run"}[$__rate_interval]))'
                          ) == {"cityscale_train_samples_total"}
    assert promql_metrics("max(a_metric) - on (run) b_metric offset 5m > bool 0") == {"a_metric", "b_metric"}
    assert promql_metrics('label_replace(up, "x", "$1", "job", "(.*)")') == {"up"}


# ----------------------------------------------------------------------------- each check catches its mistake

BROKEN = [
    ("ray/kuberay-raycluster.yaml", "  headGroupSpec:", "  headGroupSpecs:", "spec.headGroupSpec: missing"),
    ("ray/kuberay-raycluster.yaml", "image: rayproject/ray:2.60.0-py311-cpu\n              ports",
     "image: rayproject/ray:2.9.0-py311-cpu\n              ports", "is not Ray 2.60.0"),
    ("ray/kuberay-raycluster.yaml", 'rayVersion: "2.60.0"', 'rayVersion: "2.9.0"', "the submitting machine's Ray"),
    ("ray/kuberay-raycluster.yaml", "            envFrom:\n              - secretRef: {name: cityscale-s3}\n",
     "", "envFrom.secretRef missing"),
    ("ray/kuberay-rayjob.yaml", "    working_dir: https", "    workdir: https", "runtimeEnvYAML.working_dir: missing"),
    ("ray/kuberay-rayjob.yaml", "python -m data_shards.build", "python -m data_shards.buil", "spec.entrypoint"),
    ("ray/kuberay-rayjob.yaml", "      - s3fs>=2024.6\n", "", "must list cluster/ray/requirements-shards.txt"),
    ("ray/kuberay-rayjob.yaml", "ray.io/cluster: cityscale-shards", "ray.io/cluster: other",
     "is not the RayCluster"),
    ("ray/aws-cluster.yaml", "head_node_type: ray.head.default", "head_node_type: ray.head.gpu",
     "is not one of available_node_types"),
    ("ray/aws-cluster.yaml", "idle_timeout_minutes: 10", "idle_timeout_minute: 10", "ray-schema.json"),
    ("ray/aws-cluster.yaml", "ray start --address=$RAY_HEAD_IP:6379 --metrics-export-port=8080",
     "ray start --address=$RAY_HEAD_IP:6379", "worker_start_ray_commands: `ray start` needs"),
    ("ray/requirements-shards.txt", "pyarrow>=15\n", "", "imports 'pyarrow'"),
    ("ray/requirements-shards.txt", "pillow>=10", "pillow>=9", "not as in pyproject.toml"),
    ("monitoring/prometheus.yml", "files: [targets/*.json]", "files: [targets/*/x.json]", "last segment only"),
    ("monitoring/prometheus.yml", "127.0.0.1:9500, 127.0.0.1:9501", "127.0.0.1:9400", "trainer ranks' ports"),
    ("monitoring/prometheus.yml", "targets: [127.0.0.1:8080]", "targets: [127.0.0.1:8081]", "port must be 8080"),
    ("monitoring/prometheus.yml", "job_name: ray", "job_name: ray-nodes", "job 'ray' missing"),
    ("monitoring/prometheus.yml", "scrape_configs:", "scrape_configs: [\n", "does not parse"),
    ("monitoring/grafana-dashboard.json", "cityscale_train_loss", "node_load1", "'node_load1' is not exported"),
    ("monitoring/docker-compose.yml", "./prometheus.yml:", "./prometheus.yaml:", "does not exist"),
    ("deepspeed/hostfile.example", "gpu-node-3 slots=8", "gpu-node-3 slots=eight", "is not `host slots=N`"),
    ("deepspeed/hostfile.example", "gpu-node-3 slots=8", "gpu-node-0 slots=8", "listed twice"),
    ("deepspeed/deepspeed_env.example", "NCCL_DEBUG=WARN\n", "# NCCL_DEBUG=WARN\n\n", "is not KEY=VALUE"),
    ("deepspeed/deepspeed_env.example", "AWS_REGION=us-east-1\n", "", "AWS_REGION: missing"),
    ("deepspeed/env.example", "export PDSH_RCMD_TYPE=ssh", "export NCCL_DEBUG=INFO", "keep each variable in one"),
    ("slurm/train.sbatch", "scontrol show hostnames", "cat", "scontrol show hostnames"),
    ("slurm/train.sbatch", "GPUS_PER_NODE=8", "GPUS_PER_NODE=4", "must equal #SBATCH --gpus-per-node"),
]


@pytest.mark.parametrize("rel,old,new,expected", BROKEN, ids=[f"{b[0]}:{b[3]}" for b in BROKEN])
def test_a_broken_file_is_reported_with_its_name(tmp_path, rel, old, new, expected):
    root = tmp_path / "cluster"
    shutil.copytree(KIT, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    text = (root / rel).read_text()
    assert old in text, f"the mutation no longer applies to {rel}: update this test"
    (root / rel).write_text(text.replace(old, new, 1))
    problems = validate_kit(root=root)
    assert any(p.startswith(f"cluster/{rel}") and expected in p for p in problems), problems


def test_a_missing_file_is_reported(tmp_path):
    root = tmp_path / "cluster"
    shutil.copytree(KIT, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (root / "slurm/train.sbatch").unlink()
    assert validate_kit(root=root) == ["cluster/slurm/train.sbatch: missing"]


def test_the_command_line_reports_and_exits_nonzero_on_a_problem(tmp_path, capsys):
    from cluster.validate import main

    assert main([]) == 0
    assert capsys.readouterr().out.strip() == "cluster kit: OK"
    root = tmp_path / "cluster"
    shutil.copytree(KIT, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (root / "deepspeed/hostfile.example").write_text("# nothing\n")
    assert main([str(root)]) == 1
    assert "cluster/deepspeed/hostfile.example: no `host slots=N` line" in capsys.readouterr().out
    assert main([str(tmp_path / "absent")]) == 2
