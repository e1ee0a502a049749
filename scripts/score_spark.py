# Exported from notebooks/09-spark.ipynb by `make export`: edit the notebook, not this file.

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import pickle
import re
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa

from ride_duration.batch import (
    BATCH_ROWS,
    MonthInput,
    PickupCount,
    atomic_parquet,
    default_output,
    input_columns,
    month_range,
    numpy_values,
    one_line,
    open_month,
    output_info_for,
    output_schema,
    summary_table,
)
from ride_duration.data import TAXI_TYPES, month_filename, month_label
from ride_duration.settings import DEFAULT_MODEL_URI, PROJECT_ROOT, SPARK, Settings, export_defaults


sys.path.insert(0, str(PROJECT_ROOT / "scripts"))
from score import rejected_message, score_batch, served_model  # the batch scorer, exported from notebooks/score.ipynb


MIN_JAVA = 17
INSTALL_JAVA = (
    "install a JDK 17 or newer (Debian/Ubuntu: apt-get install openjdk-17-jre-headless) or set JAVA_HOME to one"
)


class JavaMissing(RuntimeError):
    """No Java, or one too old for Spark 4: the message says what to install."""


def java_command(settings: Settings) -> str:
    """The java Spark starts: JAVA_HOME's, else the one on the PATH."""
    return str(Path(settings.java_home) / "bin" / "java") if settings.java_home else "java"


def java_major(version_text: str) -> int | None:
    """17 from `java -version`'s 'openjdk version "17.0.15"', 8 from '"1.8.0_392"'; None if it names none."""
    found = re.search(r'version "(\d+)(?:\.(\d+))?', version_text)
    if not found:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


def check_java(settings: Settings) -> str:
    """What `java -version` says of the Java Spark would start; JavaMissing if there is none, or it is older than 17."""
    java = java_command(settings)
    try:
        shown = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise JavaMissing(
            f"Spark needs Java {MIN_JAVA}+, and {java} does not run ({one_line(error)}): {INSTALL_JAVA}"
        ) from None
    version = (shown.stderr + shown.stdout).strip()
    major = java_major(version)
    if major is None or major < MIN_JAVA:
        found = f"Java {major}" if major else "no Java version"
        raise JavaMissing(f"Spark needs Java {MIN_JAVA}+, {java} is {found}: {INSTALL_JAVA}")
    return version


# the quick compiler only; no warning when an archive does not fit this JVM (it starts without it); and out of
# memory, exit: Spark's result thread would die and leave the job waiting for ever
LOCAL_JVM_OPTIONS = [
    "-XX:TieredStopAtLevel=1",
    "-Xlog:cds=off",
    "-Xlog:cds+dynamic=off",
    "-XX:+ExitOnOutOfMemoryError",
]
ARCHIVE_PART = re.compile(r"(?P<archive>.+\.jsa)\.(?P<pid>\d+)\.part")


def class_archive(settings: Settings, java_version: str) -> Path | None:
    """Where the class archive of this Java (all its `java -version` says) and this pyspark is kept; None if off."""
    if not settings.spark_class_archive:
        return None
    import pyspark

    made_with = f"{java_version}\n{pyspark.__version__}\n{Path(pyspark.__file__).parent}"
    key = hashlib.sha256(made_with.encode()).hexdigest()[:12]
    return settings.spark_class_archive_dir / f"spark-{pyspark.__version__}-{key}.jsa"


