"""`make bench-operator`: N FineTuneTasks applied at once against kmock, the operator as a real
process, data prepared from tiny datasets in a real SeaweedFS.

Prints: time until every task has its Job, p50/p99 apply-to-Job latency, peak operator RSS
(VmHWM of the process), API requests per task; and checks the targets: every task reaches
JobCreated, peak RSS < 300 MiB, p99 < 30 s; with --check, exit 1 when a target is missed.
It also prints the CPU seconds of the operator, kmock and SeaweedFS (all on this machine here;
on a cluster the API server and S3 run elsewhere) and the load average, so a run on a busy
machine reads as one.

    python bench/bench_operator.py [--tasks 1000] [--timeout 900] [--check]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from harness import ApiServer, Cluster, OperatorProcess  # noqa: E402

from finetune_dev.devs3 import start_s3  # noqa: E402
from finetune_contract.storage import Credentials, Storage  # noqa: E402

NAMESPACE = "bench"
DATASETS = 10
RSS_TARGET_MIB = 300
P99_TARGET_S = 30.0


def _records(k: int) -> str:
    labels = ["billing", "bug", "feature", "account"]
    return "".join(json.dumps({"instruction": "Classify the ticket.",
                               "input": f"dataset {k} ticket {i} about {labels[i % 4]}",
                               "output": labels[i % 4]}) + "\n" for i in range(30))


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds(pid: int) -> float:
    """user+system CPU time of a process (to see who the bottleneck is)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    # A `timeout` or Ctrl-C must still stop the operator and servers (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    s3 = start_s3(work / "s3")
    api = ApiServer().start()
    op = OperatorProcess(api.write_kubeconfig(work / "kubeconfig"), work / "operator.log",
                         poll_interval=30.0)
    try:
        storage = Storage(s3.endpoint, Credentials.from_env(s3.env()))
        storage.ensure_bucket("s3://bench/")
        for k in range(DATASETS):
            storage.write_text(f"s3://bench/data/{k}.jsonl", _records(k))
        cluster = Cluster(api.url)
        cluster.create_secret(NAMESPACE, "s3-credentials",
                              {"AWS_ACCESS_KEY_ID": s3.access_key,
                               "AWS_SECRET_ACCESS_KEY": s3.secret_key})
        op.start()
        assert api.emulator is not None
        baseline_calls = len(api.emulator.calls)

        def spec(i: int) -> dict:
            return {"baseModel": {"name": "Qwen/Qwen2.5-0.5B-Instruct"},
                    "dataset": {"uri": f"s3://bench/data/{i % DATASETS}.jsonl",
                                "validationFraction": 0.2, "minSamples": 10,
                                "minValidationSamples": 3},
                    "output": {"uri": "s3://bench/runs/"},
                    "storage": {"endpoint": s3.endpoint}}

        applied: dict[str, float] = {}

        def apply(i: int) -> None:
            name = f"task-{i:04d}"
            cluster.apply_task(NAMESPACE, name, spec(i))
            applied[name] = time.monotonic()

        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(apply, range(args.tasks)))
        t_applied = time.monotonic() - t0
        print(f"applied {args.tasks} tasks in {t_applied:.1f}s", flush=True)

        def job_times() -> dict[str, float]:
            return {c["name"]: c["t"] for c in list(api.emulator.calls)  # type: ignore[union-attr]
                    if c["verb"] == "create" and c["resource"] == "jobs"}

        deadline = t0 + args.timeout
        last_report = 0.0
        while time.monotonic() < deadline:
            done = job_times()
            if len(done) >= args.tasks:
                break
            if time.monotonic() - last_report > 15:
                print(f"  {len(done)}/{args.tasks} Jobs after {time.monotonic() - t0:.0f}s, "
                      f"operator RSS peak {_peak_rss_mib(op.proc.pid):.0f} MiB", flush=True)
                last_report = time.monotonic()
            time.sleep(0.5)
        done = job_times()
        t_all = max(done.values()) - t0 if done else float("nan")
        latencies = []
        for name, t_apply in applied.items():
            job = next((t for j, t in done.items() if j.startswith(name + "-")), None)
            if job is not None:
                latencies.append(job - t_apply)
        rss = _peak_rss_mib(op.proc.pid)  # type: ignore[union-attr]
        cpu = {"operator": _cpu_seconds(op.proc.pid),  # type: ignore[union-attr]
               "kmock+harness": _cpu_seconds(os.getpid()),
               "seaweedfs": _cpu_seconds(s3.process.pid) if s3.process else float("nan")}
        calls = api.emulator.calls[baseline_calls:]
        per_task = [c for c in calls if c["verb"] not in ("watch", "list")]
        by_kind = Counter(f"{c['verb']} {c['resource']}" for c in per_task)
        # Phases reached (a status spot check over HTTP).
        reached = sum(1 for name in list(applied)[:50]
                      if cluster.status(NAMESPACE, name).get("phase") == "Training")
    finally:
        op.stop()
        api.stop()
        s3.stop()

    n_jobs = len(latencies)
    p50 = statistics.median(latencies) if latencies else float("nan")
    p99 = _pct(latencies, 0.99) if latencies else float("nan")
    rows = [
        ("tasks applied", f"{args.tasks}", f"in {t_applied:.1f} s"),
        ("tasks with JobCreated", f"{n_jobs}", "target: all"),
        ("time to all Jobs created", f"{t_all:.1f} s", ""),
        ("apply-to-Job latency p50", f"{p50:.1f} s", ""),
        ("apply-to-Job latency p99", f"{p99:.1f} s", f"target: < {P99_TARGET_S:.0f} s"),
        ("peak operator RSS", f"{rss:.0f} MiB", f"target: < {RSS_TARGET_MIB} MiB"),
        ("API requests per task", f"{len(per_task) / max(1, args.tasks):.1f}",
         "excluding list/watch"),
        ("status spot check", f"{reached}/50 Training", ""),
    ]
    print("\n| metric | value | note |\n|---|---|---|")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} |")
    print("\nrequests by kind (per task): " + ", ".join(
        f"{k} {v / max(1, args.tasks):.2f}" for k, v in by_kind.most_common()))
    ok = n_jobs == args.tasks and rss < RSS_TARGET_MIB and p99 < P99_TARGET_S
    print("CPU seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()))
    print(f"load average (1/5/15 min) at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs")
    print("\ntargets:", "met" if ok else "MISSED")
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
