"""The input of batch scoring: a month opened without reading it, its rides as Arrow batches and columns.

- `open_month(...).batches()` reads only the columns the model and the output need, a row group at
  a time, so a 3-million-ride month never sits in memory whole. Row numbers stay global across batches.
- `ride_columns` turns a batch into numpy columns with one dtype across TLC years, and the duration
  computed exactly as pandas does it, without pandas.
- `pickups_in_month` and `check_pickup_month` refuse a file whose rides are of another month than
  the one asked for, counted as the batches are scored (no extra read unless it is refused).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ride_duration.batch.arrow import NUMPY_TYPES, numpy_values
from ride_duration.data import (
    DATETIME_COLUMNS,
    BadMonthFile,
    MonthNotAvailable,
    check_month,
    check_month_schema,
    check_taxi_type,
    locate_month,
    synthetic_month,
)
from ride_duration.rides import RIDE_FIELDS, valid_ride_columns

if TYPE_CHECKING:  # batch scoring works on Arrow tables; pandas is imported only where it is used
    import pyarrow as pa

# Half a TLC row group: memory stays bounded, and the writer thread overlaps more of the scoring.
BATCH_ROWS = 1 << 19
MIN_SHARE_IN_MONTH = 0.5  # real months have a few stray pickups; another month's file has almost none
SYNTHETIC_BANNER = (
    "*** SYNTHETIC DATA: {month} is a generated month, not TLC rides; its output is labelled synthetic ***"
)


@dataclass
class MonthInput:
    """Where a month's rides come from: a parquet file, or the synthetic month (kept in memory)."""

    taxi_type: str
    year: int
    month: int
    source: str  # the file's path, or "synthetic"
    synthetic: bool
    num_rows: int
    _file: object = None  # pyarrow.parquet.ParquetFile
    _table: pa.Table | None = None

    def batches(self, batch_rows: int | None = None) -> Iterator[tuple[int, pa.Table]]:
        """(first row number, rides as an Arrow table of input_columns) per batch; row numbers are global.

        The next batch is read in a background thread while the caller scores this one.
        """
        return read_ahead(self._batches(batch_rows or BATCH_ROWS))

    def _batches(self, batch_rows: int) -> Iterator[tuple[int, pa.Table]]:
        first_row = 0
        tables = [self._table] if self._table is not None else self._row_groups()
        for table in tables:
            for offset in range(0, table.num_rows, batch_rows):
                rides = table.slice(offset, batch_rows)
                yield first_row, rides
                first_row += rides.num_rows

    def _row_groups(self) -> Iterator[pa.Table]:
        """One row group at a time (its columns decoded in parallel)."""
        for group in range(self._file.num_row_groups):
            yield self._file.read_row_group(group, columns=input_columns(self.taxi_type))

    @property
    def banner(self) -> str | None:
        """The warning a synthetic month is scored under (None for real rides)."""
        if not self.synthetic:
            return None
        return SYNTHETIC_BANNER.format(month=f"{self.taxi_type} {self.year:04d}-{self.month:02d}")


@dataclass
class RideColumns:
    """One batch's columns as scoring needs them, with one dtype across TLC years."""

    pickup: pa.Array  # timestamp[us], as the output stores it
    pu: np.ndarray  # int64 (1 where the file's zone id is missing or not a whole number: see valid)
    do: np.ndarray  # int64 (likewise)
    distance: np.ndarray  # float64, NaN where missing
    duration: np.ndarray  # minutes, float64, NaN where a timestamp is missing
    valid: np.ndarray | None = None  # bool per ride, what the web service would accept; None: every ride

    @property
    def rejected(self) -> int:
        """How many rides of the batch the web service would reject (they get no prediction)."""
        return 0 if self.valid is None else int(self.valid.size - np.count_nonzero(self.valid))

    @property
    def fields(self) -> dict[str, np.ndarray]:
        """The rides as the serving core takes columns: ride_duration.rides.RIDE_FIELDS to arrays."""
        return dict(zip(RIDE_FIELDS, (self.pu, self.do, self.distance)))


