"""Batch monitoring: after a month is scored, how far its rides and predictions moved from the model's
validation month, and how wrong the model was once the actual durations are known.

One month gives one row (`MonthMetrics`): drift scores of the features and of the predictions (Evidently),
the share of rides with a missing feature, and RMSE, MAE and the share of rides off by more than
OFF_BY_MINUTES, on the rides of 1 to 60 minutes (the rides every validation RMSE of the project is measured
on). A month is flagged, with its reasons, when a score crosses one of its `Thresholds`. Rows go to a
SQLAlchemy table (SQLite by default), one per taxi type, month and model version; each month's Evidently
report is saved as HTML.

The quality metrics are computed with numpy on every ride. Evidently computes the drift scores and the
missing values, and draws the report, on at most REPORT_SAMPLE_RIDES rides of each side (a fixed-seed
sample): on all 3 million rides of a yellow month its drift scores alone take tens of seconds. Green months
are smaller than the sample, so theirs are exact.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ride_duration.data import (
    MAX_DURATION,
    MAX_PLAUSIBLE_MILES,
    MIN_DURATION,
    check_month,
    check_taxi_type,
    month_label,
)
from ride_duration.files import atomic_path
from ride_duration.rides import RIDE_FIELDS, ride_id
from ride_duration.settings import PROJECT_ROOT, Settings

if TYPE_CHECKING:
    import pandas as pd

    from ride_duration.serving import ServedModel

ACTUAL = "actual_duration"
PREDICTION = "predicted_duration"
NUMERICAL_FEATURES = ("trip_distance",)
CATEGORICAL_FEATURES = ("PULocationID", "DOLocationID")
OFF_BY_MINUTES = 10
REPORT_SAMPLE_RIDES = 100_000
SAMPLE_SEED = 1
TABLE = "month_metrics"
KEY = ("taxi_type", "month", "model_version")


class NoReferenceMonth(LookupError):
    """The model's run names no validation month: there is nothing to compare its months with."""


class ScoredMonthMismatch(ValueError):
    """A scored output that does not belong to the month it is monitored with (other rides, other ids)."""


@dataclass(frozen=True)
class Thresholds:
    """Above any of these a month is flagged (notebook 08 chose them from the eleven real green months).

    Drift scores are Evidently's for large samples: normed Wasserstein distance for the distance and the
    predictions, Jensen-Shannon distance for the zones (0: the same distribution); 0.1 is Evidently's own
    threshold for both. RMSE is judged against the reference month's, where the model was validated.
    """

    feature_drift: float = 0.1
    prediction_drift: float = 0.1
    missing_share: float = 0.01
    rmse_increase: float = 0.2  # RMSE more than 20% above the reference month's
    share_off_10min: float = 0.15

    def reasons(self, row: MonthMetrics) -> list[str]:
        """What crossed a threshold in `row`, one phrase each (empty: not flagged)."""
        found = [
            f"{feature} drift {score:.3f} > {self.feature_drift:g}"
            for feature, score in row.drift.items()
            if score > self.feature_drift
        ]
        if row.prediction_drift > self.prediction_drift:
            found.append(f"prediction drift {row.prediction_drift:.3f} > {self.prediction_drift:g}")
        if row.missing_share > self.missing_share:
            found.append(f"missing share {row.missing_share:.3f} > {self.missing_share:g}")
        if row.rmse is not None and row.reference_rmse and row.rmse > row.reference_rmse * (1 + self.rmse_increase):
            found.append(
                f"RMSE {row.rmse:.2f} min > {1 + self.rmse_increase:g} x the reference's {row.reference_rmse:.2f}"
            )
        if row.share_off_10min is not None and row.share_off_10min > self.share_off_10min:
            found.append(
                f"share off by more than {OFF_BY_MINUTES} min {row.share_off_10min:.3f} > {self.share_off_10min:g}"
            )
        return found


