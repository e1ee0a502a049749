"""Batch scoring on Spark (notebooks/09-spark.ipynb, exported to scripts/score_spark.py) against score.py:
for every real green month in TAXI_DATA_DIR, 2023-02's int32 zone ids included, the two write the same file
contents, row for row and bit for bit: schema, metadata (model version, month), ride ids, predictions.

pyspark is the optional `spark` extra: `make test-spark` installs it and runs this file (nothing here may
skip there); the core suite runs without it and skips it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("pyspark", reason="pyspark is the optional spark extra: make test-spark")

from ride_duration import data
from ride_duration.batch import default_output
from ride_duration.data import month_filename
from ride_duration.model import load_model
from ride_duration.notebooks import noise
from ride_duration.settings import SPARK, Settings, child_environment
from tests.batch_support import import_score
from tests.helpers import IN_CI, ROOT, real_green_months, require_real_months

sys.path.insert(0, str(ROOT / "scripts"))
import score_spark
from run_notebooks import run_notebook

SCORE_SPARK_PY = ROOT / "scripts" / "score_spark.py"
NOTEBOOK = ROOT / "notebooks" / "09-spark.ipynb"
REAL_GREEN_MONTHS_IN_CI = 11  # the months CI's TAXI_DATA_DIR holds


def run_score_spark(args: list[str], timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """scripts/score_spark.py as a reader runs it, on two local cores."""
    return subprocess.run(
        [sys.executable, str(SCORE_SPARK_PY), "--master", "local[2]", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=child_environment(env),
    )


def assert_same_file(spark_file, score_file) -> None:
    """The same schema and metadata, and every column equal; floats compared as their bits (NaN included)."""
    spark_table, score_table = pq.read_table(spark_file), pq.read_table(score_file)
    assert spark_table.schema.equals(score_table.schema, check_metadata=True), (spark_table.schema, score_table.schema)
    assert spark_table.num_rows == score_table.num_rows
    for name in score_table.column_names:
        ours, theirs = spark_table.column(name).combine_chunks(), score_table.column(name).combine_chunks()
        if pa.types.is_floating(theirs.type):
            bits = [column.to_numpy(zero_copy_only=False).view(np.int64) for column in (ours, theirs)]
            assert np.array_equal(*bits), f"{spark_file}: {name} differs from score.py's"
        else:
            assert ours.equals(theirs), f"{spark_file}: {name} differs from score.py's"


def test_score_spark_writes_what_score_py_writes_for_every_real_month(registered_model, tmp_path):
    months = real_green_months()
    if IN_CI and len(months) < REAL_GREEN_MONTHS_IN_CI:
        pytest.fail(f"CI must score all {REAL_GREEN_MONTHS_IN_CI} real green months, TAXI_DATA_DIR has {len(months)}")
    if not months:
        pytest.skip("no real green months (set TAXI_DATA_DIR)")
    spark_root, score_root = tmp_path / "spark", tmp_path / "score"
    uri = registered_model["artifact_uri"]
    began = time.perf_counter()
    month_args = [arg for year, month in months for arg in ("--month", f"{year:04d}-{month:02d}")]
    result = run_score_spark(
        ["--taxi-type", "green", *month_args, "--model-uri", uri, "--output-root", str(spark_root)]
    )
    spark_seconds = time.perf_counter() - began
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(" scored ") == len(months), result.stdout

    score = import_score()
    served = score.served_model(load_model(uri, without_sklearn=True))
    for year, month in months:
        score.score_month("green", year, month, served, default_output("green", year, month, score_root))
        assert_same_file(
            default_output("green", year, month, spark_root), default_output("green", year, month, score_root)
        )
    print(f"score_spark.py: {len(months)} months in {spark_seconds:.1f}s")


@pytest.mark.parametrize("java", ["none", "java 11"])
def test_without_java_17_the_scorer_says_what_to_install_before_starting_spark(java, tmp_path):
    java_home = tmp_path / "jdk"
    if java == "java 11":  # a java that answers -version as OpenJDK 11 does
        (java_home / "bin").mkdir(parents=True)
        fake = java_home / "bin" / "java"
        fake.write_text("#!/bin/sh\necho 'openjdk version \"11.0.22\" 2024-01-16' >&2\n")
        fake.chmod(0o755)
    result = subprocess.run(
        [sys.executable, str(SCORE_SPARK_PY), "--month", "2021-01", "--output-root", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=child_environment({"JAVA_HOME": str(java_home)}),
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("score_spark.py: error: Spark needs Java 17+"), result.stderr
    assert "install a JDK 17" in lines[0] and ("is Java 11" in lines[0]) == (java == "java 11")
    assert not (tmp_path / "out").exists()


def test_notebook_runs_under_papermill_without_noise(registered_model, tmp_path):
    """notebooks/09-spark.ipynb as a reader runs it: one month on Spark equal to score.py, spark_udf beside it."""
    require_real_months(("green", 2021, 1))
    parameters = {
        "start": "2021-01",
        "end": "2021-01",
        "model_uri": registered_model["artifact_uri"],
        "output_root": str(tmp_path / "output"),
    }
    executed = run_notebook("09-spark", parameters, tmp_path / "runs")
    assert noise(executed) == []
    assert (tmp_path / "output" / "green" / "2021-01.parquet").is_file()


def mapped_files(pid: int) -> str:
    """The files a process has mapped into its memory (Linux)."""
    return (Path("/proc") / str(pid) / "maps").read_text()


def test_the_first_local_run_writes_the_class_archive_and_the_next_jvm_maps_it(tmp_path):
    """Two sessions in this process, as a notebook that is run again: the first JVM writes the archive as it
    exits, stop_spark publishes it, and the second JVM starts from it (the file is in its memory map)."""
    from pyspark import SparkContext

    settings = Settings.from_environ({"SPARK_CLASS_ARCHIVE_DIR": str(tmp_path / "classes")}, groups=SPARK)
    archive = score_spark.class_archive(settings, score_spark.check_java(settings))
    spark = score_spark.spark_session("local[1]", archive=archive)
    assert spark.range(5).count() == 5
    assert str(archive) not in mapped_files(SparkContext._gateway.proc.pid)
    score_spark.stop_spark(spark)
    assert archive.is_file() and [p.name for p in archive.parent.iterdir()] == [archive.name]

    spark = score_spark.spark_session("local[1]", archive=archive)
    jvm = SparkContext._gateway.proc
    assert spark.range(5).count() == 5
    assert str(archive) in mapped_files(jvm.pid)
    score_spark.stop_spark(spark)
    assert jvm.poll() == 0  # ended, and cleanly


def test_a_month_of_3m_rides_is_scored_as_score_py_scores_it_and_without_the_heap_it_fails_alone(
    registered_model, tmp_path
):
    """A large month (as a yellow month is): scored with the default driver heap, equal to score.py; with a heap
    too small, the JVM exits (Spark's result thread would die and leave the job waiting for ever), the month is
    a failed line naming SPARK_DRIVER_MEMORY, and nothing is written."""
    month = data.write_month_file(
        data.synthetic_month("yellow", 2022, 1, n_rides=3_000_000),
        tmp_path / "data" / month_filename("yellow", 2022, 1),
    )
    uri = registered_model["artifact_uri"]
    args = ["--taxi-type", "yellow", "--month", "2022-01", "--model-uri", uri]
    scored = run_score_spark(
        [*args, "--output-root", str(tmp_path / "spark")], env={"TAXI_DATA_DIR": str(month.parent)}
    )
    assert scored.returncode == 0, scored.stderr[-3000:]
    score = import_score()
    plain = score.score_month(
        "yellow",
        2022,
        1,
        score.served_model(load_model(uri, without_sklearn=True)),
        tmp_path / "score.parquet",
        input_file=month,
    )
    assert plain["rows"] == 3_000_000
    assert_same_file(default_output("yellow", 2022, 1, tmp_path / "spark"), plain["output"])

    starved = run_score_spark(
        [*args, "--output-root", str(tmp_path / "starved")],
        timeout=300,
        env={"TAXI_DATA_DIR": str(month.parent), "SPARK_DRIVER_MEMORY": "1g"},
    )
    assert starved.returncode == 1
    assert "Spark's JVM exited" in starved.stdout and "SPARK_DRIVER_MEMORY" in starved.stdout, starved.stdout
    assert not list((tmp_path / "starved").rglob("*.parquet*"))


@pytest.fixture
def local_spark():
    """A local session as score_spark.py starts one, stopped after the test."""
    spark = score_spark.spark_session("local[1]")
    yield spark
    score_spark.stop_spark(spark)


def where_pyspark_comes_from(batches):
    """mapInArrow's function: the file the worker imported pyspark from, and whether pyspark.zip is on its path."""
    import pyspark

    for _ in batches:
        zipped = any(entry.endswith("pyspark.zip") for entry in sys.path)
        yield pa.RecordBatch.from_pydict({"file": [pyspark.__file__], "zipped": [zipped]})


def test_local_python_workers_import_the_installed_compiled_pyspark(local_spark):
    """Spark puts its pyspark.zip first on the workers' path; the workers forked from ride_duration.spark_daemon
    import the installed pyspark, as this process does, and the zip is off their path."""
    import pyspark

    (worker,) = (
        local_spark.range(1, numPartitions=1)
        .mapInArrow(where_pyspark_comes_from, "file string, zipped boolean")
        .collect()
    )
    assert worker.file == pyspark.__file__ and not worker.zipped, worker


def test_the_schema_read_from_a_footer_is_the_one_spark_reads(local_spark, tmp_path):
    """For every real green month (2023-02's int32 zone ids included) footer_schema is what Spark itself reads;
    a remote file, and a file with INT96 timestamps (which Spark reads as a time zone's), are left to Spark."""
    months = real_green_months()
    if not months:
        require_real_months(("green", 2021, 1))
    columns = score_spark.input_columns("green")
    for year, month in months:
        path = str(data.locate_month("green", year, month, allow_download=False))
        assert score_spark.footer_schema(path, columns) == local_spark.read.parquet(path).select(*columns).schema, path

    assert score_spark.footer_schema("s3a://bucket/green_tripdata_2021-01.parquet", columns) is None
    int96 = tmp_path / "int96.parquet"
    rides = pq.read_table(data.locate_month("green", *months[0], allow_download=False), columns=columns).slice(0, 100)
    pq.write_table(rides, int96, use_deprecated_int96_timestamps=True)
    assert score_spark.footer_schema(str(int96), columns) is None
    assert score_spark.month_rides(local_spark, str(int96), "green").count() == 100
