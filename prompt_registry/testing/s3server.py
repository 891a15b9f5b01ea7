"""A local S3-compatible server for tests and benchmarks: ``moto``'s server, bound to 127.0.0.1.

``local_s3()`` starts it in a child process on a free port, waits until it answers, and yields an
:class:`S3Server` (endpoint, credentials, ``environ()`` for the ``AWS_*`` variables the
``s3://`` store reads, ``make_bucket``); on exit the process is stopped. Nothing leaves the
machine: moto keeps every object in the child's memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen

    def environ(self) -> dict[str, str]:
        """The variables an ``s3://`` store (and boto3) read to reach this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION}

    def client(self) -> Any:
        import boto3  # type: ignore[import-untyped]

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)

    def make_bucket(self, *, versioning: bool = False, name: str | None = None) -> str:
        """A new empty bucket (versioned if asked); returns its name."""
        name = name or f"pr-{uuid.uuid4().hex[:20]}"
        client = self.client()
        client.create_bucket(Bucket=name)
        if versioning:
            client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name


@contextlib.contextmanager
def local_s3(timeout_s: float = 30.0) -> Iterator[S3Server]:
    """Run moto's S3 server on 127.0.0.1 for the duration of the block."""
    try:
        import moto.server  # noqa: F401 - fail here with a clear message, not in the child
    except ImportError as exc:
        raise RuntimeError("the local S3 server needs moto[server]: pip install 'prompt-registry[test]'") from exc
    port = _free_port()
    env = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "1"}
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto's S3 server exited with code {process.returncode} before it answered")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto's S3 server did not answer on 127.0.0.1:{port} within {timeout_s:.0f} s")
            time.sleep(0.1)
        yield S3Server(f"http://127.0.0.1:{port}", process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
