"""Batch scoring when things go wrong, as score.py's user sees it: temporary files of killed runs do not pile
up, only regular files are written, a column of the wrong type is one line naming the file and the column,
rides the web service would reject get no prediction and are counted, and a backfill with S3 down stops
with one line after the client's retries."""

from __future__ import annotations

import math
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ride_duration import data, local_stack
from ride_duration.batch import read_output
from ride_duration.features import ride_features
from ride_duration.rides import BadRide, validate_ride
from ride_duration.settings import child_environment, exported
from tests.batch_support import SCORE_PY, import_score, leftovers, month_file, run_cli
from tests.helpers import stand_in_model

score = import_score()
PICKUP, DROPOFF = data.DATETIME_COLUMNS["green"]


@pytest.fixture(scope="module")
def model():
    return stand_in_model("m-faults")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, model):
    """The stand-in model as the folder MLflow's sklearn flavour saves (MLmodel and model.pkl), for score.py as a
    command (--model-uri file://...); written directly, since importing MLflow costs more than these tests.
    Its sha256 is MODEL_SHA256 while the module's tests run, as a deployment of the folder sets it."""
    import hashlib
    import pickle

    folder = tmp_path_factory.mktemp("model")
    pickled = pickle.dumps(model.pipeline)
    (folder / "model.pkl").write_bytes(pickled)
    (folder / "MLmodel").write_text(
        f"model_id: {model.model_id}\n"
        "flavors:\n  sklearn:\n    pickled_model: model.pkl\n    serialization_format: pickle\n"
    )
    with exported({"MODEL_SHA256": hashlib.sha256(pickled).hexdigest()}):
        yield f"file://{folder}"


def score_command(*argv: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCORE_PY), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_environment(env),
    )


KILLED_WRITER = """
import os, signal, sys
from ride_duration.files import atomic_path

with atomic_path(sys.argv[1]) as partial:
    partial.write_bytes(b"half a month" * 1000)
    if sys.argv[2] == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    print("writing", flush=True)
    sys.stdin.read()
"""


def test_the_temporary_files_of_killed_runs_are_removed_by_the_next_run(model_folder, tmp_path, capsys):
    destination = tmp_path / "output" / "2021-03.parquet"
    for _ in range(3):
        killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(destination), "die"], timeout=60)
        assert killed.returncode == -signal.SIGKILL
    assert len(leftovers(destination.parent)) == 3
    time.sleep(2.1)  # ride_duration.files leaves files younger than 2 s alone (a writer about to lock its own)
    month = month_file(tmp_path, 2021, 3, synthetic=False, n_rides=200)

    argv = [*"--year 2021 --month 3 --input".split(), month, "--output", destination, "--model-uri", model_folder]
    code, _, err = run_cli(score, argv, capsys)

    assert code == 0, err
    assert pq.read_metadata(destination).num_rows == 200
    assert leftovers(destination.parent) == []


def test_a_killed_runs_file_is_left_to_a_writer_that_is_still_alive(tmp_path):
    """The sweep removes only files no live process holds: a run under way keeps its temporary file."""
    from ride_duration.files import remove_abandoned

    destination = tmp_path / "out.parquet"
    live = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(destination), "live"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert live.stdout.readline() == b"writing\n"
        [partial] = leftovers(tmp_path)
        old = time.time() - 3600
        os.utime(tmp_path / partial, (old, old))
        assert remove_abandoned(tmp_path, destination.name) == [] and leftovers(tmp_path) == [partial]
    finally:
        live.communicate(timeout=30)
    assert destination.read_bytes() == b"half a month" * 1000


@pytest.fixture
def run_cli_with_capsys(capsys, model_folder):
    """score.py's main() in this process, scoring with the stand-in model: (exit code, stdout, stderr)."""
    return lambda argv: run_cli(score, [*argv, "--model-uri", model_folder], capsys)


def not_a_regular_file(kind: str, path: Path) -> None:
    if kind == "FIFO":
        os.mkfifo(path)
    else:  # a character device like /dev/null, made in the test's own folder
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))


