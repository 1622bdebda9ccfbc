"""The admin's policy (policy.py) as tables: axolotl keys, S3 endpoints (name resolution is a
table too, except where the test names the real resolver), the settings that build it, and the
operator's failure path (reconcile with a recording stand-in for the API client)."""

from __future__ import annotations

from typing import Any

import kopf
import pytest
from pydantic import ValidationError

from finetune_operator import policy
from finetune_operator.policy import (WHY_BAD_URL, WHY_DENIED_KEY, WHY_ENDPOINT_NOT_LISTED,
                                      WHY_KEY_NOT_LISTED, WHY_LINK_LOCAL, WHY_LOOPBACK,
                                      WHY_METADATA, WHY_USERINFO, Policy)
from finetune_operator.settings import OperatorSettings
from finetune_operator.spec import parse_spec

DENYLIST = Policy()
ALLOWLIST = Policy(axolotl_key_policy="allowlist", allowed_keys=("warmup_*", "weight_decay"))
LOOPBACK_OK = Policy(allow_loopback=True)

# What each fake host name resolves to; anything else does not resolve.
DNS = {
    "minio.storage": ["10.96.0.10"],
    "s3.amazonaws.com": ["52.216.0.1", "2600:1f18::1"],
    "evil.example": ["169.254.169.254"],
    "rebind.example": ["10.0.0.5", "127.0.0.1"],
    "v6.example": ["fe80::1%eth0"],
    "mapped.example": ["::ffff:127.0.0.1"],
}


