"""Batch scoring: notebooks/score.ipynb under papermill, its export scripts/score.py, the fast
path on every real month, atomic output (local and S3 on moto_server), bad input, backfill."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ride_duration import batch, data
from ride_duration.data import add_duration, month_filename, read_month_file
from ride_duration.features import FastPredictor, frame_features
from ride_duration.model import load_model
from tests.helpers import ROOT, real_green_months, require_real_months, tracking_store

SCORE_PY = ROOT / "scripts" / "score.py"


def import_score():
    """scripts/score.py as a module (the exported code, not the notebook)."""
    spec = importlib.util.spec_from_file_location("score", SCORE_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


# --- papermill and the exported script agree -------------------------------------------------


def test_papermill_run_equals_script_row_for_row(registered_model, tmp_path):
    """Done-when 1: score.ipynb under papermill and `python scripts/score.py` write the same rows."""
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
    assert list(script_rows.columns) == [
        "ride_id",
        "lpep_pickup_datetime",
        "PULocationID",
        "DOLocationID",
        "actual_duration",
        "predicted_duration",
        "diff",
        "model_version",
    ]
    assert set(script_rows["model_version"]) == {registered_model["model_id"]}
    assert not script_rows.attrs["synthetic"]


# --- every real month, and the fast path ------------------------------------------------------


def test_real_green_months_are_there():
    """The parametrised test below runs once per real month: in CI an empty list must fail, not pass."""
    require_real_months(("green", 2021, 1), ("green", 2021, 3))
    assert len(real_green_months()) >= 2


@pytest.mark.parametrize("year, month", real_green_months(), ids=lambda v: f"{v:02d}")
def test_every_real_green_month_scores_bit_identical_to_pipeline(year, month, model, lean_model, tmp_path):
    """Done-when 1 and 2: the month scores; each prediction equals pipeline.predict bit for bit.

    Scored as score.py does it (the model loaded without scikit-learn, the month never in pandas);
    the expected values come from scikit-learn's own pipeline and pandas' add_duration.
    """
    path = Path(os.environ["TAXI_DATA_DIR"]) / month_filename("green", year, month)
    assert not isinstance(lean_model.pipeline, type(model.pipeline)), "the stand-in must be the one under test"
    result = score.score_month("green", year, month, lean_model, str(tmp_path / "out.parquet"))
    scored = batch.read_output(result["output"])

    rides = add_duration(read_month_file(path, "green"), "green")
    expected = model.pipeline.predict(frame_features(rides))
    assert np.array_equal(scored["predicted_duration"].to_numpy(), expected)
    assert result["rows"] == len(rides) == pq.ParquetFile(path).metadata.num_rows
    assert np.array_equal(scored["actual_duration"].to_numpy(), rides["duration"].to_numpy())
    assert np.array_equal(scored["diff"].to_numpy(), rides["duration"].to_numpy() - expected)
    assert scored["ride_id"].tolist() == [f"{year:04d}/{month:02d}_{i}" for i in range(len(rides))]
    assert np.array_equal(scored["PULocationID"].to_numpy(), rides["PULocationID"].to_numpy())


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize("rows", [3, 4, 6], ids=["rides", "and a stray 2009 pickup", "and missing timestamps"])
def test_durations_equal_pandas(unit, rows):
    """duration_minutes is add_duration's arithmetic on int64 ticks, bit for bit: durations where
    ticks / ticks_per_second would differ in the last bit (ms, us, ns), a stray pickup 13 years back
    (beyond 2**53 ticks in nanoseconds, where pandas corrects the rounding) and missing timestamps."""
    pickup = [
        "2022-01-01 10:00:00",
        "2022-01-01 11:00:00",
        "2022-01-01 12:00:00",
        "2009-01-01",
        None,
        "2022-01-31 23:59:59",
    ]
    dropoff = [
        "2022-01-01 10:02:08.399883",
        "2022-01-01 11:01:38.541891004",
        "2022-01-01 12:00:04.940",
        "2022-01-02 00:00:00.000000001",
        "2022-01-01",
        None,
    ]
    rides = pd.DataFrame(
        {
            "lpep_pickup_datetime": pd.to_datetime(pickup[:rows], format="ISO8601").as_unit(unit),
            "lpep_dropoff_datetime": pd.to_datetime(dropoff[:rows], format="ISO8601").as_unit(unit),
        }
    )
    got = batch.duration_minutes(pa.array(rides["lpep_pickup_datetime"]), pa.array(rides["lpep_dropoff_datetime"]))
    expected = add_duration(rides, "green")["duration"].to_numpy()
    assert np.array_equal(got, expected, equal_nan=True), (got, expected)


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
    monkeypatch.setattr(batch, "BATCH_ROWS", 10_000)
    batched = score.score_month("green", 2021, 3, model, str(tmp_path / "batched.parquet"))
    assert pq.ParquetFile(batched["output"]).metadata.num_row_groups == 9
    pd.testing.assert_frame_equal(
        batch.read_output(whole["output"]), batch.read_output(batched["output"]), check_exact=True
    )


def test_synthetic_month_is_labelled(model, tmp_path, capsys):
    result = score.score_month("green", 2021, 3, model, str(tmp_path / "synthetic.parquet"), synthetic=True)
    assert result["synthetic"] and result["source"] == "synthetic"
    assert "SYNTHETIC DATA" in capsys.readouterr().err
    assert batch.read_output(result["output"]).attrs["synthetic"]
    assert batch.output_info(result["output"])["synthetic"]


# --- atomic output: S3 on moto_server, interrupted runs ----------------------------------------


@pytest.fixture
def bucket(moto_url):
    import boto3

    name = f"predictions-{time.monotonic_ns()}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def test_s3_output_on_moto(registered_model, model, bucket, tmp_path):
    """Done-when 3: score.py writes s3:// through AWS_ENDPOINT_URL; same rows as a local run."""
    require_real_months(("green", 2021, 3))
    destination = f"s3://{bucket}/green/2021-03.parquet"
    run = run_script(
        "--year", 2021, "--month", 3, "--model-uri", registered_model["artifact_uri"], "--output", destination
    )
    assert run.returncode == 0, run.stderr
    local = score.score_month("green", 2021, 3, model, str(tmp_path / "local.parquet"))
    pd.testing.assert_frame_equal(batch.read_output(destination), batch.read_output(local["output"]), check_exact=True)
    info = batch.output_info(destination)
    assert info == {"model_version": registered_model["model_id"], "month": "green/2021-03", "synthetic": False}
    march = batch.open_month("green", 2021, 3)
    assert batch.scored_already(destination, march, registered_model["model_id"])[0]
    assert batch.scored_already(destination, march, "m-other") == (
        False,
        f"existing output is by {registered_model['model_id']}",
    )
    assert batch.scored_already(destination.replace("2021-03", "2021-04"), march, registered_model["model_id"]) == (
        False,
        "no output yet",
    )


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

    monkeypatch.setattr(batch, "s3_client", failing_client)
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


