"""Storage: s3:// URIs and local paths behind one small API, with errors that read as one line.

Why one class for both: the operator reads S3, local runs and tests read directories, and the
preparation code must not care which. S3 goes through boto3 with path-style addressing for
custom endpoints (SeaweedFS, MinIO), standard retries with backoff, and bounded reads. Listing
uses boto3's paginator; files (base models, adapters) move with boto3's managed transfers
(`upload_file`/`download_file`: streamed from and to disk, multipart above TRANSFER_THRESHOLD),
so an object is never whole in memory unless a caller asks for its bytes (`read_bytes`, bounded
by `max_bytes`).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel, SecretStr

from .run import one_line

CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
MiB = 1024 * 1024
# Managed transfers: objects above the threshold go in 8 MiB parts, 4 at a time. A download
# streams each part to disk in 256 KiB reads with at most 32 of them queued for the writer, so
# a transfer holds a few MiB whatever the object's size.
TRANSFER_THRESHOLD = 8 * MiB
TRANSFER_PART = 8 * MiB
TRANSFER_CONCURRENCY = 4
TRANSFER_IO_CHUNK = 256 * 1024
TRANSFER_IO_QUEUE = 32


class StorageError(Exception):
    """A storage failure with a one-line reason. `transient` says whether a retry may help."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(one_line(message))
        self.transient = transient


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int
    etag: str | None


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def parse_s3(uri: str) -> S3Location:
    if not is_s3(uri):
        raise StorageError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise StorageError(f"s3 URI without a bucket: {uri}")
    return S3Location(bucket, key)


def join(base: str, *parts: str) -> str:
    """Join URI or path segments with single slashes."""
    out = base.rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out


class Credentials(BaseModel):
    """S3 credentials; SecretStr keeps them out of reprs, logs and tracebacks."""

    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Credentials:
        env = os.environ if env is None else env
        return cls(
            access_key_id=env.get("AWS_ACCESS_KEY_ID"),
            secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
            session_token=env.get("AWS_SESSION_TOKEN"),
        )

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str], *, secret_name: str = "") -> Credentials:
        """From a Kubernetes Secret's `data` (base64 values)."""
        missing = [k for k in CREDENTIAL_KEYS[:2] if k not in data]
        if missing:
            raise StorageError(f"secret {secret_name!r} lacks key(s) {', '.join(missing)}")
        decoded = {k: base64.b64decode(v).decode().strip() for k, v in data.items() if k in CREDENTIAL_KEYS}
        return cls.from_env(decoded)

    def boto_kwargs(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.access_key_id:
            out["aws_access_key_id"] = self.access_key_id.get_secret_value()
        if self.secret_access_key:
            out["aws_secret_access_key"] = self.secret_access_key.get_secret_value()
        if self.session_token:
            out["aws_session_token"] = self.session_token.get_secret_value()
        return out

    def secret_values(self) -> list[str]:
        """The raw values, so callers can assert they never leak."""
        return [s.get_secret_value() for s in (self.access_key_id, self.secret_access_key,
                                               self.session_token) if s]


_NOT_FOUND = ("404", "NoSuchKey", "NotFound")
_AUTH_CODES = {"AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken",
               "ExpiredToken", "403", "Forbidden"}
_TRANSIENT_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "500", "503"}


def _code(err: Any) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