def process_alive(pid: int) -> bool:
    """Whether the process that named a part file still runs (and may still be writing it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def archive_options(archive: Path) -> list[str]:
    """Start from the archive if a run made it; else have this JVM write it as it exits, to a part file of this
    process that stop_spark publishes. Part files of processes that are gone (a notebook never stopped) are removed."""
    if archive.is_file():
        return [f'-XX:SharedArchiveFile="{archive}"']
    try:
        archive.parent.mkdir(parents=True, exist_ok=True)
        for part in archive.parent.glob("*.part"):
            found = ARCHIVE_PART.fullmatch(part.name)
            if found and not process_alive(int(found["pid"])):
                part.unlink(missing_ok=True)
    except OSError:  # a read-only place: start without an archive
        return []
    return [f'-XX:ArchiveClassesAtExit="{archive}.{os.getpid()}.part"']


def publish_archive(part: Path, written: bool) -> None:
    """The archive a JVM wrote as it exited becomes the one later runs start from (and replaces those of other
    Java or pyspark versions in its folder); one from a JVM that did not exit cleanly is removed."""
    if not part.is_file():
        return
    if not written:
        part.unlink(missing_ok=True)
        return
    archive = part.with_name(ARCHIVE_PART.fullmatch(part.name)["archive"])
    part.replace(archive)
    for other in archive.parent.glob("spark-*.jsa"):
        if other != archive:
            other.unlink(missing_ok=True)


SPARK_CONF = {
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.maxRecordsPerBatch": str(BATCH_ROWS),
}
LOCAL_SPARK_CONF = {
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.driver.host": "127.0.0.1",
    "spark.ui.enabled": "false",
    "spark.python.daemon.module": "ride_duration.spark_daemon",  # workers import the installed, compiled pyspark
}


def spark_session(
    master: str | None = None,
    app_name: str = "score_spark",
    *,
    archive: Path | None = None,
    driver_memory: str = Settings().spark_driver_memory,
):
    """The SparkSession to score with: master "local[2]" starts one here; None joins spark-submit's (or starts local[*]).

    archive: the class archive a local JVM starts from, or writes (class_archive); stop the session with stop_spark.
    driver_memory: the heap of a driver JVM this process starts (a JVM spark-submit started keeps its own)."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    local = (master or "local").startswith("local")
    conf = {**SPARK_CONF, **(LOCAL_SPARK_CONF if local else {}), "spark.driver.memory": driver_memory}
    if local:  # read by pyspark and Spark themselves; values already set win
        export_defaults({"PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"})
        jvm_options = [*LOCAL_JVM_OPTIONS, *(archive_options(archive) if archive else [])]
        conf["spark.driver.extraJavaOptions"] = " ".join(jvm_options)
    warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas", FutureWarning)
    if master:
        builder = builder.master(master)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    spark.sparkContext.addPyFile(sys.modules[score_batch.__module__].__file__)  # score.py, on every executor
    return spark


