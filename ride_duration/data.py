"""TLC trip-record months: find them locally, download them, or make a synthetic one.

Every notebook and script reads its rides through `read_month`, so the resolution order
(TAXI_DATA_DIR, then the TLC download, then a clear error or, when asked, a synthetic month)
and the quirks of the files (type changes, stray timestamps) are handled in one place.
"""

from __future__ import annotations

import calendar
import sys
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ride_duration.files import atomic_path
from ride_duration.rides import RIDE_FIELDS
from ride_duration.settings import Settings

if TYPE_CHECKING:  # pandas is imported where it is used: batch scoring runs on Arrow without it
    import pandas as pd

TLC_URL = "https://d37ci6vzurychx.cloudfront.net/trip-data/{filename}"

# The pickup/dropoff columns differ by taxi type: lpep_* for green, tpep_* for yellow.
DATETIME_COLUMNS = {
    "green": ("lpep_pickup_datetime", "lpep_dropoff_datetime"),
    "yellow": ("tpep_pickup_datetime", "tpep_dropoff_datetime"),
}
TAXI_TYPES = tuple(DATETIME_COLUMNS)  # ("green", "yellow")
MIN_DURATION, MAX_DURATION = 1, 60
# What a real ride can be, for training (notebook 01 shows why these figures): longer than MAX_PLAUSIBLE_MILES,
# or faster on average than MAX_PLAUSIBLE_MPH, is a meter or clock error, not a ride.
MAX_PLAUSIBLE_MILES = 100.0
MAX_PLAUSIBLE_MPH = 60.0
SYNTHETIC_KEY = b"ride_duration.synthetic"


class MonthNotAvailable(FileNotFoundError):
    """A month that is neither on disk nor downloadable; the message says how to supply it."""


class BadMonthFile(ValueError):
    """A month file that exists but does not hold TLC trip records of the expected type."""


def check_taxi_type(taxi_type: str) -> str:
    if taxi_type not in TAXI_TYPES:
        raise ValueError(f"unknown taxi type {taxi_type!r}: use one of {sorted(TAXI_TYPES)}")
    return taxi_type


def month_label(taxi_type: str, year: int, month: int) -> str:
    """How a month is named in outputs, summaries and logs: "green/2021-01"."""
    return f"{taxi_type}/{year:04d}-{month:02d}"


def check_month(year: int, month: int) -> tuple[int, int]:
    if not (2009 <= int(year) <= 2100 and 1 <= int(month) <= 12):
        raise ValueError(f"no such TLC month: {year}-{month}")
    return int(year), int(month)


def pickup_column(taxi_type: str) -> str:
    return DATETIME_COLUMNS[check_taxi_type(taxi_type)][0]


def month_filename(taxi_type: str, year: int, month: int) -> str:
    check_taxi_type(taxi_type)
    year, month = check_month(year, month)
    return f"{taxi_type}_tripdata_{year:04d}-{month:02d}.parquet"


def month_url(taxi_type: str, year: int, month: int) -> str:
    return TLC_URL.format(filename=month_filename(taxi_type, year, month))


def data_dir(settings: Settings | None = None) -> Path:
    """TAXI_DATA_DIR if set, else the project's data/ folder (ignored by git)."""
    return (settings or Settings.from_environ()).taxi_data_dir