@dataclass
class MonthMetrics:
    """One row of the monitoring table: one month scored by one model version, against one reference."""

    taxi_type: str
    month: str  # "YYYY-MM"
    model_version: str  # the logged model's id, "m-..."
    reference: str  # the reference month, "green/2021-02"
    rides: int  # rides scored
    rides_with_duration: int  # rides of 1 to 60 minutes: the quality metrics' rides
    trip_distance_drift: float
    pu_location_drift: float
    do_location_drift: float
    prediction_drift: float
    drifted_columns: int  # features whose drift score is over Evidently's own per-column threshold
    missing_share: float  # the largest share of rides missing one feature
    rmse: float | None  # minutes; None when no ride has an actual duration
    reference_rmse: float | None  # the model's RMSE on the reference month
    mae: float | None
    share_off_10min: float | None
    flagged: bool = False
    reasons: str = ""  # "; "-joined phrases from Thresholds.reasons
    computed_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def drift(self) -> dict[str, float]:
        return {
            "trip_distance": self.trip_distance_drift,
            "PULocationID": self.pu_location_drift,
            "DOLocationID": self.do_location_drift,
        }

    @property
    def label(self) -> str:
        return f"{self.taxi_type}/{self.month}"

    @property
    def verdict(self) -> str:
        """One line: "green/2021-03: not flagged", or "green/2024-03: flagged: <reasons>"."""
        return f"{self.label}: flagged: {self.reasons}" if self.flagged else f"{self.label}: not flagged"


def rides_frame(rides, predictions) -> pd.DataFrame:
    """The monitored columns of a month: its ride fields, the actual duration (NaN outside 1 to 60 minutes,
    where validation does not judge the model either) and the predictions, row for row.

    trip_distance is capped at MAX_PLAUSIBLE_MILES: every month has a few meter errors of thousands of
    miles, and a normed Wasserstein distance is in units of the reference's standard deviation, which
    those records alone set (hundreds of miles). Capped, a meter error still counts as one long
    ride, and the score follows the distances of real rides.

    rides: a frame with RIDE_FIELDS and `duration` (ride_duration.data.add_duration), or `actual_duration`.
    """
    import pandas as pd

    predictions = np.asarray(predictions, dtype=np.float64)
    if len(predictions) != len(rides):
        raise ValueError(f"{len(predictions):,} predictions for {len(rides):,} rides")
    actual = np.asarray(rides["duration" if "duration" in rides else ACTUAL], dtype=np.float64)
    in_range = (actual >= MIN_DURATION) & (actual <= MAX_DURATION)
    return pd.DataFrame(
        {
            "PULocationID": np.asarray(rides["PULocationID"]),
            "DOLocationID": np.asarray(rides["DOLocationID"]),
            "trip_distance": np.minimum(np.asarray(rides["trip_distance"], dtype=np.float64), MAX_PLAUSIBLE_MILES),
            ACTUAL: np.where(in_range, actual, np.nan),
            PREDICTION: predictions,
        }
    )


def quality(frame: pd.DataFrame) -> dict:
    """RMSE, MAE and share off by more than OFF_BY_MINUTES on the rides with an actual duration (numpy, all rides)."""
    actual, predicted = frame[ACTUAL].to_numpy(), frame[PREDICTION].to_numpy()
    judged = ~np.isnan(actual) & ~np.isnan(predicted)
    error = predicted[judged] - actual[judged]
    if error.size == 0:
        return {"rides_with_duration": 0, "rmse": None, "mae": None, "share_off_10min": None}
    return {
        "rides_with_duration": int(error.size),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mae": float(np.mean(np.abs(error))),
        "share_off_10min": float(np.mean(np.abs(error) > OFF_BY_MINUTES)),
    }


def sample(frame: pd.DataFrame, rides: int = REPORT_SAMPLE_RIDES) -> pd.DataFrame:
    """At most `rides` rows of frame, the same ones every time (all of them if it is smaller)."""
    if len(frame) <= rides:
        return frame
    return frame.sample(n=rides, random_state=SAMPLE_SEED).reset_index(drop=True)


def import_evidently():
    """Import Evidently 0.7 under pandas 3.

    Evidently 0.7 imports pandas' `infer_dtype_from_object`, which pandas 3 removed, for a legacy column-type
    test this project does not run. The stand-in gives the dtype's scalar type, as pandas 2 did for dtypes.
    """
    import pandas.core.dtypes.common as dtypes

    if not hasattr(dtypes, "infer_dtype_from_object"):
        dtypes.infer_dtype_from_object = lambda dtype: (
            dtype if isinstance(dtype, type) else dtypes.pandas_dtype(dtype).type
        )
    with warnings.catch_warnings():  # its dependencies' deprecation notices (plotly's, litestar's) at import
        warnings.simplefilter("ignore")
        import evidently

    return evidently


