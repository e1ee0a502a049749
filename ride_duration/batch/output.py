"""The output of batch scoring: its schema and metadata, written whole or not at all, locally or to S3.

- `atomic_parquet` writes to a temporary file and only then renames (local, ride_duration.files.atomic_path)
  or uploads (s3://) it: a failed run leaves nothing at the destination, a re-run replaces the output whole.
- `output_info` reads the model version (and the synthetic label) from the output's parquet
  metadata or S3 object metadata, so a backfill can skip a month without reading its rows;
  `scored_already` is the one test of whether an existing output stands for a month.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from ride_duration.batch.months import MonthInput
from ride_duration.data import DATETIME_COLUMNS, check_taxi_type, month_label
from ride_duration.files import atomic_path, partial_file

if TYPE_CHECKING:
    import pandas as pd

METADATA_PREFIX = "ride_duration."  # parquet keys ride_duration.model_version, .month, ... (.synthetic as inputs)
OUTPUT_INFO_FIELDS = ("model_version", "registered_version", "month", "synthetic")

# Unique values (ids, durations) gain nothing from dictionary encoding and cost time to try.
DICTIONARY_COLUMNS = ["PULocationID", "DOLocationID", "model_version"]
# Snappy only where it pays: ride ids and predictions (they repeat by zone pair and distance) shrink by
# much; pickup times, actual durations and differences barely shrink, and compressing them would cost
# more time than the rest of the write. The dictionary-encoded columns are small as they are.
COMPRESSED_COLUMNS = {"ride_id": "snappy", "predicted_duration": "snappy"}
PARQUET_OPTIONS = {"compression": COMPRESSED_COLUMNS, "use_dictionary": DICTIONARY_COLUMNS}


class OutputNotWritten(OSError):
    """The scored month could not be stored at its destination (nothing was left there)."""


class StorageUnavailable(ConnectionError):
    """S3 could not be reached (refused, timed out) after the client's retries: an infrastructure failure,
    not a fault of the month, so a backfill stops at it instead of marking month after month failed."""


def s3_unreachable(error: Exception) -> bool:
    """True for botocore's connection and timeout errors (what its retries already tried again)."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError

    return isinstance(error, (BotoConnectionError, HTTPClientError))


def unreachable(destination: str, error: Exception) -> StorageUnavailable:
    return StorageUnavailable(f"cannot reach S3 for {destination}: {type(error).__name__}: {error}")


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


def output_info_for(
    model_version: str,
    taxi_type: str,
    year: int,
    month: int,
    synthetic: bool,
    registered_version: str | None = None,
) -> dict:
    """What an output says about itself: the model version, the registered version it was served as
    ("ride-duration/2", when it came from the registry), the month and the synthetic label."""
    info = {
        "model_version": model_version,
        "month": month_label(taxi_type, year, month),
        "synthetic": "true" if synthetic else "false",
    }
    return {**info, "registered_version": registered_version} if registered_version else info


def model_label(model_version: str | None, registered_version: str | None = None) -> str:
    """How messages name a model: "m-... (ride-duration/2)", or the model id alone when it was not registered."""
    name = model_version or "an unknown model"
    return f"{name} ({registered_version})" if registered_version else name


def parquet_metadata(info: dict) -> dict:
    """Output info as parquet schema metadata (the synthetic key is the one input files use)."""
    return {f"{METADATA_PREFIX}{name}".encode(): value.encode() for name, value in info.items()}


def s3_metadata(info: dict) -> dict:
    """Output info as S3 object metadata (whose keys are dashed)."""
    return {name.replace("_", "-"): value for name, value in info.items()}


def default_output(taxi_type: str, year: int, month: int, root: str | Path = "output") -> str:
    """output/{taxi_type}/{YYYY-MM}.parquet under root (a folder or an s3://bucket/prefix)."""
    return f"{str(root).rstrip('/')}/{month_label(taxi_type, year, month)}.parquet"


def is_s3(destination: str | Path) -> bool:
    return str(destination).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if not parsed.netloc or not parsed.path.strip("/"):
        raise ValueError(f"not an s3://bucket/key URI: {uri}")
    return parsed.netloc, parsed.path.lstrip("/")


def s3_client():
    """The S3 client (ride_duration.aws: time limits, bounded retries); AWS_ENDPOINT_URL points it at
    moto_server locally, unset it for AWS."""
    from ride_duration import aws

    return aws.client("s3")


