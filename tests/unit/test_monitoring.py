"""The parts of batch monitoring that need neither Evidently nor a model: the monitored frame, the quality
metrics, the thresholds, the table (SQLite in a tmp folder). Evidently's part is tested in
tests/integration/test_monitoring.py, on real months."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from ride_duration import monitoring
from ride_duration.data import MAX_PLAUSIBLE_MILES
from ride_duration.monitoring import ACTUAL, PREDICTION, MonthMetrics, Thresholds
from ride_duration.settings import PROJECT_ROOT, Settings


def month_row(**changes) -> MonthMetrics:
    """A row under every default threshold (the figures of an ordinary 2021 month)."""
    row = MonthMetrics(
        taxi_type="green",
        month="2021-03",
        model_version="m-one",
        reference="green/2021-02",
        rides=1000,
        rides_with_duration=950,
        trip_distance_drift=0.01,
        pu_location_drift=0.04,
        do_location_drift=0.04,
        prediction_drift=0.02,
        drifted_columns=0,
        missing_share=0.0,
        rmse=7.1,
        reference_rmse=7.2,
        mae=4.5,
        share_off_10min=0.11,
    )
    return dataclasses.replace(row, **changes)


def test_the_frame_keeps_the_actual_duration_only_where_validation_judges_a_model():
    rides = pd.DataFrame(
        {
            "PULocationID": [1, 2, 3, 4],
            "DOLocationID": [5, 6, 7, 8],
            "trip_distance": [1.5, 250_000.0, np.nan, 3.0],
            "duration": [0.5, 10.0, 60.0, 61.0],
        }
    )
    frame = monitoring.rides_frame(rides, [1.0, 2.0, 3.0, 4.0])
    assert frame[ACTUAL].tolist()[1:3] == [10.0, 60.0] and np.isnan(frame[ACTUAL][[0, 3]]).all()
    assert frame["trip_distance"][1] == MAX_PLAUSIBLE_MILES and np.isnan(frame["trip_distance"][2])
    assert frame[PREDICTION].tolist() == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="3 predictions for 4 rides"):
        monitoring.rides_frame(rides, [1.0, 2.0, 3.0])


def test_quality_is_measured_on_the_rides_with_an_actual_duration():
    frame = pd.DataFrame({ACTUAL: [10.0, 20.0, np.nan, 30.0], PREDICTION: [12.0, 31.0, 99.0, 30.0]})
    found = monitoring.quality(frame)
    assert found["rides_with_duration"] == 3
    assert found["rmse"] == pytest.approx(np.sqrt((4 + 121 + 0) / 3))
    assert found["mae"] == pytest.approx(13 / 3)
    assert found["share_off_10min"] == pytest.approx(1 / 3)
    none = monitoring.quality(pd.DataFrame({ACTUAL: [np.nan], PREDICTION: [1.0]}))
    assert none == {"rides_with_duration": 0, "rmse": None, "mae": None, "share_off_10min": None}


def test_an_ordinary_month_is_not_flagged_and_each_crossed_threshold_is_named():
    thresholds = Thresholds()
    assert thresholds.reasons(month_row()) == []
    crossed = month_row(
        pu_location_drift=0.3,
        prediction_drift=0.35,
        missing_share=0.02,
        rmse=8.9,
        share_off_10min=0.2,
    )
    reasons = thresholds.reasons(crossed)
    assert len(reasons) == 5
    assert reasons[0] == "PULocationID drift 0.300 > 0.1"
    assert "RMSE 8.90 min > 1.2 x the reference's 7.20" in reasons
    assert thresholds.reasons(month_row(rmse=8.6)) == []  # under 1.2 x 7.2 = 8.64
    assert thresholds.reasons(month_row(rmse=None, share_off_10min=None)) == []  # no actual durations yet


def test_the_sample_is_the_same_rides_every_time_and_a_small_frame_is_whole():
    frame = pd.DataFrame({"x": np.arange(1000)})
    assert monitoring.sample(frame, 2000) is frame
    first, second = monitoring.sample(frame, 100), monitoring.sample(frame, 100)
    assert len(first) == 100 and first["x"].tolist() == second["x"].tolist()


def test_a_month_is_one_row_replaced_when_monitored_again(tmp_path):
    url = f"sqlite:///{tmp_path / 'nested' / 'monitoring.db'}"
    assert monitoring.read_metrics(url).empty
    monitoring.store_metrics(month_row(), url)
    monitoring.store_metrics(month_row(rmse=9.0, flagged=True, reasons="RMSE"), url)
    monitoring.store_metrics(month_row(model_version="m-two"), url)
    monitoring.store_metrics(month_row(month="2021-04", rmse=None, share_off_10min=None), url)
    stored = monitoring.read_metrics(url)
    assert stored[["month", "model_version"]].values.tolist() == [
        ["2021-03", "m-one"],
        ["2021-03", "m-two"],
        ["2021-04", "m-one"],
    ]
    replaced = stored.iloc[0].to_dict()
    assert replaced["rmse"] == 9.0 and replaced["flagged"] and replaced["reasons"] == "RMSE"
    assert set(replaced) == {spec.name for spec in dataclasses.fields(MonthMetrics)}
    assert stored["rmse"].isna().tolist() == [False, False, True]


def test_a_row_that_cannot_be_stored_leaves_the_old_one(tmp_path):
    url = f"sqlite:///{tmp_path / 'monitoring.db'}"
    monitoring.store_metrics(month_row(), url)
    with pytest.raises(Exception, match="NOT NULL"):
        monitoring.store_metrics(month_row(reference=None), url)
    assert monitoring.read_metrics(url)["reference"].tolist() == ["green/2021-02"]


def test_the_table_and_the_reports_are_where_the_settings_say(tmp_path):
    assert Settings().monitoring_url == f"sqlite:///{PROJECT_ROOT / 'monitoring.db'}"
    settings = Settings.from_environ(
        {"MONITORING_DB_URL": "postgresql+psycopg://monitor@db/rides", "MONITORING_REPORTS_DIR": str(tmp_path)}
    )
    assert settings.monitoring_url == "postgresql+psycopg://monitor@db/rides"
    assert monitoring.report_path(month_row(), settings) == tmp_path / "green" / "2021-03_m-one.html"


def test_the_command_says_when_a_month_has_not_been_scored_and_stores_nothing(tmp_path, capsys):
    environ = {"MONITORING_DB_URL": f"sqlite:///{tmp_path / 'monitoring.db'}"}
    argv = ["--year", "2021", "--month", "3", "--scored", str(tmp_path / "missing.parquet")]
    code = monitoring.main(argv, environ)
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"monitoring: error: no scored output at {tmp_path / 'missing.parquet'}: score green/2021-03 first (scripts/score.py)"
    )
    assert not (tmp_path / "monitoring.db").exists()