def evidently_report(current: pd.DataFrame, reference: pd.DataFrame):
    """Evidently's snapshot of current against reference (each sampled to REPORT_SAMPLE_RIDES): the drift of the
    features and of the predictions, and the missing values. Not the errors: Evidently's RMSE and MAE take
    seconds per 100,000 rides (its regression report draws every error plot); `quality` computes them."""
    evidently = import_evidently()
    from evidently import metrics

    definition = evidently.DataDefinition(
        numerical_columns=[*NUMERICAL_FEATURES, ACTUAL, PREDICTION], categorical_columns=list(CATEGORICAL_FEATURES)
    )
    report = evidently.Report(
        [
            *(metrics.ValueDrift(column=column) for column in (*RIDE_FIELDS, PREDICTION)),
            metrics.DriftedColumnsCount(columns=list(RIDE_FIELDS)),
            *(metrics.MissingValueCount(column=column) for column in RIDE_FIELDS),
        ]
    )

    def dataset(frame):
        return evidently.Dataset.from_pandas(sample(frame), data_definition=definition)

    return report.run(dataset(current), dataset(reference))


def snapshot_values(snapshot) -> dict:
    """The report's metric values by name: "ValueDrift:trip_distance", "DriftedColumnsCount", "RMSE", ..."""
    values = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        name = config["type"].rsplit(":", 1)[-1]
        key = f"{name}:{config['column']}" if "column" in config else name
        values[key] = metric["value"]
    return values


def monitor_month(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    *,
    taxi_type: str,
    month: str,
    model_version: str,
    reference_label: str,
    thresholds: Thresholds | None = None,
):
    """(MonthMetrics, Evidently snapshot) of current against reference (both from rides_frame)."""
    thresholds = thresholds or Thresholds()
    snapshot = evidently_report(current, reference)
    values = snapshot_values(snapshot)
    missing = max(float(values[f"MissingValueCount:{column}"]["share"]) for column in RIDE_FIELDS)
    row = MonthMetrics(
        taxi_type=taxi_type,
        month=month,
        model_version=model_version,
        reference=reference_label,
        rides=len(current),
        trip_distance_drift=float(values["ValueDrift:trip_distance"]),
        pu_location_drift=float(values["ValueDrift:PULocationID"]),
        do_location_drift=float(values["ValueDrift:DOLocationID"]),
        prediction_drift=float(values[f"ValueDrift:{PREDICTION}"]),
        drifted_columns=int(values["DriftedColumnsCount"]["count"]),
        missing_share=missing,
        reference_rmse=quality(reference)["rmse"],
        **quality(current),
    )
    reasons = thresholds.reasons(row)
    row.flagged, row.reasons = bool(reasons), "; ".join(reasons)
    return row, snapshot


def read_rides(taxi_type: str, year: int, month: int, *, synthetic: bool | str = False) -> pd.DataFrame:
    """The ride fields and the duration of every ride of a month, in file order, read as batch scoring reads
    them (only those columns, a row group at a time; the duration bit for bit as score.py writes it).
    attrs["source"] says where they came from: the file, or "synthetic" for a generated month."""
    import pandas as pd

    from ride_duration.batch import open_month, ride_columns

    month_input = open_month(taxi_type, year, month, synthetic=synthetic)
    parts = [ride_columns(rides, taxi_type) for _, rides in month_input.batches()]
    columns = {
        "PULocationID": [part.pu for part in parts],
        "DOLocationID": [part.do for part in parts],
        "trip_distance": [part.distance for part in parts],
        "duration": [part.duration for part in parts],
    }
    frame = pd.DataFrame({name: np.concatenate(values) if values else np.array([]) for name, values in columns.items()})
    frame.attrs["source"] = "synthetic" if month_input.synthetic else month_input.source
    return frame


def score_frame(model: ServedModel, rides: pd.DataFrame) -> np.ndarray:
    """The model's predictions for rides (NaN where a distance is missing, as batch scoring leaves them)."""
    columns = {name: rides[name].to_numpy() for name in RIDE_FIELDS}
    return np.asarray(model.predict_columns(columns), dtype=np.float64)


def reference_month(model_version: str, settings: Settings | None = None) -> tuple[str, int, int]:
    """(taxi type, year, month) a logged model was validated on, from its run's params (train.validation_data)."""
    from ride_duration.train import model_data

    data = model_data(model_version, settings)
    if not data["taxi_type"] or not data["val_month"]:
        raise NoReferenceMonth(
            f"model {model_version} has no validation month in its run (params taxi_type, val_month)"
        )
    year, month = (int(part) for part in data["val_month"].split("-"))
    return data["taxi_type"], year, month


def production_model(settings: Settings | None = None) -> ServedModel:
    """The model `settings.model_uri` names (by default the registry's `production` alias), ready to predict."""
    from ride_duration.serving import ModelService

    return ModelService.from_settings(settings or Settings.from_environ()).current


