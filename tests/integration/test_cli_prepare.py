"""`finetune prepare TASK.yaml` as a user runs it: a real subprocess, AWS_* in its environment
pointing at the real SeaweedFS server. Exit 0 prints the manifest as JSON; bad input exits 2
with one line on stderr and never a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finetune_contract import Manifest
from finetune_dev.devs3 import S3Server
from finetune_contract.storage import Storage

pytestmark = pytest.mark.s3


def task_yaml(tmp_path: Path, dataset: dict, output: str, **doc: object) -> Path:
    body = {"apiVersion": "finetune.v-sekai.org/v1alpha1", "kind": "FineTuneTask",
            "metadata": {"name": "triage", "namespace": "ml"},
            "spec": {"baseModel": {"name": "Qwen/Qwen2.5-0.5B-Instruct"}, "dataset": dataset,
                     "output": {"uri": output}}}
    body.update(doc)
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def finetune(path: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "finetune_operator", "prepare", str(path), *extra],
                          env=full, capture_output=True, text=True, timeout=120)


def rows(n: int) -> str:
    return "".join(json.dumps({"prompt": f"ticket {i}: printer on fire?", "completion": "hardware"})
                   + "\n" for i in range(n))


def assert_one_line_error(proc: subprocess.CompletedProcess[str], starts: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.endswith("\n") and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(starts), proc.stderr


def test_prints_the_manifest(tmp_path: Path, s3_server: S3Server, storage: Storage, bucket: str) -> None:
    storage.write_text(f"s3://{bucket}/data/a.jsonl", rows(130) + rows(5) + "{broken\n")
    path = task_yaml(tmp_path, {"uri": f"s3://{bucket}/data/"}, f"s3://{bucket}/runs")
    proc = finetune(path, s3_server.env())
    assert proc.returncode == 0, proc.stderr
    manifest = Manifest.model_validate_json(proc.stdout)
    assert (manifest.records_read, manifest.records_kept) == (136, 130)
    assert (manifest.train_samples, manifest.validation_samples) == (117, 13)
    assert (manifest.dropped.duplicate, manifest.dropped.malformed) == (5, 1)
    assert manifest.train.uri.startswith(f"s3://{bucket}/runs/ml/triage/r")
    assert storage.exists(manifest.train.uri.replace("train.jsonl", "manifest.json"))


def test_output_override_to_a_local_directory(tmp_path: Path, s3_server: S3Server, storage: Storage,
                                              bucket: str) -> None:
    storage.write_text(f"s3://{bucket}/data/a.jsonl", rows(120))
    path = task_yaml(tmp_path, {"uri": f"s3://{bucket}/data/a.jsonl"}, f"s3://{bucket}/runs")
    proc = finetune(path, s3_server.env(), "--output", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert Path(manifest["train"]["uri"]).is_file()
    assert len(Path(manifest["validation"]["uri"]).read_text().splitlines()) == 12


def test_same_bytes_in_processes_with_different_hash_seeds(tmp_path: Path, s3_server: S3Server,
                                                           storage: Storage, bucket: str) -> None:
    # str hashes (and so set order) differ per process; the split must not.
    text = "".join(json.dumps({"instruction": f"caf\u00e9 {i % 150} \u6771\u4eac", "output": f"a{i % 7}",
                               "input": "" if i % 3 else f"ctx {i}"}) + "\n" for i in range(400))
    storage.write_text(f"s3://{bucket}/data/a.jsonl", text)
    path = task_yaml(tmp_path, {"uri": f"s3://{bucket}/data/"}, f"s3://{bucket}/runs")
    digests = []
    for seed in ("1", "2"):
        proc = finetune(path, {**s3_server.env(), "PYTHONHASHSEED": seed}, "--output",
                        str(tmp_path / f"out{seed}"))
        assert proc.returncode == 0, proc.stderr
        m = json.loads(proc.stdout)
        digests.append((m["train"]["sha256"], m["validation"]["sha256"], m["recordsKept"]))
    assert digests[0] == digests[1]


def test_bad_data_is_one_line_exit_2(tmp_path: Path, s3_server: S3Server, storage: Storage,
                                     bucket: str) -> None:
    storage.write_text(f"s3://{bucket}/data/a.jsonl", rows(40))
    path = task_yaml(tmp_path, {"uri": f"s3://{bucket}/data/a.jsonl"}, f"s3://{bucket}/runs")
    assert_one_line_error(finetune(path, s3_server.env()),
                          f"finetune prepare: only 40 usable records of 40 read from s3://{bucket}/")


def test_bad_line_in_strict_mode_names_object_and_line(tmp_path: Path, s3_server: S3Server,
                                                       storage: Storage, bucket: str) -> None:
    storage.write_text(f"s3://{bucket}/data/a.jsonl", rows(100) + "{broken\n" + rows(20))
    path = task_yaml(tmp_path, {"uri": f"s3://{bucket}/data/a.jsonl", "strict": True},
                     f"s3://{bucket}/runs")
    assert_one_line_error(finetune(path, s3_server.env()),
                          f"finetune prepare: strict: s3://{bucket}/data/a.jsonl:101 would be dropped "
                          "as malformed (not valid JSON")


def test_wrong_credentials_never_print_the_secret(tmp_path: Path, s3_server: S3Server,
                                                  storage: Storage, bucket: str) -> None:
    storage.write_text(f"s3://{bucket}/data/a.jsonl", rows(120))
    path = task_yaml(tmp_path, {"uri": f"s3://{bucket}/data/"}, f"s3://{bucket}/runs")
    env = {**s3_server.env(), "AWS_SECRET_ACCESS_KEY": "definitely-wrong-secret"}
    proc = finetune(path, env)
    assert_one_line_error(proc, "finetune prepare: S3 refused the credentials")
    assert "definitely-wrong-secret" not in proc.stderr


@pytest.mark.parametrize(("doc", "message"), [
    ({"kind": "ConfigMap", "apiVersion": "v1"},
     "not a FineTuneTask: kind='ConfigMap' apiVersion='v1'"),
    ({"spec": "nope"}, "not a FineTuneTask: spec is missing"),
])
def test_yaml_that_is_not_a_finetunetask(tmp_path: Path, s3_server: S3Server, doc: dict,
                                         message: str) -> None:
    path = task_yaml(tmp_path, {"uri": "s3://abc/x/"}, "s3://abc/runs", **doc)
    proc = finetune(path, s3_server.env())
    assert_one_line_error(proc, f"finetune prepare: {path}: ")
    assert message in proc.stderr


def test_yaml_that_does_not_parse(tmp_path: Path, s3_server: S3Server) -> None:
    path = tmp_path / "task.yaml"
    path.write_text("kind: FineTuneTask\nspec: [unclosed\n")
    assert_one_line_error(finetune(path, s3_server.env()), f"finetune prepare: {path}:")


def _policy_task(tmp_path: Path, **spec: object) -> Path:
    path = task_yaml(tmp_path, {"uri": "s3://abc/data/"}, "s3://abc/runs")
    doc = yaml.safe_load(path.read_text())
    doc["spec"].update(spec)
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("command", ["prepare", "render"])
@pytest.mark.parametrize(("spec", "env", "field"), [
    ({"training": {"axolotl": {"trust_remote_code": True}}}, {},
     "spec.training.axolotl.trust_remote_code"),
    ({"storage": {"endpoint": "http://169.254.169.254"}}, {}, "spec.storage.endpoint"),
    ({"storage": {"endpoint": "http://[fe80::1]:9000"}}, {}, "spec.storage.endpoint"),
    ({"storage": {"endpoint": "http://127.0.0.1:9"}},
     {"FINETUNE_ALLOW_LOOPBACK_ENDPOINTS": "false"}, "spec.storage.endpoint"),
    ({"storage": {"endpoint": "http://minio.example:9000"}},
     {"FINETUNE_ALLOWED_S3_ENDPOINTS": "s3.example.com"}, "spec.storage.endpoint"),
    ({"training": {"axolotl": {"warmup_steps": 5}}}, {"FINETUNE_AXOLOTL_KEY_POLICY": "allowlist"},
     "spec.training.axolotl.warmup_steps"),
], ids=["denied-key", "metadata", "link-local-v6", "loopback-refused", "not-listed",
        "allowlist-mode"])
def test_policy_violation_is_one_line_exit_2(tmp_path: Path, command: str, spec: dict,
                                             env: dict[str, str], field: str) -> None:
    """Checked before anything is read: no S3 server is needed to be refused."""
    path = _policy_task(tmp_path, **spec)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FINETUNE_"))}
    proc = subprocess.run([sys.executable, "-m", "finetune_operator", command, str(path)],
                          env={**clean, **env}, capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, f"finetune {command}: {path}: {field}: not allowed by the "
                                "operator's policy (")


def test_bad_policy_setting_is_one_line_exit_2(tmp_path: Path) -> None:
    path = _policy_task(tmp_path)
    proc = finetune(path, {"FINETUNE_ALLOWED_S3_ENDPOINTS": "ftp://nope"})
    assert_one_line_error(proc, "finetune prepare: FINETUNE_ALLOWED_S3_ENDPOINTS: 'ftp://nope'")


def test_loopback_endpoint_is_allowed_for_local_use(tmp_path: Path, s3_server: S3Server,
                                                    storage: Storage, bucket: str) -> None:
    """The CLI runs as the task's author on their own machine: a loopback S3 server is theirs."""
    storage.write_text(f"s3://{bucket}/data/a.jsonl", rows(120))
    path = task_yaml(tmp_path, {"uri": f"s3://{bucket}/data/a.jsonl"}, f"s3://{bucket}/runs")
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["storage"] = {"endpoint": s3_server.endpoint}
    path.write_text(yaml.safe_dump(doc))
    env = {k: v for k, v in s3_server.env().items() if k != "AWS_ENDPOINT_URL"}
    assert finetune(path, env).returncode == 0


