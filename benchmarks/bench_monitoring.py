"""Batch monitoring beside batch scoring: what monitoring a scored month costs, next to scoring it.

For each month, in its own process each: `scripts/score.py` scores it (as in bench_batch), then
`ride_duration.monitoring` monitors the scored output against a reference month scored by the same model
(the drift scores by Evidently on a fixed sample of REPORT_SAMPLE_RIDES rides of each side, the quality
metrics with numpy on every ride, the row stored in SQLite, the HTML report written). Measured per process:
"process s" start to exit (interpreter, imports, model loading, the work), from bench_batch's launcher;
the child's own clock for the reference (reading and scoring the reference month) and for the monitoring
step (`monitor_scored_month`); peak RSS from wait4().

Months: the real green 2021-03 against green 2021-02 (from TAXI_DATA_DIR, if present), and a synthetic
3,000,000-ride yellow month against another (the size of a yellow month), written to a temporary
TAXI_DATA_DIR. Needs the monitoring extra.

    python -m benchmarks monitoring
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import Table
from benchmarks.bench_batch import SYNTHETIC_RIDES, bytecode_compiled, run_measured, score_py_command
from ride_duration.settings import PROJECT_ROOT, child_environment, exported

REAL = {"current": ("green", 2021, 3), "reference": ("green", 2021, 2)}
SYNTHETIC = {"current": ("yellow", 2022, 1), "reference": ("yellow", 2021, 12)}


def monitor_child(current: list[str], reference: list[str], scored_file: str, model_uri: str, folder: str) -> dict:
    """Monitor one scored month in this process (see main); the seconds of each step."""
    from ride_duration import monitoring
    from ride_duration.serving import ModelService
    from ride_duration.settings import Settings

    settings = Settings.from_environ(
        {"MONITORING_DB_URL": f"sqlite:///{folder}/monitoring.db", "MONITORING_REPORTS_DIR": f"{folder}/reports"}
    )
    importing = time.perf_counter()
    monitoring.import_evidently()
    imported = time.perf_counter()
    model = ModelService(model_uri).current
    started = time.perf_counter()
    taxi_type, year, month = reference[0], int(reference[1]), int(reference[2])
    frame = monitoring.reference_rides(model, month=(taxi_type, year, month), synthetic="fallback")
    referenced = time.perf_counter()
    row = monitoring.monitor_scored_month(
        current[0], int(current[1]), int(current[2]), scored_path=scored_file, settings=settings, reference=frame
    )
    done = time.perf_counter()
    return {
        "rides": row.rides,
        "import_seconds": imported - importing,
        "reference_seconds": referenced - started,
        "monitor_seconds": done - referenced,
        "verdict": row.verdict,
    }


def prepare_model(folder: Path) -> str:
    """Notebook 01's pipeline (LinearRegression, distance capped) trained on the plausible rides of green
    2021-01 (synthetic if absent), saved as an MLflow model folder; its path (its sha256: model_sha256)."""
    import mlflow
    from sklearn.linear_model import LinearRegression

    from ride_duration import train
    from ride_duration.data import plausible_rides, read_month, training_rides

    rides, _ = plausible_rides(training_rides(read_month("green", 2021, 1, synthetic="fallback"), "green"))
    pipeline = train.fit(train.make_pipeline(LinearRegression(), float(rides["trip_distance"].max())), rides)
    path = folder / "model"
    mlflow.sklearn.save_model(
        pipeline, path, pip_requirements=train.PIP_REQUIREMENTS, serialization_format=train.SERIALIZATION_FORMAT
    )
    return str(path)


def model_sha256(model_uri: str) -> str:
    """What a deployment of this model folder sets as MODEL_SHA256."""
    from ride_duration.integrity import sha256_of

    return sha256_of((Path(model_uri) / "model.pkl").read_bytes())


def synthetic_months(folder: Path) -> Path:
    """The two 3M-ride synthetic months, written as TLC files into folder/data; that folder."""
    from ride_duration.data import month_filename, synthetic_month, write_month_file

    data = folder / "data"
    for taxi_type, year, month in SYNTHETIC.values():
        frame = synthetic_month(taxi_type, year, month, n_rides=SYNTHETIC_RIDES)
        write_month_file(frame, data / month_filename(taxi_type, year, month))
    return data


def run() -> list[Table]:
    from ride_duration.data import data_dir, month_filename

    table = Table(
        title="Batch monitoring beside batch scoring (each in its own process, one run)",
        headers=[
            "month",
            "rides",
            "step",
            "process s",
            "import Evidently s",
            "reference s",
            "monitor s",
            "peak RSS MB",
            "verdict",
        ],
    )
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-monitoring-") as tmp:
        folder = Path(tmp)
        model_uri = prepare_model(folder)
        with exported({"MODEL_SHA256": model_sha256(model_uri)}):  # for the child processes, this run only
            cases = []
            if all((data_dir() / month_filename(*month)).exists() for month in REAL.values()):
                cases.append(("real green 2021-03", REAL, child_environment({"PYTHONPATH": str(PROJECT_ROOT)})))
            synthetic_data = synthetic_months(folder)
            environment = child_environment({"PYTHONPATH": str(PROJECT_ROOT), "TAXI_DATA_DIR": str(synthetic_data)})
            cases.append(("SYNTHETIC yellow 2022-01, 3M rides", SYNTHETIC, environment))
            for label, months, env in cases:
                scored = folder / f"{months['current'][0]}-scored.parquet"
                taxi_type, year, month = months["current"]
                source = Path(env.get("TAXI_DATA_DIR") or data_dir()) / month_filename(*months["current"])
                _, wall, rss = run_measured(score_py_command(taxi_type, year, month, source, model_uri, scored), env)
                table.rows.append([label, "", "score: scripts/score.py", wall, "", "", "", rss, ""])
                command = [
                    sys.executable,
                    "-m",
                    "benchmarks.bench_monitoring",
                    json.dumps(months["current"]),
                    json.dumps(months["reference"]),
                    str(scored),
                    model_uri,
                    str(folder),
                ]
                stdout, wall, rss = run_measured(command, env)
                found = json.loads(stdout.strip().splitlines()[-1])
                table.rows[-1][1] = found["rides"]
                step = "monitor: ride_duration.monitoring"
                seconds = [found["import_seconds"], found["reference_seconds"], found["monitor_seconds"]]
                row = [label, found["rides"], step, wall, *seconds, rss]
                table.rows.append([*row, found["verdict"].split(": ", 1)[1][:40]])
    load_after = os.getloadavg()
    table.note = (
        "process s: the whole process, start to exit (interpreter, imports, model loading, the work). "
        "import Evidently s: `import evidently` alone (it imports its whole legacy suite, plotly and statsmodels). "
        "reference s: reading the reference month and scoring it with the model (once per model in a loop over "
        "months). monitor s: monitor_scored_month: the raw month and the scored output read and joined, "
        "Evidently's report on a fixed sample of 100,000 rides of each side, the quality metrics with numpy on "
        "every ride, the row stored, the HTML report written (Evidently's own drift scores and regression metrics "
        "on every one of 3M rides take several times longer: hence the sample, and the errors with numpy). "
        "Target: monitoring 3M rides (reference s + monitor s) under 10 s and 2,000 MB. The SYNTHETIC months are "
        "generated (ride_duration.data.synthetic_month), not TLC data; their verdict means nothing. "
        f"Machine: {os.cpu_count()} cores, shared; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after; bytecode compiled: {'yes' if bytecode_compiled() else 'NO (start-up inflated)'}."
    )
    return [table]


def main(argv: list[str]) -> int:
    """Child entry point: CURRENT REFERENCE (JSON [taxi type, year, month]) SCORED_FILE MODEL_URI FOLDER."""
    current, reference, scored_file, model_uri, folder = argv
    print(json.dumps(monitor_child(json.loads(current), json.loads(reference), scored_file, model_uri, folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