def test_local_failure_midway_leaves_nothing_and_keeps_previous_output(model, tmp_path, monkeypatch):
    """A run failing after some batches are written: no file, no temporary left; an earlier output
    of the month stays whole until a run succeeds, which then replaces it whole."""
    destination = tmp_path / "month.parquet"
    monkeypatch.setattr(batch, "BATCH_ROWS", 20_000)
    calls = {"n": 0}
    real_predict = FastPredictor.predict_arrays

    def predict_then_fail(self, *columns):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected: scorer died on batch 3")
        return real_predict(self, *columns)

    monkeypatch.setattr(FastPredictor, "predict_arrays", predict_then_fail)
    with pytest.raises(RuntimeError, match="injected"):
        score.score_month("green", 2021, 3, model, str(destination), synthetic=True)
    assert not destination.exists() and leftovers(tmp_path) == []

    monkeypatch.setattr(FastPredictor, "predict_arrays", real_predict)
    first = score.score_month("green", 2021, 3, model, str(destination), synthetic=True)
    before = destination.read_bytes()
    monkeypatch.setattr(FastPredictor, "predict_arrays", predict_then_fail)
    calls["n"] = 0
    with pytest.raises(RuntimeError, match="injected"):
        score.score_month("green", 2021, 3, model, str(destination), synthetic=True)
    assert destination.read_bytes() == before and leftovers(tmp_path) == []
    assert len(batch.read_output(destination)) == first["rows"]


# --- bad input: one clear line, non-zero exit, no output ---------------------------------------


def cli(argv, capsys) -> tuple[int, str, str]:
    """score.py's main() in this process; the environment is restored afterwards."""
    with mock.patch.dict(os.environ):
        try:
            code = score.main([str(a) for a in argv])
        except SystemExit as exit:
            code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_failure(code, err, destination: Path, *fragments):
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 or "usage:" in err, err
    for fragment in fragments:
        assert fragment in err, err
    assert not destination.exists() and leftovers(destination.parent) == []


def test_missing_month_is_a_clear_error(model, tmp_path, capsys, offline, monkeypatch):
    monkeypatch.setenv("TAXI_DATA_DIR", str(tmp_path / "empty"))
    destination = tmp_path / "out.parquet"
    code, _, err = cli(["--year", 2021, "--month", 3, "--model-uri", model.uri, "--output", destination], capsys)
    assert_clean_failure(
        code, err, destination, "score.py: error:", "green_tripdata_2021-03.parquet is not in", "--synthetic"
    )