def test_render_explain_says_how_a_multi_node_run_is_spread(tmp_path: Path, s3_server: S3Server,
                                                           storage: Storage, bucket: str) -> None:
    storage.write_text(f"s3://{bucket}/data/a.jsonl", rows(120))
    path = task_yaml(tmp_path, {"uri": f"s3://{bucket}/data/"}, f"s3://{bucket}/runs")
    body = yaml.safe_load(path.read_text())
    body["spec"]["baseModel"]["name"] = "meta-llama/Llama-3.1-70B-Instruct"
    body["spec"]["resources"] = {"gpu": 8, "nodes": 2}
    path.write_text(yaml.safe_dump(body))

    def render(env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
        full = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FINETUNE_"))}
        return subprocess.run([sys.executable, "-m", "finetune_operator", "render", str(path),
                               "--explain", *extra], env={**full, **s3_server.env(), **env},
                              capture_output=True, text=True, timeout=120)

    proc = render({"FINETUNE_GPU_MEMORY_GIB": "80"})
    assert proc.returncode == 0, proc.stderr
    world = next(line for line in proc.stdout.splitlines() if line.startswith("(world):"))
    assert "2 node(s) x 8 process(es)" in world and "FSDP over 16 GPUs" in world
    assert "fsdp_config:" in proc.stdout
    big = render({}, "--gpu-memory-gib", "1000")  # the flag wins over the env; it fits now
    assert "plain DDP" in big.stdout and "fsdp_config" not in big.stdout
    assert_one_line_error(render({"FINETUNE_GPU_MEMORY_GIB": "lots"}),
                          "finetune render: FINETUNE_GPU_MEMORY_GIB")
    assert_one_line_error(render({}, "--gpu-memory-gib", "-1"), "finetune render: GPU memory")
