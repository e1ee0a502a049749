"""Batch scoring plumbing: read a month by row group, write the output atomically, local or S3.

scripts/score.py (exported from notebooks/score.ipynb) does the scoring; the parts here are what
any batch job needs around it, shared with notebook 05 and the tests:

- `open_month(...).batches()` reads only the columns the model and the output need, a row group at
  a time, so a 3-million-ride month never sits in memory whole. Row numbers stay global across batches.
- `atomic_parquet` writes to a temporary file and only then moves (local) or uploads (s3://) it:
  a failed run leaves nothing at the destination, a re-run replaces the output whole.
- `output_info` reads the model version (and the synthetic label) from the output's parquet
  metadata or S3 object metadata, so a backfill can skip a month without reading its rows;
  `scored_already` is the one test of whether an existing output stands for a month.
- `pickups_in_month` and `check_pickup_month` refuse a file whose rides are of another month than
  the one asked for, counted as the batches are scored (no extra read unless it is refused).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import numpy as np

from ride_duration.data import (
    DATETIME_COLUMNS,
    RIDE_COLUMNS,
    BadMonthFile,
    MonthNotAvailable,
    check_month,
    check_month_schema,
    check_taxi_type,
    locate_month,
    synthetic_month,
)

if TYPE_CHECKING:  # batch scoring works on Arrow tables; pandas is imported only where it is used
    import pandas as pd
    import pyarrow as pa

METADATA_PREFIX = "ride_duration."  # parquet keys ride_duration.model_version, .month, .synthetic (as inputs)
BATCH_ROWS = (
    1 << 19
)  # half a TLC row group: bounded memory, and the writer thread overlaps more of the scoring (measured)


class OutputNotWritten(OSError):
    """The scored month could not be stored at its destination (nothing was left there)."""


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


@dataclass
class RideColumns:
    """One batch's columns as scoring needs them, with one dtype across TLC years."""

    pickup: pa.Array  # timestamp[us], as the output stores it
    pu: np.ndarray  # int64
    do: np.ndarray  # int64
    distance: np.ndarray  # float64, NaN where missing
    duration: np.ndarray  # minutes, float64, NaN where a timestamp is missing


def ride_columns(rides: pa.Table, taxi_type: str) -> RideColumns:
    """The columns of a batch from batches(), without pandas (from 2023-02 location IDs are int32).

    Raises BadMonthFile for a ride without a zone id.
    """
    import pyarrow as pa

    pickup, dropoff = DATETIME_COLUMNS[taxi_type]

    def array(name: str) -> pa.Array:
        chunks = rides.column(name)
        return chunks.chunk(0) if chunks.num_chunks == 1 else chunks.combine_chunks()

    def numbers(name: str, dtype) -> np.ndarray:
        values = array(name)
        if values.null_count == 0 and str(values.type) in NUMPY_TYPES:  # the TLC's types: read, then widen
            return numpy_values(values, NUMPY_TYPES[str(values.type)]).astype(dtype, copy=False)
        values = values.cast(pa.from_numpy_dtype(dtype))
        if values.null_count and dtype == np.int64:
            raise BadMonthFile(f"{values.null_count:,} rides have no {name}")
        return numpy_values(values.fill_null(np.nan) if values.null_count else values, dtype)

    pickups, dropoffs = array(pickup), array(dropoff)
    return RideColumns(
        pickup=pickups if pickups.type == pa.timestamp("us") else pickups.cast(pa.timestamp("us")),
        pu=numbers("PULocationID", np.int64),
        do=numbers("DOLocationID", np.int64),
        distance=numbers("trip_distance", np.float64),
        duration=duration_minutes(pickups, dropoffs),
    )


# Arrow types read straight from their buffers, and their numpy twins.
NUMPY_TYPES = {"int32": np.int32, "int64": np.int64, "float": np.float32, "double": np.float64}


def numpy_values(array: pa.Array, dtype) -> np.ndarray:
    """The values of an Arrow array without nulls as numpy, without a copy.

    Read from the array's buffer: pyarrow's own to_numpy() and most multi-argument compute functions
    import pandas (to check for pandas inputs), which would cost every run a second of cold start;
    a cast imports pyarrow.compute (0.1 s), so batches in the TLC's own types are read without one.
    """
    dtype = np.dtype(dtype)
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)