def reference_rides(
    model: ServedModel,
    *,
    month: tuple[str, int, int] | None = None,
    settings: Settings | None = None,
    synthetic: bool | str = False,
) -> tuple[pd.DataFrame, str]:
    """(rides_frame of the reference month scored by `model`, its label such as "green/2021-02").

    month: (taxi type, year, month); by default the month the model was validated on.
    """
    taxi_type, year, number = month or reference_month(model.version, settings)
    rides = read_rides(taxi_type, year, number, synthetic=synthetic)
    return rides_frame(rides, score_frame(model, rides)), month_label(taxi_type, year, number)


def month_rides(taxi_type: str, year: int, month: int, scored_path: str | Path, *, synthetic: bool | str = False):
    """(rides_frame of a scored month, the model version that scored it): the raw month (for the distances and
    the actual durations) joined with score.py's output by ride id, i.e. by row.

    Raises ScoredMonthMismatch when the output is not this month's: another month, another row count,
    or ride ids out of order.
    """
    import pyarrow.parquet as pq

    from ride_duration.batch.output import output_info

    label = month_label(taxi_type, year, month)
    info = output_info(scored_path)
    if info is None:
        raise FileNotFoundError(f"no scored output at {scored_path}: score {label} first (scripts/score.py)")
    if info["month"] != label or not info["model_version"]:
        raise ScoredMonthMismatch(f"{scored_path} holds {info['month'] or 'an unknown month'}, not {label}")
    scored = pq.read_table(scored_path, columns=["ride_id", PREDICTION])
    rides = read_rides(taxi_type, year, month, synthetic=synthetic)
    if info["synthetic"] != (rides.attrs["source"] == "synthetic"):
        kinds = ("synthetic", "real") if info["synthetic"] else ("real", "synthetic")
        raise ScoredMonthMismatch(f"{scored_path} was scored from {kinds[0]} rides, but {label} here is {kinds[1]}")
    if scored.num_rows != len(rides):
        raise ScoredMonthMismatch(f"{scored_path} has {scored.num_rows:,} rides, {label} has {len(rides):,}")
    ids = scored.column("ride_id")
    last = scored.num_rows - 1
    for row in (0, last // 2, last) if last >= 0 else ():
        if ids[row].as_py() != ride_id(year, month, row):
            raise ScoredMonthMismatch(
                f"{scored_path}: row {row} is ride {ids[row].as_py()}, not {ride_id(year, month, row)}"
            )
    predictions = scored.column(PREDICTION).to_numpy()
    return rides_frame(rides, predictions), info["model_version"]


def report_path(row: MonthMetrics, settings: Settings | None = None) -> Path:
    """Where a month's HTML report goes: <MONITORING_REPORTS_DIR>/<taxi type>/<YYYY-MM>_<model version>.html."""
    folder = (settings or Settings.from_environ()).monitoring_reports_dir
    return Path(folder) / row.taxi_type / f"{row.month}_{row.model_version}.html"


def save_report(snapshot, path: Path) -> Path:
    """Evidently's HTML report, written whole or not at all."""
    with atomic_path(path) as partial:
        snapshot.save_html(str(partial))
    return path


def monitor_scored_month(
    taxi_type: str,
    year: int,
    month: int,
    *,
    scored_path: str | Path | None = None,
    settings: Settings | None = None,
    thresholds: Thresholds | None = None,
    reference: tuple[pd.DataFrame, str] | None = None,
    model: ServedModel | None = None,
    synthetic: bool | str = False,
) -> MonthMetrics:
    """The step after a month is scored: compare it with its reference, store its row, save its HTML report.

    scored_path: score.py's output (default output/<taxi type>/<YYYY-MM>.parquet in the project).
    reference: (rides_frame, label) to compare with, e.g. from reference_rides once for many months; by
    default the validation month of the model that scored this one, scored by `model` (default: that model,
    loaded from the registry as models:/<its id>).
    """
    from ride_duration.batch.output import default_output

    check_taxi_type(taxi_type)
    year, month = check_month(year, month)
    settings = settings or Settings.from_environ()
    scored_path = scored_path or default_output(taxi_type, year, month, PROJECT_ROOT / "output")
    current, model_version = month_rides(taxi_type, year, month, scored_path, synthetic=synthetic)
    if reference is None:
        if model is None:
            model = production_model(replace(settings, model_uri=f"models:/{model_version}"))
        reference = reference_rides(model, settings=settings, synthetic=synthetic)
    frame, label = reference
    row, snapshot = monitor_month(
        current,
        frame,
        taxi_type=taxi_type,
        month=f"{year:04d}-{month:02d}",
        model_version=model_version,
        reference_label=label,
        thresholds=thresholds,
    )
    save_report(snapshot, report_path(row, settings))
    store_metrics(row, settings.monitoring_url)
    return row


def metrics_table(metadata):
    """The table's columns follow MonthMetrics' fields (NULL only where a field may be None);
    (taxi_type, month, model_version) is the key."""
    import sqlalchemy as sa

    kinds = {"str": sa.Text(), "int": sa.Integer(), "float": sa.Float(), "bool": sa.Boolean()}
    columns = []
    for spec in fields(MonthMetrics):
        kind, *optional = str(spec.type).split(" | ")
        key = spec.name in KEY
        kind = sa.String(128) if key else kinds[kind]  # a key needs a bounded type in most databases
        columns.append(sa.Column(spec.name, kind, primary_key=key, nullable=bool(optional)))
    return sa.Table(TABLE, metadata, *columns)


def _engine_and_table(url: str):
    import sqlalchemy as sa

    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url)
    table = metrics_table(sa.MetaData())
    table.metadata.create_all(engine)
    return engine, table


