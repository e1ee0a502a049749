"""Start or stop the local cloud for readers: moto_server and an MLflow server on loopback.

    python scripts/local_stack.py start    # both, health-checked; prints the environment to export
    python scripts/local_stack.py env      # print that environment again
    python scripts/local_stack.py status
    python scripts/local_stack.py stop

Logs and process ids live in .local-stack/ ($LOCAL_STACK_DIR if set; the ports are $MOTO_PORT and $MLFLOW_PORT). The MLflow server keeps its
runs and registry in .local-stack/mlflow-server.db and its artifacts in s3://mlflow-artifacts on
moto_server. moto keeps everything in memory, so `stop` first saves every S3 bucket to
.local-stack/s3/ and `start` puts them back: registered models still load after a restart. Other
moto state (Kinesis streams, IAM roles, Lambda functions) starts empty each time.
"""

from __future__ import annotations

import argparse
import os
import sys

from ride_duration import local_stack
from ride_duration.files import write_atomically
from ride_duration.settings import LOCAL_STACK, SettingError, Settings, export

try:
    SETTINGS = Settings.from_environ(groups=LOCAL_STACK)
except SettingError as error:
    sys.exit(f"local_stack.py: {error}")
STATE = SETTINGS.local_stack_dir
SAVED_S3 = STATE / "s3"
MOTO_PORT = SETTINGS.moto_port
MLFLOW_PORT = SETTINGS.mlflow_port
MOTO_URL = f"http://{local_stack.HOST}:{MOTO_PORT}"
MLFLOW_URL = f"http://{local_stack.HOST}:{MLFLOW_PORT}"


def reader_env() -> dict:
    return {**local_stack.aws_env(MOTO_URL), "MLFLOW_TRACKING_URI": MLFLOW_URL}


def pid_of(name: str) -> int | None:
    path = STATE / f"{name}.pid"
    if not path.exists():
        return None
    pid = int(path.read_text())
    try:
        os.killpg(pid, 0)
        return pid
    except ProcessLookupError:
        path.unlink()
        return None


def start() -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    export(local_stack.aws_env(MOTO_URL))
    if pid_of("moto") is None:
        process = local_stack.start_moto(MOTO_PORT, STATE / "moto.log")
        write_atomically(STATE / "moto.pid", str(process.pid))
        write_atomically(STATE / "moto.url", MOTO_URL)
        print(f"moto_server up at {MOTO_URL} (log {STATE / 'moto.log'})")
        restored = local_stack.restore_buckets(SAVED_S3)
        if restored:
            print(f"restored {restored} S3 objects saved by the last stop ({SAVED_S3})")
    local_stack.ensure_bucket()
    if pid_of("mlflow") is None:
        process = local_stack.start_mlflow(
            MLFLOW_PORT,
            STATE / "mlflow.log",
            f"sqlite:///{STATE / 'mlflow-server.db'}",
            f"s3://{local_stack.ARTIFACT_BUCKET}/",
            env=local_stack.aws_env(MOTO_URL),
        )
        write_atomically(STATE / "mlflow.pid", str(process.pid))
        print(f"MLflow server up at {MLFLOW_URL} (log {STATE / 'mlflow.log'})")
    print_env()


def print_env() -> None:
    print("\n# Paste into your shell to use the local stack (unset them to talk to real AWS):")
    for key, value in reader_env().items():
        print(f"export {key}={value}")


def stop() -> None:
    """Stop MLflow, save moto's S3 buckets to disk, stop moto (left running if the save fails)."""
    for name in ("mlflow", "moto"):
        pid = pid_of(name)
        if pid is None:
            continue
        if name == "moto":
            url_file = STATE / "moto.url"
            export(local_stack.aws_env(url_file.read_text() if url_file.exists() else MOTO_URL))
            try:
                saved = local_stack.save_buckets(SAVED_S3)
            except Exception as error:
                raise local_stack.ServiceFailed(
                    f"could not save moto's S3 buckets ({type(error).__name__}: {error}); "
                    f"moto_server (pid {pid}) is left running so that nothing is lost"
                ) from error
            print(f"saved {saved} S3 objects to {SAVED_S3}")
        local_stack.stop(pid)
        (STATE / f"{name}.pid").unlink(missing_ok=True)
        print(f"stopped {name} (pid {pid})")


def status() -> None:
    for name, url in (("moto", MOTO_URL), ("mlflow", MLFLOW_URL)):
        pid = pid_of(name)
        print(f"{name:7} {'running, pid ' + str(pid) if pid else 'stopped'} {url if pid else ''}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "stop", "status", "env"])
    args = parser.parse_args(argv)
    try:
        {"start": start, "stop": stop, "status": status, "env": print_env}[args.command]()
    except local_stack.ServiceFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
