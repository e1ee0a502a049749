"""Orchestrated batch: the Prefect 3 flows of notebooks/06-orchestrate.ipynb (exported to
scripts/orchestrate.py) against a real Prefect server on loopback: the server's scheduler creating the
monthly deployment's runs and one of them executing once due, the deployment triggered for a date, a
backfill equal to scripts/score.py, retries on a transient read failure only.

Prefect is the optional `orchestration` extra: `make test-orchestration` installs it and runs this
file (nothing here may skip there); the core suite runs without Prefect and skips it.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

pytest.importorskip("prefect", reason="Prefect is the optional orchestration extra: make test-orchestration")

from ride_duration import batch, data, local_stack
from ride_duration.settings import exported
from tests.helpers import ROOT, has_real_month, require_real_months, tracking_store

FLOWS_PY = ROOT / "scripts" / "orchestrate.py"
SCORE_PY = ROOT / "scripts" / "score.py"
NOTEBOOK = ROOT / "notebooks" / "06-orchestrate.ipynb"


def import_file(name: str, path: Path):
    """An exported script as a module (the code that is deployed, not the notebook)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flows = import_file("flows", FLOWS_PY)
score = import_file("score_script", SCORE_PY)


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory, logs_dir):
    """One `prefect server start` per module (it takes ~20 s here), sqlite under a temporary
    PREFECT_HOME; this process and every subprocess it starts talk to it."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    port = local_stack.free_port()
    home = tmp_path_factory.mktemp("prefect-home")
    env = {**flows.local_prefect_env(port, home), "PREFECT_UI_ENABLED": "false", "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    process = local_stack.start(
        flows.server_command(port),
        logs_dir / "prefect-server.log",
        f"http://{local_stack.HOST}:{port}/api/health",
        env=env,
        timeout=240,
    )
    try:
        with (
            exported(env),
            temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"], PREFECT_HOME: home}),
        ):
            yield env
            drain_prefect_workers()
    finally:
        local_stack.stop(process)


def drain_prefect_workers() -> None:
    """Send this process's pending run logs and events while the server is up; at exit Prefect would
    otherwise retry them against a stopped server for minutes."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=30)


@pytest.fixture(scope="module")
def served(prefect_api, registered_model, tmp_path_factory, logs_dir):
    """`orchestrate.py serve` in its own process group, healthy once its runner polls the server."""
    output_root = tmp_path_factory.mktemp("served-output")
    runner_port = local_stack.free_port()
    log = logs_dir / "prefect-serve.log"
    process = local_stack.start(
        [
            sys.executable,
            str(FLOWS_PY),
            "serve",
            "--taxi-type",
            "green",
            "--synthetic-fallback",
            "--model-uri",
            registered_model["artifact_uri"],
            "--output-root",
            str(output_root),
        ],
        log,
        f"http://{local_stack.HOST}:{runner_port}/health",
        env={
            "PREFECT_RUNNER_SERVER_ENABLE": "true",
            "PREFECT_RUNNER_SERVER_HOST": local_stack.HOST,
            "PREFECT_RUNNER_SERVER_PORT": str(runner_port),
        },
        timeout=180,
    )
    yield {"output_root": output_root, "log": log}
    local_stack.stop(process)  # before the server: on shutdown it pauses its schedule there


def run_cli(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(FLOWS_PY), *args], capture_output=True, text=True, timeout=timeout)


def real_rows(year: int, month: int) -> int:
    return pq.ParquetFile(data.data_dir() / data.month_filename("green", year, month)).metadata.num_rows


def staging_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".staging-*")) + sorted(p.name for p in folder.rglob("*.part"))


