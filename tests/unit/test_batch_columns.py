"""Batch scoring's columns, on small in-memory tables: ride ids and strings built as bytes, numpy and Arrow
into each other, ride columns over the TLC's type changes, durations as pandas computes them, month ranges."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ride_duration import batch
from ride_duration.batch import arrow
from ride_duration.data import add_duration
from ride_duration.rides import ride_id


@pytest.mark.parametrize(
    "first_row, n",
    [(0, 12), (95, 10), (9_990, 20), (99_995, 10), (1_234_567, 3), (0, 0)],
    ids=["from 0", "2 to 3 digits", "4 to 5 digits", "5 to 6 digits", "7 digits", "none"],
)
def test_ride_ids_are_ride_id_of_each_row(first_row, n):
    """Four digits at a time, across the widths where the digit count changes."""
    got = batch.ride_ids(2021, 3, first_row, n).to_pylist()
    assert got == [ride_id(2021, 3, row) for row in range(first_row, first_row + n)]


def test_ride_ids_follow_ride_id_format(monkeypatch):
    monkeypatch.setattr(arrow, "RIDE_ID_FORMAT", "{year:04d}-{month:02d}-{row}")
    assert arrow.ride_ids(2022, 1, 9, 2).to_pylist() == ["2022-01-9", "2022-01-10"]
    monkeypatch.setattr(arrow, "RIDE_ID_FORMAT", "{row}@{year}")
    with pytest.raises(ValueError, match="must end with"):
        arrow.ride_ids(2022, 1, 0, 1)


def test_repeated_and_fixed_width_strings():
    assert batch.repeated("m-abc", 3).to_pylist() == ["m-abc"] * 3
    assert batch.repeated("m-abc", 0).to_pylist() == []
    blocks = [
        np.frombuffer(b"abcdef", dtype=np.uint8).reshape(3, 2),
        np.frombuffer(b"xyz", dtype=np.uint8).reshape(1, 3),
    ]
    assert batch.fixed_width_strings(blocks).to_pylist() == ["ab", "cd", "ef", "xyz"]
    assert batch.fixed_width_strings([]).to_pylist() == []


def test_numpy_values_and_arrow_array_are_each_others_twins():
    values = np.arange(10, dtype=np.int64)
    array = batch.arrow_array(values)
    assert array.type == pa.int64() and array.to_pylist() == values.tolist()
    sliced = array.slice(3, 4)  # an offset into the buffer
    assert batch.numpy_values(sliced, np.int64).tolist() == [3, 4, 5, 6]
    assert batch.arrow_array(np.linspace(0, 1, 5)).type == pa.float64()


def rides_table(pu_type="int64", distance_type="float64", unit="us", **overrides) -> pa.Table:
    columns = {
        "lpep_pickup_datetime": pa.array(pd.to_datetime(["2021-03-01 10:00:00", "2021-03-01 11:00:00"]).as_unit(unit)),
        "lpep_dropoff_datetime": pa.array(pd.to_datetime(["2021-03-01 10:12:30", "2021-03-01 11:01:00"]).as_unit(unit)),
        "PULocationID": pa.array([10, 20], type=pu_type),
        "DOLocationID": pa.array([50, 60], type=pu_type),
        "trip_distance": pa.array([1.5, 2.25], type=distance_type),
    }
    return pa.table({**columns, **overrides})


@pytest.mark.parametrize(
    "pu_type, distance_type, unit",
    [
        ("int64", "float64", "us"),  # 2021's files
        ("int32", "float64", "us"),  # from 2023-02: int32 zone ids
        ("int32", "float32", "ns"),
        ("int16", "float64", "ms"),  # a type the buffers are not read as: cast
    ],
)
def test_ride_columns_have_one_dtype_across_file_types(pu_type, distance_type, unit):
    ride = batch.ride_columns(rides_table(pu_type, distance_type, unit), "green")
    assert ride.pu.dtype == ride.do.dtype == np.int64 and ride.distance.dtype == np.float64
    assert ride.pu.tolist() == [10, 20] and ride.do.tolist() == [50, 60]
    assert ride.distance.tolist() == [1.5, 2.25]
    assert ride.pickup.type == pa.timestamp("us")
    assert ride.duration.tolist() == [12.5, 1.0]
    assert list(ride.fields) == ["PULocationID", "DOLocationID", "trip_distance"]
    assert ride.fields["PULocationID"] is ride.pu


def test_ride_columns_mark_rides_without_a_zone_or_a_distance_invalid():
    ride = batch.ride_columns(rides_table(PULocationID=pa.array([10, None], type=pa.int64())), "green")
    assert ride.valid.tolist() == [True, False] and ride.rejected == 1 and ride.pu.dtype == np.int64
    ride = batch.ride_columns(rides_table(trip_distance=pa.array([None, 2.0])), "green")
    assert np.isnan(ride.distance[0]) and ride.distance[1] == 2.0
    assert ride.valid.tolist() == [False, True]
    assert batch.ride_columns(rides_table(), "green").valid is None  # every ride valid: no mask at all


def test_ride_columns_of_a_chunked_batch():
    table = pa.concat_tables([rides_table(), rides_table()])
    assert table.column("PULocationID").num_chunks == 2
    assert batch.ride_columns(table, "green").pu.tolist() == [10, 20, 10, 20]


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


def test_month_range():
    assert batch.month_range("2021-11", "2022-02") == [(2021, 11), (2021, 12), (2022, 1), (2022, 2)]
    assert batch.month_range("2021-03", "2021-03") == [(2021, 3)]
    with pytest.raises(ValueError, match="is after"):
        batch.month_range("2022-02", "2021-11")
    with pytest.raises(ValueError, match="use YYYY-MM"):
        batch.month_range("2021/01", "2021-02")
    with pytest.raises(ValueError, match="no such TLC month: 2021-13"):
        batch.month_range("2021-01", "2021-13")