@pytest.mark.parametrize("kind, words", [("FIFO", "is a FIFO"), ("device", "is a device")])
def test_an_output_that_is_not_a_regular_file_is_refused_and_left_as_it_is(kind, words, model_folder, tmp_path):
    month = month_file(tmp_path, 2021, 3, synthetic=False, n_rides=50)
    output = tmp_path / "out.parquet"
    not_a_regular_file(kind, output)
    mode = os.stat(output).st_mode

    result = score_command(
        "--year", "2021", "--month", "3", "--input", str(month), "--output", str(output), "--model-uri", model_folder
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and words in result.stderr and str(output) in result.stderr
    assert "regular file" in result.stderr and "Traceback" not in result.stderr
    assert os.stat(output).st_mode == mode and leftovers(tmp_path) == []


def month_with(tmp_path: Path, column: str, values: pa.Array) -> Path:
    """A small TLC-like green month whose `column` is replaced by values."""
    table = pq.read_table(month_file(tmp_path / "good", 2021, 3, synthetic=False, n_rides=len(values)))
    table = table.set_column(table.schema.get_field_index(column), column, values)
    path = tmp_path / data.month_filename("green", 2021, 3)
    pq.write_table(table, path)
    return path


TEXT = pa.array(["12"] * 20)
WRONG_TYPES = {
    "PULocationID": TEXT,
    "DOLocationID": pa.array([True] * 20),
    "trip_distance": TEXT,
    PICKUP: TEXT,
    DROPOFF: pa.array([1.5] * 20),
}


@pytest.mark.parametrize("column", list(WRONG_TYPES))
def test_each_ride_column_of_a_wrong_type_is_one_line_naming_the_file_and_the_column(
    column, model, tmp_path, run_cli_with_capsys
):
    month = month_with(tmp_path, column, WRONG_TYPES[column])
    output = tmp_path / "out.parquet"

    code, _, err = run_cli_with_capsys(["--year", 2021, "--month", 3, "--input", month, "--output", output])

    assert code == 1
    assert err.count("\n") == 1 and err.startswith("score.py: error: "), err
    assert str(month) in err and f"column {column}" in err and str(WRONG_TYPES[column].type) in err
    assert not output.exists() and leftovers(tmp_path) == []


# Rides the web service rejects, and one it takes, as (PULocationID, DOLocationID, trip_distance).
ODD_RIDES = [
    (10.0, 50.0, math.nan),
    (10.0, 50.0, math.inf),
    (10.0, 50.0, -math.inf),
    (10.0, 50.0, -0.5),
    (10.0, 50.0, 1000.5),
    (10.5, 50.0, 3.0),
    (10.0, 50.25, 3.0),
    (0.0, 50.0, 3.0),
    (10.0, 301.0, 3.0),
    (math.nan, 50.0, 3.0),
    (10.0, 50.0, 0.0),
    (265.0, 1.0, 1000.0),
    (130.0, 205.0, 3.66),
]


def test_rides_the_web_service_would_reject_get_no_prediction_and_are_counted(model, model_folder, tmp_path):
    n = len(ODD_RIDES) * 3
    rides = ODD_RIDES * 3
    path = month_file(tmp_path / "good", 2021, 3, synthetic=False, n_rides=n)
    table = pq.read_table(path)
    for index, name in enumerate(("PULocationID", "DOLocationID", "trip_distance")):
        values = pa.array([ride[index] for ride in rides], type=pa.float64())
        table = table.set_column(table.schema.get_field_index(name), name, values)
    month = tmp_path / data.month_filename("green", 2021, 3)
    pq.write_table(table, month)
    output = tmp_path / "out.parquet"

    result = score_command(
        "--year", "2021", "--month", "3", "--input", str(month), "--output", str(output), "--model-uri", model_folder
    )

    assert result.returncode == 0, result.stderr
    rejected = [not accepted(ride) for ride in rides]
    count = sum(rejected)
    assert count == 10 * 3
    assert f"{count} of {n} rides are ones the web service would reject" in result.stderr
    scored = read_output(output)
    assert len(scored) == n
    assert scored["predicted_duration"].isna().tolist() == rejected
    assert scored["diff"].isna().tolist() == rejected
    assert pq.read_metadata(output).metadata[b"ride_duration.rejected_rides"] == str(count).encode()
    valid = [ride_dict(ride) for ride, bad in zip(rides, rejected) if not bad]
    expected = model.pipeline.predict([ride_features(ride) for ride in valid])
    assert np.array_equal(scored["predicted_duration"].dropna().to_numpy(), expected)


def ride_dict(ride: tuple) -> dict:
    pu, do, distance = ride
    return {
        "PULocationID": int(pu) if pu == pu and pu == int(pu) else pu,
        "DOLocationID": int(do) if do == do and do == int(do) else do,
        "trip_distance": distance,
    }


def accepted(ride: tuple) -> bool:
    """What the web service says: its validate_ride (given the zone ids a JSON client would send)."""
    try:
        validate_ride(ride_dict(ride))
    except BadRide:
        return False
    return True


@pytest.mark.parametrize("endpoint", ["refused", "black hole"])
def test_a_backfill_with_s3_down_stops_with_one_line_after_retries(endpoint, model_folder, tmp_path):
    if endpoint == "refused":
        url = f"http://{local_stack.HOST}:{local_stack.free_port()}"
        silent = None
    else:
        import socket

        silent = socket.create_server((local_stack.HOST, 0))  # the kernel accepts; nothing ever answers
        url = f"http://{local_stack.HOST}:{silent.getsockname()[1]}"
    env = {"AWS_ENDPOINT_URL": url, "AWS_CONNECT_TIMEOUT": "1", "AWS_READ_TIMEOUT": "1", "AWS_MAX_ATTEMPTS": "2"}
    started = time.monotonic()
    try:
        result = score_command(
            "backfill",
            "--synthetic",
            "--from",
            "2021-01",
            "--to",
            "2021-03",
            "--output-root",
            "s3://scored/output",
            "--model-uri",
            model_folder,
            env=env,
        )
    finally:
        if silent is not None:
            silent.close()
    seconds = time.monotonic() - started

    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("score.py: error: ")]
    assert len(errors) == 1 and "cannot reach S3 for s3://scored/output/green/2021-01.parquet" in errors[0]
    assert "Traceback" not in result.stderr
    assert seconds < 30, f"{seconds:.1f}s"