def arrow_array(values: np.ndarray) -> pa.Array:
    """A numpy column as an Arrow array without a copy (the twin of numpy_values)."""
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def fixed_width_strings(blocks: list[np.ndarray]) -> pa.Array:
    """An Arrow string array from blocks of bytes, one string per row of each 2-D uint8 block, in order."""
    import pyarrow as pa

    offsets = [np.zeros(1, dtype=np.int32)]
    for block in blocks:  # a block of m rows of width w: offsets end + w, end + 2w, ..., end + m*w
        rows, width = block.shape
        offsets.append(np.arange(1, rows + 1, dtype=np.int32) * np.int32(width) + offsets[-1][-1])
    data = [np.ascontiguousarray(block).ravel() for block in blocks]
    data = data[0] if len(data) == 1 else np.concatenate(data) if data else np.empty(0, dtype=np.uint8)
    count = sum(len(block) for block in blocks)
    return pa.Array.from_buffers(pa.string(), count, [None, pa.py_buffer(np.concatenate(offsets)), pa.py_buffer(data)])


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
    return [*DATETIME_COLUMNS[check_taxi_type(taxi_type)], *RIDE_COLUMNS]


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
    return MonthInput(taxi_type, year, month, str(path), synthetic, parquet.metadata.num_rows, _file=parquet)


MIN_SHARE_IN_MONTH = 0.5  # real months have a few stray pickups; another month's file has almost none


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


def output_schema(taxi_type: str):
    """The fixed batch output columns, with the taxi type's pickup column name."""
    import pyarrow as pa

    return pa.schema(
        [
            ("ride_id", pa.string()),
            (DATETIME_COLUMNS[check_taxi_type(taxi_type)][0], pa.timestamp("us")),
            ("PULocationID", pa.int64()),
            ("DOLocationID", pa.int64()),
            ("actual_duration", pa.float64()),
            ("predicted_duration", pa.float64()),
            ("diff", pa.float64()),
            ("model_version", pa.string()),
        ]
    )


def output_info_for(model_version: str, taxi_type: str, year: int, month: int, synthetic: bool) -> dict:
    """What an output says about itself: the model version, the month and the synthetic label."""
    return {
        "model_version": model_version,
        "month": f"{taxi_type}/{year:04d}-{month:02d}",
        "synthetic": "true" if synthetic else "false",
    }


def parquet_metadata(info: dict) -> dict:
    """Output info as parquet schema metadata (the synthetic key is the one input files use)."""
    return {f"{METADATA_PREFIX}{name}".encode(): value.encode() for name, value in info.items()}


def default_output(taxi_type: str, year: int, month: int, root: str | Path = "output") -> str:
    """output/{taxi_type}/{YYYY-MM}.parquet under root (a folder or an s3://bucket/prefix)."""
    return f"{str(root).rstrip('/')}/{taxi_type}/{year:04d}-{month:02d}.parquet"


def is_s3(destination: str | Path) -> bool:
    return str(destination).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if not parsed.netloc or not parsed.path.strip("/"):
        raise ValueError(f"not an s3://bucket/key URI: {uri}")
    return parsed.netloc, parsed.path.lstrip("/")


def s3_client():
    """boto3's S3 client; AWS_ENDPOINT_URL points it at moto_server locally, unset it for AWS."""
    import boto3

    return boto3.client("s3")


# Unique values (ids, durations) gain nothing from dictionary encoding and cost time to try.
DICTIONARY_COLUMNS = ["PULocationID", "DOLocationID", "model_version"]
# Snappy only where it pays, per 3M rides: ride ids 56 -> 15 MB, predictions 24 -> 15 MB (they repeat by
# zone pair and distance). Pickup times (24 -> 22 MB), actual durations and differences (no gain) would
# cost more time than the rest of the write; the dictionary-encoded columns are small as they are.
COMPRESSED_COLUMNS = {"ride_id": "snappy", "predicted_duration": "snappy"}
PARQUET_OPTIONS = {"compression": COMPRESSED_COLUMNS, "use_dictionary": DICTIONARY_COLUMNS}


class BackgroundWriter:
    """Writes each batch in a thread while the next one is read and scored (Arrow releases the GIL).

    At most one batch waits to be written, so memory stays bounded; a write error surfaces at
    the next write_table or at finish.
    """

    def __init__(self, parquet_writer):
        from concurrent.futures import ThreadPoolExecutor

        self.parquet_writer = parquet_writer
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-writer")
        self.pending = None

    def write_table(self, table) -> None:
        self.wait()
        self.pending = self.executor.submit(self.parquet_writer.write_table, table)

    def wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def finish(self) -> None:
        try:
            self.wait()
        finally:
            self.executor.shutdown(wait=True)


@contextmanager
def atomic_parquet(destination: str | Path, schema, info: dict):
    """A ParquetWriter whose file appears at destination only if the block finishes.

    Local: a temporary file in the destination's folder, then os.replace (atomic on one file
    system). s3://: a temporary local file, then one upload; S3 shows an object only once its
    upload completes, so a run killed or failing midway leaves nothing there.
    """
    import pyarrow.parquet as pq

    destination = str(destination)
    folder = None  # s3://: the system's temporary folder
    if not is_s3(destination):
        folder = Path(destination).resolve().parent
        folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".scoring-", suffix=".parquet.part", dir=folder)
    os.close(handle)
    try:
        schema = schema.with_metadata(parquet_metadata(info))
        with pq.ParquetWriter(temporary, schema, **PARQUET_OPTIONS) as parquet:
            writer = BackgroundWriter(parquet)
            try:
                yield writer
            finally:
                writer.finish()
        publish(temporary, destination, info)
    finally:
        Path(temporary).unlink(missing_ok=True)


