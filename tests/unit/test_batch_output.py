"""A batch output, on small local files: its schema and metadata, its one atomic write (an injected failure
leaves nothing and keeps the previous output), when an existing output counts as scored, the summary table."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ride_duration import batch
from ride_duration.files import UMASK
from tests.batch_support import leftovers, month_file

INFO = batch.output_info_for("m-test", "green", 2021, 3, False)


def output_rows(n: int, version: str = "m-test", taxi_type: str = "green") -> pa.Table:
    """n output rows as score.py writes them (values made up)."""
    schema = batch.output_schema(taxi_type)
    columns = [
        batch.ride_ids(2021, 3, 0, n),
        pa.array([0] * n, type=pa.timestamp("us")),
        pa.array([10] * n, type=pa.int64()),
        pa.array([50] * n, type=pa.int64()),
        *(pa.array([float(i) for i in range(n)]) for _ in range(3)),
        batch.repeated(version, n),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def write_output(destination, n: int = 5, info: dict = INFO) -> None:
    with batch.atomic_parquet(destination, batch.output_schema("green"), info) as writer:
        writer.write_table(output_rows(n, info["model_version"]))


def test_output_schema_is_fixed_with_the_pickup_column_of_the_taxi_type():
    assert batch.output_schema("green").names == [
        "ride_id",
        "lpep_pickup_datetime",
        "PULocationID",
        "DOLocationID",
        "actual_duration",
        "predicted_duration",
        "diff",
        "model_version",
    ]
    assert batch.output_schema("yellow").names[1] == "tpep_pickup_datetime"
    with pytest.raises(ValueError, match="unknown taxi type"):
        batch.output_schema("purple")


def test_output_info_is_in_the_footer_and_read_back(tmp_path):
    assert INFO == {"model_version": "m-test", "month": "green/2021-03", "synthetic": "false"}
    destination = tmp_path / "out.parquet"
    write_output(destination, info=batch.output_info_for("m-test", "green", 2021, 3, True))
    assert batch.output_info(destination) == {
        "model_version": "m-test",
        "month": "green/2021-03",
        "synthetic": True,
    }
    assert pq.read_schema(destination).metadata[b"ride_duration.synthetic"] == b"true"  # the key inputs use
    registered = tmp_path / "registered.parquet"  # a model served from the registry is named by its version too
    write_output(registered, info=batch.output_info_for("m-test", "green", 2021, 3, False, "ride-duration/2"))
    assert batch.output_info(registered)["registered_version"] == "ride-duration/2"
    assert batch.read_output(registered).attrs["registered_version"] == "ride-duration/2"
    scored = batch.read_output(destination)
    assert len(scored) == 5 and scored.attrs["synthetic"] and scored.attrs["source"] == str(destination)
    assert batch.output_info(tmp_path / "none.parquet") is None
    (tmp_path / "junk.parquet").write_text("junk")
    assert batch.output_info(tmp_path / "junk.parquet") == {
        "model_version": None,
        "month": None,
        "synthetic": False,
    }


def test_default_output_and_s3_uris():
    assert batch.default_output("green", 2021, 3) == "output/green/2021-03.parquet"
    assert batch.default_output("yellow", 2022, 1, "s3://bucket/prefix/") == "s3://bucket/prefix/yellow/2022-01.parquet"
    assert batch.is_s3("s3://b/k") and not batch.is_s3("output/x.parquet")
    assert batch.split_s3("s3://bucket/a/b.parquet") == ("bucket", "a/b.parquet")
    for bad in ("s3://bucket", "s3:///key"):
        with pytest.raises(ValueError, match="not an s3://bucket/key URI"):
            batch.split_s3(bad)


def test_atomic_parquet_writes_the_file_whole_with_the_usual_mode(tmp_path):
    """The temporary file is private while it is written; the output others read is not."""
    destination = tmp_path / "new" / "folder" / "out.parquet"
    write_output(destination)
    assert destination.stat().st_mode & 0o777 == 0o666 & ~UMASK
    assert pq.read_table(destination).num_rows == 5 and leftovers(destination.parent) == []


def test_a_failure_midway_leaves_nothing_and_keeps_the_previous_output(tmp_path):
    destination = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError, match="injected"):
        with batch.atomic_parquet(destination, batch.output_schema("green"), INFO) as writer:
            writer.write_table(output_rows(5))
            raise RuntimeError("injected: scorer died after a batch")
    assert not destination.exists() and leftovers(tmp_path) == []

    write_output(destination, n=7)
    before = destination.read_bytes()
    with pytest.raises(RuntimeError, match="injected"):
        with batch.atomic_parquet(destination, batch.output_schema("green"), INFO) as writer:
            writer.write_table(output_rows(3))
            raise RuntimeError("injected: scorer died after a batch")
    assert destination.read_bytes() == before and leftovers(tmp_path) == []


def test_a_write_error_in_the_background_surfaces_and_leaves_nothing(tmp_path):
    destination = tmp_path / "out.parquet"
    wrong = pa.table({"a": [1]})  # not the output schema: the writer thread raises
    with pytest.raises(ValueError):
        with batch.atomic_parquet(destination, batch.output_schema("green"), INFO) as writer:
            writer.write_table(wrong)
    assert not destination.exists() and leftovers(tmp_path) == []


def test_staging_path_is_atomic_locally_and_temporary_for_s3(tmp_path):
    destination = tmp_path / "out.parquet"
    with batch.staging_path(destination) as staging:
        assert staging.parent == destination.parent and staging.name.endswith(".part")
        staging.write_text("whole")
        batch.publish(staging, destination, INFO)  # local: nothing to upload; renamed as the block ends
        assert not destination.exists()
    assert destination.read_text() == "whole" and leftovers(tmp_path) == []
    with batch.staging_path("s3://bucket/green/2021-03.parquet") as staging:
        assert staging.name.startswith(".scoring-2021-03.parquet.") and staging.name.endswith(".part")
        staging.write_text("to upload")
    assert not staging.exists()


def test_scored_already_needs_a_readable_output_of_the_same_month_rides_and_model(tmp_path):
    real = batch.open_month("green", 2021, 3, input_file=month_file(tmp_path / "real", 2021, 3, synthetic=False))
    synthetic = batch.open_month(
        "green", 2021, 3, input_file=month_file(tmp_path / "synthetic", 2021, 3, synthetic=True)
    )
    destination = tmp_path / "output" / "2021-03.parquet"
    assert batch.scored_already(destination, real, "m-test") == (False, "no output yet")

    write_output(destination, n=500)
    assert batch.scored_already(destination, real, "m-test") == (True, "already scored by m-test from real rides")
    assert batch.scored_already(destination, synthetic, "m-test") == (
        False,
        "existing output was scored from real rides, these are synthetic",
    )
    assert batch.scored_already(destination, real, "m-other") == (False, "scored by m-test")
    april = batch.open_month("green", 2021, 4, input_file=month_file(tmp_path / "real", 2021, 4, synthetic=False))
    assert batch.scored_already(destination, april, "m-test") == (False, "existing output holds green/2021-03")
    more = batch.open_month(
        "green", 2021, 3, input_file=month_file(tmp_path / "more", 2021, 3, synthetic=False, n_rides=600)
    )
    assert batch.scored_already(destination, more, "m-test") == (False, "existing output has 500 rows for 600 rides")

    whole = destination.read_bytes()
    destination.write_bytes(whole[: len(whole) // 2])  # a copy cut short
    done, why = batch.scored_already(destination, real, "m-test")
    assert not done and why.startswith("existing output unreadable")


def test_summary_table_is_fixed_width():
    summary = [
        {"month": "green/2021-01", "status": "scored", "rows": 76518, "seconds": 0.2, "output": "o/1", "note": ""},
        {"month": "green/2021-02", "status": "failed", "rows": None, "seconds": None, "output": "o/2", "note": "bad"},
    ]
    assert batch.summary_table(summary).splitlines() == [
        "month          status  rows    seconds  output  note",
        "green/2021-01  scored  76,518  0.2      o/1",
        "green/2021-02  failed                   o/2     bad",
    ]
