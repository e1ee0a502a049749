"""Batch scoring on Spark (scripts/score_spark.py, local[2]) beside scripts/score.py, over the same real months.

Both as a reader runs them, each run its own process, timed from a small launcher's clock (start to exit:
interpreter, imports, the JVM for Spark, model loading, reading, scoring, writing): Spark once for the first
1, 5 and 11 real green months of TAXI_DATA_DIR in one run; score.py once per month (as a scheduler runs it),
its total for the same months the sum. Both load the same LinearRegression pipeline from its artifact folder.
The ways alternate, month count after month count, for ROUNDS rounds; the table gives the medians.

Spark runs as a reader's second and later runs do: its JVM starts from the class archive a first run wrote
(a fresh one in the bench's folder; that first run's time is in the note), and once more without it
(SPARK_CLASS_ARCHIVE=0). The table gives seconds and rides per second; the bench also draws seconds against
rides into images/spark-vs-score-py.png (make images does not redraw it: it needs the months and the spark extra).

    python -m benchmarks spark      # after: uv sync --frozen --extra spark
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from benchmarks import Table
from benchmarks.bench_batch import median, prepare_models, run_measured, score_py_command
from ride_duration.data import data_dir, month_filename
from ride_duration.settings import PROJECT_ROOT, child_environment

MONTH_COUNTS = (1, 5, 11)
ROUNDS = 3
CURVE = PROJECT_ROOT / "images" / "spark-vs-score-py.png"


def real_months() -> list[tuple[int, int, Path]]:
    """The real green months in TAXI_DATA_DIR, oldest first: (year, month, file)."""
    found = []
    for path in sorted(data_dir().glob("green_tripdata_*.parquet")):
        year, month = path.stem.rsplit("_", 1)[1].split("-")
        found.append((int(year), int(month), path))
    return found


def score_spark_command(months: list[tuple[int, int, Path]], model_uri: str, output_root: Path) -> list[str]:
    """scripts/score_spark.py on two local cores, every month in one run."""
    month_args = [arg for year, month, _ in months for arg in ("--month", f"{year:04d}-{month:02d}")]
    return [
        sys.executable,
        str(PROJECT_ROOT / "scripts" / "score_spark.py"),
        "--master",
        "local[2]",
        "--taxi-type",
        "green",
        *month_args,
        "--model-uri",
        model_uri,
        "--output-root",
        str(output_root),
    ]


def draw_curve(points: dict[str, list[tuple[int, float]]], path: Path) -> Path:
    """Seconds against rides, one line per scorer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(6.4, 4))
    for label, values in points.items():
        rides, seconds = zip(*values)
        ax.plot(rides, seconds, marker="o", label=label)
    ax.set_xlabel("rides scored (real green months)")
    ax.set_ylabel("seconds, whole process(es)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Spark local[2] against score.py, same months")
    figure.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return path


HEADERS = [
    "months",
    "rides",
    "score.py s",
    "score.py rides/s",
    "Spark s",
    "Spark rides/s",
    "Spark / score.py",
    "Spark, no class archive s",
]
TITLE = "Batch scoring on Spark beside score.py (real green months, same model)"
SCORE_PY = "score.py (a process per month)"
SPARK = "score_spark.py (local[2], one run)"
SPARK_WITHOUT_ARCHIVE = "score_spark.py, no class archive"


def run() -> list[Table]:
    import importlib.util

    import pyarrow.parquet as pq

    if importlib.util.find_spec("pyspark") is None:  # make bench's install has no Spark: say so, run the others
        return [Table(TITLE, HEADERS, note="Not measured: needs the spark extra (uv sync --frozen --extra spark).")]
    months = real_months()
    if len(months) < max(MONTH_COUNTS):
        raise SystemExit(
            f"bench spark needs {max(MONTH_COUNTS)} real green months in TAXI_DATA_DIR, found {len(months)}"
        )
    with tempfile.TemporaryDirectory(prefix="bench-spark-") as folder:
        folder = Path(folder)
        model_uri = prepare_models(folder, kinds=("linear",))["linear"]
        with_archive = child_environment({"SPARK_CLASS_ARCHIVE_DIR": str(folder / "spark-classes")})
        without_archive = child_environment({"SPARK_CLASS_ARCHIVE": "0"})
        rides = [pq.read_metadata(path).num_rows for _, _, path in months]

        def score_py_total(count: int) -> float:
            total = 0.0
            for year, month, path in months[:count]:
                output = folder / "score" / month_filename("green", year, month)
                command = score_py_command("green", year, month, path, model_uri, output)
                total += run_measured(command, with_archive)[1]
            return total

        _, first_run, _ = run_measured(score_spark_command(months[:1], model_uri, folder / "first"), with_archive)
        seconds = {(way, count): [] for way in (SCORE_PY, SPARK, SPARK_WITHOUT_ARCHIVE) for count in MONTH_COUNTS}
        for _ in range(ROUNDS):
            for count in MONTH_COUNTS:
                command = score_spark_command(months[:count], model_uri, folder / f"spark-{count}")
                seconds[SCORE_PY, count].append(score_py_total(count))
                seconds[SPARK, count].append(run_measured(command, with_archive)[1])
                seconds[SPARK_WITHOUT_ARCHIVE, count].append(run_measured(command, without_archive)[1])
        points = {way: [] for way in (SCORE_PY, SPARK, SPARK_WITHOUT_ARCHIVE)}
        rows = []
        for count in MONTH_COUNTS:
            n_rides = sum(rides[:count])
            plain, spark, cold = (median(seconds[way, count]) for way in (SCORE_PY, SPARK, SPARK_WITHOUT_ARCHIVE))
            rows.append([count, n_rides, plain, n_rides / plain, spark, n_rides / spark, f"{spark / plain:.2f}x", cold])
            for way, value in ((SCORE_PY, plain), (SPARK, spark), (SPARK_WITHOUT_ARCHIVE, cold)):
                points[way].append((n_rides, value))
        draw_curve(points, CURVE)
    note = (
        "score.py: one process per month, seconds summed; Spark: scripts/score_spark.py --master local[2], all the "
        "months in one process (JVM start-up included), its JVM started from the class archive a first run wrote "
        f"(that first run, one month: {first_run:.1f} s), and once more without it. Medians of {ROUNDS} rounds, the "
        f"ways alternating, on a 2-core machine shared with other work. Curve: {CURVE.relative_to(PROJECT_ROOT)}."
    )
    return [Table(TITLE, HEADERS, rows, note)]