def test_wrong_schema_and_unreadable_files_are_clear_errors(model, tmp_path, capsys):
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), wrong)
    not_parquet = tmp_path / "notes.parquet"
    not_parquet.write_text("these are not trip records\n")
    destination = tmp_path / "out.parquet"
    for bad, message in ((wrong, "is not a green TLC file: it lacks"), (not_parquet, "is not a readable parquet file")):
        code, _, err = cli(
            ["--year", 2021, "--month", 3, "--model-uri", model.uri, "--input", bad, "--output", destination], capsys
        )
        assert_clean_failure(code, err, destination, message)


def test_yellow_file_given_as_green_is_a_clear_error(model, tmp_path, capsys):
    yellow = data.write_month_file(data.synthetic_month("yellow", 2022, 1, n_rides=100), tmp_path / "yellow.parquet")
    destination = tmp_path / "out.parquet"
    code, _, err = cli(
        [
            "--taxi-type",
            "green",
            "--year",
            2022,
            "--month",
            1,
            "--model-uri",
            model.uri,
            "--input",
            yellow,
            "--output",
            destination,
        ],
        capsys,
    )
    assert_clean_failure(code, err, destination, "lpep_pickup_datetime")


def test_empty_month_gives_empty_output_with_the_schema(model, tmp_path, capsys):
    empty = data.write_month_file(data.synthetic_month("green", 2021, 3, n_rides=0), tmp_path / "empty-month.parquet")
    destination = tmp_path / "out.parquet"
    code, out, err = cli(
        ["--year", 2021, "--month", 3, "--model-uri", model.uri, "--input", empty, "--output", destination], capsys
    )
    assert code == 0, err
    assert "scored 0 rides" in out
    table = pq.read_table(destination)
    assert table.num_rows == 0
    assert table.schema.remove_metadata() == batch.output_schema("green")
    assert batch.output_info(destination)["model_version"] == model.version


def test_unknown_taxi_type_is_a_clear_error(model, tmp_path, capsys):
    destination = tmp_path / "out.parquet"
    code, _, err = cli(["--taxi-type", "purple", "--year", 2021, "--month", 3, "--output", destination], capsys)
    assert_clean_failure(code, err, destination, "invalid choice: 'purple'")
    with pytest.raises(ValueError, match="unknown taxi type 'purple'"):
        score.score_month("purple", 2021, 3, model, str(destination))
    assert not destination.exists()


def test_model_that_does_not_load_is_a_clear_error(tmp_path, capsys):
    destination = tmp_path / "out.parquet"
    code, _, err = cli(
        ["--year", 2021, "--month", 3, "--synthetic", "--model-uri", tmp_path / "no-model", "--output", destination],
        capsys,
    )
    assert_clean_failure(code, err, destination, "cannot load model", "no MLmodel file")


def test_impossible_month_is_a_clear_error(model, tmp_path, capsys):
    destination = tmp_path / "out.parquet"
    code, _, err = cli(["--year", 2021, "--month", 13, "--model-uri", model.uri, "--output", destination], capsys)
    assert_clean_failure(code, err, destination, "no such TLC month: 2021-13")


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


def month_file(folder: Path, year: int, month: int, *, synthetic: bool, n_rides: int = 500) -> Path:
    """A small month file named as the TLC names it: synthetic rides, labelled synthetic or, as a stand-in
    for a real TLC file, not."""
    frame = data.synthetic_month("green", year, month, n_rides=n_rides)
    if not synthetic:
        frame.attrs["source"] = "TLC stand-in"
    return data.write_month_file(frame, folder / month_filename("green", year, month))


# --- when a month counts as scored -------------------------------------------------------------------