def publish(finished: str, destination: str, info: dict) -> None:
    """Put a finished output file at destination whole: an atomic rename beside it, or one S3 upload
    (S3 shows an object only once its upload completes), with the output's metadata."""
    if is_s3(destination):
        bucket, key = split_s3(destination)
        s3_metadata = {name.replace("_", "-"): value for name, value in info.items()}
        try:
            s3_client().upload_file(finished, bucket, key, ExtraArgs={"Metadata": s3_metadata})
        except Exception as error:  # boto3 and botocore errors alike: the output was not written
            raise OutputNotWritten(f"cannot upload {destination}: {type(error).__name__}: {error}") from error
    else:
        os.chmod(finished, 0o666 & ~current_umask())  # temporary files are private; outputs are not
        os.replace(finished, destination)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def output_info(destination: str | Path) -> dict | None:
    """{"model_version", "month", "synthetic"} of an existing output, or None if there is none.

    Reads only metadata: the parquet footer locally, the object's metadata on S3.
    """
    destination = str(destination)
    if is_s3(destination):
        bucket, key = split_s3(destination)
        client = s3_client()
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except client.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        meta = head.get("Metadata", {})
        return decode_info({name: meta.get(name.replace("_", "-")) for name in OUTPUT_INFO_FIELDS})
    import pyarrow.parquet as pq

    if not Path(destination).is_file():
        return None
    try:
        meta = pq.read_schema(destination).metadata or {}
    except Exception:
        return decode_info({})  # unreadable: no model version, so a backfill scores it again
    return decode_parquet_info(meta)


OUTPUT_INFO_FIELDS = ("model_version", "month", "synthetic")


def scored_already(destination: str | Path, month_input: MonthInput, model_version: str) -> tuple[bool, str]:
    """(done, why): whether the output at destination stands for this month as it would be scored now.

    Done only if it is readable and says it holds the same month, scored from the same kind of rides
    (real or synthetic) by the same model version; a local output must also have one row per ride
    of the input. A backfill scores the month again otherwise, and `why` says what differed.
    """
    month = f"{month_input.taxi_type}/{month_input.year:04d}-{month_input.month:02d}"
    source = "synthetic" if month_input.synthetic else "real"
    try:
        info = output_info(destination)
        rows = None if info is None or is_s3(destination) else output_rows(destination)
    except (OSError, ValueError) as error:  # a local file cut short; S3 errors are the endpoint's, and raise
        return False, f"existing output unreadable ({type(error).__name__})"
    if info is None:
        return False, "no output yet"
    if info["month"] != month:
        return False, f"existing output holds {info['month'] or 'an unknown month'}"
    existing_source = "synthetic" if info["synthetic"] else "real"
    if existing_source != source:
        return False, f"existing output was scored from {existing_source} rides, these are {source}"
    if info["model_version"] != model_version:
        return False, f"existing output is by {info['model_version'] or 'an unknown model'}"
    if rows is not None and rows != month_input.num_rows:
        return False, f"existing output has {rows:,} rows for {month_input.num_rows:,} rides"
    return True, f"already scored by {model_version} from {source} rides"


def output_rows(destination: str | Path) -> int:
    """The row count in a local output's footer (raises if the footer does not parse)."""
    import pyarrow.parquet as pq

    return pq.read_metadata(str(destination)).num_rows


def decode_info(raw: dict) -> dict:
    return {
        "model_version": raw.get("model_version") or None,
        "month": raw.get("month") or None,
        "synthetic": raw.get("synthetic") == "true",
    }


def decode_parquet_info(meta: dict) -> dict:
    return decode_info(
        {name: (meta.get(f"{METADATA_PREFIX}{name}".encode()) or b"").decode() for name in OUTPUT_INFO_FIELDS}
    )


def read_output(source: str | Path) -> pd.DataFrame:
    """A batch output as a DataFrame; attrs carry its model version, month and synthetic label."""
    import pyarrow.parquet as pq

    source = str(source)
    if is_s3(source):
        import io

        bucket, key = split_s3(source)
        body = s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        table = pq.read_table(io.BytesIO(body))
    else:
        table = pq.read_table(source)
    df = table.to_pandas()
    df.attrs = {**decode_parquet_info(table.schema.metadata or {}), "source": source}
    return df
