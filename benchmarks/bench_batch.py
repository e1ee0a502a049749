"""Batch scoring: the course's way against scripts/score.py, side by side, each in its own process.

The course's way (module 4's score.py): read the whole month with pandas, one feature dict per ride
(`to_dict(orient="records")`), `pipeline.predict`, write the result with `to_parquet`. Here it scores
every row and builds the same deterministic ride ids as ours, so both write the same rows; the table
says whether the predictions are bit-identical.

Ours: `python scripts/score.py` as a reader runs it, and once more serving the course's random forest
(100 trees, trained on the plausible rides of green 2021-01), beside the linear model. Course and ours
load the same linear model from its artifact
folder (no MLflow server, no `import mlflow`). Measured per run, the same way for both:
"process s" is the whole process, start to exit (interpreter, imports, model loading, reading,
scoring, writing), from a small launcher's clock; "read+score+write s" the part inside the process
after the model is loaded (the process's own clock); "start-up s" the difference (interpreter,
imports, model loading, exit); peak RSS from wait4(). The runs alternate between the ways, round
after round, and the table shows medians, so that the shared machine's noise falls on each alike.

Months: a real green month from TAXI_DATA_DIR (green 2021-03 if present) and a synthetic month of
3,000,000 yellow rides (the size of a yellow month), written once to a temporary TAXI_DATA_DIR.

    python -m benchmarks batch
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import Table
from ride_duration.settings import PROJECT_ROOT, child_environment, export

SYNTHETIC_RIDES = 3_000_000
REAL_MONTH = ("green", 2021, 3)
SYNTHETIC_MONTH = ("yellow", 2022, 1)


def io_floor(taxi_type: str, scored_file: str, input_file: str, output_file: str) -> dict:
    """Only the I/O of ours: read the input columns, write an already scored month (no scoring).

    The part of "score s" no faster model could remove, for this file format on this machine.
    """
    import pyarrow.parquet as pq

    from ride_duration.batch import PARQUET_OPTIONS, input_columns

    scored = pq.read_table(scored_file)
    started = time.perf_counter()
    rides = pq.read_table(input_file, columns=input_columns(taxi_type))
    pq.write_table(scored, output_file, **PARQUET_OPTIONS)
    return {"rows": rides.num_rows, "seconds": time.perf_counter() - started}


def course_way(taxi_type: str, year: int, month: int, input_file: str, model_uri: str, output_file: str) -> dict:
    """The course's score.py, scoring every row (runs in a child process; see main)."""
    import pandas as pd

    from ride_duration.data import DATETIME_COLUMNS
    from ride_duration.model import load_model

    loading = time.perf_counter()
    model = load_model(model_uri)
    started = time.perf_counter()
    pickup, dropoff = DATETIME_COLUMNS[taxi_type]

    df = pd.read_parquet(input_file)
    df["duration"] = (df[dropoff] - df[pickup]).dt.total_seconds() / 60
    df["ride_id"] = f"{year:04d}/{month:02d}_" + df.index.astype("str")

    categorical = ["PULocationID", "DOLocationID"]
    df[categorical] = df[categorical].astype(str)
    df["PU_DO"] = df["PULocationID"] + "_" + df["DOLocationID"]
    dicts = df[["PU_DO", "trip_distance"]].to_dict(orient="records")
    y_pred = model.pipeline.predict(dicts)

    df_result = pd.DataFrame()
    df_result["ride_id"] = df["ride_id"]
    df_result[pickup] = df[pickup]
    df_result["PULocationID"] = df["PULocationID"]
    df_result["DOLocationID"] = df["DOLocationID"]
    df_result["actual_duration"] = df["duration"]
    df_result["predicted_duration"] = y_pred
    df_result["diff"] = df_result["actual_duration"] - df_result["predicted_duration"]
    df_result["model_version"] = model.version
    df_result.to_parquet(output_file, index=False)
    return {"rows": len(df_result), "seconds": time.perf_counter() - started, "model_seconds": started - loading}


# A small launcher: a child forked from this (large) process would inherit its peak RSS, so each
# measured command is started by a fresh small interpreter that reports the child's own wait4() figures.
LAUNCHER = """
import json, os, subprocess, sys, time
started = time.perf_counter()
child = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(child.pid, 0)
report = {"wall": time.perf_counter() - started, "peak_rss_kb": usage.ru_maxrss, "exit": os.waitstatus_to_exitcode(status)}
print("LAUNCHER " + json.dumps(report), file=sys.stderr)
"""


def run_measured(command: list[str], env: dict) -> tuple[str, float, float]:
    """Run one command in its own process: (stdout, wall seconds, peak RSS in MB)."""
    run = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *command],
        capture_output=True,
        text=True,
        env=env,
        cwd=PROJECT_ROOT,
        timeout=900,
    )
    reports = [line for line in run.stderr.splitlines() if line.startswith("LAUNCHER ")]
    report = json.loads(reports[-1][len("LAUNCHER ") :]) if reports else {"exit": run.returncode}
    if report["exit"] != 0:
        raise RuntimeError(f"{' '.join(map(str, command[:4]))}... failed ({report['exit']}):\n{run.stderr[-3000:]}")
    return run.stdout, report["wall"], report["peak_rss_kb"] / 1024  # ru_maxrss is in KiB on Linux


