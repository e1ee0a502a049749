# Exported from notebooks/06-orchestrate.ipynb by `make export`: edit the notebook, not this file.

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import asdict
from datetime import date
from pathlib import Path

import botocore.exceptions

from ride_duration import local_stack
from ride_duration.batch import (
    default_output,
    is_s3,
    month_range,
    open_month,
    output_info_for,
    publish,
    staging_path,
)
from ride_duration.data import TAXI_TYPES, month_label
from ride_duration.settings import BATCH, DEFAULT_MODEL_URI, PROJECT_ROOT, Settings, export_defaults


PREFECT_HOME = PROJECT_ROOT / ".prefect"  # the local server's sqlite database; ignored by git
LOCAL_PORT = 4200


def local_prefect_env(port: int = LOCAL_PORT, home: Path = PREFECT_HOME) -> dict:
    """Settings for a Prefect server on loopback with its sqlite database under home, and for its clients."""
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://{local_stack.HOST}:{port}/api",
        "PREFECT_SERVER_API_HOST": local_stack.HOST,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{Path(home) / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def server_command(port: int = LOCAL_PORT) -> list[str]:
    """`prefect server start` on loopback (its API health check: http://127.0.0.1:port/api/health)."""
    return [local_stack.bin_path("prefect"), "server", "start", "--host", local_stack.HOST, "--port", str(port)]


if __name__ == "__main__":  # the command line: the local server's settings unless the environment has its own
    export_defaults(local_prefect_env())


sys.path.insert(0, str(PROJECT_ROOT / "scripts"))
from prefect import flow, serve, task
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from prefect.schedules import Cron
from score import score_month  # the batch scorer, exported from notebooks/score.ipynb


MONTHLY_CRON = "0 6 2 * *"  # 06:00 UTC on the 2nd of every month
RUN_DAY = 2  # the day of the month the schedule runs on


def month_to_score(run_date: date) -> tuple[int, int]:
    """(year, month) a run dated run_date scores: the calendar month before it."""
    return (run_date.year - 1, 12) if run_date.month == 1 else (run_date.year, run_date.month - 1)


def run_date_for(year: int, month: int) -> date:
    """The date of the scheduled run that scores (year, month): the 2nd of the month after."""
    return date(year + 1, 1, RUN_DAY) if month == 12 else date(year, month + 1, RUN_DAY)


TRANSIENT_ERRORS = (OSError, botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)
RETRY_DELAYS = [2, 10, 30]  # seconds before the 1st, 2nd and 3rd retry


def is_transient(task, task_run, state) -> bool:
    """Prefect's retry condition: retry network and I/O errors, never bad input."""
    try:
        state.result()
    except TRANSIENT_ERRORS:
        return True
    except Exception:
        return False
    return False


retry_transient = dict(retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=is_transient)


@task(name="read", **retry_transient)
def read_month_input(taxi_type: str, year: int, month: int, synthetic: bool | str = False) -> dict:
    """Locate (or download) the month and check its file; returns where its rides come from."""
    month_input = open_month(taxi_type, year, month, synthetic=synthetic)
    return {"source": month_input.source, "synthetic": month_input.synthetic, "rows": month_input.num_rows}


@task(name="score", **retry_transient)
def score_to_staging(taxi_type: str, year: int, month: int, model_uri: str, month_input: dict, staging: str) -> dict:
    """score.py's score_month on the file read found, written to the staging file; returns its summary."""
    from_synthetic = month_input["source"] == "synthetic"
    return score_month(
        taxi_type,
        year,
        month,
        model_uri,
        staging,
        input_file=None if from_synthetic else month_input["source"],
        synthetic=from_synthetic,
    )


@task(name="write", **retry_transient)
def publish_output(staging: str, destination: str, info: dict) -> str:
    """Upload the finished staging file to an s3:// destination whole (same metadata as score.py's outputs);
    a local staging file is renamed into place as the flow's staging block ends."""
    publish(staging, destination, info)
    return destination


@task(name="monitor")
def monitor_scored(
    taxi_type: str, year: int, month: int, destination: str, retrain: bool | None, synthetic: bool | str
) -> dict:
    """The retraining loop's step on the month just written: monitor it and, if it is flagged, retrain the
    production pipeline and run the gate (ride_duration.retraining). Not retried: the step records its own
    failures, and the month is scored whatever happens here."""
    from ride_duration.retraining import RetrainingLoop

    step = RetrainingLoop(retrain=retrain, synthetic=synthetic).after_scoring(taxi_type, year, month, destination)
    return asdict(step) | {"note": step.note}


@flow(name="score-month", log_prints=True)
def score_month_flow(
    run_date: date | None = None,
    taxi_type: str = "green",
    model_uri: str = DEFAULT_MODEL_URI,
    output_root: str = "output",
    synthetic: bool | str = False,
    monitor: bool = False,
    retrain: bool | None = None,
) -> dict:
    """Score the month before run_date (default: the date this run was scheduled for); with monitor, then
    the retraining loop's step (retrain: default RETRAIN_FLAGGED_MONTHS)."""
    run_date = run_date or flow_run.scheduled_start_time.date()
    year, month = month_to_score(run_date)
    destination = default_output(taxi_type, year, month, output_root)
    print(f"run date {run_date}: scoring {month_label(taxi_type, year, month)} into {destination}")
    month_input = read_month_input(taxi_type, year, month, synthetic)
    with staging_path(destination) as staging:  # gone when the block ends, renamed into place if it finishes
        summary = score_to_staging(taxi_type, year, month, model_uri, month_input, str(staging))
        info = output_info_for(
            summary["model_version"], taxi_type, year, month, summary["synthetic"], summary.get("registered_version")
        )
        publish_output(str(staging), destination, info)
    print(f"scored {summary['rows']:,} rides with model {summary['model_version']} -> {destination}")
    result = {**summary, "output": destination}
    if monitor:
        state = monitor_scored(taxi_type, year, month, destination, retrain, synthetic, return_state=True)
        failed = {"note": f"monitoring failed: {state.message}"}
        result["monitoring"] = state.result() if state.is_completed() else failed
    return result


@flow(name="backfill-months", log_prints=True)
def backfill_flow(
    start: str,
    end: str,
    taxi_type: str = "green",
    model_uri: str = DEFAULT_MODEL_URI,
    output_root: str = "output",
    synthetic: bool | str = False,
    monitor: bool = False,
    retrain: bool | None = None,
) -> list[dict]:
    """Score every month from start to end ("YYYY-MM", both included), one score-month run each."""
    rows = []
    for year, month in month_range(start, end):
        state = score_month_flow(
            run_date_for(year, month), taxi_type, model_uri, output_root, synthetic, monitor, retrain, return_state=True
        )
        row = {
            "month": month_label(taxi_type, year, month),
            "status": "failed",
            "rows": None,
            "output": None,
            "model_version": None,
            "note": state.message,
        }
        if state.is_completed():
            result = state.result()
            notes = ["SYNTHETIC" if result["synthetic"] else "", result.get("monitoring", {}).get("note", "")]
            row.update(
                status="scored",
                rows=result["rows"],
                output=result["output"],
                model_version=result["model_version"],
                note="; ".join(note for note in notes if note),
            )
        rows.append(row)
    create_table_artifact(rows, key=f"backfill-{taxi_type}", description=f"backfill {taxi_type} {start} to {end}")
    failed = [row["month"] for row in rows if row["status"] == "failed"]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(rows)} months failed: {', '.join(failed)}")
    return rows


