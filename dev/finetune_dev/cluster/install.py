"""Install what the project ships onto a control plane, with the real kubectl and helm: the CRD,
the chart's RBAC, and a ServiceAccount token for the operator to run as. Shared by the e2e tests,
the benchmark and `make demo-cluster`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from finetune_operator import GROUP, PLURAL
from finetune_operator.taskset_spec import SET_PLURAL

from .controlplane import REPO, ControlPlane

CRD_FILE = REPO / "crds" / "finetunetasks.finetune.v-sekai.org.yaml"
SET_CRD_FILE = REPO / "crds" / "finetunetasksets.finetune.v-sekai.org.yaml"
CHART = REPO / "helm" / "finetune-operator"
OPERATOR_NAMESPACE = "finetune-system"
RELEASE = "finetune"
KUBECTL = str(Path(sys.executable).parent / "kubectl")
HELM = str(REPO / ".tools" / "bin" / "helm")
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


class InstallError(RuntimeError):
    """kubectl or helm refused; the message is theirs."""


def kubectl(kubeconfig: Path, *args: str, input: str | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([KUBECTL, f"--kubeconfig={kubeconfig}", *args], input=input,
                          capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise InstallError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def apply(kubeconfig: Path, docs: Iterable[dict[str, Any]], *extra: str) -> None:
    kubectl(kubeconfig, "apply", *extra, "-f", "-", input=yaml.safe_dump_all(list(docs)))


def ensure_namespace(kubeconfig: Path, name: str) -> None:
    """Create the namespace if absent (pods also need its default ServiceAccount, which the
    serviceaccount controller adds within a moment; callers that create pods wait for it)."""
    apply(kubeconfig, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}])


def install_crd(kubeconfig: Path) -> None:
    """Both CRDs: FineTuneTask and FineTuneTaskSet."""
    for crd in (CRD_FILE, SET_CRD_FILE):
        kubectl(kubeconfig, "apply", "--server-side", "-f", str(crd))
    kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=60s",
            f"crd/{PLURAL}.{GROUP}", f"crd/{SET_PLURAL}.{GROUP}")


def render_chart(*set_values: str, show_only: Iterable[str] = ()) -> list[dict[str, Any]]:
    """`helm template` of the shipped chart (the real helm binary)."""
    args = [HELM, "template", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE]
    for value in set_values:
        args += ["--set", value]
    for template in show_only:
        args += ["--show-only", template]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise InstallError(f"helm template: {proc.stderr.strip()}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def chart_rbac(*set_values: str) -> list[dict[str, Any]]:
    return [d for d in render_chart(*set_values) if d["kind"] in RBAC_KINDS]


@dataclass
class Identity:
    """A ServiceAccount the operator runs as, with a kubeconfig holding its token."""

    namespace: str
    name: str
    kubeconfig: Path

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"


def operator_identity(plane: ControlPlane, workdir: Path, docs: list[dict[str, Any]]
                      ) -> Identity:
    """Apply the chart's RBAC documents and issue a TokenRequest token for its ServiceAccount."""
    admin = plane.admin_kubeconfig
    namespaces = {OPERATOR_NAMESPACE} | {d["metadata"]["namespace"] for d in docs
                                         if d["kind"] in ("Role", "RoleBinding")}
    for ns in sorted(namespaces):
        ensure_namespace(admin, ns)
    apply(admin, docs)
    [account] = [d for d in docs if d["kind"] == "ServiceAccount"]
    name = account["metadata"]["name"]
    token = kubectl(admin, "create", "token", name, "-n", OPERATOR_NAMESPACE,
                    "--duration=24h").stdout.strip()
    workdir.mkdir(parents=True, exist_ok=True)
    path = plane.token_kubeconfig(workdir / f"{name}.kubeconfig", token)
    return Identity(OPERATOR_NAMESPACE, name, path)