def median(values):
    import statistics

    return statistics.median(values)


def prepare_models(folder: Path, kinds: tuple[str, ...] = ("linear", "forest")) -> dict[str, str]:
    """Train notebook 01's LinearRegression and the course's forest (or only the kinds asked for) on green 2021-01
    (synthetic if absent), log them; their artifact URIs by kind ("linear", "forest")."""
    import mlflow
    from sklearn.linear_model import LinearRegression

    from ride_duration import train
    from ride_duration.data import plausible_rides, read_month, training_rides
    from ride_duration.model import artifact_uri

    tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
    export({"MLFLOW_TRACKING_URI": tracking_uri})  # for the child processes that load the model
    export({"ALLOW_UNVERIFIED_MODEL": "1"})  # models made a moment ago by this benchmark, scored by URI: local work
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.create_experiment(train.EXPERIMENT, artifact_location=(folder / "artifacts").as_uri())
    train.setup_tracking()
    rides = training_rides(read_month("green", 2021, 1, synthetic="fallback"), "green")
    fits = {
        "linear": lambda: train.fit(train.make_pipeline(LinearRegression()), rides),
        "forest": lambda: train.fit_forest(plausible_rides(rides)[0]),
    }
    uris = {}
    for kind in kinds:
        pipeline = fits[kind]()
        info = train.log_pipeline(pipeline, params={"regressor": type(pipeline[-1]).__name__}, metrics={}, tags={})
        uris[kind] = artifact_uri(f"models:/{info.model_id}")
    return uris


def months_to_score(folder: Path) -> list[tuple[str, str, int, int, Path]]:
    """(label, taxi type, year, month, file): the real month if there is one, and the 3M synthetic month."""
    from ride_duration.data import data_dir, month_filename, synthetic_month, write_month_file

    months = []
    real = data_dir() / month_filename(*REAL_MONTH)
    if real.exists():
        months.append((f"real {REAL_MONTH[0]} {REAL_MONTH[1]}-{REAL_MONTH[2]:02d}", *REAL_MONTH, real))
    synthetic = folder / "data" / month_filename(*SYNTHETIC_MONTH)
    write_month_file(synthetic_month(*SYNTHETIC_MONTH, n_rides=SYNTHETIC_RIDES), synthetic)
    label = f"SYNTHETIC {SYNTHETIC_MONTH[0]} {SYNTHETIC_MONTH[1]}-{SYNTHETIC_MONTH[2]:02d}"
    months.append((label, *SYNTHETIC_MONTH, synthetic))
    return months


SCORED_LINE = re.compile(r"scored ([\d,]+) rides .* in ([\d.]+)s \(model loaded in ([\d.]+)s\)")
ROUNDS = {"real": 5, "synthetic": 3}


def json_seconds(stdout: str) -> float:
    return json.loads(stdout.strip().splitlines()[-1])["seconds"]


def ours_seconds(stdout: str) -> float:
    return float(SCORED_LINE.search(stdout).group(2))


def bytecode_compiled() -> bool:
    """Whether the environment has compiled bytecode (uv sync --compile-bytecode): without it, and with
    PYTHONDONTWRITEBYTECODE set, every process compiles scikit-learn, scipy and pandas from source."""
    import importlib.util

    origin = importlib.util.find_spec("sklearn").origin
    return Path(importlib.util.cache_from_source(origin)).exists()


def score_py_command(taxi_type: str, year: int, month: int, path: Path, model_uri: str, output: Path) -> list[str]:
    """scripts/score.py as a reader runs it, on one month file with one model."""
    return [
        sys.executable,
        str(PROJECT_ROOT / "scripts" / "score.py"),
        "--taxi-type",
        taxi_type,
        "--year",
        str(year),
        "--month",
        str(month),
        "--input",
        str(path),
        "--model-uri",
        model_uri,
        "--output",
        str(output),
    ]