@pytest.fixture(autouse=True)
def _no_finetune_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The policy comes from FINETUNE_* env: start every test from the defaults."""
    import os

    for name in [n for n in os.environ if n.startswith("FINETUNE_")]:
        monkeypatch.delenv(name)


def fake_resolve(host: str) -> list[str]:
    return DNS.get(host, [])


def why(violation: policy.Violation | None) -> str | None:
    return None if violation is None else violation.why


# ---- spec.training.axolotl ----------------------------------------------------------------

REFUSED_BY_DEFAULT = [
    "trust_remote_code", "hub_model_id", "hub_strategy", "hub_revision", "hub_private_repo",
    "push_dataset_to_hub", "push_to_hub", "hf_use_auth_token", "base_model", "base_model_config",
    "revision_of_model", "tokenizer_config", "output_dir", "datasets", "test_datasets",
    "pretraining_dataset", "dataset_prepared_path", "deepspeed", "fsdp", "fsdp_config",
    "plugins", "torchdistx_path", "lora_model_dir", "resume_from_checkpoint", "save_safetensors",
    "finetune_budget", "finetune_search", "Trust_Remote_Code",
]
ALLOWED_BY_DEFAULT = ["warmup_steps", "weight_decay", "lora_target_linear", "lr_scheduler",
                      "gradient_checkpointing", "chat_template_jinja", "optimizer"]


@pytest.mark.parametrize("key", REFUSED_BY_DEFAULT)
def test_default_denylist_refuses(key: str) -> None:
    v = policy.check_axolotl_keys({key: True}, DENYLIST)
    assert v is not None and v.field == f"spec.training.axolotl.{key}" and v.why == WHY_DENIED_KEY


@pytest.mark.parametrize("key", ALLOWED_BY_DEFAULT)
def test_default_denylist_allows(key: str) -> None:
    assert policy.check_axolotl_keys({key: 1}, DENYLIST) is None


@pytest.mark.parametrize(("keys", "expected"), [
    ({"warmup_steps": 10, "warmup_ratio": 0.1}, None),
    ({"weight_decay": 0.0}, None),
    ({"lr_scheduler": "cosine"}, WHY_KEY_NOT_LISTED),
    ({"trust_remote_code": True}, WHY_DENIED_KEY),
    ({}, None),
], ids=["glob-listed", "listed", "not-listed", "deny-wins", "empty"])
def test_allowlist_mode(keys: dict[str, Any], expected: str | None) -> None:
    assert why(policy.check_axolotl_keys(keys, ALLOWLIST)) == expected


def test_allowlist_of_nothing_refuses_every_key() -> None:
    strict = Policy(axolotl_key_policy="allowlist", allowed_keys=())
    assert why(policy.check_axolotl_keys({"warmup_steps": 1}, strict)) == WHY_KEY_NOT_LISTED


def test_an_emptied_denylist_allows_what_the_admin_chose() -> None:
    open_policy = Policy(denied_keys=())
    assert policy.check_axolotl_keys({"deepspeed": "ds.json"}, open_policy) is None


def test_message_names_the_field_in_one_line_and_is_order_independent() -> None:
    v = policy.check_axolotl_keys({"trust_remote_code": True}, DENYLIST)
    assert str(v) == ("spec.training.axolotl.trust_remote_code: not allowed by the operator's "
                      "policy (denied key)")
    a = policy.check_axolotl_keys({"output_dir": "/x", "trust_remote_code": True, "hub_model_id":
                                   "me/m"}, DENYLIST)
    b = policy.check_axolotl_keys({"trust_remote_code": True, "hub_model_id": "me/m",
                                   "output_dir": "/x"}, DENYLIST)
    assert a == b and a is not None
    assert a.message == ("spec.training.axolotl.hub_model_id: not allowed by the operator's policy "
                         "(denied key; also refused: output_dir, trust_remote_code)")
    assert "\n" not in a.message


# ---- spec.storage.endpoint ----------------------------------------------------------------

ENDPOINTS = [
    # (url, policy, expected why)
    ("", DENYLIST, None),
    ("http://minio.storage:9000", DENYLIST, None),
    ("https://s3.amazonaws.com", DENYLIST, None),
    ("http://10.1.2.3:9000", DENYLIST, None),
    ("http://nowhere.invalid:9000", DENYLIST, None),  # does not resolve: the connection says so
    ("http://169.254.169.254", DENYLIST, WHY_METADATA),
    ("http://169.254.169.254/latest/meta-data/", LOOPBACK_OK, WHY_METADATA),
    ("http://169.254.10.1:9000", DENYLIST, WHY_LINK_LOCAL),
    ("http://[fe80::1]:9000", DENYLIST, WHY_LINK_LOCAL),
    ("http://[fd00:ec2::254]", DENYLIST, WHY_METADATA),
    ("http://[::ffff:169.254.169.254]", DENYLIST, WHY_METADATA),
    ("http://[64:ff9b::a9fe:a9fe]", DENYLIST, WHY_METADATA),
    ("http://100.100.100.200", DENYLIST, WHY_METADATA),
    ("http://metadata.google.internal", DENYLIST, WHY_METADATA),
    ("http://METADATA.Google.Internal.", DENYLIST, WHY_METADATA),
    ("http://metadata", DENYLIST, WHY_METADATA),
    ("http://instance-data", LOOPBACK_OK, WHY_METADATA),
    ("http://evil.example:9000", DENYLIST, WHY_METADATA),
    ("http://v6.example:9000", DENYLIST, WHY_LINK_LOCAL),
    ("http://rebind.example", DENYLIST, WHY_LOOPBACK),
    ("http://rebind.example", LOOPBACK_OK, None),
    ("http://mapped.example", DENYLIST, WHY_LOOPBACK),
    ("http://localhost:8333", DENYLIST, WHY_LOOPBACK),
    ("http://localhost:8333", LOOPBACK_OK, None),
    ("http://s3.localhost:8333", DENYLIST, WHY_LOOPBACK),
    ("http://127.0.0.1:8333", DENYLIST, WHY_LOOPBACK),
    ("http://127.0.0.1:8333", LOOPBACK_OK, None),
    ("http://127.3.4.5:8333", DENYLIST, WHY_LOOPBACK),
    ("http://[::1]:8333", DENYLIST, WHY_LOOPBACK),
    ("http://[::1]:8333", LOOPBACK_OK, None),
    ("http://0.0.0.0:8333", DENYLIST, WHY_LOOPBACK),
    ("http://[::]:8333", DENYLIST, WHY_LOOPBACK),
    ("ftp://minio.storage", DENYLIST, WHY_BAD_URL),
    ("minio.storage:9000", DENYLIST, WHY_BAD_URL),
    ("http://", DENYLIST, WHY_BAD_URL),
    ("http://minio.storage:99999", DENYLIST, WHY_BAD_URL),
    ("http://key:secret@minio.storage:9000", DENYLIST, WHY_USERINFO),
]


@pytest.mark.parametrize(("url", "rules", "expected"), ENDPOINTS,
                         ids=[f"{u or 'empty'}-{'loopback-ok' if r.allow_loopback else 'default'}"
                              for u, r, _ in ENDPOINTS])
def test_endpoint(url: str, rules: Policy, expected: str | None) -> None:
    v = policy.check_endpoint(url, rules, fake_resolve)
    assert why(v) is None if expected is None else expected in why(v), v
    if v is not None:
        assert v.field == "spec.storage.endpoint" and "\n" not in v.message
        assert "secret" not in v.message  # the URL's credentials are never echoed


@pytest.mark.parametrize("host", ["2130706433", "127.1", "0x7f.1"])
def test_numeric_forms_of_loopback_are_caught_by_real_resolution(host: str) -> None:
    """Names the resolver turns into 127.0.0.1 (inet_aton forms): only resolving catches them."""
    v = policy.check_endpoint(f"http://{host}:8333", DENYLIST)  # the real resolver, no network
    assert v is not None and WHY_LOOPBACK in v.why and "resolves to 127.0.0.1" in v.why


def test_resolved_violation_names_the_address() -> None:
    v = policy.check_endpoint("http://evil.example:9000", DENYLIST, fake_resolve)
    assert v is not None and v.message == (
        "spec.storage.endpoint: not allowed by the operator's policy (evil.example resolves to "
        "169.254.169.254, a cloud metadata service)")


LISTED = [
    # (allowlist entries, url, allowed?)
    (("minio.storage:9000",), "http://minio.storage:9000", True),
    (("minio.storage:9000",), "https://minio.storage:9000", True),
    (("minio.storage:9000",), "http://minio.storage:9001", False),
    (("minio.storage",), "http://minio.storage:9001", True),
    (("minio.storage",), "http://other.storage:9000", False),
    (("minio.storage",), "http://169.254.169.254", False),
    (("minio.storage",), "http://127.0.0.1:8333", False),
    (("https://s3.example.com",), "https://s3.example.com", True),
    (("https://s3.example.com",), "https://s3.example.com:443/", True),
    (("https://s3.example.com",), "http://s3.example.com", False),
    (("https://s3.example.com",), "https://s3.example.com:8443", False),
    (("*.example.com",), "https://s3.eu.example.com", True),
    (("*.example.com",), "https://example.com", False),
    (("*.example.com",), "https://evilexample.com", False),
    (("127.0.0.1",), "http://127.0.0.1:8333", True),  # the admin named it: trusted as named
    (("[::1]:8333",), "http://[::1]:8333", True),
    (("MinIO.Storage.",), "http://minio.storage", True),
]


@pytest.mark.parametrize(("entries", "url", "allowed"), LISTED)
def test_allowlist_of_endpoints_is_the_only_thing_allowed(entries: tuple[str, ...], url: str,
                                                          allowed: bool) -> None:
    v = policy.check_endpoint(url, Policy(allowed_endpoints=entries), fake_resolve)
    assert (v is None) == allowed, v
    if not allowed:
        assert v is not None and WHY_ENDPOINT_NOT_LISTED in v.why


@pytest.mark.parametrize("entry", ["ftp://x", "a/b", "", "http://", "x:y", "user@host"])
def test_bad_allowlist_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        policy.parse_entry(entry)


# ---- settings -> policy -------------------------------------------------------------------


@pytest.mark.parametrize(("env", "local", "allow_loopback"), [
    (None, False, False),      # the operator refuses loopback unless the admin allows it
    (None, True, True),        # the CLI and local runs: the user's own machine
    ("false", True, False),    # an explicit no binds local runs too
    ("true", False, True),     # the e2e tests' operator, with a loopback S3 server
])
def test_loopback_default_depends_on_where_it_runs(monkeypatch: pytest.MonkeyPatch,
                                                   env: str | None, local: bool,
                                                   allow_loopback: bool) -> None:
    monkeypatch.delenv("FINETUNE_ALLOW_LOOPBACK_ENDPOINTS", raising=False)
    if env is not None:
        monkeypatch.setenv("FINETUNE_ALLOW_LOOPBACK_ENDPOINTS", env)
    assert policy.from_env(local=local).allow_loopback is allow_loopback


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_AXOLOTL_KEY_POLICY", "allowlist")
    monkeypatch.setenv("FINETUNE_AXOLOTL_ALLOWED_KEYS", "warmup_*, weight_decay")
    monkeypatch.setenv("FINETUNE_AXOLOTL_DENIED_KEYS", "trust_remote_code")
    monkeypatch.setenv("FINETUNE_ALLOWED_S3_ENDPOINTS", "minio.storage:9000,https://s3.example.com")
    rules = policy.from_env(local=False)
    assert rules == Policy(axolotl_key_policy="allowlist", denied_keys=("trust_remote_code",),
                           allowed_keys=("warmup_*", "weight_decay"),
                           allowed_endpoints=("minio.storage:9000", "https://s3.example.com"),
                           allow_loopback=False)


def test_default_settings_deny_the_default_keys() -> None:
    assert tuple(OperatorSettings().axolotl_denied_keys) == policy.DEFAULT_DENIED_KEYS


@pytest.mark.parametrize(("name", "value", "says"), [
    ("FINETUNE_ALLOWED_S3_ENDPOINTS", "minio:9000,ftp://x",
     "FINETUNE_ALLOWED_S3_ENDPOINTS: 'ftp://x'"),
    ("FINETUNE_AXOLOTL_KEY_POLICY", "maybe", "FINETUNE_AXOLOTL_KEY_POLICY"),
    ("FINETUNE_ALLOW_LOOPBACK_ENDPOINTS", "perhaps", "FINETUNE_ALLOW_LOOPBACK_ENDPOINTS"),
])
def test_bad_policy_settings_fail_in_one_line(monkeypatch: pytest.MonkeyPatch, name: str,
                                              value: str, says: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        OperatorSettings()
    with pytest.raises(policy.PolicyError) as err:
        policy.from_env(local=True)
    assert str(err.value).startswith(says) and "\n" not in str(err.value)


# ---- the spec, and the operator's failure path --------------------------------------------


def _body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"baseModel": {"name": "Qwen/Qwen2.5-0.5B-Instruct"},
                            "dataset": {"uri": "s3://tasks/triage/"},
                            "output": {"uri": "s3://adapters/"},
                            "storage": {"endpoint": "http://minio.storage:9000"}}
    body.update(over)
    return body


def test_check_spec_reports_keys_then_endpoint() -> None:
    both = parse_spec(_body(training={"axolotl": {"trust_remote_code": True}},
                            storage={"endpoint": "http://169.254.169.254"}))
    assert policy.check_spec(both, DENYLIST, fake_resolve).field == \
        "spec.training.axolotl.trust_remote_code"  # type: ignore[union-attr]
    endpoint_only = parse_spec(_body(storage={"endpoint": "http://169.254.169.254"}))
    assert policy.check_spec(endpoint_only, DENYLIST, fake_resolve).field == \
        "spec.storage.endpoint"  # type: ignore[union-attr]
    assert policy.check_spec(parse_spec(_body()), DENYLIST, fake_resolve) is None


class RecordingKube:
    """Just the calls a policy failure may make; any other call (reading the Secret, creating
    a Job) is an AttributeError, so the test also proves nothing else was touched."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []

    def patch_task_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.patches.append(patch)

    def post_event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


