"""End to end: the operator as a real process (`python -m finetune_operator operator`, real
Kopf and `kubernetes` client) over real HTTP against kmock, and a real SeaweedFS S3 server with
credentials made up for this session (so a leak is detectable anywhere).

Not real, and played by the harness (harness.py): the API server's bookkeeping kmock lacks
(uid, creationTimestamp, generation bumps), schema admission (every FineTuneTask sent is first
validated against the CRD's schema), the Job controller (Job status, the trainer pod's
termination message), the trainer (writes metrics.json/COMPLETE), and the garbage collector.
Every built-in object the operator creates is checked with `kubernetes-validate --strict`; every
(verb, resource) it calls is written to tests/e2e/.api_calls.json for the RBAC test.
"""

from __future__ import annotations

import itertools
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubevalidate import validate_objects

from finetune_dev.devs3 import S3Server, start_s3
from finetune_contract.storage import Credentials, Storage

from .harness import ApiServer, Cluster, OperatorProcess

API_CALLS_FILE = Path(__file__).parent / ".api_calls.json"
_ns_ids = itertools.count()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """The shared SeaweedFS fixture, with credentials unique to this session."""
    server = start_s3(tmp_path_factory.mktemp("seaweedfs-e2e"),
                      access_key="AK" + secrets.token_hex(8).upper(),
                      secret_key=secrets.token_urlsafe(24))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def api_server() -> Iterator[ApiServer]:
    server = ApiServer().start()
    try:
        yield server
    finally:
        if server.emulator is not None:
            API_CALLS_FILE.write_text(json.dumps(
                [{"verb": v, "group": g, "resource": r} for v, g, r in server.api_calls()],
                indent=1) + "\n")
        server.stop()


@pytest.fixture(scope="session")
def cluster(api_server: ApiServer) -> Cluster:
    return Cluster(api_server.url)


@pytest.fixture(scope="session")
def operator_process(api_server: ApiServer, tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[OperatorProcess]:
    work = tmp_path_factory.mktemp("operator")
    proc = OperatorProcess(api_server.write_kubeconfig(work / "kubeconfig"), work / "operator.log")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture()
def operator(operator_process: OperatorProcess) -> OperatorProcess:
    """The running operator (restarted if an earlier test killed it)."""
    if not operator_process.running:
        operator_process.start()
    return operator_process


@pytest.fixture()
def namespace(cluster: Cluster, s3_server: S3Server) -> str:
    """A fresh namespace holding the S3 credentials Secret the tasks name."""
    ns = f"e2e-{next(_ns_ids)}"
    cluster.create_secret(ns, "s3-credentials", {"AWS_ACCESS_KEY_ID": s3_server.access_key,
                                                 "AWS_SECRET_ACCESS_KEY": s3_server.secret_key})
    return ns


@pytest.fixture(autouse=True)
def _operator_output_checked(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """After each test: what the operator created passes kubernetes-validate --strict, and no
    secret value appears in anything it sent or logged."""
    if "api_server" not in request.fixturenames:
        yield
        return
    api: ApiServer = request.getfixturevalue("api_server")
    assert api.emulator is not None
    s3: S3Server = request.getfixturevalue("s3_server")
    log = (request.getfixturevalue("operator_process").log
           if "operator_process" in request.fixturenames else None)
    first = len(api.emulator.bodies)
    yield
    bodies = list(api.emulator.bodies)[first:]
    for value in (s3.access_key, s3.secret_key):
        assert value not in json.dumps([b for _, b in bodies]), "a secret value was sent"
        if log is not None:
            assert value not in log.read_text(errors="replace"), "a secret value was logged"
    created = [b for verb, b in bodies
               if verb in ("create jobs", "create configmaps", "create events")]
    if created:
        validate_objects(created)


@pytest.fixture()
def task_storage(s3_server: S3Server) -> Storage:
    creds = Credentials.from_env({"AWS_ACCESS_KEY_ID": s3_server.access_key,
                                  "AWS_SECRET_ACCESS_KEY": s3_server.secret_key})
    return Storage(endpoint=s3_server.endpoint, credentials=creds)


def alpaca_records(n: int, *, tag: str = "t") -> list[dict[str, Any]]:
    labels = ["billing", "bug", "feature", "account"]
    return [{"instruction": "Classify the support ticket.",
             "input": f"Ticket {tag}-{i}: my {labels[i % 4]} issue number {i} needs help",
             "output": labels[i % 4]} for i in range(n)]