def test_scored_already_needs_a_readable_output_of_the_same_month_rides_and_model(model, tmp_path):
    real = batch.open_month("green", 2021, 3, input_file=month_file(tmp_path / "real", 2021, 3, synthetic=False))
    synthetic = batch.open_month(
        "green", 2021, 3, input_file=month_file(tmp_path / "synthetic", 2021, 3, synthetic=True)
    )
    destination = tmp_path / "output" / "2021-03.parquet"
    assert batch.scored_already(destination, real, model.version) == (False, "no output yet")

    score.score_month("green", 2021, 3, model, str(destination), month_input=real)
    assert batch.scored_already(destination, real, model.version) == (
        True,
        f"already scored by {model.version} from real rides",
    )
    assert batch.scored_already(destination, synthetic, model.version) == (
        False,
        "existing output was scored from real rides, these are synthetic",
    )
    assert batch.scored_already(destination, real, "m-other") == (False, f"existing output is by {model.version}")
    april = batch.open_month("green", 2021, 4, input_file=month_file(tmp_path / "real", 2021, 4, synthetic=False))
    assert batch.scored_already(destination, april, model.version) == (False, "existing output holds green/2021-03")
    more = batch.open_month(
        "green", 2021, 3, input_file=month_file(tmp_path / "more", 2021, 3, synthetic=False, n_rides=600)
    )
    assert batch.scored_already(destination, more, model.version) == (
        False,
        "existing output has 500 rows for 600 rides",
    )

    whole = destination.read_bytes()
    destination.write_bytes(whole[: len(whole) // 2])  # a copy cut short
    done, why = batch.scored_already(destination, real, model.version)
    assert not done and why.startswith("existing output unreadable")


def test_backfill_scores_again_what_is_not_done_and_skips_what_is(model, tmp_path, offline, monkeypatch):
    """Months first scored from synthetic stand-ins are scored again from the real files; a truncated output
    or one by another model is scored again; a matching one is skipped."""
    folder, root = tmp_path / "data", tmp_path / "output"
    for month in (1, 2, 3):
        month_file(folder, 2021, month, synthetic=False)
    monkeypatch.setenv("TAXI_DATA_DIR", str(tmp_path / "nothing"))

    def statuses(**options):
        summary = score.backfill("green", "2021-01", "2021-03", model, str(root), **options)
        return [(row["status"], row["note"]) for row in summary]

    assert [status for status, _ in statuses(synthetic="fallback")] == ["scored"] * 3  # no files: synthetic
    outputs = [root / "green" / f"2021-0{month}.parquet" for month in (1, 2, 3)]
    assert all(batch.output_info(output)["synthetic"] for output in outputs)

    monkeypatch.setenv("TAXI_DATA_DIR", str(folder))  # the real files arrived
    assert (
        statuses(synthetic="fallback")
        == [("scored", "re-scored: existing output was scored from synthetic rides, these are real")] * 3
    )
    assert not any(batch.output_info(output)["synthetic"] for output in outputs)
    assert [status for status, _ in statuses()] == ["skipped"] * 3

    whole = outputs[0].read_bytes()
    outputs[0].write_bytes(whole[: len(whole) // 2])
    other = load_model(model.uri)
    other.model_id = "m-another-model"
    score.score_month("green", 2021, 2, other, str(outputs[1]))
    untouched = outputs[2].stat().st_mtime_ns
    summary = statuses()
    assert [status for status, _ in summary] == ["scored", "scored", "skipped"]
    assert summary[0][1].startswith("re-scored: existing output unreadable")
    assert summary[1][1] == "re-scored: existing output is by m-another-model"
    assert outputs[2].stat().st_mtime_ns == untouched
    assert {batch.output_info(output)["model_version"] for output in outputs} == {model.version}


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


def test_month_range():
    assert score.month_range("2021-11", "2022-02") == [(2021, 11), (2021, 12), (2022, 1), (2022, 2)]
    with pytest.raises(ValueError, match="is after"):
        score.month_range("2022-02", "2021-11")
    with pytest.raises(ValueError, match="use YYYY-MM"):
        score.month_range("2021/01", "2021-02")
    with pytest.raises(ValueError, match="no such TLC month: 2021-13"):
        score.month_range("2021-01", "2021-13")


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


def test_local_output_has_the_usual_file_mode(tmp_path):
    """The temporary file is private while it is written; the output others read is not."""
    destination = tmp_path / "out.parquet"
    info = batch.output_info_for("m-test", "green", 2021, 3, False)
    with batch.atomic_parquet(destination, batch.output_schema("green"), info):
        pass
    assert destination.stat().st_mode & 0o777 == 0o666 & ~batch.current_umask()


def test_options_before_backfill_are_kept_and_misplaced_ones_refused():
    parser = score.build_parser()
    args = parser.parse_args(
        ["--model-uri", "m", "--taxi-type", "yellow", "backfill", "--from", "2021-01", "--to", "2021-02"]
    )
    assert (args.model_uri, args.taxi_type, args.synthetic) == ("m", "yellow", False)
    args = parser.parse_args(["backfill", "--from", "2021-01", "--to", "2021-02", "--synthetic"])
    assert (args.taxi_type, args.synthetic) == ("green", True)
    with pytest.raises(SystemExit) as error:
        score.main(["--year", "2021", "backfill", "--from", "2021-01", "--to", "2021-02"])
    assert error.value.code == 2
