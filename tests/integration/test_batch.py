"""Batch scoring end to end: notebooks/score.ipynb under papermill, its export `python scripts/score.py`,
every real month bit-identical to pipeline.predict with the registered model, S3 output on moto_server
(a failed or killed upload leaves nothing), a backfill over real months, notebook 05.

The pure parts (ride ids, columns, month checks, the atomic write, scored_already, the backfill's
decisions, the command line's checks) are tested with stand-in models in tests/unit/test_batch_*.py
and tests/unit/test_score_adapter.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from ride_duration import batch, data
from ride_duration.batch import months, output
from ride_duration.data import add_duration, month_filename, read_month_file
from ride_duration.features import frame_features
from ride_duration.model import load_model
from ride_duration.rides import MAX_LOCATION_ID, MAX_TRIP_DISTANCE
from tests.batch_support import SCORE_PY, assert_clean_failure, import_score, run_cli
from tests.helpers import ROOT, real_green_months, require_real_months, tracking_store

score = import_score()


@pytest.fixture(scope="module")
def model(registered_model):
    """The registered model loaded from its file:// artifact URI (no tracking server involved)."""
    return load_model(registered_model["artifact_uri"])


@pytest.fixture(scope="module")
def lean_model(registered_model):
    """The same model as score.py loads it: its fitted attributes, without scikit-learn."""
    return load_model(registered_model["artifact_uri"], without_sklearn=True)


@pytest.fixture
def offline(monkeypatch):
    """No TLC download: a month missing from TAXI_DATA_DIR stays missing, online or not."""

    def no_download(url, dest, timeout=30):
        raise ConnectionError("offline (test)")

    monkeypatch.setattr(data, "download", no_download)