class BackgroundWriter:
    """Writes each batch in a thread while the next one is read and scored (Arrow releases the GIL).

    At most one batch waits to be written, so memory stays bounded; a write error surfaces at
    the next write_table or at finish.
    """

    def __init__(self, parquet_writer):
        from concurrent.futures import ThreadPoolExecutor

        self.parquet_writer = parquet_writer
        self.info: dict[str, str] = {}  # what the caller learns while writing, added to the output's metadata
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
def staging_path(destination: str | Path) -> Iterator[Path]:
    """The local file an output is written to before it is published.

    Local destination: ride_duration.files.atomic_path, a temporary file beside it renamed over it when
    the block finishes. s3://: a temporary file in the system's temporary folder, for `publish` to upload
    inside the block; removed when the block ends, either way.
    """
    if not is_s3(destination):
        with atomic_path(Path(destination).resolve()) as temporary:
            yield temporary
        return
    name = f"scoring-{Path(split_s3(str(destination))[1]).name}"
    with partial_file(Path(tempfile.gettempdir()), name) as temporary:
        yield temporary


def publish(finished: str | Path, destination: str | Path, info: dict) -> None:
    """Upload a finished output to an s3:// destination in one piece, with the output's metadata.

    S3 shows an object only once its upload completes, so a failed or killed upload leaves nothing.
    A local destination needs nothing here: staging_path renames the file into place as its block ends.
    """
    if not is_s3(destination):
        return
    bucket, key = split_s3(str(destination))
    try:
        s3_client().upload_file(str(finished), bucket, key, ExtraArgs={"Metadata": s3_metadata(info)})
    except Exception as error:  # boto3 and botocore errors alike: the output was not written
        if s3_unreachable(error):
            raise unreachable(str(destination), error) from error
        raise OutputNotWritten(f"cannot upload {destination}: {type(error).__name__}: {error}") from error


@contextmanager
def atomic_parquet(destination: str | Path, schema, info: dict):
    """A ParquetWriter (writing in the background) whose file appears at destination only if the block finishes."""
    import pyarrow.parquet as pq

    with staging_path(destination) as temporary:
        schema = schema.with_metadata(parquet_metadata(info))
        with pq.ParquetWriter(temporary, schema, **PARQUET_OPTIONS) as parquet:
            writer = BackgroundWriter(parquet)
            try:
                yield writer
            finally:
                writer.finish()
            if writer.info:
                parquet.add_key_value_metadata(parquet_metadata(writer.info))
        publish(temporary, destination, {**info, **writer.info})


def output_info(destination: str | Path) -> dict | None:
    """{"model_version", "month", "synthetic"} of an existing output (and "registered_version" if it names
    one), or None if there is none.

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
        except Exception as error:
            if s3_unreachable(error):
                raise unreachable(destination, error) from error
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


def scored_already(
    destination: str | Path, month_input: MonthInput, model_version: str, registered_version: str | None = None
) -> tuple[bool, str]:
    """(done, why): whether the output at destination stands for this month as it would be scored now.

    Done only if it is readable and says it holds the same month, scored from the same kind of rides
    (real or synthetic) by the same model version (the model id: a model registered again under another
    number is the same model); a local output must also have one row per ride of the input. A backfill
    scores the month again otherwise, and `why` says what differed: after a promotion or a rollback,
    "scored by m-... (ride-duration/1)", the model that scored it.
    """
    month = month_label(month_input.taxi_type, month_input.year, month_input.month)
    source = "synthetic" if month_input.synthetic else "real"
    try:
        info = output_info(destination)
        rows = None if info is None or is_s3(destination) else output_rows(destination)
    except StorageUnavailable:
        raise
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
        return False, f"scored by {model_label(info['model_version'], info.get('registered_version'))}"
    if rows is not None and rows != month_input.num_rows:
        return False, f"existing output has {rows:,} rows for {month_input.num_rows:,} rides"
    return True, f"already scored by {model_label(model_version, registered_version)} from {source} rides"


def output_rows(destination: str | Path) -> int:
    """The row count in a local output's footer (raises if the footer does not parse)."""
    import pyarrow.parquet as pq

    return pq.read_metadata(str(destination)).num_rows


def decode_info(raw: dict) -> dict:
    """Output info as Python values; "registered_version" only for an output that names one."""
    info = {
        "model_version": raw.get("model_version") or None,
        "month": raw.get("month") or None,
        "synthetic": raw.get("synthetic") == "true",
    }
    return {**info, "registered_version": raw["registered_version"]} if raw.get("registered_version") else info


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