MONTHLY = "score-month/monthly"
BACKFILL = "backfill-months/backfill"


def serve_deployments(
    taxi_type: str, model_uri: str, output_root: str, synthetic: bool | str = False, monitor: bool = False
) -> None:
    """Serve the monthly schedule and the backfill deployment until interrupted, one run at a time."""
    if not is_s3(output_root):
        output_root = str(Path(output_root).resolve())  # runs must not depend on where they are started
    parameters = {
        "taxi_type": taxi_type,
        "model_uri": model_uri,
        "output_root": output_root,
        "synthetic": synthetic,
        "monitor": monitor,
    }
    monthly = score_month_flow.to_deployment(
        name="monthly",
        schedules=[Cron(MONTHLY_CRON, timezone="UTC")],
        parameters=parameters,
        description="Scores the previous month, on the 2nd of every month at 06:00 UTC.",
    )
    backfill = backfill_flow.to_deployment(
        name="backfill", parameters=parameters, description="Scores a range of months, one score-month run each."
    )
    serve(monthly, backfill, limit=1)


def trigger(run_date: date, timeout: float = 3600):
    """Run the monthly deployment for run_date now (it scores the month before); returns the flow run."""
    from prefect.deployments import run_deployment

    return run_deployment(MONTHLY, parameters={"run_date": run_date.isoformat()}, timeout=timeout, poll_interval=2)