def run_script(*args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, str(SCORE_PY), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


# --- papermill and the exported script agree -------------------------------------------------


def test_papermill_run_equals_script_row_for_row(registered_model, tmp_path):
    """notebooks/score.ipynb under papermill and `python scripts/score.py` write the same rows."""
    import papermill

    require_real_months(("green", 2021, 3))
    by_notebook, by_script = tmp_path / "notebook.parquet", tmp_path / "script.parquet"
    with tracking_store(registered_model["tracking_uri"]):  # the kernel and the script resolve the alias there
        papermill.execute_notebook(
            str(ROOT / "notebooks" / "score.ipynb"),
            str(tmp_path / "score-run.ipynb"),
            parameters={
                "taxi_type": "green",
                "year": 2021,
                "month": 3,
                "model_uri": registered_model["uri"],
                "output_file": str(by_notebook),
            },
            cwd=str(ROOT / "notebooks"),
            progress_bar=False,
        )
        run = run_script(
            "--taxi-type",
            "green",
            "--year",
            2021,
            "--month",
            3,
            "--model-uri",
            registered_model["uri"],
            "--output",
            by_script,
        )
    assert run.returncode == 0, run.stderr
    assert "scored 83,827 rides of green/2021-03" in run.stdout

    notebook_rows, script_rows = batch.read_output(by_notebook), batch.read_output(by_script)
    pd.testing.assert_frame_equal(notebook_rows, script_rows, check_exact=True)
    assert notebook_rows.attrs["model_version"] == registered_model["model_id"]
    assert len(script_rows) == 83_827  # every row of the file, no duration filter
    assert list(script_rows.columns) == batch.output_schema("green").names
    assert set(script_rows["model_version"]) == {registered_model["model_id"]}
    assert not script_rows.attrs["synthetic"]


# --- every real month, and the fast path ------------------------------------------------------


def test_real_green_months_are_there():
    """The parametrised test below runs once per real month: in CI an empty list must fail, not pass."""
    require_real_months(("green", 2021, 1), ("green", 2021, 3))
    assert len(real_green_months()) >= 2


@pytest.mark.parametrize("year, month", real_green_months(), ids=lambda v: f"{v:02d}")
def test_every_real_green_month_scores_bit_identical_to_pipeline(year, month, model, lean_model, tmp_path):
    """The month scores; each prediction equals pipeline.predict bit for bit, for every ride the web service
    would accept; the others (real months have rides of thousands of miles) have none, and are counted.

    Scored as score.py does it (the model loaded without scikit-learn, the month never in pandas);
    the expected values come from scikit-learn's own pipeline and pandas' add_duration.
    """
    path = Path(os.environ["TAXI_DATA_DIR"]) / month_filename("green", year, month)
    assert not isinstance(lean_model.pipeline, type(model.pipeline)), "the stand-in must be the one under test"
    result = score.score_month("green", year, month, lean_model, str(tmp_path / "out.parquet"))
    scored = batch.read_output(result["output"])

    rides = add_duration(read_month_file(path, "green"), "green")
    accepted = (
        rides["trip_distance"].between(0, MAX_TRIP_DISTANCE)
        & rides["PULocationID"].between(1, MAX_LOCATION_ID)
        & rides["DOLocationID"].between(1, MAX_LOCATION_ID)
    ).to_numpy()
    expected = np.where(accepted, model.pipeline.predict(frame_features(rides)), np.nan)
    assert result["rejected"] == np.count_nonzero(~accepted)
    assert np.array_equal(scored["predicted_duration"].to_numpy(), expected, equal_nan=True)
    assert result["rows"] == len(rides) == pq.ParquetFile(path).metadata.num_rows
    assert np.array_equal(scored["actual_duration"].to_numpy(), rides["duration"].to_numpy())
    assert np.array_equal(scored["diff"].to_numpy(), rides["duration"].to_numpy() - expected, equal_nan=True)
    assert scored["ride_id"].tolist() == [f"{year:04d}/{month:02d}_{i}" for i in range(len(rides))]
    assert np.array_equal(scored["PULocationID"].to_numpy(), rides["PULocationID"].to_numpy())


def test_score_py_imports_neither_sklearn_nor_pandas(registered_model, tmp_path):
    """A cold start of score.py pays only for numpy and pyarrow: scikit-learn, scipy and pandas cost seconds."""
    require_real_months(("green", 2021, 3))
    program = (
        "import runpy, sys\n"
        "sys.argv = ['score.py', '--year', '2021', '--month', '3', '--model-uri', sys.argv[1], '--output', sys.argv[2]]\n"
        f"try:\n    runpy.run_path(sys.argv[0] and {str(SCORE_PY)!r}, run_name='__main__')\n"
        "except SystemExit as exit:\n    assert exit.code == 0, exit.code\n"
        "print(sorted(m for m in ('sklearn', 'scipy', 'pandas', 'mlflow') if m in sys.modules))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", program, registered_model["artifact_uri"], str(tmp_path / "out.parquet")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "[]", run.stdout
    assert (
        len(pq.read_table(tmp_path / "out.parquet"))
        == pq.ParquetFile(Path(os.environ["TAXI_DATA_DIR"]) / month_filename("green", 2021, 3)).metadata.num_rows
    )


def test_small_batches_give_the_same_output_with_global_ride_ids(model, tmp_path, monkeypatch):
    """Reading by row group must not change a single row, nor restart the ride numbering."""
    require_real_months(("green", 2021, 3))
    whole = score.score_month("green", 2021, 3, model, str(tmp_path / "whole.parquet"))
    monkeypatch.setattr(months, "BATCH_ROWS", 10_000)
    batched = score.score_month("green", 2021, 3, model, str(tmp_path / "batched.parquet"))
    assert pq.ParquetFile(batched["output"]).metadata.num_row_groups == 9
    pd.testing.assert_frame_equal(
        batch.read_output(whole["output"]), batch.read_output(batched["output"]), check_exact=True
    )


# --- atomic output: S3 on moto_server, interrupted runs ----------------------------------------


@pytest.fixture
def bucket(moto_url):
    import boto3

    name = f"predictions-{time.monotonic_ns()}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def test_s3_output_on_moto(registered_model, model, bucket, tmp_path):
    """scripts/score.py writes s3:// through AWS_ENDPOINT_URL; same rows as a local run."""
    require_real_months(("green", 2021, 3))
    destination = f"s3://{bucket}/green/2021-03.parquet"
    run = run_script(
        "--year", 2021, "--month", 3, "--model-uri", registered_model["artifact_uri"], "--output", destination
    )
    assert run.returncode == 0, run.stderr
    local = score.score_month("green", 2021, 3, model, str(tmp_path / "local.parquet"))
    pd.testing.assert_frame_equal(batch.read_output(destination), batch.read_output(local["output"]), check_exact=True)
    info = batch.output_info(destination)
    assert info == {
        "model_version": registered_model["model_id"],
        "month": "green/2021-03",
        "synthetic": False,
    }
    march = batch.open_month("green", 2021, 3)
    assert batch.scored_already(destination, march, registered_model["model_id"])[0]
    assert batch.scored_already(destination, march, "m-other") == (
        False,
        f"scored by {registered_model['model_id']}",
    )
    assert batch.scored_already(destination.replace("2021-03", "2021-04"), march, registered_model["model_id"]) == (
        False,
        "no output yet",
    )
    registered = f"s3://{bucket}/green/registered.parquet"  # S3 metadata carries the registered version too
    batch.publish(local["output"], registered, batch.output_info_for("m-x", "green", 2021, 3, False, "ride-duration/2"))
    assert batch.output_info(registered)["registered_version"] == "ride-duration/2"


def test_failed_s3_upload_leaves_nothing(model, bucket, monkeypatch):
    """A failure at the very last step (the upload) leaves no object at the destination."""
    import boto3

    def failing_client():
        client = boto3.client("s3")

        def fail(**kwargs):
            raise ConnectionError("injected: connection lost during upload")

        for operation in ("PutObject", "UploadPart", "CompleteMultipartUpload"):
            client.meta.events.register(f"before-call.s3.{operation}", fail)
        return client

    monkeypatch.setattr(output, "s3_client", failing_client)
    destination = f"s3://{bucket}/green/2021-03.parquet"
    with pytest.raises(Exception, match="injected"):
        score.score_month("green", 2021, 3, model, destination, synthetic=True)
    monkeypatch.undo()
    assert batch.output_info(destination) is None


def test_missing_bucket_is_a_clear_error(model, moto_url, capsys):
    code, _, err = cli(
        [
            "--year",
            2021,
            "--month",
            3,
            "--synthetic",
            "--model-uri",
            model.uri,
            "--output",
            "s3://no-such-bucket/green/2021-03.parquet",
        ],
        capsys,
    )
    assert code == 1
    assert err.splitlines()[-1].startswith("score.py: error: cannot upload s3://no-such-bucket/green/2021-03.parquet")
    assert "NoSuchBucket" in err


def test_process_killed_mid_upload_leaves_nothing(registered_model, bucket, tmp_path):
    """SIGKILL while the multipart upload of a 3-million-ride output is under way: no object.
    (The killed process's local temporary file goes to TMPDIR, here the test's own folder.)"""
    import boto3

    s3 = boto3.client("s3")
    destination = f"s3://{bucket}/yellow/2022-01.parquet"
    process = subprocess.Popen(
        [
            sys.executable,
            str(SCORE_PY),
            "--taxi-type",
            "yellow",
            "--year",
            "2022",
            "--month",
            "1",
            "--synthetic",
            "--model-uri",
            registered_model["artifact_uri"],
            "--output",
            destination,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    try:
        deadline = time.monotonic() + 180
        uploading = False
        while time.monotonic() < deadline and process.poll() is None:
            if s3.list_multipart_uploads(Bucket=bucket).get("Uploads"):
                uploading = True
                break
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert uploading, f"never saw the upload start; exit {process.returncode}: {process.stderr.read()[-2000:]}"
    assert process.returncode == -signal.SIGKILL
    assert batch.output_info(destination) is None


# --- the command line in this process (its bad input: tests/unit/test_score_adapter.py) ------------


def cli(argv, capsys) -> tuple[int, str, str]:
    return run_cli(score, argv, capsys)


# --- the month asked for is the month in the file ---------------------------------------------------


def test_another_months_file_is_refused_unless_allowed(model, tmp_path, capsys):
    """April's rides asked for as March: a clear error naming April and no output; the override scores them."""
    require_real_months(("green", 2021, 4))
    april = Path(os.environ["TAXI_DATA_DIR"]) / month_filename("green", 2021, 4)
    destination = tmp_path / "out.parquet"
    args = ["--year", 2021, "--month", 3, "--model-uri", model.uri, "--input", april, "--output", destination]
    code, _, err = cli(args, capsys)
    assert_clean_failure(
        code, err, destination, "score.py: error:", "holds rides of 2021-04", "not of 2021-03", "--allow-other-month"
    )
    code, out, err = cli([*args, "--allow-other-month"], capsys)
    assert code == 0, err
    scored = batch.read_output(destination)
    assert scored.attrs["month"] == "green/2021-03" and len(scored) == pq.ParquetFile(april).metadata.num_rows
    assert scored["ride_id"].iloc[0] == "2021/03_0"


@pytest.mark.parametrize("year, month", real_green_months(), ids=lambda v: f"{v:02d}")
def test_every_real_month_passes_the_month_check_with_its_stray_pickups(year, month):
    path = Path(os.environ["TAXI_DATA_DIR"]) / month_filename("green", year, month)
    month_input = batch.open_month("green", year, month, input_file=path)
    in_month, with_time = batch.pickups_in_month(pq.read_table(path).column("lpep_pickup_datetime"), year, month)
    assert with_time == month_input.num_rows
    batch.check_pickup_month(month_input, in_month, with_time)  # raises if refused
    assert in_month == with_time - data.stray_pickups(read_month_file(path, "green"), "green", year, month)


# --- backfill -------------------------------------------------------------------------------------


def test_backfill_scores_skips_and_forces(model, tmp_path, capsys, offline, monkeypatch):
    require_real_months(("green", 2021, 1), ("green", 2021, 2))
    only_two = tmp_path / "data"
    only_two.mkdir()
    for month in (1, 2):
        name = month_filename("green", 2021, month)
        (only_two / name).symlink_to(Path(os.environ["TAXI_DATA_DIR"]) / name)
    monkeypatch.setenv("TAXI_DATA_DIR", str(only_two))
    root = tmp_path / "output"

    def backfill_cli(last_month):
        return cli(
            ["backfill", "--from", "2021-01", "--to", last_month, "--model-uri", model.uri, "--output-root", root],
            capsys,
        )

    code, out, _ = backfill_cli("2021-03")
    assert code == 1  # 2021-03 is missing here
    status = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert status == {"green/2021-01": "scored", "green/2021-02": "scored", "green/2021-03": "failed"}
    first = (root / "green" / "2021-01.parquet").stat().st_mtime_ns

    code, out, _ = backfill_cli("2021-02")
    assert code == 0
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["skipped", "skipped"]
    assert (root / "green" / "2021-01.parquet").stat().st_mtime_ns == first

    summary = score.backfill("green", "2021-01", "2021-02", model, str(root), force=True)
    assert [row["status"] for row in summary] == ["scored", "scored"]
    assert (root / "green" / "2021-01.parquet").stat().st_mtime_ns != first

    other = load_model(model.uri)
    other.model_id = "m-another-model"
    summary = score.backfill("green", "2021-01", "2021-02", other, str(root))
    assert [row["status"] for row in summary] == ["scored", "scored"]
    assert batch.output_info(root / "green" / "2021-02.parquet")["model_version"] == "m-another-model"


# --- the walkthrough notebook -------------------------------------------------------------------------


def test_walkthrough_notebook_runs(registered_model, tmp_path):
    """notebooks/05-batch.ipynb under papermill: papermill runs, a backfill (then all skipped), RMSE per month
    with the in-sample months marked, plots."""
    import nbformat
    import papermill

    from ride_duration.notebooks import noise

    output_root, runs = tmp_path / "output", tmp_path / "runs"
    executed = tmp_path / "05-batch.ipynb"
    with tracking_store(registered_model["tracking_uri"]):
        papermill.execute_notebook(
            str(ROOT / "notebooks" / "05-batch.ipynb"),
            str(executed),
            parameters={
                "model_uri": registered_model["uri"],
                "output_root": str(output_root),
                "runs_dir": str(runs),
                "papermill_months": ["2021-03"],
                "backfill_from": "2021-02",
                "backfill_to": "2021-03",
            },
            cwd=str(ROOT / "notebooks"),
            progress_bar=False,
        )
    for month in ("2021-02", "2021-03"):
        assert (
            batch.output_info(output_root / "green" / f"{month}.parquet")["model_version"]
            == registered_model["model_id"]
        )
    assert [p.name for p in runs.iterdir()] == ["score-green-2021-03.ipynb"]
    cells = nbformat.read(executed, as_version=4).cells
    text = "".join(o.get("text", "") for c in cells if c.cell_type == "code" for o in c.outputs)
    assert text.count("skipped ") == 3  # the month papermill scored, then both on the second backfill
    tables = "".join(o.get("data", {}).get("text/plain", "") for c in cells if c.cell_type == "code" for o in c.outputs)
    assert "trained on 2021-01, validated on 2021-02" in text
    assert "yes: validation month" in tables  # 2021-02 is the production model's validation month
    images = sum("image/png" in o.get("data", {}) for c in cells if c.cell_type == "code" for o in c.outputs)
    assert images == 3
    assert [noise(path) for path in (executed, *runs.iterdir())] == [[], []]  # no library warnings or logs
