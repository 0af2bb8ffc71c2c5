"""What a build tells: report.json (counts, skips by reason, indicator spikes, speed), manifest.json (the shard
list readers use) and the summary table printed at the end.

Indicator spikes are computed over *every indicator row of the source* (each CSV row of the toolkit layout,
each manifest row), whether or not the row's image exists or was written: a spike such as the toolkit's GDP
fill value 10000.0 is a property of the indicator table, and with the public toolkit data only 6 of ~4,600
rows per city have an image, so counting written samples alone would hide it.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from rich.console import Console
from rich.table import Table

from configs.loader import to_dict
from configs.shards import ReportConfig, ShardsConfig
from data_shards.format import NULL_REASONS, SCHEMA_VERSION, SKIP_REASONS, SPLITS
from data_shards.splits import split_rule


def find_spikes(values: dict[str, list[float]], cfg: ReportConfig) -> list[dict[str, Any]]:
    """Exact values holding >= spike_share (and >= spike_min_count) of an indicator's non-null values."""
    out = []
    for name in sorted(values):
        n = len(values[name])
        for value, count in Counter(values[name]).most_common():
            if count < cfg.spike_min_count or count / n < cfg.spike_share:
                break
            out.append({"indicator": name, "value": value, "share": round(count / n, 4), "count": count, "of": n})
    return out


@dataclass
class Tally:
    """Running totals over published chunks (written now or kept from an earlier build)."""

    skipped: Counter
    nulls: Counter = field(default_factory=Counter)
    shards: list[dict[str, Any]] = field(default_factory=list)
    encoded: int = 0
    shards_written: int = 0
    shards_reused: int = 0
    digest: int = 0
    samples: int = 0
    cpu_seconds: float = 0.0

    def add(self, split: str, result: dict[str, Any], names: list[str]) -> None:
        stats = result["stats"]
        self.skipped.update(stats["skipped"])
        self.nulls.update(stats["nulls"])
        self.digest ^= int(stats["digest"], 16)
        for part, name in zip(result["parts"], names):
            self.shards.append({"name": name, "split": split, "samples": part["samples"], "bytes": part["bytes"],
                                "sha256": part["sha256"]})
            self.samples += part["samples"]
        if result["reused"]:
            self.shards_reused += len(names)
        else:
            self.shards_written += len(names)
            self.encoded += stats["encoded"]
            self.cpu_seconds += stats["cpu_seconds"]

    def ordered_shards(self) -> list[dict[str, Any]]:
        return sorted(self.shards, key=lambda s: (SPLITS.index(s["split"]), s["name"]))


def build_report(tally: Tally, spikes: list[dict[str, Any]], rows: int, phases: dict[str, float]) -> dict[str, Any]:
    """report.json; `phases` holds the seconds of read_and_plan, ray_start (joining or starting Ray and reserving
    the workers' CPUs) and tasks (includes publication; what follows, writing report and manifest, is a few
    small files)."""
    seconds = sum(phases.values())
    per_split = {s: {"samples": 0, "shards": 0, "bytes": 0} for s in SPLITS}
    for shard in tally.shards:
        entry = per_split[shard["split"]]
        entry["samples"] += shard["samples"]
        entry["shards"] += 1
        entry["bytes"] += shard["bytes"]
    return {
        "samples_written": tally.samples,
        "skipped": {r: tally.skipped.get(r, 0) for r in SKIP_REASONS},
        "kept_with_null_indicator": {r: tally.nulls.get(r, 0) for r in NULL_REASONS},
        "indicator_spikes": spikes,
        "spike_scope": "every indicator row of the source, whether or not its image exists",
        "indicator_rows": rows,
        "splits": per_split,
        "shards_written": tally.shards_written,
        "shards_reused": tally.shards_reused,
        "tiles_encoded": tally.encoded,
        "seconds": round(seconds, 3),
        "seconds_by_phase": {k: round(v, 3) for k, v in phases.items()},
        "tiles_per_second": round(tally.encoded / seconds, 1) if seconds > 0 else 0.0,
        # the workers' rate: tiles encoded over the task phase (no source reading, planning or Ray start-up)
        "task_tiles_per_second": round(tally.encoded / phases["tasks"], 1) if phases.get("tasks") else 0.0,
        # CPU seconds the tasks spent (process time, so other load on the machine does not inflate it)
        "task_cpu_seconds": round(tally.cpu_seconds, 3),
    }


def build_manifest(cfg: ShardsConfig, tally: Tally, indicators: list[str], cities: list[str]) -> dict[str, Any]:
    shards = tally.ordered_shards()
    resolved = to_dict(cfg)
    return {
        "schema_version": SCHEMA_VERSION,
        "created_by": f"cityscale {metadata.version('cityscale')}",
        # ray and report settings do not change the data, so they are not part of the recorded build
        "build_config": {k: resolved[k] for k in ("source", "output", "split")},
        "source_fingerprint": hashlib.sha256(f"{tally.digest:064x}:{tally.samples}".encode()).hexdigest(),
        "split_rule": split_rule(cfg.split),
        "indicators": indicators,
        "cities": cities,
        "shards": shards,
        "totals": {s: sum(x["samples"] for x in shards if x["split"] == s) for s in SPLITS},
    }


def print_summary(report: dict[str, Any], console: Console | None = None) -> None:
    """The end-of-build table: per split samples/shards/MB, then skips, nulls, spikes and speed."""
    table = Table(title="shard build", show_header=True, header_style="bold")
    for column in ("", "samples", "shards", "MB"):
        table.add_column(column, justify="right" if column else "left")
    for split, entry in report["splits"].items():
        table.add_row(split, str(entry["samples"]), str(entry["shards"]), f"{entry['bytes'] / 2**20:.1f}")
    table.add_section()
    for reason, count in report["skipped"].items():
        table.add_row(f"skipped: {reason}", str(count), "", "")
    for reason, count in report["kept_with_null_indicator"].items():
        table.add_row(f"kept, null: {reason}", str(count), "", "")
    for spike in report["indicator_spikes"]:
        table.add_row(f"spike: {spike['indicator']} = {spike['value']:g}", f"{spike['share']:.1%}", "", "")
    table.add_section()
    table.add_row("shards written / reused", f"{report['shards_written']} / {report['shards_reused']}", "", "")
    table.add_row("seconds", f"{report['seconds']:.1f}", "", "")
    table.add_row("tiles/s (whole build)", f"{report['tiles_per_second']:.1f}", "", "")
    table.add_row("tiles/s (task phase)", f"{report['task_tiles_per_second']:.1f}", "", "")
    (console or Console(stderr=True)).print(table)


__all__ = ["find_spikes", "Tally", "build_report", "build_manifest", "print_summary"]