def task_runs(flow_run_id, name: str, expected: int = 1, timeout: float = 30) -> list:
    """The flow run's task runs called name*, once the server has recorded them (it does so from events)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            found = [run for run in runs if run.name.startswith(name)]
            finished = [run for run in found if run.state and run.state.is_final()]
            if len(finished) >= expected or time.monotonic() > deadline:
                return found
            time.sleep(0.5)


# --- the month rule -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "run_date, month",
    [
        (date(2021, 4, 2), (2021, 3)),
        (date(2021, 4, 30), (2021, 3)),
        (date(2022, 1, 2), (2021, 12)),
    ],
)
def test_a_run_scores_the_month_before_its_date(run_date, month):
    assert flows.month_to_score(run_date) == month


def test_backfill_dates_are_the_schedules_dates():
    """run_date_for is the inverse of the rule, on the day the cron schedule fires."""
    assert flows.MONTHLY_CRON.split()[2] == str(flows.RUN_DAY)
    for year, month in [(2021, 1), (2021, 11), (2021, 12)]:
        run_date = flows.run_date_for(year, month)
        assert run_date.day == flows.RUN_DAY
        assert flows.month_to_score(run_date) == (year, month)


# --- served deployment: the schedule, trigger, backfill -------------------------------------------


def next_cron_times(cron: str, after: datetime, count: int) -> list[datetime]:
    """The cron's next count firing times after `after`, in UTC (by cronsim, which Prefect's Cron uses)."""
    from cronsim import CronSim

    times = CronSim(cron, after.astimezone(UTC))
    return [next(times) for _ in range(count)]


def scheduled_runs(deployment_id, expected: int, timeout: float) -> list:
    """The deployment's runs in state Scheduled, earliest first, once there are `expected` of them."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
                ),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            )
            if len(runs) >= expected or time.monotonic() > deadline:
                return runs
            time.sleep(1)


def wait_final(flow_run_id, timeout: float):
    """The flow run once its state is final (or as it is when timeout seconds have passed)."""
    from prefect import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if (run.state and run.state.is_final()) or time.monotonic() > deadline:
                return run
            time.sleep(1)


def test_the_servers_scheduler_creates_the_monthly_runs_and_a_due_one_scores_its_month(
    served, registered_model, logs_dir
):
    """The server's scheduler (not this test) creates the monthly deployment's runs at the cron's next
    times; the earliest, made due now, is picked up by the served deployment and scores the month
    before the date it was scheduled for (a month no file exists for: --synthetic-fallback scores a
    synthetic one, labelled so)."""
    from prefect import get_client
    from prefect.states import Scheduled

    server_log = logs_dir / "prefect-server.log"

    def logs() -> str:
        return f"server log:\n{local_stack.log_tail(server_log)}\nserve log:\n{local_stack.log_tail(served['log'])}"

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(flows.MONTHLY)
    runs = scheduled_runs(deployment.id, expected=2, timeout=180)
    assert len(runs) >= 2, f"the server's scheduler created {len(runs)} runs of {flows.MONTHLY}\n{logs()}"
    assert all(run.auto_scheduled for run in runs)
    starts = [run.expected_start_time.astimezone(UTC) for run in runs]
    assert starts == next_cron_times(flows.MONTHLY_CRON, datetime.now(UTC), len(runs))

    due = runs[0]
    year, month = flows.month_to_score(starts[0].date())
    output = served["output_root"] / "green" / f"{year:04d}-{month:02d}.parquet"
    assert not output.exists()
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(due.id, Scheduled(scheduled_time=datetime.now(UTC)), force=True)
    finished = wait_final(due.id, timeout=300)
    assert finished.state.is_completed(), f"{finished.state}\n{logs()}"
    assert finished.expected_start_time == due.expected_start_time  # still the date the scheduler gave it

    info = batch.output_info(output)
    assert info == {
        "model_version": registered_model["model_id"],
        "month": f"green/{year:04d}-{month:02d}",
        "synthetic": not has_real_month("green", year, month),
    }
    assert len(batch.read_output(output)) > 0
    assert staging_leftovers(served["output_root"]) == []
    later = scheduled_runs(deployment.id, expected=len(runs) - 1, timeout=0)
    assert [run.id for run in later][: len(runs) - 1] == [run.id for run in runs[1:]]


