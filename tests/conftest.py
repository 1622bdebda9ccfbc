"""Shared fixtures. What is real here: a SeaweedFS S3 server (real HTTP, real SigV4 signatures)
started once per test session on free loopback ports, and the project's real Storage client.
Nothing is mocked; each test gets its own bucket so tests never see each other's objects.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from finetune_dev.devs3 import S3Server, start_s3
from finetune_contract.storage import Credentials, Storage

_bucket_ids = itertools.count()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_s3(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def s3_credentials(s3_server: S3Server) -> Credentials:
    return Credentials.from_env({"AWS_ACCESS_KEY_ID": s3_server.access_key,
                                 "AWS_SECRET_ACCESS_KEY": s3_server.secret_key})


@pytest.fixture()
def storage(s3_server: S3Server, s3_credentials: Credentials) -> Storage:
    return Storage(endpoint=s3_server.endpoint, credentials=s3_credentials)


@pytest.fixture()
def bucket(storage: Storage) -> str:
    """A fresh, empty bucket; returns its name."""
    name = f"t{os.getpid()}-{next(_bucket_ids)}"
    storage.ensure_bucket(f"s3://{name}/")
    return name


@pytest.fixture()
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
