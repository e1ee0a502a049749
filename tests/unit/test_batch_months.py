"""A month as batch scoring reads it, on small local files and in-memory months: opening without reading,
batches with global row numbers, clear errors for bad files, the check that the rides are of the month asked."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ride_duration import batch, data
from ride_duration.batch import months
from tests.batch_support import month_file


def test_open_month_reads_nothing_and_batches_number_rows_globally(tmp_path):
    path = month_file(tmp_path, 2021, 3, synthetic=False, n_rides=1_000)
    month_input = batch.open_month("green", 2021, 3, input_file=path)
    assert (month_input.source, month_input.synthetic, month_input.num_rows) == (str(path), False, 1_000)
    assert month_input.banner is None
    firsts, rows = [], 0
    for first_row, rides in month_input.batches(batch_rows=300):
        assert rides.column_names == batch.input_columns("green")
        firsts.append(first_row)
        rows += rides.num_rows
    assert firsts == [0, 300, 600, 900] and rows == 1_000


def test_batches_of_a_file_of_several_row_groups(tmp_path):
    path = month_file(tmp_path, 2021, 3, synthetic=False, n_rides=1_000)
    pq.write_table(pq.read_table(path), path, row_group_size=400)
    month_input = batch.open_month("green", 2021, 3, input_file=path)
    batches = list(month_input.batches(batch_rows=300))
    assert [first for first, _ in batches] == [0, 300, 400, 700, 800]
    table = pa.concat_tables(rides for _, rides in batches)
    assert table.equals(pq.read_table(path, columns=batch.input_columns("green")))


def test_synthetic_month_is_labelled_and_in_memory():
    month_input = batch.open_month("green", 2021, 3, synthetic=True)
    assert month_input.synthetic and month_input.source == "synthetic"
    assert "SYNTHETIC DATA: green 2021-03 is a generated month" in month_input.banner
    assert sum(rides.num_rows for _, rides in month_input.batches()) == month_input.num_rows


def test_a_labelled_synthetic_file_stays_synthetic(tmp_path):
    path = month_file(tmp_path, 2021, 3, synthetic=True)
    assert batch.open_month("green", 2021, 3, input_file=path).synthetic


def test_bad_files_are_clear_errors(tmp_path):
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"a": [1, 2]}), wrong)
    not_parquet = tmp_path / "notes.parquet"
    not_parquet.write_text("these are not trip records\n")
    yellow = data.write_month_file(data.synthetic_month("yellow", 2022, 1, n_rides=10), tmp_path / "yellow.parquet")
    for path, message in [
        (wrong, "is not a green TLC file: it lacks"),
        (not_parquet, "is not a readable parquet file"),
        (yellow, "lpep_pickup_datetime"),
        (tmp_path / "absent.parquet", "does not exist or is not a file"),
    ]:
        with pytest.raises(data.BadMonthFile, match=message):
            batch.open_month("green", 2022, 1, input_file=path)
    with pytest.raises(ValueError, match="unknown taxi type 'purple'"):
        batch.open_month("purple", 2021, 3, input_file=wrong)
    with pytest.raises(ValueError, match="no such TLC month: 2021-13"):
        batch.open_month("green", 2021, 13, input_file=wrong)


def test_missing_month_falls_back_to_synthetic_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("TAXI_DATA_DIR", str(tmp_path))

    def no_download(url, dest, timeout=30):
        raise ConnectionError("offline (test)")

    monkeypatch.setattr(data, "download", no_download)
    with pytest.raises(data.MonthNotAvailable, match="green_tripdata_2021-03.parquet is not in"):
        batch.open_month("green", 2021, 3)
    assert batch.open_month("green", 2021, 3, synthetic="fallback").synthetic
    (tmp_path / data.month_filename("green", 2021, 3)).write_bytes(
        month_file(tmp_path / "x", 2021, 3, synthetic=False).read_bytes()
    )
    assert not batch.open_month("green", 2021, 3, synthetic="fallback").synthetic


def pickups(*times: str | None, unit: str = "us") -> pa.Array:
    return pa.array(pd.to_datetime(list(times), format="ISO8601").as_unit(unit))


def test_pickups_in_month_counts_the_month_and_the_times():
    column = pickups("2021-03-01", "2021-03-31 23:59:59.999999", "2021-04-01", "2009-01-01", None)
    assert batch.pickups_in_month(column, 2021, 3) == (2, 4)
    assert batch.pickups_in_month(pickups("2021-12-31 23:00", unit="ns"), 2021, 12) == (1, 1)
    with pytest.raises(data.BadMonthFile, match="not timestamps"):
        batch.pickups_in_month(pa.array([1, 2]), 2021, 3)


def in_memory_month(times: list[str], year: int, month: int) -> batch.MonthInput:
    table = pa.table({"lpep_pickup_datetime": pickups(*times)})
    return batch.MonthInput("green", year, month, "test rides", False, table.num_rows, _table=table)


def test_another_months_rides_are_refused_naming_their_month_and_strays_pass():
    april = ["2021-04-02"] * 9 + ["2021-03-31"]
    month_input = in_memory_month(april, 2021, 3)
    with pytest.raises(data.BadMonthFile) as error:
        batch.check_pickup_month(month_input, 1, 10)
    message = str(error.value)
    assert "holds rides of 2021-04 (90% of its pickups)" in message
    assert "not of 2021-03 (only 10.0% of them)" in message and "--allow-other-month" in message
    batch.check_pickup_month(in_memory_month(["2021-03-02"] * 9 + ["2009-01-01"], 2021, 3), 9, 10)
    batch.check_pickup_month(month_input, 0, 0)  # no pickup times at all: nothing to say


def test_pickup_count_adds_batches_then_checks():
    month_input = in_memory_month(["2021-04-02"] * 3, 2021, 3)
    count = batch.PickupCount(month_input)
    for _, rides in month_input.batches(batch_rows=2):
        count.add(rides)
    assert (count.in_month, count.with_time) == (0, 3)
    with pytest.raises(data.BadMonthFile, match="holds rides of 2021-04"):
        count.check()


def test_batch_rows_is_the_default_batch_size(monkeypatch):
    monkeypatch.setattr(months, "BATCH_ROWS", 4)
    month_input = in_memory_month(["2021-03-02"] * 10, 2021, 3)
    assert [(first, rides.num_rows) for first, rides in month_input.batches()] == [(0, 4), (4, 4), (8, 2)]


def test_read_ahead_gives_the_same_items_in_order_and_can_stop_early():
    assert list(batch.read_ahead(iter(range(5)))) == [0, 1, 2, 3, 4]
    read = []

    def numbers():
        for i in range(100):
            read.append(i)
            yield i

    items = batch.read_ahead(numbers())
    assert next(items) == 0
    items.close()
    assert len(read) <= 2  # the item in use and at most one read ahead
