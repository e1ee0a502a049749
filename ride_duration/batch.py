"""Batch scoring plumbing: read a month by row group, write the output atomically, local or S3.

scripts/score.py (exported from notebooks/score.ipynb) does the scoring; the parts here are what
any batch job needs around it, shared with notebook 05 and the tests:

- `open_month(...).batches()` reads only the columns the model and the output need, a row group at
  a time, so a 3-million-ride month never sits in memory whole. Row numbers stay global across batches.
- `atomic_parquet` writes to a temporary file and only then moves (local) or uploads (s3://) it:
  a failed run leaves nothing at the destination, a re-run replaces the output whole.
- `output_info` reads the model version (and the synthetic label) from the output's parquet
  metadata or S3 object metadata, so a backfill can skip a month without reading its rows.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import pandas as pd

from ride_duration.data import (
    DATETIME_COLUMNS,
    RIDE_COLUMNS,
    SYNTHETIC_KEY,
    BadMonthFile,
    MonthNotAvailable,
    check_month,
    check_taxi_type,
    locate_month,
    normalise_dtypes,
    synthetic_month,
)

METADATA_PREFIX = "ride_duration."  # parquet keys ride_duration.model_version, .month, .synthetic (as inputs)
BATCH_ROWS = 1 << 20  # a TLC-sized row group: bounded memory, few enough batches to stay fast


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
    _frame: pd.DataFrame | None = None

    def batches(self, batch_rows: int | None = None) -> Iterator[tuple[int, pd.DataFrame]]:
        """(first row number, rides) per batch, with the core's dtypes; row numbers are global.

        The next batch is read in a background thread while the caller scores this one.
        """
        return read_ahead(self._batches(batch_rows or BATCH_ROWS))

    def _batches(self, batch_rows: int) -> Iterator[tuple[int, pd.DataFrame]]:
        first_row = 0
        if self._frame is not None:
            frames = (self._frame.iloc[i:i + batch_rows] for i in range(0, len(self._frame), batch_rows))
        else:
            frames = self._file_frames(batch_rows)
        for frame in frames:
            rides = normalise_dtypes(frame.reset_index(drop=True), self.taxi_type)
            yield first_row, rides
            first_row += len(rides)

    def _file_frames(self, batch_rows: int) -> Iterator[pd.DataFrame]:
        """Read one row group at a time (its columns decoded in parallel), in slices of batch_rows."""
        for group in range(self._file.num_row_groups):
            table = self._file.read_row_group(group, columns=input_columns(self.taxi_type))
            for offset in range(0, table.num_rows, batch_rows):
                yield table.slice(offset, batch_rows).to_pandas(split_blocks=True)


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
    frame = synthetic_month(taxi_type, year, month)[input_columns(taxi_type)]
    return MonthInput(taxi_type, year, month, "synthetic", True, len(frame), _frame=frame)


def _file_input(path: Path, taxi_type: str, year: int, month: int) -> MonthInput:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise BadMonthFile(f"{path} does not exist or is not a file")
    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:
        raise BadMonthFile(f"{path} is not a readable parquet file: {error}") from error
    names = parquet.schema_arrow.names
    missing = [c for c in input_columns(taxi_type) if c not in names]
    if missing:
        raise BadMonthFile(f"{path} is not a {taxi_type} TLC file: it lacks {missing} (it has {names[:8]}...)")
    synthetic = (parquet.schema_arrow.metadata or {}).get(SYNTHETIC_KEY) == b"true"
    return MonthInput(taxi_type, year, month, str(path), synthetic, parquet.metadata.num_rows, _file=parquet)


def output_schema(taxi_type: str):
    """The fixed batch output columns (DESIGN.md), with the taxi type's pickup column name."""
    import pyarrow as pa

    return pa.schema([
        ("ride_id", pa.string()),
        (DATETIME_COLUMNS[check_taxi_type(taxi_type)][0], pa.timestamp("us")),
        ("PULocationID", pa.int64()),
        ("DOLocationID", pa.int64()),
        ("actual_duration", pa.float64()),
        ("predicted_duration", pa.float64()),
        ("diff", pa.float64()),
        ("model_version", pa.string()),
    ])


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
    if is_s3(destination):
        bucket, key = split_s3(destination)
        folder = None
    else:
        folder = Path(destination).resolve().parent
        folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".scoring-", suffix=".parquet.part", dir=folder)
    os.close(handle)
    try:
        schema = schema.with_metadata(parquet_metadata(info))
        with pq.ParquetWriter(temporary, schema, compression="snappy", use_dictionary=DICTIONARY_COLUMNS) as parquet:
            writer = BackgroundWriter(parquet)
            try:
                yield writer
            finally:
                writer.finish()
        if folder is None:
            s3_metadata = {name.replace("_", "-"): value for name, value in info.items()}
            try:
                s3_client().upload_file(temporary, bucket, key, ExtraArgs={"Metadata": s3_metadata})
            except Exception as error:  # boto3 and botocore errors alike: the output was not written
                raise OutputNotWritten(f"cannot upload {destination}: {type(error).__name__}: {error}") from error
        else:
            os.replace(temporary, destination)
    finally:
        Path(temporary).unlink(missing_ok=True)


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


def decode_info(raw: dict) -> dict:
    return {
        "model_version": raw.get("model_version") or None,
        "month": raw.get("month") or None,
        "synthetic": raw.get("synthetic") == "true",
    }


def decode_parquet_info(meta: dict) -> dict:
    return decode_info({
        name: (meta.get(f"{METADATA_PREFIX}{name}".encode()) or b"").decode() for name in OUTPUT_INFO_FIELDS
    })


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
