"""Start and stop the local stand-ins for the cloud: moto_server (S3, Kinesis, IAM, Lambda API)
and an `mlflow server`, each on loopback, in its own process group, with its log in a file.

Used by scripts/local_stack.py (for readers) and by the tests' fixtures (one definition of how
each service is started and health-checked).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from ride_duration.settings import PROJECT_ROOT, child_environment

HOST = "127.0.0.1"
# Dummy credentials and a region: moto accepts anything, boto3 insists on having some.
LOCAL_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
ARTIFACT_BUCKET = "mlflow-artifacts"


class ServiceFailed(RuntimeError):
    """A local service failed: it did not come up (the message carries the end of its log), or its state
    could not be saved."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def bin_path(name: str) -> str:
    """A console script of this environment (moto_server, mlflow, gunicorn)."""
    return str(Path(sys.executable).with_name(name))


def uv_binary() -> str:
    """The uv that `make setup` used: the one on the PATH, else the project's .tools/bin/uv."""
    found = shutil.which("uv") or str(PROJECT_ROOT / ".tools" / "bin" / "uv")
    if not Path(found).exists():
        raise FileNotFoundError("uv is not installed (make setup installs it)")
    return found


def log_tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def start(command: list[str], log: Path, health_url: str, env: dict | None = None, timeout: float = 60, cwd=None):
    """Start a service in its own process group (in cwd, if given) and wait until health_url answers 200."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_environment(env),
            cwd=cwd,
            start_new_session=True,
        )
    try:
        wait_healthy(process, health_url, timeout, f"{command[0]}", log)
    except BaseException:  # not healthy, or Ctrl-C while waiting: it runs in its own session, stop it
        stop(process)
        raise
    return process


def wait_healthy(process, health_url: str, timeout: float, name: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceFailed(f"{name} exited with {process.returncode}; log {log}:\n{log_tail(log)}")
        try:
            if requests.get(health_url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise ServiceFailed(f"{name} not healthy after {timeout:.0f}s at {health_url}; log {log}:\n{log_tail(log)}")


def stop(process_or_pid, timeout: float = 15) -> None:
    """Stop a service we started: SIGTERM to its process group, SIGKILL if it lingers."""
    pid = process_or_pid if isinstance(process_or_pid, int) else process_or_pid.pid
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        if not isinstance(process_or_pid, int) and process_or_pid.poll() is not None:
            break
        time.sleep(0.1)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if not isinstance(process_or_pid, int):
        process_or_pid.wait(timeout=5)


def start_moto(port: int, log: Path):
    """moto_server: every AWS API the tutorial uses, at http://127.0.0.1:port."""
    return start(
        [bin_path("moto_server"), "-H", HOST, "-p", str(port)],
        log,
        f"http://{HOST}:{port}/moto-api/",
    )


def aws_env(moto_url: str) -> dict:
    """The environment that points boto3 (and MLflow's S3 client) at the local endpoint."""
    return {**LOCAL_AWS_ENV, "AWS_ENDPOINT_URL": moto_url, "MLFLOW_S3_ENDPOINT_URL": moto_url}


def ensure_bucket(bucket: str = ARTIFACT_BUCKET) -> None:
    from ride_duration import aws

    s3 = aws.client("s3")
    try:
        s3.head_bucket(Bucket=bucket)
    except s3.exceptions.ClientError:
        s3.create_bucket(Bucket=bucket)


def save_buckets(folder: Path) -> int:
    """Copy every S3 bucket of the endpoint, object by object, into folder (replacing what it held);
    moto_server keeps them in memory only. Returns the number of objects saved."""
    from ride_duration import aws

    s3 = aws.client("s3")
    staging = folder.with_name(folder.name + ".part")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "objects").mkdir(parents=True)
    manifest = {"buckets": [], "objects": []}
    for bucket in s3.list_buckets()["Buckets"]:
        manifest["buckets"].append(bucket["Name"])
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
            for item in page.get("Contents", []):
                head = s3.head_object(Bucket=bucket["Name"], Key=item["Key"])
                file = f"{len(manifest['objects'])}"
                s3.download_file(bucket["Name"], item["Key"], str(staging / "objects" / file))
                manifest["objects"].append(
                    {
                        "bucket": bucket["Name"],
                        "key": item["Key"],
                        "file": file,
                        "content_type": head.get("ContentType"),
                        "metadata": head.get("Metadata", {}),
                    }
                )
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return len(manifest["objects"])


def restore_buckets(folder: Path) -> int:
    """Put back what save_buckets saved in folder (nothing if it saved nothing); returns the object count."""
    from ride_duration import aws

    manifest_file = folder / "manifest.json"
    if not manifest_file.exists():
        return 0
    manifest = json.loads(manifest_file.read_text())
    s3 = aws.client("s3")
    for bucket in manifest["buckets"]:
        ensure_bucket(bucket)
    for item in manifest["objects"]:
        extra = {"Metadata": item["metadata"]}
        if item["content_type"]:
            extra["ContentType"] = item["content_type"]
        s3.upload_file(str(folder / "objects" / item["file"]), item["bucket"], item["key"], ExtraArgs=extra)
    return len(manifest["objects"])


def start_mlflow(port: int, log: Path, backend_uri: str, artifact_root: str, env: dict | None = None):
    """`mlflow server` with a sqlite backend and artifacts stored directly at artifact_root.

    --no-serve-artifacts: clients read and write the s3:// root themselves, so a model's
    artifact URI is a real s3:// URI that works with the server down.
    """
    return start(
        [
            bin_path("mlflow"),
            "server",
            "--host",
            HOST,
            "--port",
            str(port),
            "--backend-store-uri",
            backend_uri,
            "--default-artifact-root",
            artifact_root,
            "--no-serve-artifacts",
            "--workers",
            "1",
        ],
        log,
        f"http://{HOST}:{port}/health",
        env=env,
        timeout=120,
    )