@contextmanager
def _atomic(target: Path) -> Iterator[Path]:
    """A temp file next to `target`, renamed onto it when the block ends (never half-written)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _explain(err: Exception, uri: str) -> StorageError:
    """Turn a botocore (or boto3 transfer) error into one line that says what to fix."""
    from boto3.exceptions import RetriesExceededError, S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    # The managed transfers wrap the client's error: explain the one underneath.
    if isinstance(err, S3UploadFailedError) and isinstance(err.__context__, Exception):
        return _explain(err.__context__, uri)
    if isinstance(err, RetriesExceededError) and isinstance(err.last_exception, Exception):
        return _explain(err.last_exception, uri)
    if isinstance(err, ClientError):
        code = _code(err)
        if code == "NoSuchBucket":
            return StorageError(f"bucket does not exist: {parse_s3(uri).bucket} ({uri})")
        if code in _NOT_FOUND:
            return StorageError(f"object not found: {uri}")
        if code in _AUTH_CODES:
            return StorageError(f"S3 refused the credentials ({code}) for {uri}: check the secret")
        if code in _TRANSIENT_CODES:
            return StorageError(f"S3 is unavailable ({code}) for {uri}", transient=True)
        return StorageError(f"S3 error {code or 'unknown'} for {uri}")
    if isinstance(err, EndpointConnectionError):
        return StorageError(f"cannot reach the S3 endpoint for {uri}: {err}", transient=True)
    if isinstance(err, BotoCoreError):
        return StorageError(f"S3 client error for {uri}: {err}", transient=True)
    return StorageError(f"storage error for {uri}: {err}")


class Storage:
    """Read, list and write s3:// URIs (through one boto3 client) and local paths."""

    list_page_size = 1000  # keys per ListObjectsV2 page (S3's maximum)

    def __init__(self, endpoint: str = "", credentials: Credentials | None = None,
                 region: str = "us-east-1", max_attempts: int = 5) -> None:
        self.max_attempts = max_attempts
        self.endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL", "")
        self.credentials = credentials or Credentials.from_env()
        self.region = region
        self._client: Any = None
        self._transfer_config: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"max_attempts": self.max_attempts, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                s3={"addressing_style": "path" if self.endpoint else "auto"},
                signature_version="s3v4",
            )
            self._client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint or None, region_name=self.region,
                config=config, **self.credentials.boto_kwargs(),
            )
        return self._client

    @property
    def transfer_config(self) -> Any:
        """boto3's TransferConfig for the managed uploads and downloads (see TRANSFER_*)."""
        if self._transfer_config is None:
            from boto3.s3.transfer import TransferConfig

            self._transfer_config = TransferConfig(
                multipart_threshold=TRANSFER_THRESHOLD, multipart_chunksize=TRANSFER_PART,
                max_concurrency=TRANSFER_CONCURRENCY, io_chunksize=TRANSFER_IO_CHUNK,
                max_io_queue=TRANSFER_IO_QUEUE)
        return self._transfer_config

    def _call(self, uri: str, fn: Any, **kwargs: Any) -> Any:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError, Boto3Error) as err:
            raise _explain(err, uri) from None

    # ---- reading -----------------------------------------------------------------------

    def list(self, uri: str) -> list[ObjectInfo]:
        """Objects at `uri`: the object itself, or every object under a prefix (sorted)."""
        if not is_s3(uri):
            path = Path(uri)
            if path.is_file():
                return [ObjectInfo(str(path), path.stat().st_size, None)]
            if path.is_dir():
                return [ObjectInfo(str(p), p.stat().st_size, None)
                        for p in sorted(path.rglob("*")) if p.is_file()]
            raise StorageError(f"path does not exist: {uri}")
        loc = parse_s3(uri)
        if loc.key and not loc.key.endswith("/"):
            head = self._head(loc)
            if head is not None:
                return [head]
        prefix = loc.key if not loc.key or loc.key.endswith("/") else loc.key + "/"
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=loc.bucket, Prefix=prefix, PaginationConfig={"PageSize": self.list_page_size})
        # The paginator sends a request per page as it is iterated: errors surface here.
        items = self._call(uri, lambda: [item for page in pages for item in page.get("Contents", [])])
        out = [ObjectInfo(f"s3://{loc.bucket}/{item['Key']}", int(item["Size"]),
                          item.get("ETag", "").strip('"') or None)
               for item in items if not item["Key"].endswith("/")]
        return sorted(out, key=lambda o: o.uri)

    def _head(self, loc: S3Location) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=loc.bucket, Key=loc.key)
        except ClientError as err:
            if _code(err) in _NOT_FOUND:
                self._check_bucket(loc)
                return None
            raise _explain(err, loc.uri) from None
        except Exception as err:  # noqa: BLE001 - botocore transport errors
            raise _explain(err, loc.uri) from None
        return ObjectInfo(loc.uri, int(head["ContentLength"]), head.get("ETag", "").strip('"') or None)

    def _check_bucket(self, loc: S3Location) -> None:
        """After a 404 from a HEAD (no body to say which): raise if the bucket is what is missing."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=loc.bucket)
        except ClientError as bucket_err:
            if _code(bucket_err) in ("404", "NoSuchBucket"):
                raise StorageError(f"bucket does not exist: {loc.bucket} ({loc.uri})") from None
            raise _explain(bucket_err, loc.uri) from None

    def exists(self, uri: str) -> bool:
        if not is_s3(uri):
            return Path(uri).exists()
        return self._head(parse_s3(uri)) is not None

    def read_bytes(self, uri: str, max_bytes: int | None = None) -> bytes:
        """The whole object; refuse (before downloading) one larger than `max_bytes`."""
        if not is_s3(uri):
            path = Path(uri)
            if not path.is_file():
                raise StorageError(f"file not found: {uri}")
            if max_bytes is not None and path.stat().st_size > max_bytes:
                raise StorageError(f"{uri} is {path.stat().st_size} bytes, over the cap of {max_bytes}")
            return path.read_bytes()
        loc = parse_s3(uri)
        resp = self._call(uri, self.client.get_object, Bucket=loc.bucket, Key=loc.key)
        size = int(resp.get("ContentLength", 0))
        if max_bytes is not None and size > max_bytes:
            resp["Body"].close()
            raise StorageError(f"{uri} is {size} bytes, over the cap of {max_bytes}")
        try:
            return resp["Body"].read()
        except Exception as err:  # noqa: BLE001
            raise _explain(err, uri) from None

    def read_text(self, uri: str, max_bytes: int | None = None) -> str:
        return self.read_bytes(uri, max_bytes).decode("utf-8")

    # ---- writing -----------------------------------------------------------------------

    def write_bytes(self, uri: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Write one object; local writes go through a temp file and rename (never half-written)."""
        if not is_s3(uri):
            with _atomic(Path(uri)) as tmp:
                tmp.write_bytes(data)
            return
        loc = parse_s3(uri)
        self._call(uri, self.client.upload_fileobj, Fileobj=io.BytesIO(data), Bucket=loc.bucket,
                   Key=loc.key, ExtraArgs={"ContentType": content_type}, Config=self.transfer_config)

    def write_text(self, uri: str, text: str, content_type: str = "text/plain") -> None:
        self.write_bytes(uri, text.encode("utf-8"), content_type)

    def upload_file(self, path: str | Path, uri: str,
                    content_type: str = "application/octet-stream") -> None:
        """Copy one local file to `uri`, streamed from disk (multipart when large)."""
        if not is_s3(uri):
            with _atomic(Path(uri)) as tmp:
                shutil.copyfile(path, tmp)
            return
        loc = parse_s3(uri)
        self._call(uri, self.client.upload_file, Filename=str(path), Bucket=loc.bucket,
                   Key=loc.key, ExtraArgs={"ContentType": content_type}, Config=self.transfer_config)

    def delete(self, uri: str) -> None:
        """Remove one object or file if present (the trainer prunes its checkpoints)."""
        if not is_s3(uri):
            Path(uri).unlink(missing_ok=True)
            return
        loc = parse_s3(uri)
        self._call(uri, self.client.delete_object, Bucket=loc.bucket, Key=loc.key)

    def download_file(self, uri: str, path: str | Path) -> Path:
        """Copy one object to the local file `path`, streamed to disk (ranged parts when large);
        the file appears whole or not at all."""
        target = Path(path)
        if not is_s3(uri):
            if not Path(uri).is_file():
                raise StorageError(f"file not found: {uri}")
            with _atomic(target) as tmp:
                shutil.copyfile(uri, tmp)
            return target
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        loc = parse_s3(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(Bucket=loc.bucket, Key=loc.key, Filename=str(target),
                                      Config=self.transfer_config)
        except ClientError as err:
            if _code(err) in _NOT_FOUND:  # from the transfer's HEAD: key or bucket missing
                self._check_bucket(loc)
                raise StorageError(f"object not found: {uri}") from None
            raise _explain(err, uri) from None
        except (BotoCoreError, Boto3Error) as err:
            raise _explain(err, uri) from None
        return target

    def upload_dir(self, local_dir: str | Path, uri: str) -> list[str]:
        """Copy every file under `local_dir` to `uri` (a prefix); returns the written URIs."""
        written = []
        root = Path(local_dir)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            target = join(uri, path.relative_to(root).as_posix())
            self.upload_file(path, target)
            written.append(target)
        return written

    def download_prefix(self, uri: str, local_dir: str | Path) -> list[Path]:
        """Copy every object under prefix `uri` into `local_dir`, keeping relative paths."""
        base = uri.rstrip("/") + "/"
        out = []
        for obj in self.list(base):
            rel = obj.uri[len(base):] if obj.uri.startswith(base) else Path(obj.uri).name
            out.append(self.download_file(obj.uri, Path(local_dir) / rel))
        return out

    def ensure_bucket(self, uri: str) -> None:
        """Create the bucket if absent (local runs and tests; the operator never creates buckets)."""
        if not is_s3(uri):
            Path(uri).mkdir(parents=True, exist_ok=True)
            return
        from botocore.exceptions import ClientError

        loc = parse_s3(uri)
        try:
            self.client.head_bucket(Bucket=loc.bucket)
        except ClientError:
            self._call(uri, self.client.create_bucket, Bucket=loc.bucket)
