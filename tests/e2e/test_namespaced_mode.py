"""Namespace-scoped mode as the chart deploys it, on the real operator process: FINETUNE_NAMESPACES
comma-separated, Kopf's /healthz on FINETUNE_HEALTH_PORT (what the Deployment's probes call), and
only the Role's permissions. Between the operator and kmock sits a small real HTTP proxy that
plays RBAC for a ServiceAccount holding Roles in two namespaces: cluster-scoped reads and other
namespaces get 403, as a real API server would answer. The operator must stay up, fall back to
the listed namespaces, and make no call outside them.
"""

from __future__ import annotations

import asyncio
import re
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from .harness import ROOT, ApiServer, OperatorProcess, free_port, wait_for

WATCHED = ("probe-a", "probe-b")
NAMESPACED = re.compile(r"^/apis?/(?:[^/]+/)?[^/]+/namespaces/([^/]+)/([^/?]+)(?:/[^/?]+)?(?:/([^/?]+))?")


class RbacProxy:
    """Forwards to kmock what a Role-only ServiceAccount may call; 403 for the rest."""

    def __init__(self, upstream: str) -> None:
        self.upstream, self.port = upstream, free_port()
        self.allowed: list[str] = []
        self.forbidden: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> RbacProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(30)
        return self

    async def _serve(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=2)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def _permitted(self, path: str) -> bool:
        if path == "/version" or re.match(r"^(/api(/v1)?|/apis(/[^/]+){0,2})$", path):
            return True  # discovery is open to every authenticated user
        match = NAMESPACED.match(path)
        return bool(match) and match.group(1) in WATCHED

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        line = f"{request.method} {request.path_qs}"
        if not self._permitted(request.path):
            self.forbidden.append(line)
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                      "reason": "Forbidden", "code": 403,
                                      "message": f"{line} is forbidden"}, status=403)
        self.allowed.append(line)
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with self._session.request(request.method, self.upstream + request.path_qs,
                                         headers=headers, data=await request.read(),
                                         timeout=aiohttp.ClientTimeout(total=None)) as upstream:
            response = web.StreamResponse(status=upstream.status)
            response.content_type = upstream.content_type
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    def stop(self) -> None:
        async def _close() -> None:
            await self._session.close()  # ends the proxied watch streams first
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(_close(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture()
def rbac_proxy(api_server: ApiServer) -> Iterator[RbacProxy]:
    proxy = RbacProxy(api_server.url).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def _healthz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def role_grants() -> set[tuple[str, str]]:
    """(resource, verb) of the namespaced Role, from the shipped rules."""
    docs = yaml.safe_load_all((ROOT / "manifests" / "rbac.yaml").read_text())
    [role] = [d for d in docs if d and d["kind"] == "ClusterRole"]
    return {(res, verb) for rule in role["rules"] if "apiextensions.k8s.io" not in rule["apiGroups"]
            for res in rule["resources"] for verb in rule["verbs"]}


def rbac_call(line: str) -> tuple[str, str] | None:
    """(resource, verb) of a namespaced request line, as RBAC names it; None for discovery."""
    method, path = line.split(" ", 1)
    match = NAMESPACED.match(path)
    if not match:
        return None
    resource = match.group(2) + (f"/{match.group(3)}" if match.group(3) else "")
    named = re.match(r"^.*/namespaces/[^/]+/[^/?]+/[^/?]+", path) is not None
    if method == "GET" and not named:
        return resource, "watch" if "watch=true" in path else "list"
    return resource, {"GET": "get", "POST": "create", "PATCH": "patch", "PUT": "update",
                      "DELETE": "delete"}[method]


@pytest.mark.slow
def test_namespace_scoped_operator_with_role_only_permissions(
        api_server: ApiServer, rbac_proxy: RbacProxy, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(api_server.write_kubeconfig(tmp_path / "kmock").read_text()
                          .replace(api_server.url, f"http://127.0.0.1:{rbac_proxy.port}"))
    health_port = free_port()
    proc = OperatorProcess(kubeconfig, tmp_path / "operator.log", health_port=health_port,
                           namespaces=",".join(WATCHED))
    proc.start()
    try:
        wait_for(lambda: _healthz(health_port), 30, "Kopf's /healthz on the health port")

        def watching() -> set[str]:
            return {m.group(1) for line in rbac_proxy.allowed
                    if "watch=true" in line and (m := NAMESPACED.match(line.split(" ")[1]))
                    and m.group(2) == "finetunetasks"}

        # Kopf 1.45 retries each 403 through its error backoffs (1+1+2+3+5+8+13+21 s) before it
        # falls back to the listed namespaces; handlers.py setting `scanning.disabled` in this
        # mode would skip those two cluster-scoped calls and serve at once.
        wait_for(lambda: watching() == set(WATCHED), 120, f"watches on finetunetasks in {WATCHED}",
                 interval=0.5)
        assert proc.running and _healthz(health_port)
        # The only refused calls are Kopf's optional cluster-scoped observations.
        refused = {re.sub(r"\?.*", "", line) for line in rbac_proxy.forbidden}
        assert refused <= {"GET /api/v1/namespaces",
                           "GET /apis/apiextensions.k8s.io/v1/customresourcedefinitions"}, refused
        log = proc.log.read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]
        grants = role_grants()
        for line in rbac_proxy.allowed:
            call = rbac_call(line)
            if call is not None:
                assert call in grants, f"{line}: the Role does not allow {call[1]} {call[0]}"
    finally:
        proc.stop()
