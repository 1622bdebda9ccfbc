"""The apiserver's JSON audit log read back as calls: which requests a user made, with what
result (and, at Request level, what body). One reader for the e2e tests and the benchmark."""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Call:
    verb: str
    group: str
    resource: str  # with "/subresource" where there is one
    namespace: str
    name: str
    code: int
    body: Any
    t: float  # seconds since the epoch (stageTimestamp)
    received: float = 0.0  # seconds since the epoch (requestReceivedTimestamp)
    # The authorizer's decision: a 403 that RBAC allowed is admission's (e.g. an Event posted
    # into a namespace being deleted), not a missing grant.
    forbidden_by_rbac: bool = False

    @property
    def rbac(self) -> tuple[str, str, str]:
        return self.verb, self.group, self.resource


def epoch(stamp: str) -> float:
    if not stamp:
        return 0.0
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def parse_event(ev: dict[str, Any], user: str) -> Call | None:
    """The call an audit event records for `user`, or None (another user, another stage,
    discovery). A watch is recorded when its response starts (it completes only when it
    closes); every other request when it completes."""
    stage = "ResponseStarted" if ev.get("verb") == "watch" else "ResponseComplete"
    if ev.get("stage") != stage or ev["user"].get("username") != user:
        return None
    ref = ev.get("objectRef") or {}
    if not ref.get("resource"):
        return None  # discovery (/api, /apis, /version)
    resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    return Call(ev["verb"], ref.get("apiGroup", ""), resource, ref.get("namespace", ""),
                ref.get("name", ""), int((ev.get("responseStatus") or {}).get("code", 0)),
                ev.get("requestObject"), epoch(ev.get("stageTimestamp", "")),
                epoch(ev.get("requestReceivedTimestamp", "")),
                (ev.get("annotations") or {}).get("authorization.k8s.io/decision") == "forbid")


class Audit:
    """Reads the log from a byte offset (`mark()`), skipping a line still being written."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def calls(self, user: str, since: int = 0) -> list[Call]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(since)
            lines = f.read().splitlines()
        out = []
        for line in lines:
            try:
                ev = json.loads(line)
            except ValueError:
                continue  # a line being written
            call = parse_event(ev, user)
            if call is not None:
                out.append(call)
        return out
