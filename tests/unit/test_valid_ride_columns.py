"""Batch scoring's check of rides as columns (ride_duration.rides.valid_ride_columns) accepts exactly the rides
the web service's check (validate_ride) accepts, ride by ride, for integer and float zone columns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ride_duration.rides import BadRide, valid_ride_columns, validate_ride

ZONES = [1, 2, 265, 300, 0, -1, 301, 10**6]
FLOAT_ZONES = [*map(float, ZONES), 10.5, 1.0000001, math.nan, math.inf]
DISTANCES = [0.0, 0.01, 3.66, 1000.0, 1000.0001, -0.0, -0.5, math.nan, math.inf, -math.inf, 1e300]


def accepted(pu, do, distance) -> bool:
    """validate_ride on the ride a JSON client would send (a whole float zone id as its integer)."""

    def zone(value):
        return int(value) if math.isfinite(value) and value == int(value) else value

    try:
        validate_ride({"PULocationID": zone(pu), "DOLocationID": zone(do), "trip_distance": distance})
    except BadRide:
        return False
    return True


@pytest.mark.parametrize("zones, dtype", [(ZONES, np.int64), (ZONES, np.int32), (FLOAT_ZONES, np.float64)])
def test_the_column_check_accepts_exactly_what_validate_ride_accepts(zones, dtype):
    rides = [(pu, do, d) for pu in zones for do in zones[:3] for d in DISTANCES]
    rides += [(do, pu, d) for pu, do, d in rides]
    pu, do, distance = (np.array(column) for column in zip(*rides))
    valid = valid_ride_columns(pu.astype(dtype), do.astype(dtype), distance)
    assert valid.tolist() == [accepted(*ride) for ride in rides]


def test_rides_that_are_all_valid_need_no_mask():
    pu, do = np.array([1, 265], dtype=np.int32), np.array([300, 7])
    assert valid_ride_columns(pu, do, np.array([0.0, 1000.0])) is None
    assert valid_ride_columns(pu, do, np.array([0.0, math.nan])).tolist() == [True, False]
    assert valid_ride_columns(pu.astype(float), do.astype(float), np.array([0.0, 1.0])).tolist() == [True, True]
