"""Operator settings from the environment (prefix FINETUNE_), validated once at startup."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .policy import DEFAULT_DENIED_KEYS, KeyPolicy, parse_entry


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FINETUNE_", extra="ignore")

    # NoDecode: the env value is comma-separated (a,b), not JSON; _split parses it.
    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Namespaces to watch; empty = the whole cluster."
    )
    trainer_image: str = Field("ghcr.io/v-sekai/finetune-trainer:0.1.0")
    trainer_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    default_output_uri: str = Field("", description="Used when a task's spec.output.uri is empty.")
    default_s3_endpoint: str = Field("", description="Used when a task's spec.storage.endpoint is empty.")
    metrics_port: int = Field(8080, ge=0, le=65535, description="0 disables the /metrics server.")
    health_port: int = Field(8081, ge=0, le=65535, description="Kopf liveness endpoint; 0 disables.")
    watch_server_timeout: int = Field(300, ge=10, description="Seconds the API server keeps a watch.")
    watch_client_timeout: int = Field(330, ge=10, description="Seconds before the client drops a watch.")
    poll_interval: float = Field(30.0, gt=0, description="Seconds between timer checks of a running Job.")
    taskset_resync_interval: float = Field(
        300.0, gt=0, description="Seconds between listings of a FineTuneTaskSet's S3 prefix "
        "(new folders become tasks, removed ones are deleted) and re-applies of its tasks.")
    progress_interval: float = Field(
        30.0, gt=0, description="Seconds between reads of a running trainer's progress.json "
        "(and so between status.progress patches) per task.")
    image_pull_timeout: float = Field(
        600.0, ge=0, description="Seconds a trainer pod may fail to pull its image before the "
        "run fails (ImagePullFailed) and its Job is deleted; 0: wait for the Job's deadline.")
    unschedulable_timeout: float = Field(
        1800.0, ge=0, description="Seconds a trainer pod may find no node before the run fails "
        "(Unschedulable) and its Job is deleted; 0: wait for the Job's deadline.")
    job_ttl_seconds: int = Field(7 * 24 * 3600, ge=0, description="ttlSecondsAfterFinished of Jobs.")
    service_account: str = Field("", description="ServiceAccount of trainer pods; empty = namespace default.")
    device_profile: Literal["gpu", "cpu"] = Field("gpu", description="Trainer profile when gpu > 0.")
    gpu_memory_gib: float | None = Field(
        None, gt=0, description="Memory of one GPU of the cluster, for training.sharding auto "
                                "(spec.resources.gpuMemoryGiB wins).")
    max_parallel_preparations: int = Field(4, ge=1, description="Data preparations run at once.")

    # The admin's policy (policy.py, docs/policy.md); lists are comma-separated like namespaces.
    axolotl_key_policy: KeyPolicy = Field(
        "denylist", description="denylist: any spec.training.axolotl key but the denied ones; "
        "allowlist: only the allowed ones (denied keys stay refused).")
    axolotl_denied_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_DENIED_KEYS),
        description="spec.training.axolotl keys refused (glob patterns); replaces the defaults.")
    axolotl_allowed_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="The only keys allowed in allowlist mode (globs).")
    allowed_s3_endpoints: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="When set, the only spec.storage.endpoint values "
        "allowed: host, host:port, *.domain or URL entries, trusted as named.")
    allow_loopback_endpoints: bool | None = Field(
        None, description="Allow loopback S3 endpoints; unset: refused by the operator, allowed "
        "by the CLI and local runs (the user's own machine).")

    @field_validator("namespaces", "axolotl_denied_keys", "axolotl_allowed_keys",
                     "allowed_s3_endpoints", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [n.strip() for n in value.split(",") if n.strip()]
        return value

    @field_validator("allowed_s3_endpoints")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        for entry in value:
            parse_entry(entry)  # ValueError names the entry: fail at startup, not per task
        return value
