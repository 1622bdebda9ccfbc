"""The admin's policy: what a FineTuneTask may ask of the operator beyond the CRD's own schema.

Two ways a user could reach past the operator's choices, each checked here before any work:

- `spec.training.axolotl` is merged last into the rendered config, so a key there overrides the
  renderer: `trust_remote_code: true`, the data and output paths, pushes to a model hub, plugin
  imports. Keys matching a denied pattern (glob, e.g. `hub_*`) are refused; in allowlist mode
  only allowed keys pass, and a denied key is refused even then (deny wins).
- `spec.storage.endpoint` is a URL the operator connects to from its own pod (data
  preparation), so an unchecked one is a server-side request forgery: the node's cloud metadata
  service, the pod's own loopback. Link-local and metadata addresses and names, and loopback,
  are refused (literal addresses, and every address a host name resolves to); loopback can be
  allowed by a switch. When the admin lists endpoints, only those pass, and a listed endpoint is
  trusted as named.

Pure apart from name resolution, which is a parameter (`resolve`), so tests run on tables. The
operator (reconcile.py), `finetune prepare`/`render` (cli.py) and local runs (finetune_dev.local)
call `check_spec`; each turns a Violation into its own failure (condition + Event +
PermanentError, exit 2, a Failed local status) with the same one-line message. docs/policy.md
says why each default key is denied.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from finetune_contract import BUDGET_KEY, SEARCH_KEY

if TYPE_CHECKING:
    from .settings import OperatorSettings
    from .spec import FineTuneTaskSpec

KeyPolicy = Literal["denylist", "allowlist"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str], list[str]]

# ---- reasons ------------------------------------------------------------------------------

REASON = "PolicyViolation"  # the condition and Event reason of every violation
NOT_ALLOWED = "not allowed by the operator's policy"
WHY_DENIED_KEY = "denied key"
WHY_KEY_NOT_LISTED = "not in the allowed keys"
WHY_ENDPOINT_NOT_LISTED = "not in the allowed S3 endpoints"
WHY_BAD_URL = "not an http(s) URL with a host"
WHY_USERINFO = "credentials in the URL (they belong in the Secret)"
WHY_LOOPBACK = "a loopback address"
WHY_LINK_LOCAL = "a link-local address"
WHY_METADATA = "a cloud metadata service"

AXOLOTL_FIELD = "spec.training.axolotl"
ENDPOINT_FIELD = "spec.storage.endpoint"

# ---- defaults -----------------------------------------------------------------------------

DEFAULT_DENIED_KEYS: tuple[str, ...] = (
    # code from outside the image: a model's own modeling code, plugin modules, a library path
    "trust_remote_code", "plugins", "torchdistx_path",
    # what the renderer owns: the model and tokenizer, the prepared splits, where output goes
    "base_model", "base_model_config", "revision_of_model", "tokenizer_config", "lora_model_dir",
    "resume_from_checkpoint", "datasets", "test_datasets", "pretraining_dataset",
    "dataset_prepared_path", "output_dir", BUDGET_KEY, SEARCH_KEY,
    # pushes to a model hub (models, checkpoints or the prepared data leave the cluster)
    "hub_*", "push_*", "hf_use_auth_token",
    # DeepSpeed / FSDP config files and settings (paths read inside the trainer)
    "deepspeed", "fsdp", "fsdp_config",
    # pickled weights run code when someone loads the adapter
    "save_safetensors",
)

# Names and addresses of metadata services (most also sit in 169.254.0.0/16, which is refused
# anyway; these are the ones that do not, or that a name reaches without a link-local address).
METADATA_NAMES = frozenset({
    "metadata", "metadata.google.internal", "metadata.goog", "instance-data",
    "instance-data.ec2.internal", "metadata.azure.internal", "metadata.tencentyun.com",
})
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "192.0.0.192",
))
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Policy:
    """What the admin allows; built from the settings by `from_settings`."""

    axolotl_key_policy: KeyPolicy = "denylist"
    denied_keys: tuple[str, ...] = DEFAULT_DENIED_KEYS
    allowed_keys: tuple[str, ...] = ()
    allowed_endpoints: tuple[str, ...] = ()
    allow_loopback: bool = False


@dataclass(frozen=True)
class Violation:
    """One refused field; `message` is the one line every caller reports."""

    field: str
    why: str

    @property
    def message(self) -> str:
        return f"{self.field}: {NOT_ALLOWED} ({self.why})"

    def __str__(self) -> str:
        return self.message


class PolicyError(ValueError):
    """The policy settings themselves are wrong (a bad FINETUNE_* value); one line."""


def from_settings(settings: OperatorSettings, *, local: bool) -> Policy:
    """The policy in force. `local` (CLI and local runs) allows loopback endpoints unless the
    admin said otherwise: there the process runs as the task's author on their own machine, so
    its loopback is theirs already (the demo's and tests' S3 server listens there)."""
    loopback = settings.allow_loopback_endpoints
    return Policy(axolotl_key_policy=settings.axolotl_key_policy,
                  denied_keys=tuple(settings.axolotl_denied_keys),
                  allowed_keys=tuple(settings.axolotl_allowed_keys),
                  allowed_endpoints=tuple(settings.allowed_s3_endpoints),
                  allow_loopback=local if loopback is None else loopback)


def from_env(*, local: bool) -> Policy:
    """`from_settings` on the FINETUNE_* environment; PolicyError (one line) on a bad value."""
    from pydantic import ValidationError

    from .settings import OperatorSettings

    try:
        settings = OperatorSettings()
    except ValidationError as err:
        e = err.errors()[0]
        where = "FINETUNE_" + ".".join(str(p) for p in e["loc"]).upper()
        raise PolicyError(f"{where}: {e['msg'].removeprefix('Value error, ')}") from None
    return from_settings(settings, local=local)


# ---- spec.training.axolotl ----------------------------------------------------------------


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(key.lower(), p.lower()) for p in patterns)


def check_axolotl_keys(keys: Iterable[str], policy: Policy) -> Violation | None:
    """The first refused key (sorted, so the API's and a YAML file's order agree), naming the
    others in the same line."""
    refused: list[tuple[str, str]] = []
    for key in sorted(keys):
        if _matches(key, policy.denied_keys):
            refused.append((key, WHY_DENIED_KEY))
        elif policy.axolotl_key_policy == "allowlist" and not _matches(key, policy.allowed_keys):
            refused.append((key, WHY_KEY_NOT_LISTED))
    if not refused:
        return None
    (key, why), rest = refused[0], [k for k, _ in refused[1:]]
    if rest:
        why += f"; also refused: {', '.join(rest)}"
    return Violation(f"{AXOLOTL_FIELD}.{key}", why)


# ---- spec.storage.endpoint ----------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """An endpoint URL, or an allowlist entry (scheme and port None: any)."""

    scheme: str | None
    host: str
    port: int | None


def _host(name: str) -> str:
    return name.lower().rstrip(".")


def parse_endpoint(url: str) -> Endpoint:
    """An http(s) endpoint URL; ValueError (naming what is wrong) otherwise."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ValueError(WHY_BAD_URL) from None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError(WHY_BAD_URL)
    if parts.username is not None or parts.password is not None:
        raise ValueError(WHY_USERINFO)
    return Endpoint(parts.scheme, _host(parts.hostname), port or DEFAULT_PORTS[parts.scheme])


