"""Eval figures for machines: Prometheus gauges and a JSONL log (the only eval module importing prometheus_client).

Per report: test R2 by city, indicator, feature set and probe; the image probe's margin over the best baseline;
retrieval R@k; the checkpoint step; the lag from the checkpoint's publication (its COMPLETE marker) to its
report; eval duration; reports by status. Each worker serves its own registry on `metrics_port` (0 = no
endpoint), so several workers in one host use port + i. What a report holds is read through the helpers of
eval/report_schema.py.

The JSONL log lives next to the reports, one log per worker (`RUN/eval/log/{worker}.jsonl`), written by the
project's one JSONL writer (data_shards/jsonl_log.py: one small object per record on object stores, no rewrite).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from data_shards.jsonl_log import JsonlLog
from data_shards.run_layout import EVAL_DIR
from data_shards.storage import join
from eval.report_schema import Report, gap_rows, is_ok, margin_rows, probe_rows, recall_rows


def r2_rows(report: Report) -> Iterator[tuple[str, str, str, str, float]]:
    """(city, indicator, feature set, probe, test R2) of every probe that ran."""
    for row in probe_rows(report):
        yield row.city, row.indicator, row.features, "mlp", row.result["mlp"]["r2"]
        yield row.city, row.indicator, row.features, "ridge", row.result["ridge"]["r2"]


def summary(report: Report) -> dict[str, Any]:
    """The report's headline numbers, flat: what the JSONL log carries."""
    ck = report["checkpoint"]
    out: dict[str, Any] = {"checkpoint": ck["name"], "step": ck.get("step"), "status": report["status"],
                           "lag_seconds": report.get("lag_seconds"),
                           "eval_seconds": report.get("timing", {}).get("total_seconds")}
    if not is_ok(report):
        return out | {"reason": report.get("reason")}
    out["r2"] = {f"{c}/{i}/{f}": v for c, i, f, probe, v in r2_rows(report) if probe == "mlp"}
    out["margin"] = {f"{c}/{i}": {"best": m["best"], "margin": m["margin"], "margin_std": m["margin_std"]}
                     for c, i, m in margin_rows(report)}
    out["split_gap"] = {f"{c}/{i}": g["gap"] for c, i, g in gap_rows(report)}
    out["retrieval"] = {f"{e}/{d}/r@{k}": v for e, d, k, v in recall_rows(report)}
    return out


class EvalMetrics:
    """Gauges (own registry, optional HTTP endpoint) plus the worker's JSONL log."""

    def __init__(self, log_uri: str, port: int = 0, host: str = "127.0.0.1") -> None:
        self.log = JsonlLog(log_uri)
        self.registry = CollectorRegistry()
        reg = self.registry
        self.r2 = Gauge("cityscale_eval_r2", "test R2 of an indicator probe",
                        ["city", "indicator", "features", "probe"], registry=reg)
        self.recall = Gauge("cityscale_eval_retrieval_recall", "test retrieval recall at k",
                            ["encoder", "direction", "k"], registry=reg)
        self.step = Gauge("cityscale_eval_checkpoint_step", "step of the last reported checkpoint", registry=reg)
        self.lag = Gauge("cityscale_eval_publish_to_report_seconds", "checkpoint publication to report", registry=reg)
        self.seconds = Gauge("cityscale_eval_seconds", "duration of the last evaluation", registry=reg)
        self.margin = Gauge("cityscale_eval_margin_over_best_baseline", "test R2 of the image probe minus the "
                            "best baseline's", ["city", "indicator", "best"], registry=reg)
        self.reports = Counter("cityscale_eval_reports", "reports written, by status", ["status"], registry=reg)
        self.server = start_http_server(port, addr=host, registry=reg)[0] if port else None

    def event(self, **record: Any) -> None:
        """A JSONL line for something the worker did (claimed, lost a lease, ...)."""
        self.log.append({"time": time.time(), **record})

    def report(self, report: Report) -> None:
        """Export one finished report: gauges and a JSONL line."""
        s = summary(report)
        self.reports.labels(status=s["status"]).inc()
        if s.get("lag_seconds") is not None:
            self.lag.set(s["lag_seconds"])
        if s.get("eval_seconds") is not None:
            self.seconds.set(s["eval_seconds"])
        if s["status"] == "ok" and s["step"] is not None:
            self.step.set(s["step"])
        for city, ind, features, probe, value in r2_rows(report):
            self.r2.labels(city, ind, features, probe).set(value)
        for encoder, direction, k, value in recall_rows(report):
            self.recall.labels(encoder, direction, k).set(value)
        for city, ind, m in margin_rows(report):
            self.margin.labels(city, ind, m["best"]).set(m["margin"])
        self.event(event="report", **s)

    def close(self) -> None:
        self.log.close()
        if self.server is not None:
            self.server.shutdown()


def log_uri(run_uri: str, worker_id: str) -> str:
    return join(run_uri, EVAL_DIR, "log", f"{worker_id}.jsonl")


__all__ = ["EvalMetrics", "summary", "r2_rows", "recall_rows", "log_uri"]
