"""The API calls of the FineTuneTaskSet controller, each named after its RBAC verb.

Built on kube.Kube's plumbing (one-line ApiError, None on 404, dicts in and out). Generated
tasks are written with server-side apply under their own field manager: the first apply
creates the task, later ones change exactly the fields the set owns (a key dropped from the
defaults is dropped from the task), and an unchanged spec is not sent at all (the caller
compares first).
"""

from __future__ import annotations

from typing import Any

from . import GROUP, PLURAL, VERSION
from .kube import MERGE, Kube
from .taskset_spec import SET_PLURAL

APPLY = "application/apply-patch+yaml"
FIELD_MANAGER = "finetune-taskset"


class SetKube:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    def list_tasks(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """FineTuneTasks carrying the set's label (the caller checks the owner's uid)."""
        found = self.kube._call(f"list finetunetasks {namespace} ({selector})",
                                self.kube.custom.list_namespaced_custom_object, GROUP, VERSION,
                                namespace, PLURAL, label_selector=selector) or {}
        return list(found.get("items", []))

    def apply_task(self, body: dict[str, Any]) -> dict[str, Any]:
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        return self.kube._call(f"apply finetunetask {ns}/{name}",
                               self.kube.custom.patch_namespaced_custom_object, GROUP, VERSION,
                               ns, PLURAL, name, body, _content_type=APPLY,
                               field_manager=FIELD_MANAGER, force=True) or {}

    def delete_task(self, namespace: str, name: str, uid: str) -> None:
        """Delete only the task seen (uid precondition): a task of that name made since stays."""
        self.kube._call(f"delete finetunetask {namespace}/{name}",
                        self.kube.custom.delete_namespaced_custom_object, GROUP, VERSION,
                        namespace, PLURAL, name, propagation_policy="Background",
                        body={"preconditions": {"uid": uid}})

    def get_set(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.kube._call(f"get finetunetaskset {namespace}/{name}",
                               self.kube.custom.get_namespaced_custom_object, GROUP, VERSION,
                               namespace, SET_PLURAL, name)

    def patch_set_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.kube._call(f"patch finetunetaskset {namespace}/{name} status",
                        self.kube.custom.patch_namespaced_custom_object_status, GROUP, VERSION,
                        namespace, SET_PLURAL, name, {"status": patch}, _content_type=MERGE)

    def post_event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.kube.post_event(involved, type_, reason, message)