def parse_entry(entry: str) -> Endpoint:
    """An allowlist entry: a URL (`https://s3.example.com`, scheme and port must match), or a
    host with an optional port (`minio.storage`, `minio.storage:9000`, `[fd00::1]:9000`), where
    `*.example.com` matches every name under example.com."""
    entry = entry.strip()
    if "://" in entry:
        try:
            return parse_endpoint(entry)
        except ValueError as err:
            raise ValueError(f"{entry!r}: {err}") from None
    try:
        parts = urlsplit("//" + entry)
        port = parts.port
    except ValueError:
        raise ValueError(f"{entry!r}: not a host, host:port or URL") from None
    host = parts.hostname or ""
    if not host or parts.path or parts.query or parts.username is not None:
        raise ValueError(f"{entry!r}: not a host, host:port or URL")
    return Endpoint(None, _host(host), port)


def _listed(endpoint: Endpoint, entries: Iterable[str]) -> bool:
    for entry in map(parse_entry, entries):
        if entry.host.startswith("*."):
            host_ok = endpoint.host.endswith(entry.host[1:])
        else:
            host_ok = endpoint.host == entry.host
        if (host_ok and entry.scheme in (None, endpoint.scheme)
                and entry.port in (None, endpoint.port)):
            return True
    return False


def _address(text: str) -> IPAddress | None:
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])  # fe80::1%eth0: the zone is no matter
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:  # ::ffff:169.254.169.254 reaches the IPv4 address
            return addr.ipv4_mapped
        if addr in NAT64:  # so does 64:ff9b::a9fe:a9fe where a NAT64 gateway exists
            return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return addr