@pytest.mark.parametrize(("spec", "field"), [
    (_body(training={"axolotl": {"trust_remote_code": True}}),
     "spec.training.axolotl.trust_remote_code"),
    (_body(storage={"endpoint": "http://169.254.169.254"}), "spec.storage.endpoint"),
    (_body(storage={"endpoint": "http://127.0.0.1:8333"}), "spec.storage.endpoint"),
], ids=["axolotl-key", "metadata-endpoint", "loopback-endpoint"])
def test_operator_fails_the_task_for_good(spec: dict[str, Any], field: str) -> None:
    from finetune_operator.reconcile import Context, Task, reconcile
    from finetune_operator.resources import TaskRef

    kube = RecordingKube()
    ctx = Context(OperatorSettings(), kube)  # type: ignore[arg-type]
    task = Task(TaskRef("triage", "ml", "uid-1"), 1, spec, {})
    with pytest.raises(kopf.PermanentError) as err:
        reconcile(task, ctx)
    assert str(err.value).startswith(f"PolicyViolation: {field}: not allowed by the operator's")
    status = kube.patches[-1]
    assert status["phase"] == "Failed" and status["message"].startswith(field)
    [cond] = [c for c in status["conditions"] if c["type"] == "DataReady"]
    assert (cond["status"], cond["reason"]) == ("False", "PolicyViolation")
    assert cond["message"] == status["message"] and "\n" not in cond["message"]
    [(type_, reason, message)] = kube.events
    assert (type_, reason, message) == ("Warning", "PolicyViolation", status["message"])


