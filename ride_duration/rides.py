"""What a ride is, once: its fields, their limits, how one is checked, and the tutorial's example ride.

A ride is {"PULocationID": int, "DOLocationID": int, "trip_distance": float}: the JSON a client sends to
the web service, the "ride" of a Kinesis event, and the columns batch scoring reads from a TLC month.
Adding a feature means adding its field here (and to `validate_ride`), then to ride_duration.features,
where rides become the model's input; the adapters only move rides in and out.
"""

from __future__ import annotations

import json
import math
import re
from numbers import Integral, Real

RIDE_FIELDS = ("PULocationID", "DOLocationID", "trip_distance")
MAX_LOCATION_ID = 300  # TLC zones are 1..265 (plus 264/265 unknown); leave some room
MAX_TRIP_DISTANCE = 1000.0  # miles; anything longer is a data error, not a taxi ride

# The course's example ride, used by every lesson, client and self-check.
EXAMPLE_RIDE = {"PULocationID": 10, "DOLocationID": 50, "trip_distance": 40.0}

# Batch outputs and the streaming producer name each ride by its month and its row in the month's file.
RIDE_ID_FORMAT = "{year:04d}/{month:02d}_{row}"


class BadRide(ValueError):
    """A ride that cannot be scored; the message says which field and why."""


# JSON's \uXXXX escapes can spell half of a UTF-16 surrogate pair alone ("\ud800"): valid JSON syntax, but no
# character, so no encoder can write it again (a response, a log line, a stream record). Whole pairs decode
# to one character and are fine.
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def read_json(data: bytes):
    """The JSON document in data (UTF-8); ValueError saying why not, also for a lone surrogate anywhere in it.

    Both adapters read their input with it (a request body, a Kinesis record), so that text nothing can
    encode is refused at the door, as bad input, and never reaches a message, a log or an output.
    """
    document = json.loads(data.decode())  # decoding first is cheaper than loads(bytes)
    if SURROGATE_ESCAPE.search(data):  # the rare document with such an escape is searched in full
        found = lone_surrogate(document)
        if found is not None:
            raise ValueError(f"{ascii(found)[1:-1]} is a lone UTF-16 surrogate, not a character")
    return document


def lone_surrogate(document) -> str | None:
    """The first lone surrogate in any string of a JSON document (keys included), or None."""
    pending = [document]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            found = LONE_SURROGATE.search(item)
            if found:
                return found.group()
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return None


def ride_id(year: int, month: int, row: int) -> str:
    """The id of the ride in row `row` (from 0) of a month's file, e.g. "2021/01_0"."""
    return RIDE_ID_FORMAT.format(year=year, month=month, row=row)


def valid_ride_columns(pu, do, distance):
    """validate_ride's limits for rides given as numpy columns (batch scoring): a bool per ride, True where
    the web service would accept the ride, or None when it would accept them all. Zone ids may be floats
    (some TLC files store them so) but must be whole; a missing value is NaN, and is not valid."""
    import numpy as np

    def within(values, low, high) -> bool:  # min and max are NaN if any value is: then not within
        return values.size == 0 or bool(values.min() >= low and values.max() <= high)

    integer_zones = all(np.issubdtype(ids.dtype, np.integer) for ids in (pu, do))
    if integer_zones and all(within(ids, 1, MAX_LOCATION_ID) for ids in (pu, do)):
        if within(distance, 0, MAX_TRIP_DISTANCE):
            return None  # the usual batch: two min/max passes instead of a comparison per ride per limit

    def zone(ids):
        if np.issubdtype(ids.dtype, np.integer):
            return (ids >= 1) & (ids <= MAX_LOCATION_ID)
        with np.errstate(invalid="ignore"):
            return (ids >= 1) & (ids <= MAX_LOCATION_ID) & (ids == np.floor(ids))

    with np.errstate(invalid="ignore"):
        distance_ok = (distance >= 0) & (distance <= MAX_TRIP_DISTANCE)  # NaN fails both, infinities one
    return zone(pu) & zone(do) & distance_ok


def validate_ride(ride) -> dict:
    """Check one ride and return it with canonical types; raise BadRide saying what is wrong."""
    if not isinstance(ride, dict):
        raise BadRide(f"a ride must be a JSON object with {list(RIDE_FIELDS)}, got {type(ride).__name__}")
    missing = [f for f in RIDE_FIELDS if f not in ride]
    if missing:
        raise BadRide(f"missing field(s): {', '.join(missing)}")
    extra = sorted(set(ride) - set(RIDE_FIELDS))
    if extra:
        raise BadRide(f"unknown field(s): {', '.join(map(str, extra))}")
    clean = {}
    for field in ("PULocationID", "DOLocationID"):
        value = ride[field]
        # type() first: JSON gives exact ints and floats, and the abstract isinstance checks cost more
        if type(value) is not int and (isinstance(value, bool) or not isinstance(value, Integral)):
            raise BadRide(f"{field} must be an integer zone id, got {value!r}")
        if not 1 <= value <= MAX_LOCATION_ID:
            raise BadRide(f"{field} must be between 1 and {MAX_LOCATION_ID}, got {value}")
        clean[field] = int(value)
    distance = ride["trip_distance"]
    if type(distance) not in (float, int) and (isinstance(distance, bool) or not isinstance(distance, Real)):
        raise BadRide(f"trip_distance must be a number of miles, got {distance!r}")
    distance = float(distance)
    if not math.isfinite(distance) or not 0 <= distance <= MAX_TRIP_DISTANCE:
        raise BadRide(f"trip_distance must be between 0 and {MAX_TRIP_DISTANCE:g} miles, got {distance}")
    clean["trip_distance"] = distance
    return clean
