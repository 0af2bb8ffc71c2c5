"""The one JSONL log writer (data_shards/jsonl_log.py): order, reopening, concurrent writers, and on the real S3
API server the cost of an append: one new object of one record's bytes, never a rewrite of the log."""

from __future__ import annotations

import json

import boto3
import pytest

from data_shards.jsonl_log import JsonlLog, parts_folder, read_jsonl

VERSIONED_BUCKET = "cityscale-jsonl-versions"


def test_local_log_appends_in_order_and_reopens(tmp_path):
    uri = str(tmp_path / "logs" / "train.jsonl")
    log = JsonlLog(uri)
    for i in range(5):
        log.append({"step": i})
    assert [r["step"] for r in read_jsonl(uri)] == list(range(5)), "flushed per record: readable before close"
    log.close()
    again = JsonlLog(uri)
    again.append({"step": 5})
    again.close()
    assert [r["step"] for r in read_jsonl(uri)] == list(range(6))
    assert len((tmp_path / "logs" / "train.jsonl").read_text().splitlines()) == 6, "one plain file locally"


def test_missing_log_reads_as_empty(tmp_path, s3_server):
    assert read_jsonl(str(tmp_path / "none.jsonl")) == []
    assert read_jsonl(s3_server.uri("nothing", "none.jsonl")) == []


@pytest.fixture(scope="module")
def versioned_bucket(s3_server):
    """A bucket with S3 versioning on: every PUT keeps its bytes as a version, so the versions count the objects
    and bytes a writer sent, whatever it overwrote."""
    client = boto3.client("s3", endpoint_url=s3_server.endpoint)
    client.create_bucket(Bucket=VERSIONED_BUCKET)
    client.put_bucket_versioning(Bucket=VERSIONED_BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return client


def _written(client, prefix: str) -> tuple[int, int]:
    """(object versions, bytes over all versions) under a prefix: what was ever PUT there."""
    versions, total = 0, 0
    for page in client.get_paginator("list_object_versions").paginate(Bucket=VERSIONED_BUCKET, Prefix=prefix):
        for v in page.get("Versions", []):
            versions += 1
            total += v["Size"]
    return versions, total


def test_1000_appends_on_s3_cost_one_object_of_one_record_each(versioned_bucket):
    uri = f"s3://{VERSIONED_BUCKET}/runs/r1/logs/train.jsonl"
    log = JsonlLog(uri)
    records = [{"step": i, "loss": 1.0 / (i + 1), "note": "x" * 40} for i in range(1000)]
    for record in records:
        log.append(record)
    log.close()
    assert read_jsonl(uri) == records
    versions, total = _written(versioned_bucket, "runs/r1/logs/")
    line_bytes = sum(len(json.dumps(r)) + 1 for r in records)
    assert versions == 1000, f"one object per append, got {versions} versions"
    assert total == line_bytes, f"each record's bytes sent once ({line_bytes}), not the log again: sent {total}"


def test_flush_every_groups_records_into_fewer_objects(versioned_bucket):
    uri = f"s3://{VERSIONED_BUCKET}/runs/r2/eval/log/w0.jsonl"
    log = JsonlLog(uri, flush_every=10)
    for i in range(95):
        log.append({"i": i})
    assert len(read_jsonl(uri)) == 90, "the last 5 wait for the next flush"
    log.close()
    assert [r["i"] for r in read_jsonl(uri)] == list(range(95))
    assert _written(versioned_bucket, "runs/r2/")[0] == 10


def test_two_writers_on_one_s3_log_lose_nothing_and_a_restart_continues_after_them(s3_server):
    uri = s3_server.uri("runs", "r3", "logs", "train.jsonl")
    a, b = JsonlLog(uri), JsonlLog(uri)
    for i in range(20):
        (a if i % 2 == 0 else b).append({"i": i, "w": "ab"[i % 2]})
    a.close()
    b.close()
    got = read_jsonl(uri)
    assert sorted(r["i"] for r in got) == list(range(20)), "no lost update when two writers meet"
    assert [r["i"] for r in got if r["w"] == "a"] == list(range(0, 20, 2)), "each writer's order kept"
    restarted = JsonlLog(uri)
    restarted.append({"i": 20, "w": "c"})
    restarted.close()
    assert read_jsonl(uri)[-1]["i"] == 20, "a new writer's parts sort after the existing ones"
    assert s3_server.fs().exists(parts_folder(uri).removeprefix("s3://"))


def test_remote_seconds_gathers_a_fast_loop_into_one_part_on_s3(versioned_bucket):
    uri = f"s3://{VERSIONED_BUCKET}/runs/r4/logs/train.jsonl"
    log = JsonlLog(uri, remote_seconds=3600.0)
    for i in range(50):
        log.append({"step": i})
    assert read_jsonl(uri) == [], "nothing PUT inside the interval"
    log.close()
    assert [r["step"] for r in read_jsonl(uri)] == list(range(50))
    assert _written(versioned_bucket, "runs/r4/")[0] == 1