def stop_spark(spark, timeout: float = 120) -> None:
    """Stop the session. A JVM this process started is ended too, and waited for (up to timeout seconds: it may
    be writing the class archive), so that the archive it wrote is published before this process exits."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    jvm = getattr(gateway, "proc", None)
    if jvm is not None and jvm.poll() is not None:  # it died (out of memory): nothing left to stop or publish
        return
    options = spark.sparkContext.getConf().get("spark.driver.extraJavaOptions", "")
    spark.stop()
    if jvm is None:  # spark-submit's JVM
        return
    writing = re.search(r'-XX:ArchiveClassesAtExit="([^"]+)"', options)
    if writing:
        print(f"Spark's JVM is writing its class archive for later local runs (once): {writing[1]}", file=sys.stderr)
    jvm.stdin.close()  # pyspark's JVM exits when its standard input closes
    try:
        exited_cleanly = jvm.wait(timeout) == 0
    except subprocess.TimeoutExpired:
        jvm.kill()
        jvm.wait()
        exited_cleanly = False
    gateway.close()
    SparkContext._gateway = SparkContext._jvm = None  # a later session starts a JVM of its own
    if writing:
        publish_archive(Path(writing[1]), exited_cleanly)


def jvm_exit_code() -> int | None:
    """The exit code of the JVM this process started, once it has exited; None while it runs (or is not ours)."""
    from pyspark import SparkContext

    jvm = getattr(SparkContext._gateway, "proc", None)
    return None if jvm is None else jvm.poll()


ROW_INDEX = "row_index"


def footer_schema(path: str, columns: list[str]):
    """The Spark schema of a parquet file's columns, from its footer, read here if the file is on this machine.
    None to let Spark read the footer itself: a remote file, a missing column, an INT96 timestamp (Spark
    reads it as a time zone's), or a type pyspark does not map from Arrow."""
    import pyarrow.parquet as pq
    from pyspark.errors import PySparkException
    from pyspark.sql.pandas.types import from_arrow_schema

    if not Path(path).is_file():
        return None
    parquet = pq.ParquetFile(path)
    stored = {parquet.schema.column(i).name: parquet.schema.column(i).physical_type for i in range(len(parquet.schema))}
    if any(stored.get(name) in (None, "INT96") for name in columns):
        return None
    fields = [parquet.schema_arrow.field(name) for name in columns]
    try:
        return from_arrow_schema(pa.schema(fields), prefer_timestamp_ntz=True)
    except PySparkException:
        return None


def month_rides(spark, path: str, taxi_type: str):
    """A month file's rides as a Spark DataFrame: the columns score.py reads, and each ride's row number."""
    from pyspark.sql import functions as F

    columns = input_columns(taxi_type)
    schema = footer_schema(path, columns)
    reader = spark.read if schema is None else spark.read.schema(schema)
    return reader.parquet(path).select(*columns, F.col("_metadata.row_index").alias(ROW_INDEX))


def broadcast_model(spark, served):
    """The served model, sent once to each executor. Pickled by cloudpickle: a pipeline loaded without
    scikit-learn has classes made at load time, which plain pickle cannot name."""
    from pyspark import cloudpickle

    return spark.sparkContext.broadcast(cloudpickle.dumps(served))


def model_value(model):
    """The ServedModel of a broadcast_model, on an executor or the driver."""
    return pickle.loads(model.value)


SPARK_TYPES = {"string": "string", "timestamp[us]": "timestamp_ntz", "int64": "bigint", "double": "double"}


def spark_schema(taxi_type: str) -> str:
    """score.py's output schema, and the row number, as the DDL mapInArrow is told to expect."""
    columns = [*output_schema(taxi_type), pa.field(ROW_INDEX, pa.int64())]
    return ", ".join(f"`{column.name}` {SPARK_TYPES[str(column.type)]}" for column in columns)


def consecutive_runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) positions of the runs of consecutive row numbers in a batch."""
    edges = [0, *(np.flatnonzero(np.diff(rows) != 1) + 1).tolist(), len(rows)]
    return list(zip(edges[:-1], edges[1:]))


def score_arrow_batches(batches, model, month_input: MonthInput):
    """mapInArrow's function: Arrow batches of one month's rides in, score_batch's output rows (with row numbers) out.

    model: the broadcast ServedModel (broadcast_model); unpickled once per task, from the executor's copy.
    """
    served = model_value(model)
    for batch in batches:
        rides = pa.Table.from_batches([batch])
        rows = numpy_values(batch.column(ROW_INDEX), np.int64)
        for first, stop in consecutive_runs(rows):
            run = rides.slice(first, stop - first)
            scored = score_batch(run.drop_columns([ROW_INDEX]), int(rows[first]), served, month_input)
            yield from scored.append_column(ROW_INDEX, run.column(ROW_INDEX)).to_batches()


def score_month(
    spark, model, taxi_type: str, year: int, month: int, source: str, destination: str, *, synthetic=False
) -> dict:
    """Score one month file on Spark and write it as score.py does (atomically, same schema and metadata); its summary.

    model: the broadcast ServedModel (broadcast_model). source: the month's file, any path Spark reads (a local path, s3a://, gs://).
    Raises BadMonthFile if most pickups are of another month; nothing is written then, nor when the job fails.
    """
    started = time.perf_counter()
    month_input = MonthInput(taxi_type, year, month, source, bool(synthetic), 0)
    scored = month_rides(spark, source, taxi_type).mapInArrow(
        partial(score_arrow_batches, model=model, month_input=month_input), spark_schema(taxi_type)
    )
    table = scored.toArrow().sort_by(ROW_INDEX).drop_columns([ROW_INDEX]).cast(output_schema(taxi_type))
    pickups = PickupCount(dataclasses.replace(month_input, num_rows=table.num_rows, _table=table))
    pickups.add(table)
    pickups.check()
    served = model_value(model)
    info = output_info_for(served.version, taxi_type, year, month, bool(synthetic), served.registered_version)
    rejected = table.column("predicted_duration").null_count
    with atomic_parquet(destination, output_schema(taxi_type), info) as writer:
        for batch in table.to_batches(max_chunksize=BATCH_ROWS):
            writer.write_table(pa.Table.from_batches([batch]))
        writer.info["rejected_rides"] = str(rejected)
    if rejected:
        print(f"{rejected_message(rejected, table.num_rows)} ({month_label(taxi_type, year, month)})", file=sys.stderr)
    return {
        "month": month_label(taxi_type, year, month),
        "status": "scored",
        "rows": table.num_rows,
        "rejected": rejected,
        "seconds": round(time.perf_counter() - started, 3),
        "output": destination,
        "note": "SYNTHETIC" if synthetic else "",
    }


def month_source(taxi_type: str, year: int, month: int, input_root: str | None) -> tuple[str, bool]:
    """(the file Spark reads, synthetic?): input_root's TLC file name, else where score.py finds the month."""
    if input_root:
        return f"{input_root.rstrip('/')}/{month_filename(taxi_type, year, month)}", False
    month_input = open_month(taxi_type, year, month)
    return month_input.source, month_input.synthetic