def ride_columns(rides: pa.Table, taxi_type: str) -> RideColumns:
    """The columns of a batch from batches(), without pandas (from 2023-02 location IDs are int32).

    `valid` marks the rides the web service would accept (ride_duration.rides.valid_ride_columns): a zone id
    missing, out of range or not whole, a distance missing, negative, infinite or too long make a ride
    invalid, not the month. The column types are checked when the month is opened (check_column_types).
    """
    import pyarrow as pa

    pickup, dropoff = DATETIME_COLUMNS[taxi_type]

    def array(name: str) -> pa.Array:
        chunks = rides.column(name)
        return chunks.chunk(0) if chunks.num_chunks == 1 else chunks.combine_chunks()

    def numbers(name: str) -> np.ndarray:
        """The column as numpy: its own integer or float dtype when read from the buffers, else float64
        (NaN where missing)."""
        values = array(name)
        if values.null_count == 0 and str(values.type) in NUMPY_TYPES:  # the TLC's types: read as they are
            return numpy_values(values, NUMPY_TYPES[str(values.type)])
        values = values.cast(pa.float64())  # imports pyarrow.compute: only for other types, or missing values
        return numpy_values(values.fill_null(np.nan) if values.null_count else values, np.float64)

    pu, do, distance = numbers("PULocationID"), numbers("DOLocationID"), numbers("trip_distance")
    valid = valid_ride_columns(pu, do, distance)
    pickups, dropoffs = array(pickup), array(dropoff)
    return RideColumns(
        pickup=pickups if pickups.type == pa.timestamp("us") else pickups.cast(pa.timestamp("us")),
        pu=zone_ids(pu, valid),
        do=zone_ids(do, valid),
        distance=distance.astype(np.float64, copy=False),
        duration=duration_minutes(pickups, dropoffs),
        valid=valid,
    )