def trigger_backfill(start: str, end: str, timeout: float = 3600):
    """Run the backfill deployment for start..end ("YYYY-MM") now; returns the flow run."""
    from prefect.deployments import run_deployment

    return run_deployment(BACKFILL, parameters={"start": start, "end": end}, timeout=timeout, poll_interval=2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrate.py",
        description="Monthly batch scoring with Prefect 3 against a local server on loopback "
        "(settings from local_prefect_env unless PREFECT_* variables say otherwise).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("server", help="run the local Prefect server in the foreground (Ctrl-C stops it)")
    server.add_argument("--port", type=int, default=LOCAL_PORT, help=f"loopback port (default {LOCAL_PORT})")
    serve_parser = commands.add_parser(
        "serve", help="serve the monthly schedule and the backfill deployment until Ctrl-C"
    )
    serve_parser.add_argument(
        "--taxi-type",
        choices=list(TAXI_TYPES),
        default=TAXI_TYPES[0],
        help=f"which TLC trip records to score (default: {TAXI_TYPES[0]})",
    )
    serve_parser.add_argument(
        "--model-uri",
        default=Settings.from_environ(groups=BATCH).model_uri,
        help=f"models:/..., or the artifact's s3:// or file:// URI (default: $MODEL_URI, else {DEFAULT_MODEL_URI})",
    )
    serve_parser.add_argument(
        "--output-root",
        default="output",
        help="folder or s3://bucket/prefix; each month goes to {root}/{taxi_type}/{YYYY-MM}.parquet (default: output)",
    )
    serve_parser.add_argument(
        "--synthetic-fallback",
        dest="synthetic",
        action="store_const",
        const="fallback",
        default=False,
        help="score a synthetic month when the real one cannot be found",
    )
    serve_parser.add_argument(
        "--monitor",
        action="store_true",
        help="after each month, the retraining loop: monitor it, retrain if it is flagged "
        "(RETRAIN_FLAGGED_MONTHS=0: record only; needs the extra `monitoring`)",
    )
    trigger_parser = commands.add_parser("trigger", help="run the monthly deployment for a date now")
    trigger_parser.add_argument(
        "--date",
        required=True,
        type=date.fromisoformat,
        metavar="YYYY-MM-DD",
        help="the run date; the run scores the month before it",
    )
    backfill_parser = commands.add_parser("backfill", help="run the backfill deployment for a range of months now")
    backfill_parser.add_argument("--from", dest="start", required=True, metavar="YYYY-MM", help="first month")
    backfill_parser.add_argument("--to", dest="end", required=True, metavar="YYYY-MM", help="last month (included)")
    for waiting in (trigger_parser, backfill_parser):
        waiting.add_argument(
            "--timeout",
            type=float,
            default=3600,
            help="seconds to wait for the run to finish; 0 returns at once (default 3600)",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "server":
        return subprocess.call(server_command(args.port))
    if args.command == "serve":
        serve_deployments(args.taxi_type, args.model_uri, args.output_root, args.synthetic, args.monitor)
        return 0
    if args.command == "trigger":
        run = trigger(args.date, args.timeout)
    else:
        try:
            month_range(args.start, args.end)  # a bad range fails here, not in a run
        except ValueError as error:
            parser.error(str(error))
        run = trigger_backfill(args.start, args.end, args.timeout)
    print(f"flow run {run.name} ({run.id}): {run.state.name}")
    if run.state.is_completed() or (args.timeout == 0 and run.state.is_scheduled()):
        return 0
    print(f"orchestrate.py: {run.state.message or 'not finished in time'}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