def score_months(
    spark,
    taxi_type: str,
    months: list[tuple[int, int]],
    model_uri: str,
    output_root: str = "output",
    *,
    input_root: str | None = None,
) -> list[dict]:
    """Each (year, month) into output_root, the model taken and broadcast once, months scored concurrently;
    one summary row per month, a failed one included."""
    from pyspark.errors import PySparkException

    model = broadcast_model(spark, served_model(model_uri))

    def one(year_month):
        destination = default_output(taxi_type, *year_month, output_root)
        try:
            source, synthetic = month_source(taxi_type, *year_month, input_root)
            return score_month(spark, model, taxi_type, *year_month, source, destination, synthetic=synthetic)
        except (ValueError, OSError, PySparkException) as error:
            row = {"month": month_label(taxi_type, *year_month), "status": "failed", "rows": None, "seconds": None}
            exited, note = jvm_exit_code(), one_line(error)
            if exited is not None:
                note = f"Spark's JVM exited (code {exited}; out of memory? SPARK_DRIVER_MEMORY sets its heap)"
            return {**row, "output": destination, "note": note}

    with ThreadPoolExecutor(max_workers=spark.sparkContext.defaultParallelism) as pool:
        return list(pool.map(one, months))


PROG = "score_spark.py"


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Score a range of TLC months on Spark, writing exactly what score.py writes: "
        "{output_root}/{taxi_type}/{YYYY-MM}.parquet, one file per month, written atomically.",
    )
    parser.add_argument("--taxi-type", choices=list(TAXI_TYPES), default=TAXI_TYPES[0], help="which TLC trip records")
    parser.add_argument("--from", dest="start", metavar="YYYY-MM", help="first month (with --to)")
    parser.add_argument("--to", dest="end", metavar="YYYY-MM", help="last month (included)")
    parser.add_argument(
        "--month",
        dest="months",
        action="append",
        metavar="YYYY-MM",
        help="a month to score, instead of --from/--to (repeat it for several)",
    )
    parser.add_argument(
        "--model-uri",
        default=settings.model_uri,
        help=f"the model, loaded once on the driver and broadcast (default: $MODEL_URI, else {DEFAULT_MODEL_URI})",
    )
    parser.add_argument("--output-root", default="output", help="a folder or s3://bucket/prefix (default: output)")
    parser.add_argument(
        "--input-root",
        help="where Spark reads the TLC files by their own names (s3a://, gs://, dbfs:/, a folder); "
        "default: where score.py finds them ($TAXI_DATA_DIR, else the TLC download)",
    )
    parser.add_argument("--master", help="Spark's master, e.g. local[2]; default: spark-submit's, else local[*]")
    return parser


def months_asked(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[tuple[int, int]]:
    """The (year, month) pairs of --from/--to or of the --month options; a usage error (exit code 2) for neither or both."""
    if bool(args.months) == bool(args.start or args.end):
        parser.error("give --from and --to, or one --month per month")
    if args.months:
        return sorted({month for text in args.months for month in month_range(text, text)})
    if not (args.start and args.end):
        parser.error("--from and --to go together")
    return month_range(args.start, args.end)


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    """score_spark.py's command line; exit code 0 if every month was scored, 1 otherwise (2: bad usage)."""
    from ride_duration.model import ModelLoadError

    settings = settings or Settings.from_environ(groups=SPARK)
    parser = build_parser(settings)
    args = parser.parse_args(argv)
    try:
        months = months_asked(parser, args)  # a bad month fails before Java, Spark or the model
        java_version = check_java(settings)
        archive = class_archive(settings, java_version)
        spark = spark_session(args.master, archive=archive, driver_memory=settings.spark_driver_memory)
        try:
            summary = score_months(
                spark, args.taxi_type, months, args.model_uri, args.output_root, input_root=args.input_root
            )
            print(summary_table(summary), flush=True)
        finally:
            stop_spark(spark)
    except (JavaMissing, ModelLoadError, ValueError, OSError) as error:
        print(f"{PROG}: error: {one_line(error)}", file=sys.stderr)
        return 1
    return 1 if any(row["status"] == "failed" for row in summary) else 0

if __name__ == "__main__":
    sys.exit(main())