def test_served_deployment_scores_the_month_before_the_trigger_date(served, registered_model):
    """Serve, trigger a run for 2021-04-02, find green 2021-03 scored."""
    from prefect import get_client

    require_real_months(("green", 2021, 3))
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(flows.MONTHLY)
    assert [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules] == [(flows.MONTHLY_CRON, "UTC")]
    assert deployment.parameters["model_uri"] == registered_model["artifact_uri"]

    started = time.time()
    result = run_cli("trigger", "--date", "2021-04-02", "--timeout", "400")
    assert result.returncode == 0, (
        f"{result.stdout}\n{result.stderr}\nserve log:\n{local_stack.log_tail(served['log'])}"
    )
    assert "Completed" in result.stdout

    output = served["output_root"] / "green" / "2021-03.parquet"
    assert output.is_file() and output.stat().st_mtime >= started - 1
    assert not (served["output_root"] / "green" / "2021-04.parquet").exists()
    info = batch.output_info(output)
    assert info == {"model_version": registered_model["model_id"], "month": "green/2021-03", "synthetic": False}
    scored = batch.read_output(output)
    assert len(scored) == real_rows(2021, 3)
    assert scored["ride_id"].iloc[0] == "2021/03_0"
    assert staging_leftovers(served["output_root"]) == []


def test_backfill_of_three_months_equals_score_py(served, registered_model, tmp_path):
    """The backfill deployment over green 2021-01..03 writes what score.py writes."""
    months = [(2021, 1), (2021, 2), (2021, 3)]
    require_real_months(*[("green", year, month) for year, month in months])

    result = run_cli("backfill", "--from", "2021-01", "--to", "2021-03", "--timeout", "600", timeout=700)
    assert result.returncode == 0, (
        f"{result.stdout}\n{result.stderr}\nserve log:\n{local_stack.log_tail(served['log'])}"
    )

    for year, month in months:
        orchestrated = served["output_root"] / "green" / f"{year:04d}-{month:02d}.parquet"
        by_script = tmp_path / f"{year:04d}-{month:02d}.parquet"
        score.score_month("green", year, month, registered_model["artifact_uri"], str(by_script))
        assert batch.output_info(orchestrated) == batch.output_info(by_script)
        expected = batch.read_output(by_script)
        assert len(expected) == real_rows(year, month)
        pd.testing.assert_frame_equal(batch.read_output(orchestrated), expected, check_exact=True)
    assert staging_leftovers(served["output_root"]) == []


def test_backfill_command_rejects_a_bad_range_before_any_run(prefect_api):
    result = run_cli("backfill", "--from", "2021-03", "--to", "2021-01", timeout=120)
    assert result.returncode == 2
    assert "empty range: 2021-03 is after 2021-01" in result.stderr


