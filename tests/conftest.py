"""Shared fixtures: a real S3 API server and one local Ray instance per test session (real parts, no mocks).

`s3_server` runs moto's ThreadedMotoServer on 127.0.0.1 (as s3fs's own tests do) and points the standard
`AWS_ENDPOINT_URL` at it, with dummy credentials, for the whole session; code under test reaches it through
s3fs exactly as it would reach MinIO or S3. `ray_local` starts Ray once (2 CPUs, no dashboard) after the S3
environment is set, so Ray's worker processes inherit it; tests share it to save the start-up time.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import pytest
import s3fs

S3_BUCKET = "cityscale-test"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])

    def fs(self) -> s3fs.S3FileSystem:
        return s3fs.S3FileSystem(client_kwargs={"endpoint_url": self.endpoint}, use_listings_cache=False)


@pytest.fixture(scope="session")
def s3_server():
    from moto.server import ThreadedMotoServer  # here, not at the top: keeps test collection fast

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()
    info = S3Server(endpoint=env["AWS_ENDPOINT_URL"], bucket=S3_BUCKET)
    info.fs().mkdir(S3_BUCKET)
    yield info
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """A local Ray with 2 CPUs; yields its GCS address (for drivers started in subprocesses)."""
    import ray  # here, not at the top: keeps test collection fast

    from data_shards.ray_tasks import LOCAL_NODE_IP  # loopback that Ray keeps as given

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             _node_ip_address=LOCAL_NODE_IP)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