def address_risk(addr: IPAddress) -> str | None:
    """Why the operator must not connect to this address, or None."""
    if addr in METADATA_ADDRESSES:
        return WHY_METADATA
    if addr.is_link_local:
        return WHY_LINK_LOCAL
    if addr.is_loopback or addr.is_unspecified:  # 0.0.0.0 and :: reach the local host
        return WHY_LOOPBACK
    return None


def name_risk(host: str) -> str | None:
    """Why this host name is refused before it is even resolved, or None."""
    if host == "localhost" or host.endswith(".localhost"):
        return WHY_LOOPBACK
    if host in METADATA_NAMES:
        return WHY_METADATA
    return None


def resolve_host(host: str) -> list[str]:
    """Every address `host` resolves to; [] when it does not resolve (the connection itself
    then fails and reports it, as it would without a policy)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return sorted({str(info[4][0]) for info in infos})


def check_endpoint(url: str, policy: Policy, resolve: Resolver = resolve_host) -> Violation | None:
    """None when the operator may connect to `url` (empty: the admin's default or AWS)."""
    if not url:
        return None
    try:
        endpoint = parse_endpoint(url)
    except ValueError as err:
        return Violation(ENDPOINT_FIELD, str(err))
    if policy.allowed_endpoints:  # the admin's list is the whole story, trusted as named
        if _listed(endpoint, policy.allowed_endpoints):
            return None
        return Violation(ENDPOINT_FIELD, f"{endpoint.host}: {WHY_ENDPOINT_NOT_LISTED}")
    literal = _address(endpoint.host)
    if literal is not None:
        found = [(literal, address_risk(literal))]
    else:
        risk = name_risk(endpoint.host)
        if risk and not (risk == WHY_LOOPBACK and policy.allow_loopback):
            return Violation(ENDPOINT_FIELD, f"{endpoint.host} is {risk}")
        resolved = [a for a in map(_address, resolve(endpoint.host)) if a is not None]
        found = [(a, address_risk(a)) for a in resolved]
    for addr, risk in found:
        if risk is None or (risk == WHY_LOOPBACK and policy.allow_loopback):
            continue
        if literal is not None:
            return Violation(ENDPOINT_FIELD, f"{endpoint.host} is {risk}")
        return Violation(ENDPOINT_FIELD, f"{endpoint.host} resolves to {addr}, {risk}")
    return None


# ---- the spec -----------------------------------------------------------------------------


def check_spec(spec: FineTuneTaskSpec, policy: Policy,
               resolve: Resolver = resolve_host) -> Violation | None:
    """The first violation of the policy in a task's spec, or None."""
    return (check_axolotl_keys(spec.training.axolotl, policy)
            or check_endpoint(spec.storage.endpoint, policy, resolve))