def test_output_to_s3_equals_score_py(prefect_api, registered_model, moto_url, tmp_path):
    """The write task uploads to s3:// (moto_server) with the metadata score.py's outputs carry."""
    import boto3

    require_real_months(("green", 2021, 2))
    bucket = f"orchestrated-{time.monotonic_ns()}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    state = flows.score_month_flow(
        date(2021, 3, 2), "green", registered_model["artifact_uri"], f"s3://{bucket}/scores", return_state=True
    )
    assert state.is_completed(), state.message
    uploaded = f"s3://{bucket}/scores/green/2021-02.parquet"
    by_script = score.score_month("green", 2021, 2, registered_model["artifact_uri"], f"s3://{bucket}/script.parquet")
    assert batch.output_info(uploaded) == batch.output_info(by_script["output"])
    pd.testing.assert_frame_equal(batch.read_output(uploaded), batch.read_output(by_script["output"]), check_exact=True)
    keys = [item["Key"] for item in boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(keys) == ["scores/green/2021-02.parquet", "script.parquet"]


def test_the_month_flow_monitors_what_it_scored(prefect_api, registered_model, tmp_path):
    """monitor=True: the monitor task runs the retraining loop's step on the month written, against the
    validation month of the model that scored it (2021-03 is not flagged for the 2021-01 model)."""
    from ride_duration import monitoring, retraining

    require_real_months(("green", 2021, 2), ("green", 2021, 3))
    assert retraining.monitoring_installed(), "make test-orchestration installs the extra monitoring too"
    database = f"sqlite:///{tmp_path / 'monitoring.db'}"
    environment = {"MONITORING_DB_URL": database, "MONITORING_REPORTS_DIR": str(tmp_path / "reports")}
    with tracking_store(registered_model["tracking_uri"]), exported(environment):
        state = flows.score_month_flow(
            date(2021, 4, 2),
            "green",
            registered_model["uri"],
            str(tmp_path / "output"),
            monitor=True,
            return_state=True,
        )
    assert state.is_completed(), state.message
    step = state.result()["monitoring"]
    assert (step["month"], step["action"], step["flagged"]) == ("2021-03", "not flagged", False), step["detail"]
    assert step["model_version"] == registered_model["model_id"]
    (row,) = monitoring.read_metrics(database).itertuples()
    assert (row.month, row.reference, row.rides) == ("2021-03", "green/2021-02", real_rows(2021, 3))
    assert retraining.read_steps(database)["action"].tolist() == ["not flagged"]
    assert [run.state.type.value for run in task_runs(state.state_details.flow_run_id, "monitor")] == ["COMPLETED"]


# --- retries: transient failures only ----------------------------------------------------------


def test_transient_read_failure_is_retried_and_the_run_completes(prefect_api, registered_model, tmp_path, monkeypatch):
    """The first download of the month fails with a connection error; read retries."""
    require_real_months(("green", 2021, 2))
    real_file = data.data_dir() / data.month_filename("green", 2021, 2)
    monkeypatch.setenv("TAXI_DATA_DIR", str(tmp_path / "empty-data"))  # not local: read must download it
    downloads = []

    def flaky_download(url, dest, timeout=30):
        downloads.append(url)
        if len(downloads) == 1:
            raise ConnectionError("connection reset by peer (injected)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(real_file, dest)
        return dest

    monkeypatch.setattr(data, "download", flaky_download)
    output_root = tmp_path / "output"
    state = flows.score_month_flow(
        date(2021, 3, 2), "green", registered_model["artifact_uri"], str(output_root), return_state=True
    )
    assert state.is_completed(), state.message
    assert downloads == [data.month_url("green", 2021, 2)] * 2

    reads = task_runs(state.state_details.flow_run_id, "read")
    assert [(run.run_count, run.state.type.value) for run in reads] == [(2, "COMPLETED")]
    output = output_root / "green" / "2021-02.parquet"
    assert batch.output_info(output)["month"] == "green/2021-02"
    assert len(batch.read_output(output)) == real_rows(2021, 2)
    assert staging_leftovers(output_root) == []


def test_bad_input_is_not_retried(prefect_api, registered_model, tmp_path, monkeypatch):
    """A file that is not a TLC parquet file, or an unknown taxi type, fails read once, with its reason."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / data.month_filename("green", 2021, 2)).write_text("not parquet")
    monkeypatch.setenv("TAXI_DATA_DIR", str(folder))
    opened = []

    def counting_open_month(*args, **kwargs):
        opened.append(args)
        return batch.open_month(*args, **kwargs)

    monkeypatch.setattr(flows, "open_month", counting_open_month)
    output_root = tmp_path / "output"
    for taxi_type, reason in [("green", "is not a readable parquet file"), ("purple", "unknown taxi type 'purple'")]:
        opened.clear()
        state = flows.score_month_flow(
            date(2021, 3, 2), taxi_type, registered_model["artifact_uri"], str(output_root), return_state=True
        )
        assert state.is_failed()
        assert reason in state.message
        assert len(opened) == 1, f"{taxi_type}: read ran {len(opened)} times"
        reads = task_runs(state.state_details.flow_run_id, "read")
        assert [(run.run_count, run.state.type.value) for run in reads] == [(1, "FAILED")]
    assert not output_root.exists() or list(output_root.rglob("*")) == []


# --- the notebook -------------------------------------------------------------------------------


def test_notebook_runs_one_flow_under_papermill(prefect_api, registered_model, tmp_path):
    """notebooks/06-orchestrate.ipynb runs its demo flow run (against this module's server)."""
    import papermill

    require_real_months(("green", 2021, 3))
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(tmp_path / "06-orchestrate.ipynb"),
        parameters={
            "run_date": "2021-04-02",
            "taxi_type": "green",
            "model_uri": registered_model["artifact_uri"],
            "output_root": str(tmp_path / "output"),
            "synthetic": False,
        },
        cwd=str(ROOT / "notebooks"),
        progress_bar=False,
    )
    output = tmp_path / "output" / "green" / "2021-03.parquet"
    assert batch.output_info(output)["month"] == "green/2021-03"
    assert len(batch.read_output(output)) == real_rows(2021, 3)
