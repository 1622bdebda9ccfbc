"""End to end on a real Kubernetes control plane (see harness.py for what is real).

Real: etcd, kube-apiserver (RBAC, audit log) and kube-controller-manager built from Go modules
by `make controlplane`; the CRD and the chart's RBAC applied with kubectl; the operator process
authenticated as the chart's ServiceAccount with a TokenRequest token; a SeaweedFS S3 server
with credentials made up for this session (so a leak is detectable anywhere).
Played: the kubelet (finetune_dev.cluster.node binds and runs pods) and the trainer inside the
pod (harness.ScriptedTrainer), except where a test runs the real trainer command.
After each test: every object the operator created passes `kubernetes-validate --strict`, none
of its requests (read from the apiserver's audit log) or log lines holds a secret value, and the
apiserver refused none of its calls.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubevalidate import validate_objects

from finetune_contract.storage import Credentials, Storage
from finetune_dev.cluster.controlplane import ControlPlane
from finetune_dev.cluster.node import Node
from finetune_dev.devs3 import S3Server, start_s3

from .harness import (Cluster, Identity, OperatorProcess, ScriptedTrainer, chart_rbac,
                      install_crd, operator_identity)

_ns_ids = itertools.count()
# The test S3 server listens on loopback, which the operator's endpoint policy refuses unless
# an admin allows it: the e2e operator is that admin's deployment.
OPERATOR_TEST_SETTINGS: dict[str, Any] = {"allow_loopback_endpoints": "true",
                                          # seconds, not minutes: tests wait for these
                                          "progress_interval": 2, "image_pull_timeout": 4,
                                          "unschedulable_timeout": 4,
                                          "taskset_resync_interval": 2}


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
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(state_dir=tmp_path_factory.mktemp("controlplane"), audit=True)
    try:
        plane.start()
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def cluster(control_plane: ControlPlane) -> Cluster:
    cluster = Cluster(control_plane)
    install_crd(cluster)
    return cluster


@pytest.fixture(scope="session")
def trainer() -> ScriptedTrainer:
    return ScriptedTrainer()


@pytest.fixture(scope="session")
def node(cluster: Cluster, trainer: ScriptedTrainer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    node = Node(cluster.api, runner=trainer, work_root=tmp_path_factory.mktemp("node")).start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def identity(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Identity:
    """The chart's ServiceAccount, ClusterRole and binding (cluster-wide mode), and a token."""
    return operator_identity(cluster, tmp_path_factory.mktemp("identity"), chart_rbac())


_session_operators: list[OperatorProcess] = []  # the session operator, once something started it


@pytest.fixture(scope="session")
def operator_process(identity: Identity, node: Node, tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[OperatorProcess]:
    work = tmp_path_factory.mktemp("operator")
    proc = OperatorProcess(identity.kubeconfig, work / "operator.log",
                           **OPERATOR_TEST_SETTINGS)
    proc.start()
    _session_operators.append(proc)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture()
def no_session_operator() -> None:
    """For tests that must be the only writer of their tasks (or run an operator of their own):
    stop the cluster-wide session operator if an earlier test started it, whatever the order
    of the tests; the `operator` fixture starts it again for the next test that needs it."""
    for proc in _session_operators:
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
    cluster.ensure_namespace(ns)
    cluster.create_secret(ns, "s3-credentials", {"AWS_ACCESS_KEY_ID": s3_server.access_key,
                                                 "AWS_SECRET_ACCESS_KEY": s3_server.secret_key})
    return ns


@pytest.fixture(autouse=True)
def _operator_output_checked(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that ran the session operator: what it created passes kubernetes-validate
    --strict, no secret value appears in what it sent or logged, no call of its was refused."""
    if "operator" not in request.fixturenames:
        yield
        return
    cluster: Cluster = request.getfixturevalue("cluster")
    who: Identity = request.getfixturevalue("identity")
    s3: S3Server = request.getfixturevalue("s3_server")
    log = request.getfixturevalue("operator_process").log
    since = cluster.audit.mark()
    yield
    calls = cluster.audit.calls(who.username, since)
    bodies = [c.body for c in calls if c.body is not None]
    for value in (s3.access_key, s3.secret_key):
        assert value not in str(bodies), "a secret value was sent to the API server"
        assert value not in log.read_text(errors="replace"), "a secret value was logged"
    refused = sorted({f"{c.verb} {c.group}/{c.resource}" for c in calls
                      if c.code == 403 and c.forbidden_by_rbac})
    # A freshly restarted apiserver answers 403 until its RBAC informers have synced.
    if request.node.get_closest_marker("apiserver_restart") is None:
        assert not refused, f"the apiserver refused the operator (RBAC): {refused}"
    created = [c.body for c in calls if c.verb == "create" and c.body is not None
               and c.resource in ("jobs", "configmaps", "events")]
    if created:
        validate_objects(created)


@pytest.fixture()
def task_storage(s3_server: S3Server) -> Storage:
    creds = Credentials.from_env({"AWS_ACCESS_KEY_ID": s3_server.access_key,
                                  "AWS_SECRET_ACCESS_KEY": s3_server.secret_key})
    return Storage(endpoint=s3_server.endpoint, credentials=creds)


@pytest.fixture()
def bucket(task_storage: Storage, namespace: str) -> str:
    """A bucket of the test's own namespace."""
    name = f"b-{namespace}"
    task_storage.ensure_bucket(f"s3://{name}/")
    return name


def alpaca_records(n: int, *, tag: str = "t") -> list[dict[str, Any]]:
    labels = ["billing", "bug", "feature", "account"]
    return [{"instruction": "Classify the support ticket.",
             "input": f"Ticket {tag}-{i}: my {labels[i % 4]} issue number {i} needs help",
             "output": labels[i % 4]} for i in range(n)]


__all__ = ["Path", "alpaca_records"]
