"""Start and stop etcd + kube-apiserver + kube-controller-manager on loopback.

Binaries come from `make controlplane` (default `.cluster/bin`). Certificates are made with the
openssl CLI: one CA signs the apiserver's serving certificate and the admin client certificate
(CN=admin, O=system:masters); a separate RSA key signs service-account tokens, so the operator
under test can authenticate as its real ServiceAccount (TokenRequest) under RBAC.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..devs3 import free_port

REPO = Path(__file__).resolve().parents[3]
DEFAULT_BIN = REPO / ".cluster" / "bin"
ADMIN_USER = "admin"
CONTROLLERS = ",".join([
    "job-controller", "garbage-collector-controller", "namespace-controller",
    "serviceaccount-controller", "ttl-after-finished-controller",
])
SERVICE_CIDR = "10.96.0.0/16"
# The apiserver's own record of every request (who, verb, resource, and write bodies): what the
# tests read to see which calls the operator made, with which result, and what it sent.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
    "rules": [
        # Secret bodies are never recorded (the tests' own creates carry values).
        {"level": "Metadata", "resources": [{"group": "", "resources": ["secrets"]}]},
        {"level": "Request", "verbs": ["create", "update", "patch"]},
        {"level": "Metadata"},
    ],
}
START_TIMEOUT_S = 120.0


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or reached."""


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(pki: Path) -> None:
    """CA, apiserver serving cert (127.0.0.1/localhost), admin client cert, SA signing key."""
    pki.mkdir(parents=True, exist_ok=True)
    if (pki / "admin.crt").exists():
        return
    days = "3650"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", days, "-subj",
             "/CN=finetune-test-ca", "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt"))
    ext = pki / "serving.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n"
                   "extendedKeyUsage=serverAuth\n")
    for name, subj, extfile in (("apiserver", "/CN=kube-apiserver", ext),
                                ("admin", f"/O=system:masters/CN={ADMIN_USER}", None)):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subj,
                 "-keyout", str(pki / f"{name}.key"), "-out", str(pki / f"{name}.csr"))
        _openssl("x509", "-req", "-in", str(pki / f"{name}.csr"), "-CA", str(pki / "ca.crt"),
                 "-CAkey", str(pki / "ca.key"), "-CAcreateserial", "-days", days,
                 "-out", str(pki / f"{name}.crt"),
                 *(["-extfile", str(extfile)] if extfile else []))
    _openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
    _openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))


def kubeconfig(server: str, ca: Path, user: dict[str, Any], name: str = "finetune-test"
               ) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Config", "current-context": name,
            "clusters": [{"name": name, "cluster": {"server": server,
                                                    "certificate-authority": str(ca)}}],
            "users": [{"name": name, "user": user}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}]}


@dataclass
class ControlPlane:
    """One control plane whose state lives under `state_dir` (etcd data, certs, logs)."""

    state_dir: Path
    bin_dir: Path = DEFAULT_BIN
    etcd_port: int = field(default_factory=free_port)
    apiserver_port: int = field(default_factory=free_port)
    audit: bool = False  # record every request in <state_dir>/audit.log
    audit_policy: dict[str, Any] | None = None  # replaces AUDIT_POLICY (e.g. Metadata only)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def pki(self) -> Path:
        return self.state_dir / "pki"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    def _binary(self, name: str) -> str:
        path = self.bin_dir / name
        if not path.exists():
            raise ControlPlaneError(f"{path} is missing: run `make controlplane` first")
        return str(path)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs[name] = proc
        (self.state_dir / f"{name}.pid").write_text(str(proc.pid))
        return proc

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.state_dir / "logs" / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    # ---- components ------------------------------------------------------------------------

    def start_etcd(self) -> None:
        self._spawn("etcd", [self._binary("etcd"), "--data-dir", str(self.state_dir / "etcd"),
                             "--client-port", str(self.etcd_port),
                             "--peer-port", str(free_port())])
        self._wait("etcd", lambda: _port_open(self.etcd_port))

    def start_apiserver(self) -> None:
        pki = self.pki
        self._spawn("kube-apiserver", [
            self._binary("kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            f"--cert-dir={self.state_dir / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--secure-port={self.apiserver_port}", "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--allow-privileged=true", "--profiling=false",
            "--endpoint-reconciler-type=none",
            *self._audit_flags(),
        ])
        self._wait("kube-apiserver", self._apiserver_ready)

    @property
    def audit_log(self) -> Path:
        return self.state_dir / "audit.log"

    def _audit_flags(self) -> list[str]:
        if not self.audit:
            return []
        policy = self.state_dir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(self.audit_policy or AUDIT_POLICY))
        return [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json", "--audit-log-mode=blocking",
                "--audit-log-maxsize=0"]

    def start_controller_manager(self) -> None:
        config = self.state_dir / "controller-manager.kubeconfig"
        self._write_admin_kubeconfig(config)
        self._spawn("kube-controller-manager", [
            self._binary("kube-controller-manager"),
            f"--kubeconfig={config}", f"--controllers={CONTROLLERS}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            f"--root-ca-file={self.pki / 'ca.crt'}",
            f"--service-account-private-key-file={self.pki / 'sa.key'}",
            "--use-service-account-credentials=false",
            # Tests watch retries happen: keep the GC and Job syncs prompt.
            "--concurrent-job-syncs=10", "--concurrent-gc-syncs=10",
        ])
        self._wait("kube-controller-manager", self._controllers_ready)

    def start(self) -> ControlPlane:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        make_pki(self.pki)
        self.start_etcd()
        self.start_apiserver()
        self._write_admin_kubeconfig(self.admin_kubeconfig)
        self.start_controller_manager()
        (self.state_dir / "endpoints.json").write_text(json.dumps(
            {"url": self.url, "etcdPort": self.etcd_port}))
        return self

    def stop_component(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def stop(self, remove_state: bool = False) -> None:
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            self.stop_component(name)
        if remove_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    # ---- readiness -------------------------------------------------------------------------

    def _wait(self, name: str, ready: Any) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        proc = self.procs[name]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ControlPlaneError(f"{name} exited {proc.returncode}: {self.log_tail(name)}")
            if ready():
                return
            time.sleep(0.2)
        raise ControlPlaneError(f"{name} not ready in {START_TIMEOUT_S:.0f}s: "
                                f"{self.log_tail(name)}")

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET as admin; (status, body), status 0 when nothing answers."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout,
                                        context=self.ssl_context()) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except OSError:
            return 0, b""

    def _apiserver_ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    def _controllers_ready(self) -> bool:
        # The serviceaccount controller has run once the default namespace has its account.
        return self.get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200

    def _write_admin_kubeconfig(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(kubeconfig(self.url, self.pki / "ca.crt", {
            "client-certificate": str(self.pki / "admin.crt"),
            "client-key": str(self.pki / "admin.key")})))

    def token_kubeconfig(self, path: Path, token: str) -> Path:
        """A kubeconfig that authenticates with a bearer token (a ServiceAccount's)."""
        path.write_text(yaml.safe_dump(kubeconfig(self.url, self.pki / "ca.crt",
                                                  {"token": token})))
        return path


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def stop_recorded(state_dir: Path) -> list[str]:
    """Stop the processes a `cluster-up` in another shell recorded in `state_dir`."""
    stopped = []
    for pid_file in sorted(state_dir.glob("*.pid")):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGTERM)
            stopped.append(pid_file.stem)
        except (ProcessLookupError, ValueError, PermissionError):
            pass
    return stopped