def run() -> list[Table]:
    import numpy as np
    import pyarrow.parquet as pq

    table = Table(
        title="Batch scoring: the course's way vs scripts/score.py (each in its own process, medians)",
        headers=[
            "month",
            "rows",
            "way",
            "process s",
            "rows/s (process)",
            "start-up s",
            "read+score+write s",
            "peak RSS MB",
            "speed-up (process)",
            "speed-up (read+score+write)",
            "same predictions",
        ],
    )
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        folder = Path(tmp)
        model_uris = prepare_models(folder)
        model_uri = model_uris["linear"]
        env = child_environment({"PYTHONPATH": str(PROJECT_ROOT)})
        for label, taxi_type, year, month, path in months_to_score(folder):
            outputs = {way: folder / f"{way}.parquet" for way in ("course", "ours", "ours-forest", "floor")}
            ways = {
                "course": (
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.bench_batch",
                        "course",
                        taxi_type,
                        str(year),
                        str(month),
                        str(path),
                        model_uri,
                        str(outputs["course"]),
                    ],
                    json_seconds,
                ),
                "ours": (score_py_command(taxi_type, year, month, path, model_uri, outputs["ours"]), ours_seconds),
                "ours-forest": (
                    score_py_command(taxi_type, year, month, path, model_uris["forest"], outputs["ours-forest"]),
                    ours_seconds,
                ),
            }
            runs = {way: [] for way in (*ways, "floor")}
            rounds = ROUNDS["real" if "real" in label else "synthetic"]
            for round_number in range(rounds):
                order = list(ways) if round_number % 2 == 0 else list(reversed(ways))
                for way in order:
                    command, seconds_of = ways[way]
                    stdout, wall, rss = run_measured(command, env)
                    runs[way].append((wall, seconds_of(stdout), rss, stdout))
                # The I/O floor reads ours' output, so it runs after ours.
                stdout, wall, rss = run_measured(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.bench_batch",
                        "io-floor",
                        taxi_type,
                        str(outputs["ours"]),
                        str(path),
                        str(outputs["floor"]),
                    ],
                    env,
                )
                runs["floor"].append((wall, json_seconds(stdout), rss, stdout))
            rows = int(SCORED_LINE.search(runs["ours"][-1][3]).group(1).replace(",", ""))
            assert rows == json.loads(runs["course"][-1][3].strip().splitlines()[-1])["rows"]
            same = np.array_equal(
                pq.read_table(outputs["course"], columns=["predicted_duration"])["predicted_duration"].to_numpy(),
                pq.read_table(outputs["ours"], columns=["predicted_duration"])["predicted_duration"].to_numpy(),
            )
            process = {way: median([r[0] for r in runs[way]]) for way in runs}
            inside = {way: median([r[1] for r in runs[way]]) for way in runs}
            start_up = {way: median([r[0] - r[1] for r in runs[way]]) for way in runs}
            rss = {way: median([r[2] for r in runs[way]]) for way in runs}
            # The floor process reads the scored file before its clock starts: its own start-up is not ours.
            start_up["floor"] = start_up["ours"]
            process["floor"] = start_up["ours"] + inside["floor"]
            names = {
                "course": "course: to_dict + pipeline.predict",
                "ours": "ours: scripts/score.py",
                "ours-forest": "ours: scripts/score.py, the course's random forest",
                "floor": "floor: ours' start-up + I/O only",
            }
            for way in ("course", "ours", "ours-forest", "floor"):
                faster = way in ("ours", "floor")  # the forest is another model: its speed-up would mean nothing
                table.rows.append(
                    [
                        label,
                        rows,
                        names[way],
                        process[way],
                        rows / process[way],
                        start_up[way],
                        inside[way],
                        rss[way],
                        f"{process['course'] / process[way]:.1f}x" if faster else "",
                        f"{inside['course'] / inside[way]:.1f}x" if faster else "",
                        ("bit-identical" if same else "DIFFERENT") if way == "ours" else "",
                    ]
                )
    load_after = os.getloadavg()
    table.note = (
        "process s: the whole process, start to exit (interpreter start, imports, model loading from its "
        "artifact folder, reading, scoring, writing), the same launcher for every way. "
        "read+score+write s: inside the process, after the model is loaded (same boundaries for both). "
        "start-up s: the difference (interpreter, imports, model loading, exit): the course's way imports "
        "pandas and scikit-learn (its pickle needs them); ours imports numpy and pyarrow only. "
        "floor: ours' start-up plus a process that only reads the input columns and writes the already "
        "scored month (same parquet settings): what ours would take if scoring were free and nothing "
        "overlapped; its speed-up is the most this output format allows against the course on this machine "
        "(its peak RSS is the I/O process's, which holds the whole scored month). "
        f"Medians of {ROUNDS['real']} rounds (real month) or {ROUNDS['synthetic']} (3M rides), the ways "
        "alternating in each round. Both score every row and write the same columns. "
        "Target: >= 20x end to end (process s), < 2,000 MB peak RSS for 3M rides. "
        "The forest row serves another model (the course's RandomForestRegressor, 100 trees, trained on the "
        "plausible rides): its rows/s stand beside the linear model's, it has no speed-up against the course. "
        "The SYNTHETIC month is generated (ride_duration.data.synthetic_month), not TLC data. "
        f"Machine: {os.cpu_count()} cores, shared; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after; bytecode compiled: {'yes' if bytecode_compiled() else 'NO (start-up inflated)'}."
    )
    return [table]


def main(argv: list[str]) -> int:
    """Child entry points:
    `python -m benchmarks.bench_batch course TAXI YEAR MONTH INPUT MODEL_URI OUTPUT`
    `python -m benchmarks.bench_batch io-floor TAXI SCORED INPUT OUTPUT`
    """
    if len(argv) == 7 and argv[0] == "course":
        _, taxi_type, year, month, input_file, model_uri, output_file = argv
        print(json.dumps(course_way(taxi_type, int(year), int(month), input_file, model_uri, output_file)))
        return 0
    if len(argv) == 5 and argv[0] == "io-floor":
        print(json.dumps(io_floor(*argv[1:])))
        return 0
    print(main.__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