def zone_ids(ids: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Zone ids as int64; 1 stands in where a ride is invalid (its prediction is dropped)."""
    if valid is not None and not np.issubdtype(ids.dtype, np.integer):
        ids = np.where(valid, ids, 1)
    return ids.astype(np.int64, copy=False)


def check_column_types(path, schema, taxi_type: str) -> None:
    """Raise BadMonthFile, naming the file and the column, unless the ride columns are numbers and the
    pickup and dropoff columns timestamps: a column of another type cannot be scored at all."""
    import pyarrow as pa

    def number(kind) -> bool:
        return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)

    for name in DATETIME_COLUMNS[taxi_type]:
        kind = schema.field(name).type
        if not pa.types.is_timestamp(kind):
            raise BadMonthFile(f"{path}: column {name} holds {kind}, not timestamps")
    for name in RIDE_FIELDS:
        kind = schema.field(name).type
        if not number(kind) or pa.types.is_boolean(kind):
            raise BadMonthFile(f"{path}: column {name} holds {kind}, not numbers")


TICKS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def duration_minutes(pickup: pa.Array, dropoff: pa.Array) -> np.ndarray:
    """(dropoff - pickup).dt.total_seconds() / 60, the target of ride_duration.data.add_duration, bit for bit.

    pandas' total_seconds splits whole seconds from the rest ("floor + residual / ticks per second");
    this does the same on the int64 timestamps. A batch with a missing timestamp, or beyond 2**53 ticks
    (where pandas corrects the rounding: a stray timestamp years away, in nanoseconds) goes to pandas itself.
    """
    ticks = None
    if pickup.null_count == 0 and dropoff.null_count == 0:  # Arrow timestamps are int64 ticks
        ticks = numpy_values(dropoff, np.int64) - numpy_values(pickup, np.int64)
    if ticks is None or np.abs(ticks).max(initial=0) > 2**53:
        return ((dropoff.to_pandas() - pickup.to_pandas()).dt.total_seconds() / 60).to_numpy(dtype=np.float64)
    per_second = TICKS_PER_SECOND[pickup.type.unit]
    seconds, residual = np.divmod(ticks, per_second)
    return (seconds + residual / per_second) / 60


def read_ahead(items: Iterator) -> Iterator:
    """The same items, each produced in a worker thread while the previous one is being used.

    At most one item is read ahead; if the consumer stops early, the read under way finishes first.
    """
    from concurrent.futures import ThreadPoolExecutor

    done = object()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead") as pool:
        upcoming = pool.submit(next, items, done)
        while (item := upcoming.result()) is not done:
            upcoming = pool.submit(next, items, done)
            yield item


def input_columns(taxi_type: str) -> list[str]:
    """The only columns batch scoring reads: the two timestamps and the ride fields."""
    return [*DATETIME_COLUMNS[check_taxi_type(taxi_type)], *RIDE_FIELDS]


def open_month(
    taxi_type: str,
    year: int,
    month: int,
    *,
    input_file: str | Path | None = None,
    synthetic: bool | str = False,
) -> MonthInput:
    """Open a month for scoring without reading its rows yet.

    input_file: a parquet file to score instead of the core's data access (TAXI_DATA_DIR, then the
    TLC download). synthetic: as in ride_duration.data.read_month (False, True or "fallback").
    Raises MonthNotAvailable, BadMonthFile or ValueError (unknown taxi type or month).
    """
    check_taxi_type(taxi_type)
    year, month = check_month(year, month)
    if synthetic is True:
        return _synthetic_input(taxi_type, year, month)
    if input_file is None:
        try:
            input_file = locate_month(taxi_type, year, month)
        except MonthNotAvailable:
            if synthetic == "fallback":
                return _synthetic_input(taxi_type, year, month)
            raise
    return _file_input(Path(input_file), taxi_type, year, month)


def _synthetic_input(taxi_type: str, year: int, month: int) -> MonthInput:
    import pyarrow as pa

    frame = synthetic_month(taxi_type, year, month)[input_columns(taxi_type)]
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return MonthInput(taxi_type, year, month, "synthetic", True, table.num_rows, _table=table)


def _file_input(path: Path, taxi_type: str, year: int, month: int) -> MonthInput:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise BadMonthFile(f"{path} does not exist or is not a file")
    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:
        raise BadMonthFile(f"{path} is not a readable parquet file: {error}") from error
    synthetic = check_month_schema(path, parquet.schema_arrow, taxi_type)
    check_column_types(path, parquet.schema_arrow, taxi_type)
    return MonthInput(taxi_type, year, month, str(path), synthetic, parquet.metadata.num_rows, _file=parquet)


def timestamp_ticks(pickups) -> tuple[np.ndarray, str]:
    """The non-missing values of an Arrow timestamp column as int64 ticks, and their unit ("us", ...)."""
    import pyarrow as pa

    if isinstance(pickups, pa.ChunkedArray):
        pickups = pickups.chunk(0) if pickups.num_chunks == 1 else pickups.combine_chunks()
    if not pa.types.is_timestamp(pickups.type):
        raise BadMonthFile(f"pickup times are {pickups.type}, not timestamps")
    if pickups.null_count:
        import pyarrow.compute as pc

        pickups = pc.drop_null(pickups)
    return numpy_values(pickups, np.int64), pickups.type.unit


def pickups_in_month(pickups, year: int, month: int) -> tuple[int, int]:
    """(pickups in year-month, pickups with a time) of an Arrow timestamp column."""
    ticks, unit = timestamp_ticks(pickups)
    start = np.datetime64(f"{year:04d}-{month:02d}", "M")
    first, end = (np.datetime64(bound, unit).astype(np.int64) for bound in (start, start + 1))
    return int(np.count_nonzero((ticks >= first) & (ticks < end))), int(ticks.size)


def check_pickup_month(month_input: MonthInput, in_month: int, with_time: int) -> None:
    """Raise BadMonthFile if fewer than half of the pickups counted are in the month the file is scored as,
    naming the month most of them are of (read from the file only then). A few strays pass: every TLC
    month has some, even from 2009."""
    if with_time == 0 or in_month / with_time >= MIN_SHARE_IN_MONTH:
        return
    pickup = DATETIME_COLUMNS[month_input.taxi_type][0]
    table = month_input._table if month_input._table is not None else month_input._file.read(columns=[pickup])
    ticks, unit = timestamp_ticks(table.column(pickup))
    months, counts = np.unique(ticks.astype(f"datetime64[{unit}]").astype("datetime64[M]"), return_counts=True)
    found, asked = months[counts.argmax()], f"{month_input.year:04d}-{month_input.month:02d}"
    raise BadMonthFile(
        f"{month_input.source} holds rides of {found} ({counts.max() / ticks.size:.0%} of its pickups), "
        f"not of {asked} (only {in_month / with_time:.1%} of them): score it as {found}, "
        f"or pass --allow-other-month (allow_other_month=True) to score it as {asked} anyway"
    )


class PickupCount:
    """The pickups of a month's batches counted as they are scored, for check_pickup_month at the end."""

    def __init__(self, month_input: MonthInput):
        self.month_input = month_input
        self.in_month = self.with_time = 0

    def add(self, scored: pa.Table) -> None:
        """Count the pickups of a batch of output rows (or of rides: both have the pickup column)."""
        pickups = scored.column(DATETIME_COLUMNS[self.month_input.taxi_type][0])
        in_month, with_time = pickups_in_month(pickups, self.month_input.year, self.month_input.month)
        self.in_month += in_month
        self.with_time += with_time

    def check(self) -> None:
        """Raise BadMonthFile if most pickups counted are of another month."""
        check_pickup_month(self.month_input, self.in_month, self.with_time)
