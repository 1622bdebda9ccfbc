"""`make bench-operator`: N FineTuneTasks applied at once on a real Kubernetes control plane.

Real: etcd, kube-apiserver (RBAC, audit log) and kube-controller-manager from `make controlplane`
(finetune_dev.cluster), the CRD and the chart's RBAC, the operator process authenticated as the
chart's ServiceAccount, and a SeaweedFS holding each task's small dataset. No node runs: the Job
controller makes each Job's pod, which stays Pending (no scheduler, no kubelet), as it would
while a GPU queue is full.

Measured: apply -> Job latency (from the moment the task's create returned to the
stageTimestamp of the operator's `create jobs` in the apiserver's audit log), how many tasks
reached JobCreated, peak operator RSS (VmHWM), the operator's API requests per task (audit log,
Metadata level, that ServiceAccount only, so auditing costs the apiserver little; counted until
SETTLE_S after the last JobCreated, the timer's Job reads apart), and CPU seconds of each
process (/proc/<pid>/stat) and of the whole machine (/proc/stat) over the burst. Targets: every task
reaches JobCreated, RSS < 300 MiB, p99 < 30 s; the table says PASS or MISS and, after it, what
the burst's time went to.

Baseline, in the same run: the floor. With the operator stopped, the admin client (same 8
threads) applies N tasks in another namespace (nothing reacts), then creates the same N
ConfigMaps + Jobs (bodies copied from the operator's) directly: what the control plane alone
needs to accept this many Jobs on this machine. Ratios: operator / floor.

    python bench/bench_operator.py [--tasks 1000] [--timeout 900] [--check] [--keep]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from harness import (OPERATOR_NAMESPACE, Call, Cluster, OperatorProcess,  # noqa: E402
                     chart_rbac, install_crd, operator_identity)

from finetune_contract import RunLayout  # noqa: E402
from finetune_contract.storage import Credentials, Storage  # noqa: E402
from finetune_dev.cluster.audit import epoch as _epoch, parse_event  # noqa: E402
from finetune_dev.cluster.controlplane import ControlPlane  # noqa: E402
from finetune_dev.devs3 import start_s3  # noqa: E402
from finetune_operator import GROUP, PLURAL, VERSION  # noqa: E402

NAMESPACE = "bench"
FLOOR_NAMESPACE = "bench-floor"
DATASETS = 10
THREADS = 8
RSS_TARGET_MIB = 300
P99_TARGET_S = 30.0
CALIBRATION_TASKS = 20
SETTLE_S = 15.0
HANDLER_THREADS = 16  # handlers.configure: max(16, 4 * max_parallel_preparations), default 4
TICK = os.sysconf("SC_CLK_TCK")


# ---- what a process, and the machine, used ---------------------------------------------------

def _cpu_seconds(pid: int) -> float:
    """user+system CPU seconds of a process (its threads included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / TICK


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / TICK, sum(fields) / TICK


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class CpuMeter:
    """CPU seconds of named processes, and of the machine, between two snapshots."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before = self._snap()
        self.after: dict[str, float] = {}
        self.t0, self.t1 = time.monotonic(), 0.0

    def _snap(self) -> dict[str, float]:
        snap = {name: _cpu_seconds(pid) for name, pid in self.pids.items()}
        snap["(machine)"], snap["(machine total)"] = _machine_cpu()
        return snap

    def stop(self) -> CpuMeter:
        self.after, self.t1 = self._snap(), time.monotonic()
        return self

    def used(self, name: str) -> float:
        return self.after[name] - self.before[name]

    @property
    def wall(self) -> float:
        return self.t1 - self.t0

    @property
    def others(self) -> float:
        """Machine CPU seconds not used by any process measured here (other people's work)."""
        return self.used("(machine)") - sum(self.used(n) for n in self.pids)


# ---- the operator's requests, from the apiserver's audit log --------------------------------

class AuditTail:
    """Reads the audit log as it grows (whole lines only): one user's calls, in order."""

    def __init__(self, path: Path, user: str) -> None:
        self.path, self.user = path, user
        self.offset = 0
        self.calls: list[Call] = []
        self.received: list[float] = []  # requestReceivedTimestamp of each call

    def poll(self) -> list[Call]:
        if not self.path.exists():
            return self.calls
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n")
        if end < 0:
            return self.calls
        self.offset += end + 1
        for line in data[:end].splitlines():
            call = parse_event(json.loads(line), self.user)
            if call is not None:
                self.calls.append(call)
                self.received.append(call.received)
        return self.calls

    def job_creates(self) -> list[Call]:
        return [c for c in self.poll() if c.verb == "create" and c.resource == "jobs"
                and c.code == 201]


def audit_policy(user: str) -> dict[str, Any]:
    """Metadata (no bodies) for the operator's ServiceAccount, nothing for anyone else."""
    return {"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
            "omitStages": ["RequestReceived"],
            "rules": [{"level": "Metadata", "users": [user]}, {"level": "None"}]}


# ---- small helpers ---------------------------------------------------------------------------

def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _records(k: int) -> str:
    labels = ["billing", "bug", "feature", "account"]
    return "".join(json.dumps({"instruction": "Classify the ticket.",
                               "input": f"dataset {k} ticket {i} about {labels[i % 4]}",
                               "output": labels[i % 4]}) + "\n" for i in range(30))


def _spec(i: int, endpoint: str) -> dict[str, Any]:
    return {"baseModel": {"name": "Qwen/Qwen2.5-0.5B-Instruct"},
            "dataset": {"uri": f"s3://bench/data/{i % DATASETS}.jsonl",
                        "validationFraction": 0.2, "minSamples": 10,
                        "minValidationSamples": 3},
            "output": {"uri": "s3://bench/runs/"},
            "storage": {"endpoint": endpoint, "credentialsSecret": "s3-credentials"}}


def _admin_client(plane: ControlPlane) -> Any:
    """An admin API client whose connection pool fits the apply threads."""
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=str(plane.admin_kubeconfig), client_configuration=cfg)
    cfg.connection_pool_maxsize = THREADS * 2
    return client.ApiClient(cfg)


def _prom_sum(text: str, name: str, match: str = "") -> float:
    """Sum of a Prometheus text-format series (labels containing `match`)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")) and match in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _apf(plane: ControlPlane) -> dict[str, float]:
    """API Priority and Fairness: requests queued and rejected (the operator is not exempt)."""
    status, body = plane.get("/metrics", timeout=30)
    text = body.decode(errors="replace") if status == 200 else ""
    wait = "apiserver_flowcontrol_request_wait_duration_seconds"
    return {"wait_s": _prom_sum(text, wait + "_sum"), "waited": _prom_sum(text, wait + "_count"),
            "rejected": _prom_sum(text, "apiserver_flowcontrol_rejected_requests_total"),
            "429": _prom_sum(text, "apiserver_request_total", 'code="429"')}


def _calibrate(s3: Any, n: int) -> tuple[float, float]:
    """Per task, in this process, unloaded: (CPU s, wall s) of what the operator does besides
    API calls: prepare_run, render, write the config (one S3 client, cached as the operator's)."""
    from finetune_operator.prepare import prepare_run
    from finetune_operator.render import render_axolotl_config
    from finetune_operator.resources import TaskRef, build_configmap
    from finetune_operator.spec import parse_spec

    storage = Storage(s3.endpoint, Credentials.from_env(s3.env()))  # the operator keeps one

    def one(i: int) -> None:
        spec = parse_spec(_spec(i, s3.endpoint) | {"output": {"uri": "s3://bench/calib/"}})
        layout = RunLayout(root=spec.output.uri, namespace="calib", task=f"c{i}",
                           run_id=spec.run_id())
        manifest = prepare_run(spec, layout, storage)
        config = render_axolotl_config(spec, manifest, layout, profile="gpu")
        body = build_configmap(TaskRef(f"c{i}", "calib", f"uid-{i}"), layout.run_id, config)
        storage.write_text(layout.config, body["data"]["axolotl.yaml"], "application/yaml")

    for i in range(2):  # imports and first-call caches: the operator has paid these already
        one(n + i)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(n):
        one(i)
    return (time.process_time() - cpu0) / n, (time.perf_counter() - wall0) / n


def _floor_bodies(cluster: Cluster, job_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The operator's ConfigMap and Job for one task, stripped to what a client sends."""
    job = cluster.job(NAMESPACE, job_name)
    cm = cluster._call(cluster.core.read_namespaced_config_map, job_name, NAMESPACE)
    assert job and cm, f"{job_name}: Job or ConfigMap missing"

    def meta(m: dict[str, Any]) -> dict[str, Any]:
        return {"labels": {k: v for k, v in (m.get("labels") or {}).items()
                           if not k.startswith(("batch.kubernetes.io/", "controller-uid",
                                                "job-name", "app.kubernetes.io/managed-by"))},
                "annotations": m.get("annotations") or {}}

    spec = copy.deepcopy(job["spec"])
    spec.pop("selector", None)
    spec["template"]["metadata"] = meta(spec["template"].get("metadata") or {})
    return ({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(cm["metadata"]),
             "data": cm["data"]},
            {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta(job["metadata"]),
             "spec": spec})


def _pods(plane: ControlPlane, ns: str) -> int:
    status, body = plane.get(f"/api/v1/namespaces/{ns}/pods?limit=1", timeout=30)
    if status != 200:
        return 0
    doc = json.loads(body)
    return len(doc.get("items", [])) + int(doc["metadata"].get("remainingItemCount") or 0)


def _wait_for_pods(plane: ControlPlane, ns: str, n: int, timeout: float = 180) -> float:
    """Let the Job controller finish making pods, so the next phase starts on a quiet plane."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and _pods(plane, ns) < n:
        time.sleep(1)
    return time.monotonic() - t0


# ---- the benchmark ---------------------------------------------------------------------------

def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from kubernetes import client

    rbac = chart_rbac()
    [account] = [d for d in rbac if d["kind"] == "ServiceAccount"]
    user = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{account['metadata']['name']}"
    plane = ControlPlane(work / "controlplane", audit=True, audit_policy=audit_policy(user))
    s3 = start_s3(work / "s3")
    op: OperatorProcess | None = None
    r: dict[str, Any] = {"n": args.tasks, "load_start": os.getloadavg()}
    try:
        plane.start()
        cluster = Cluster(plane)
        install_crd(cluster)
        # Established is not served yet: the CR storage answers 429 "(re)initializing" first.
        deadline = time.monotonic() + 60
        while plane.get(f"/apis/{GROUP}/{VERSION}/{PLURAL}?limit=1")[0] != 200:
            assert time.monotonic() < deadline, "the FineTuneTask storage never came up"
            time.sleep(0.5)
        identity = operator_identity(cluster, work, rbac)
        assert identity.username == user
        storage = Storage(s3.endpoint, Credentials.from_env(s3.env()))
        storage.ensure_bucket("s3://bench/")
        for k in range(DATASETS):
            storage.write_text(f"s3://bench/data/{k}.jsonl", _records(k))
        r["calib_cpu"], r["calib_wall"] = _calibrate(s3, CALIBRATION_TASKS)
        for ns in (NAMESPACE, FLOOR_NAMESPACE):
            cluster.ensure_namespace(ns)
            cluster.create_secret(ns, "s3-credentials", {"AWS_ACCESS_KEY_ID": s3.access_key,
                                                         "AWS_SECRET_ACCESS_KEY": s3.secret_key})

        audit = AuditTail(plane.audit_log, user)
        op = OperatorProcess(identity.kubeconfig, work / "operator.log",
                             allow_loopback_endpoints="true", poll_interval=30.0).start()
        # Start the clock once the operator watches FineTuneTasks (Kopf's startup is not timed).
        deadline = time.monotonic() + 60
        while not any(c.verb == "watch" and c.resource == PLURAL for c in audit.poll()):
            assert time.monotonic() < deadline, "the operator never watched FineTuneTasks"
            time.sleep(0.2)
        time.sleep(1)
        mark = len(audit.poll())

        api = _admin_client(plane)
        custom = client.CustomObjectsApi(api)
        pids = {"operator": op.proc.pid, "bench client": os.getpid(),  # type: ignore[union-attr]
                **{name: p.pid for name, p in plane.procs.items()},
                "seaweedfs": s3.process.pid}  # type: ignore[union-attr]
        apf0 = _apf(plane)
        applied: dict[str, float] = {}

        def apply(i: int) -> None:
            name = f"task-{i:04d}"
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneTask",
                    "metadata": {"name": name, "namespace": NAMESPACE},
                    "spec": _spec(i, s3.endpoint)}
            custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body,
                                                   _preload_content=False)
            applied[name] = time.time()

        cpu = CpuMeter(pids)
        t0 = time.time()
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(apply, range(args.tasks)))
        r["t_applied"] = time.time() - t0
        print(f"applied {args.tasks} tasks in {r['t_applied']:.1f} s", flush=True)

        last = 0.0
        while time.time() - t0 < args.timeout:
            n_jobs = len(audit.job_creates())
            if n_jobs >= args.tasks:
                break
            if time.monotonic() - last > 15:
                print(f"  {n_jobs}/{args.tasks} Jobs after {time.time() - t0:.0f} s, operator "
                      f"RSS peak {_peak_rss_mib(op.proc.pid):.0f} MiB, "  # type: ignore[union-attr]
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
                last = time.monotonic()
            time.sleep(0.5)

        # The JobCreated condition is the status patch right after the Job.
        def job_created() -> dict[str, float]:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)
            out = {}
            for t in items["items"]:
                conds = (t.get("status") or {}).get("conditions") or []
                c = next((c for c in conds if c["type"] == "JobCreated"
                          and c["status"] == "True"), None)
                if c:
                    out[t["metadata"]["name"]] = _epoch(c.get("lastTransitionTime", ""))
            return out

        created = job_created()
        while len(created) < args.tasks and time.time() - t0 < args.timeout:
            time.sleep(2)
            created = job_created()
        cpu.stop()
        apf1 = _apf(plane)
        r["rss"] = _peak_rss_mib(op.proc.pid)  # type: ignore[union-attr]
        r["op_metrics"] = op.metrics_text()
        r["apf"] = {k: apf1[k] - apf0[k] for k in apf0}
        r["cpu"] = cpu
        r["load_end"] = os.getloadavg()

        # Latency: task create returned -> the operator's `create jobs` completed (audit).
        jobs = {}
        for j in cluster.jobs(NAMESPACE):
            owner = (j["metadata"].get("ownerReferences") or [{}])[0].get("name", "")
            jobs[j["metadata"]["name"]] = (owner, _epoch(j["metadata"]["creationTimestamp"]))
        stamps = {c.name: c.t for c in audit.job_creates() if c.namespace == NAMESPACE}
        lat = []
        for job_name, (task, created_at) in jobs.items():
            if task in applied:
                lat.append(stamps.get(job_name, created_at) - applied[task])
        r["lat"] = lat
        r["lat_from_audit"] = sum(1 for name in jobs if name in stamps)
        r["cond_lat"] = [t - applied[name] for name, t in created.items() if name in applied]
        r["jobcreated"] = len(created)
        if len(created) < args.tasks:
            lines = (work / "operator.log").read_text(errors="replace").splitlines()
            print("operator log (not INFO), last lines:\n" + "\n".join(
                [ln for ln in lines if "INFO" not in ln and "succeeded" not in ln][-20:]))
            args.keep = True
        r["t_all"] = (max(stamps.values()) - t0) if stamps else float("nan")
        # Requests still in flight for the last tasks (Kopf's last patch, the suspend handler)
        # belong to the burst too: count to quiescence, SETTLE_S after the last JobCreated.
        time.sleep(SETTLE_S)
        calls = audit.poll()[mark:]
        r["calls"], r["received"] = calls, audit.received[mark:]
        r["applied"] = applied
        r["job_example"] = next(iter(jobs), None)
        op.stop()

        # ---- the floor: the same ConfigMaps + Jobs created by the admin client directly ----
        r["settle_s"] = _wait_for_pods(plane, NAMESPACE, len(jobs))
        r["floor"] = floor(plane, cluster, api, r["job_example"], args.tasks, pids) \
            if r["job_example"] else None
    finally:
        if op is not None:
            op.stop()
        plane.stop()
        s3.stop()
    return r


def floor(plane: ControlPlane, cluster: Cluster, api: Any, job_name: str, n: int,
          pids: dict[str, int]) -> dict[str, Any]:
    from kubernetes import client

    cm_body, job_body = _floor_bodies(cluster, job_name)
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    custom = client.CustomObjectsApi(api)
    task = cluster.task(NAMESPACE, "task-0000") or {}
    done: list[float] = []
    lock = threading.Lock()

    def apply(i: int) -> None:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneTask",
                "metadata": {"name": f"floor-{i:04d}", "namespace": FLOOR_NAMESPACE},
                "spec": task.get("spec", {})}
        custom.create_namespaced_custom_object(GROUP, VERSION, FLOOR_NAMESPACE, PLURAL, body,
                                               _preload_content=False)

    def create(i: int) -> None:
        cm, job = copy.deepcopy(cm_body), copy.deepcopy(job_body)
        name = f"floor-{i:04d}"
        cm["metadata"]["name"] = job["metadata"]["name"] = name
        for vol in job["spec"]["template"]["spec"].get("volumes", []):
            if "configMap" in vol:
                vol["configMap"]["name"] = name
        core.create_namespaced_config_map(FLOOR_NAMESPACE, cm, _preload_content=False)
        batch.create_namespaced_job(FLOOR_NAMESPACE, job, _preload_content=False)
        with lock:
            done.append(time.time())

    live = {k: v for k, v in pids.items() if k != "operator"}
    # The applies alone (no operator to react): what the burst of creates itself costs.
    apply_cpu = CpuMeter(live)
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(apply, range(n)))
    apply_cpu.stop()
    cpu = CpuMeter(live)
    t0 = time.time()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(create, range(n)))
    cpu.stop()
    return {"lat": [t - t0 for t in done], "t_all": max(done) - t0, "cpu": cpu,
            "apply_cpu": apply_cpu}


# ---- the report ------------------------------------------------------------------------------

def report(r: dict[str, Any]) -> bool:
    n, cpu, lat = r["n"], r["cpu"], r["lat"]
    p50, p99 = (statistics.median(lat) if lat else float("nan")), _pct(lat, 0.99)
    cp50, cp99 = _pct(r["cond_lat"], 0.5), _pct(r["cond_lat"], 0.99)
    calls: list[Call] = r["calls"]
    # The timer's Job reads (every poll_interval per running task) are steady state, not the
    # burst: counted apart.
    def is_timer(c: Call) -> bool:
        return c.verb == "get" and c.resource == "jobs"

    timer = [c for c in calls if is_timer(c)]
    per_task = [c for c in calls if c.verb not in ("watch", "list") and not is_timer(c)]
    by_kind = Counter(f"{c.verb} {c.resource}" for c in per_task)
    refused = Counter(f"{c.code} {c.verb} {c.resource}" for c in calls if c.code >= 400)
    ok_jobs, ok_rss, ok_p99 = r["jobcreated"] == n, r["rss"] < RSS_TARGET_MIB, p99 < P99_TARGET_S

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "**MISS**"

    print(f"\n### Operator: {n} FineTuneTasks applied at once ({THREADS} client threads, "
          f"applied in {r['t_applied']:.1f} s)\n")
    print("| metric | target | measured | |\n|---|---|---|---|")
    rows = [
        ("tasks that reached JobCreated", f"all {n}", f"{r['jobcreated']}", verdict(ok_jobs)),
        ("apply -> Job created, p50", "", f"{p50:.1f} s", ""),
        ("apply -> Job created, p99", f"< {P99_TARGET_S:.0f} s", f"{p99:.1f} s",
         verdict(ok_p99)),
        ("apply -> JobCreated condition, p50 / p99 (1 s resolution)", "",
         f"{cp50:.0f} s / {cp99:.0f} s", ""),
        ("time from first apply to the last Job", "", f"{r['t_all']:.1f} s", ""),
        ("peak operator RSS (VmHWM)", f"< {RSS_TARGET_MIB} MiB", f"{r['rss']:.0f} MiB",
         verdict(ok_rss)),
        ("operator API requests per task (excl. list/watch, timer)", "",
         f"{len(per_task) / max(1, n):.1f}", ""),
        ("CPU s: operator / kube-apiserver / etcd", "",
         f"{cpu.used('operator'):.0f} / {cpu.used('kube-apiserver'):.0f} / "
         f"{cpu.used('etcd'):.0f}", ""),
        ("CPU s: controller-manager / SeaweedFS / bench client", "",
         f"{cpu.used('kube-controller-manager'):.0f} / {cpu.used('seaweedfs'):.0f} / "
         f"{cpu.used('bench client'):.0f}", ""),
        ("CPU s: other processes on this machine (not this bench's)", "",
         f"{cpu.others:.0f}", ""),
    ]
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nJob times: {r['lat_from_audit']}/{len(lat)} from the audit log, the rest from "
          "creationTimestamp (1 s resolution).")
    print("operator requests per task: " + ", ".join(
        f"{k} {v / max(1, n):.2f}" for k, v in by_kind.most_common()))
    print(f"timer (Job reads every 30 s per task with a Job): {len(timer)} in the "
          f"{r['t_all'] + SETTLE_S:.0f} s counted")
    lists = Counter(f"{c.verb} {c.resource}" for c in calls if c.verb in ("watch", "list"))
    print("list/watch (whole burst): " + (", ".join(f"{k} {v}" for k, v in lists.most_common())
                                          or "none"))
    if refused:
        print("error responses to the operator (per task): " + ", ".join(
            f"{k} {v / max(1, n):.2f}" for k, v in refused.most_common()))

    fl = r["floor"]
    if fl:
        fp50, fp99 = statistics.median(fl["lat"]), _pct(fl["lat"], 0.99)
        fcpu = fl["cpu"]
        api_op = cpu.used("kube-apiserver") + cpu.used("etcd")
        api_fl = fcpu.used("kube-apiserver") + fcpu.used("etcd")
        acpu = fl["apply_cpu"]
        print(f"\n### Baseline (same run): the floor, the admin client creating the same {n} "
              f"ConfigMaps + Jobs directly ({THREADS} threads, no operator)\n")
        print("| metric | floor | operator | operator / floor |\n|---|---|---|---|")
        for name, a, b, unit in (("applying the tasks (floor: no operator running)",
                                  acpu.wall, r["t_applied"], "s"),
                                 ("p50 to Job created", fp50, p50, "s"),
                                 ("p99 to Job created", fp99, p99, "s"),
                                 ("time to the last Job", fl["t_all"], r["t_all"], "s"),
                                 ("kube-apiserver + etcd CPU s", api_fl, api_op, ""),
                                 ("machine CPU s (all processes)", fcpu.used("(machine)"),
                                  cpu.used("(machine)"), "")):
            print(f"| {name} | {a:.1f} {unit} | {b:.1f} {unit} | {b / a:.1f}x |")
        print(f"\n(The floor started once the Job controller had made the operator's pods: "
              f"{r['settle_s']:.0f} s after the last JobCreated.)")

    # ---- where the time went ----
    wall = cpu.wall
    cores = os.cpu_count() or 1
    op_cpu = cpu.used("operator")
    prep_cpu = r["calib_cpu"] * n
    m = r["op_metrics"]
    prep_sum = _prom_sum(m, "finetune_data_prep_duration_seconds_sum")
    prep_n = _prom_sum(m, "finetune_data_prep_duration_seconds_count")
    apf = r["apf"]
    print(f"\n### Where the time went ({wall:.0f} s from the first apply to the last "
          f"JobCreated, {cores} cores = {wall * cores:.0f} core-s)\n")
    print(f"- machine busy: {cpu.used('(machine)'):.0f} core-s "
          f"({100 * cpu.used('(machine)') / max(1e-9, cpu.used('(machine total)')):.0f}% of "
          f"all cores); processes not this bench's {cpu.others:.0f} core-s; load average "
          f"{r['load_start'][0]:.1f} before, {r['load_end'][0]:.1f} after")
    print(f"- operator: {op_cpu:.0f} CPU s = {op_cpu / max(1e-9, wall):.2f} cores on average "
          f"(one Python process: ~1 core is its ceiling); {1000 * op_cpu / n:.0f} ms per task")
    print(f"- of which data preparation + render + S3 (calibrated in this process, unloaded: "
          f"{1000 * r['calib_cpu']:.0f} ms CPU, {1000 * r['calib_wall']:.0f} ms wall per task): "
          f"~{prep_cpu:.0f} CPU s ({100 * prep_cpu / max(1e-9, op_cpu):.0f}% of the operator's); "
          f"the rest is Kopf, the API client, JSON and TLS")
    if prep_n:
        print(f"- finetune_data_prep_duration_seconds (slot wait included, "
              f"max_parallel_preparations=4): mean {prep_sum / prep_n:.2f} s over "
              f"{prep_n:.0f} preparations")
    print(f"- control plane: kube-apiserver {cpu.used('kube-apiserver'):.0f} + etcd "
          f"{cpu.used('etcd'):.0f} + controller-manager "
          f"{cpu.used('kube-controller-manager'):.0f} CPU s; SeaweedFS "
          f"{cpu.used('seaweedfs'):.0f}; the bench client (applies, audit tail) "
          f"{cpu.used('bench client'):.0f}")
    waited = apf["waited"]
    print(f"- rate limiting: the operator's clients (Kopf's aiohttp, the kubernetes client) have "
          f"no QPS limiter; API Priority and Fairness (the operator is its only non-exempt "
          f"client here) queued {waited:.0f} requests for "
          f"{apf['wait_s']:.1f} s in all (mean {1000 * apf['wait_s'] / max(1, waited):.1f} ms), "
          f"rejected {apf['rejected']:.0f}; 429 responses {apf['429']:.0f}")
    applied = r["applied"]
    first: dict[str, float] = {}
    for c, t in zip(calls, r["received"]):
        task = c.name if c.name in applied else ""
        if task and task not in first:
            first[task] = t
    job_at = {c.name.split("-", 2)[0] + "-" + c.name.split("-", 2)[1]: c.t for c in calls
              if c.verb == "create" and c.resource == "jobs" and c.code == 201}
    pickup = [first[k] - applied[k] for k in first]
    handling = [job_at[k] - first[k] for k in first if k in job_at]
    server = [c.t - t for c, t in zip(calls, r["received"]) if c.verb != "watch" and t]
    if pickup and handling:
        print(f"- each task's latency = waiting for the operator to pick it up (apply -> the "
              f"handler's first status patch) p50 {_pct(pickup, 0.5):.1f} s / p99 "
              f"{_pct(pickup, 0.99):.1f} s + handling (first request -> Job created) p50 "
              f"{_pct(handling, 0.5):.1f} s / p99 {_pct(handling, 0.99):.1f} s")
    if pickup and handling:
        print(f"- Little's law: {HANDLER_THREADS} handler threads over the "
              f"{r['t_all']:.0f} s to the last Job give {HANDLER_THREADS * r['t_all'] / n:.2f} "
              f"s of thread time per task; a task holds one for its handling plus the Secret "
              f"read before and the status patch and Event after it")
    if server:
        print(f"- apiserver time per operator request (audit: received -> response complete): "
              f"p50 {1000 * _pct(server, 0.5):.0f} ms, p99 {1000 * _pct(server, 0.99):.0f} ms; "
              f"{sum(server) / max(1, n):.2f} s per task over "
              f"{len(server) / max(1, n):.1f} requests")
    bound = []
    if op_cpu / max(1e-9, wall) > 0.7:
        bound.append("the operator's CPU (one Python process near a full core)")
    if cpu.used("(machine)") / max(1e-9, cpu.used("(machine total)")) > 0.85:
        bound.append(f"the machine's {cores} cores (saturated, shared by every process above)")
    if pickup and handling and _pct(pickup, 0.5) > _pct(handling, 0.5):
        bound.append(f"the operator's handler threads (Kopf's sync pool, {HANDLER_THREADS}: "
                     f"tasks wait longer for a thread than a thread takes, and a thread's time "
                     f"is mostly waiting on API round trips)")
    if apf["rejected"] or (server and apf["wait_s"] / max(1, waited) > 0.1 * _pct(server, 0.5)):
        bound.append("the apiserver's flow control")
    print("- verdict: " + ("bound by " + " and ".join(bound) if bound else
                           "no single resource saturated (latency-bound: per-task API round "
                           "trips and S3 calls)"))
    return ok_jobs and ok_rss and ok_p99


def main() -> int:
    # A `timeout` or Ctrl-C must still stop the operator and servers (the finally in run()).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds from the first apply until every task has its Job")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    print(f"work directory: {work} ({os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())})", flush=True)
    try:
        result = run(args, work)
        ok = report(result)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("\ntargets:", "all met" if ok else "MISSED")
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
