"""Generate the FineTuneTask CRD from the pydantic models in spec.py (the one source of truth).

`python -m finetune_operator.crdgen > crds/finetunetasks.finetune.v-sekai.org.yaml` writes it;
tests fail when the committed CRD (or the Helm chart's copy) drifts from what this prints.
Pydantic emits JSON Schema 2020-12; Kubernetes wants a structural OpenAPI v3.0 schema, so refs
are inlined, `X | None` becomes `nullable`, and free-form maps keep their unknown fields.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import yaml

from . import GROUP, KIND, PLURAL, VERSION
from .spec import FineTuneTaskSpec, FineTuneTaskStatus

CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_FILE = f"{CRD_NAME}.yaml"

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    # Percent of the training steps done, while Training (and where a Failed run stopped).
    {"name": "Progress", "type": "number", "jsonPath": ".status.progress.percent"},
    {"name": "Train", "type": "integer", "jsonPath": ".status.data.trainSamples"},
    {"name": "Val", "type": "integer", "jsonPath": ".status.data.validationSamples"},
    {"name": "Base loss", "type": "number", "jsonPath": ".status.metrics.baseEvalLoss"},
    {"name": "Eval loss", "type": "number", "jsonPath": ".status.metrics.evalLoss"},
    {"name": "Improvement", "type": "number", "jsonPath": ".status.metrics.improvement"},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Convert one pydantic JSON-schema node into a structural OpenAPI v3.0 node."""
    if not isinstance(node, dict):
        return node
    node = copy.deepcopy(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").split("/")[-1]]
        merged = {**copy.deepcopy(target), **node}
        return _structural(merged, defs)
    nullable = False
    if "anyOf" in node:
        branches = node.pop("anyOf")
        options = [o for o in branches if o.get("type") != "null"]
        nullable = len(options) < len(branches)
        if len(options) != 1:
            raise ValueError(f"cannot make a structural schema of a union: {options}")
        inner = _structural(options[0], defs)
        node = {**inner, **{k: v for k, v in node.items() if k != "default" or v is not None}}
    node.pop("title", None)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), (int, float)) and not isinstance(node.get(bound), bool):
            node[plain] = node.pop(bound)
            node[bound] = True
    if node.get("type") == "object" or "properties" in node or "additionalProperties" in node:
        node["type"] = "object"
        props = node.get("properties")
        if props:
            node["properties"] = {k: _structural(v, defs) for k, v in props.items()}
            node.pop("additionalProperties", None)  # unknown fields are pruned by the API server
        else:
            extra = node.get("additionalProperties")
            if isinstance(extra, dict) and extra:
                node["additionalProperties"] = _structural(extra, defs)
            else:
                node.pop("additionalProperties", None)
                node["x-kubernetes-preserve-unknown-fields"] = True
    if node.get("type") == "array" and "items" in node:
        node["items"] = _structural(node["items"], defs)
    if nullable and node.get("default", "absent") is None:
        node.pop("default")
    if nullable:
        node["nullable"] = True
    return node


def openapi_schema(model: type) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _structural(raw, defs)


def build_crd() -> dict[str, Any]:
    spec_schema = openapi_schema(FineTuneTaskSpec)
    status_schema = openapi_schema(FineTuneTaskStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME, "labels": {"app.kubernetes.io/part-of": "finetune-operator"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["ftt"],
                "categories": ["finetune"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "One LoRA fine-tune of a base model on a task's samples.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def render_crd() -> str:
    header = "# Generated by `python -m finetune_operator.crdgen` from spec.py. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def to_jsonschema(node: Any) -> Any:
    """OpenAPI v3.0 (nullable, boolean exclusive bounds) -> JSON Schema, for validating in tests."""
    if isinstance(node, list):
        return [to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if out.get(bound) is True:
            out[bound] = out.pop(plain)
        elif out.get(bound) is False:
            out.pop(bound)
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False  # what the API server would prune, tests reject
    return out


def main() -> None:
    sys.stdout.write(render_crd())


if __name__ == "__main__":
    main()