def store_metrics(row: MonthMetrics, url: str | None = None) -> None:
    """Store a month's row; a row already there for the same taxi type, month and model version is replaced
    (in one transaction: a reader sees the old row or the new one)."""
    values = {
        key: (None if isinstance(value, float) and math.isnan(value) else value) for key, value in asdict(row).items()
    }
    replace_row(*_engine_and_table(url or Settings.from_environ().monitoring_url), values)


def replace_row(engine, table, values: dict) -> None:
    """Insert a row of a table keyed by KEY, replacing the one with the same key, in one transaction; then
    close the engine (the monitoring tables are written once a month, not worth a pool)."""
    try:
        with engine.begin() as connection:
            connection.execute(table.delete().where(*(table.c[key] == values[key] for key in KEY)))
            connection.execute(table.insert().values(**values))
    finally:
        engine.dispose()


def read_metrics(url: str | None = None) -> pd.DataFrame:
    """Every stored row, by taxi type, month and computed time (an empty frame with the columns if none)."""
    return read_rows(*_engine_and_table(url or Settings.from_environ().monitoring_url), "computed_at")


def read_rows(engine, table, time_column: str) -> pd.DataFrame:
    """Every row of a table keyed by KEY, by taxi type, month and time_column (an empty frame with the columns if
    none); then close the engine."""
    import pandas as pd
    import sqlalchemy as sa

    try:
        with engine.connect() as connection:
            query = sa.select(table).order_by(table.c.taxi_type, table.c.month, table.c[time_column])
            return pd.DataFrame(connection.execute(query).mappings().all(), columns=[c.name for c in table.columns])
    finally:
        engine.dispose()


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    """The command line: monitor one scored month, store its row, save its report, print its verdict.
    environ: the variables to read the settings from (default: the process environment)."""
    import argparse
    import sys

    from ride_duration.data import TAXI_TYPES
    from ride_duration.model import ModelLoadError
    from ride_duration.settings import MONITORING

    parser = argparse.ArgumentParser(
        prog="python -m ride_duration.monitoring",
        description="Monitor a month scored by scripts/score.py against the validation month of the model that scored it.",
    )
    parser.add_argument("--taxi-type", default="green", choices=TAXI_TYPES)
    parser.add_argument("--year", type=int, required=True)
    parser.add_argument("--month", type=int, required=True)
    parser.add_argument("--scored", help="score.py's output (default: output/<taxi type>/<YYYY-MM>.parquet)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_environ(environ, groups=MONITORING)
        row = monitor_scored_month(args.taxi_type, args.year, args.month, scored_path=args.scored, settings=settings)
    except (FileNotFoundError, ScoredMonthMismatch, LookupError, ModelLoadError, ValueError) as error:
        kind = "" if isinstance(error, (FileNotFoundError, ScoredMonthMismatch)) else f"{type(error).__name__}: "
        print(f"monitoring: error: {kind}{error}", file=sys.stderr)
        return 2
    print(row.verdict)
    if row.rmse is not None and row.reference_rmse is not None:
        print(f"  RMSE {row.rmse:.2f} min, {row.reference} {row.reference_rmse:.2f} min")
    print(f"  report: {report_path(row, settings)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