def download(url: str, dest: Path, timeout: float = 30) -> Path:
    """Download to a temporary name beside dest, then rename: dest is whole or absent."""
    import requests
    from tqdm.auto import tqdm  # a widget in Jupyter, text in a terminal

    with atomic_path(dest) as partial:
        with requests.get(url, stream=True, timeout=timeout) as response:
            response.raise_for_status()
            total = int(response.headers.get("content-length", 0)) or None
            with open(partial, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                for chunk in response.iter_content(chunk_size=1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    return dest


def locate_month(taxi_type: str, year: int, month: int, *, allow_download: bool = True) -> Path:
    """The local path of a month's file, downloading it into data_dir() if it is not there."""
    filename = month_filename(taxi_type, year, month)
    folder = data_dir()
    path = folder / filename
    if path.exists():
        return path
    url = month_url(taxi_type, year, month)
    reason = "downloads are switched off"
    if allow_download:
        try:
            return download(url, path)
        except Exception as error:  # any network or HTTP failure ends in the same advice
            reason = f"the download failed: {type(error).__name__}: {error}"
    raise MonthNotAvailable(
        f"{filename} is not in {folder} and {reason}.\n"
        f"  URL: {url}\n"
        f"  Fix: download that file into {folder} (or set TAXI_DATA_DIR to a folder that has it), "
        f"or ask for a synthetic month (synthetic=True / --synthetic)."
    )


def read_month(
    taxi_type: str,
    year: int,
    month: int,
    *,
    synthetic: bool | str = False,
    allow_download: bool = True,
) -> pd.DataFrame:
    """One month of TLC rides with uniform dtypes.

    synthetic=False: real data or MonthNotAvailable. synthetic="fallback": real data if it can be
    found, else a synthetic month. synthetic=True: always the synthetic month.
    The frame's attrs say where it came from: attrs["source"] is a path or "synthetic".
    """
    check_taxi_type(taxi_type)
    if synthetic is True:
        return synthetic_month(taxi_type, year, month)
    try:
        path = locate_month(taxi_type, year, month, allow_download=allow_download)
    except MonthNotAvailable as error:
        if synthetic == "fallback":
            print(f"*** using a SYNTHETIC month instead: {error}", file=sys.stderr)  # a notice, not a fault
            return synthetic_month(taxi_type, year, month)
        raise
    return read_month_file(path, taxi_type)


def read_month_file(path: Path | str, taxi_type: str) -> pd.DataFrame:
    """Read a TLC parquet file, check its schema and give location IDs one dtype across years."""
    import pyarrow.parquet as pq

    check_taxi_type(taxi_type)
    try:
        table = pq.read_table(path)
    except Exception as error:
        raise BadMonthFile(f"{path} is not a readable parquet file: {error}") from error
    synthetic = check_month_schema(path, table.schema, taxi_type)
    df = normalise_dtypes(table.to_pandas(), taxi_type)
    df.attrs["source"] = "synthetic" if synthetic else str(path)
    return df


def check_month_schema(path, schema, taxi_type: str) -> bool:
    """Raise BadMonthFile unless the Arrow schema has a TLC month's ride columns; True if the file is
    a synthetic month (labelled in its metadata by write_month_file)."""
    names = schema.names
    missing = [c for c in (*DATETIME_COLUMNS[taxi_type], *RIDE_FIELDS) if c not in names]
    if missing:
        raise BadMonthFile(f"{path} is not a {taxi_type} TLC file: it lacks {missing} (it has {names[:8]}...)")
    return (schema.metadata or {}).get(SYNTHETIC_KEY) == b"true"


def normalise_dtypes(df: pd.DataFrame, taxi_type: str) -> pd.DataFrame:
    """From 2023-02 the TLC writes int32 location IDs and a double ehail_fee; make every month alike."""
    import pandas as pd

    pickup, dropoff = DATETIME_COLUMNS[taxi_type]
    df[pickup] = pd.to_datetime(df[pickup])
    df[dropoff] = pd.to_datetime(df[dropoff])
    df["PULocationID"] = df["PULocationID"].astype("int64")
    df["DOLocationID"] = df["DOLocationID"].astype("int64")
    df["trip_distance"] = df["trip_distance"].astype("float64")
    if "ehail_fee" in df.columns:
        df["ehail_fee"] = df["ehail_fee"].astype("float64")
    return df


def is_synthetic(df: pd.DataFrame) -> bool:
    return df.attrs.get("source") == "synthetic"


def add_duration(df: pd.DataFrame, taxi_type: str) -> pd.DataFrame:
    """Add the target: ride duration in minutes."""
    pickup, dropoff = DATETIME_COLUMNS[check_taxi_type(taxi_type)]
    df["duration"] = (df[dropoff] - df[pickup]).dt.total_seconds() / 60
    return df


def training_rides(df: pd.DataFrame, taxi_type: str) -> pd.DataFrame:
    """The course's training set: rides of 1 to 60 minutes, with their duration."""
    df = add_duration(df, taxi_type)
    keep = (df["duration"] >= MIN_DURATION) & (df["duration"] <= MAX_DURATION)
    out = df[keep].reset_index(drop=True)
    out.attrs = dict(df.attrs)
    return out


def plausible_rides(rides: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """The rides of `rides` (with their duration) that a taxi could have made, and how many were removed why.

    For training only: validation keeps the course's rides of 1 to 60 minutes, so that every run's RMSE is
    measured on the same rides. Each removed ride is counted under the first reason that applies, in order.
    """
    distance = rides["trip_distance"]
    mph = distance / (rides["duration"] / 60)
    reasons = {
        "no distance (missing, or 0 miles or less)": ~(distance > 0),
        f"longer than {MAX_PLAUSIBLE_MILES:g} miles": distance > MAX_PLAUSIBLE_MILES,
        f"faster than {MAX_PLAUSIBLE_MPH:g} mph on average": mph > MAX_PLAUSIBLE_MPH,
    }
    removed = np.zeros(len(rides), dtype=bool)
    counts = {"rides": len(rides)}
    for reason, rule in reasons.items():
        rule = rule.to_numpy()
        counts[reason] = int((rule & ~removed).sum())
        removed |= rule
    kept = rides[~removed].reset_index(drop=True)
    kept.attrs = dict(rides.attrs)
    counts["kept"] = len(kept)
    return kept, counts


def stray_pickups(df: pd.DataFrame, taxi_type: str, year: int, month: int) -> int:
    """How many rides were picked up outside the month the file is for (every TLC month has some)."""
    pickup = df[pickup_column(taxi_type)]
    return int(((pickup.dt.year != year) | (pickup.dt.month != month)).sum())


def synthetic_month(taxi_type: str, year: int, month: int, n_rides: int | None = None) -> pd.DataFrame:
    """A deterministic month with the TLC schema, for readers without the real files.

    The same (taxi type, year, month, n_rides) always gives the same rides. Durations follow a
    zone-pair speed plus noise, so a model trained on it learns something, but it is not NYC:
    every result computed from it is labelled synthetic.
    """
    import pandas as pd

    check_taxi_type(taxi_type)
    year, month = check_month(year, month)
    n = int(n_rides if n_rides is not None else (70_000 if taxi_type == "green" else 3_000_000))
    seed = zlib.crc32(f"{taxi_type}-{year:04d}-{month:02d}-{n}".encode())
    rng = np.random.default_rng(seed)
    zone_rng = np.random.default_rng(265)  # zone popularity and speeds do not change by month

    zones = np.arange(1, 266)
    popularity = zone_rng.pareto(1.2, size=zones.size) + 0.05
    popularity /= popularity.sum()
    zone_speed = zone_rng.uniform(8, 25, size=zones.size + 1)  # mph by zone id

    pu = rng.choice(zones, size=n, p=popularity)
    do = np.where(rng.random(n) < 0.3, pu, rng.choice(zones, size=n, p=popularity))
    distance = np.round(rng.lognormal(mean=0.6, sigma=0.8, size=n), 2)
    speed = (zone_speed[pu] + zone_speed[do]) / 2
    minutes = distance / speed * 60 + rng.gamma(2.0, 2.0, size=n)

    days = calendar.monthrange(year, month)[1]
    start = np.datetime64(f"{year:04d}-{month:02d}-01T00:00:00", "us")
    offsets_s = rng.integers(0, days * 24 * 3600, size=n)
    pickups = start + offsets_s.astype("timedelta64[s]")
    stray = rng.random(n) < 0.0005  # like real months, a few rides stamped 2009-01-01
    pickups = np.where(stray, np.datetime64("2009-01-01T00:00:00", "us"), pickups)
    dropoffs = pickups + (minutes * 60_000_000).astype("int64").astype("timedelta64[us]")

    fare = np.round(2.5 + 2.5 * distance + 0.5 * minutes, 2)
    pickup, dropoff = DATETIME_COLUMNS[taxi_type]
    columns = {
        "VendorID": rng.integers(1, 3, size=n),
        pickup: pickups,
        dropoff: dropoffs,
        "store_and_fwd_flag": np.full(n, "N", dtype=object),
        "RatecodeID": np.ones(n),
        "PULocationID": pu.astype("int64"),
        "DOLocationID": do.astype("int64"),
        "passenger_count": rng.integers(1, 5, size=n).astype("float64"),
        "trip_distance": distance,
        "fare_amount": fare,
        "extra": np.full(n, 0.5),
        "mta_tax": np.full(n, 0.5),
        "tip_amount": np.round(fare * rng.uniform(0, 0.25, size=n), 2),
        "tolls_amount": np.zeros(n),
    }
    if taxi_type == "green":
        columns["ehail_fee"] = np.full(n, np.nan)
    columns["improvement_surcharge"] = np.full(n, 0.3)
    columns["total_amount"] = np.round(fare + 1.3, 2)
    columns["payment_type"] = rng.integers(1, 3, size=n).astype("float64")
    if taxi_type == "green":
        columns["trip_type"] = np.ones(n)
    columns["congestion_surcharge"] = np.zeros(n)
    df = pd.DataFrame(columns)
    df.attrs["source"] = "synthetic"
    return df


def write_month_file(df: pd.DataFrame, path: Path | str) -> Path:
    """Write a month as a TLC-style parquet file; a synthetic month stays labelled in its metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    if is_synthetic(df):
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), SYNTHETIC_KEY: b"true"})
    path = Path(path)
    with atomic_path(path) as partial:
        pq.write_table(table, partial)
    return path