def test_operator_allows_loopback_when_the_admin_does() -> None:
    """FINETUNE_ALLOW_LOOPBACK_ENDPOINTS=true: the run goes on past the policy (to the Secret)."""
    from finetune_operator.reconcile import Context, Task, reconcile
    from finetune_operator.resources import TaskRef

    kube = RecordingKube()
    ctx = Context(OperatorSettings(allow_loopback_endpoints=True), kube)  # type: ignore[arg-type]
    task = Task(TaskRef("triage", "ml", "uid-1"), 1,
                _body(storage={"endpoint": "http://127.0.0.1:8333"}), {})
    with pytest.raises(AttributeError, match="read_secret_data"):
        reconcile(task, ctx)
    assert not kube.events


def test_local_run_fails_the_task_with_the_same_message(tmp_path: Any) -> None:
    """`finetune run --local`: the task ends Failed, exit 2, before any data is read."""
    import io

    import yaml
    from finetune_dev.local import EXIT_BAD_INPUT, run_tasks

    doc = {"apiVersion": "finetune.v-sekai.org/v1alpha1", "kind": "FineTuneTask",
           "metadata": {"name": "triage", "namespace": "ml"},
           "spec": _body(dataset={"uri": str(tmp_path / "missing.jsonl")},
                         output={"uri": str(tmp_path / "out")},
                         training={"axolotl": {"trust_remote_code": True}})}
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(doc))
    said: list[str] = []
    [res] = run_tasks([str(path)], out=io.StringIO(), say=said.append)
    assert res.exit_code == EXIT_BAD_INPUT and res.status.phase == "Failed"
    expected = policy.check_axolotl_keys({"trust_remote_code": True}, DENYLIST)
    assert expected is not None and res.status.message == expected.message
    [cond] = [c for c in res.status.conditions if c.type == "DataReady"]
    assert (cond.status, cond.reason, cond.message) == ("False", "PolicyViolation",
                                                        expected.message)
    assert res.manifest is None and not (tmp_path / "out").exists()
