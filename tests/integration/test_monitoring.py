"""Batch monitoring on real months, as it runs after scoring: score.py's output and the raw month in,
one row per month in the table and an HTML report out; injected drift is flagged, the month it was
injected into is not; notebook 08 runs. Needs the optional extra `monitoring` (`make test-monitoring`).

One model for the module: the session's `registered_model` (trained like notebook 01 on green 2021-01,
validated on 2021-02, promoted to @production in a tracking store of its own)."""

from __future__ import annotations

import dataclasses
import re
import sys

import numpy as np
import pytest

from ride_duration import monitoring
from ride_duration.data import add_duration, read_month
from ride_duration.notebooks import noise
from ride_duration.serving import ModelService
from ride_duration.settings import Settings
from tests.batch_support import import_score
from tests.helpers import ROOT, real_green_months, require_real_months, tracking_store

sys.path.insert(0, str(ROOT / "scripts"))
from run_notebooks import run_notebook

ELEVEN_MONTHS = [(2021, m) for m in range(1, 6)] + [(2022, 1), (2022, 2), (2023, 1), (2023, 2), (2023, 3), (2024, 3)]


@pytest.fixture(scope="module")
def store(registered_model):
    with tracking_store(registered_model["tracking_uri"]):
        yield registered_model


@pytest.fixture(scope="module")
def settings(store, tmp_path_factory):
    folder = tmp_path_factory.mktemp("monitoring")
    return Settings.from_environ(
        {
            "MLFLOW_TRACKING_URI": store["tracking_uri"],
            "MONITORING_DB_URL": f"sqlite:///{folder / 'monitoring.db'}",
            "MONITORING_REPORTS_DIR": str(folder / "reports"),
        }
    )


@pytest.fixture(scope="module")
def production(settings):
    return ModelService.from_settings(settings).current


@pytest.fixture(scope="module")
def scored(production, tmp_path_factory):
    """Every real green month scored by score.py with the production model: {(year, month): output path}."""
    require_real_months(*(("green", year, month) for year, month in ELEVEN_MONTHS))
    score = import_score()
    folder = tmp_path_factory.mktemp("output")
    outputs = {}
    for year, month in real_green_months():
        outputs[(year, month)] = folder / f"green-{year}-{month:02d}.parquet"
        score.score_month("green", year, month, production, str(outputs[(year, month)]))
    return outputs


@pytest.fixture(scope="module")
def monitored(scored, settings, production):
    """The rows monitor_scored_month returned, month by month: the first month finds its reference itself
    (the validation month of the model that scored it), the others are given it, computed once."""
    rows = {}
    reference = None
    for (year, month), path in scored.items():
        rows[(year, month)] = monitoring.monitor_scored_month(
            "green", year, month, scored_path=path, settings=settings, reference=reference
        )
        reference = reference or monitoring.reference_rides(production, settings=settings)
    return rows


def test_every_real_month_is_monitored_once_and_read_back_from_the_table(monitored, settings, scored):
    stored = monitoring.read_metrics(settings.monitoring_url)
    assert stored["month"].tolist() == [f"{year}-{month:02d}" for year, month in scored]
    assert len(stored) >= len(ELEVEN_MONTHS)
    for record in stored.to_dict("records"):
        row = monitored[tuple(int(part) for part in record["month"].split("-"))]
        assert record == pytest.approx(dataclasses.asdict(row))
        assert record["reference"] == "green/2021-02" and record["model_version"].startswith("m-")
        assert monitoring.report_path(row, settings).stat().st_size > 100_000
    march = monitored[(2021, 3)]
    assert march.rides == len(read_month("green", 2021, 3)) and 0.9 * march.rides < march.rides_with_duration
    assert not march.flagged and march.reasons == ""
    assert march.reference_rmse == pytest.approx(7.2, abs=0.5) and march.rmse == pytest.approx(7.1, abs=0.5)
    later = monitored[(2024, 3)]
    assert later.flagged and "PULocationID drift" in later.reasons and "prediction drift" in later.reasons


def test_monitoring_a_month_again_replaces_its_row(monitored, settings, scored):
    before = monitoring.read_metrics(settings.monitoring_url)
    again = monitoring.monitor_scored_month("green", 2021, 3, scored_path=scored[(2021, 3)], settings=settings)
    after = monitoring.read_metrics(settings.monitoring_url)
    assert len(after) == len(before)
    march = after[after["month"] == "2021-03"].iloc[0]
    assert march["computed_at"] == again.computed_at and march["rmse"] == pytest.approx(monitored[(2021, 3)].rmse)


def test_another_months_output_is_refused_and_stores_nothing(monitored, settings, scored):
    before = monitoring.read_metrics(settings.monitoring_url)
    with pytest.raises(monitoring.ScoredMonthMismatch, match="holds green/2021-03, not green/2021-04"):
        monitoring.monitor_scored_month("green", 2021, 4, scored_path=scored[(2021, 3)], settings=settings)
    assert monitoring.read_metrics(settings.monitoring_url).equals(before)


def test_injected_drift_is_flagged_and_the_unchanged_month_is_not(production, settings):
    reference = monitoring.reference_rides(production, settings=settings)
    rides = add_duration(read_month("green", 2021, 3), "green")
    shifted = rides.copy()
    shifted["trip_distance"] = shifted["trip_distance"] * 1.5
    zones = np.random.default_rng(0).permutation(np.arange(1, 266))  # the same rides, from other zones
    shifted["PULocationID"] = zones[shifted["PULocationID"].to_numpy() - 1]

    def monitor(frame):
        current = monitoring.rides_frame(frame, monitoring.score_frame(production, frame))
        row, _ = monitoring.monitor_month(
            current,
            reference[0],
            taxi_type="green",
            month="2021-03",
            model_version=production.version,
            reference_label=reference[1],
        )
        return row

    unchanged, drifted = monitor(rides), monitor(shifted)
    assert not unchanged.flagged, unchanged.reasons
    assert drifted.flagged
    assert "trip_distance drift" in drifted.reasons and "PULocationID drift" in drifted.reasons
    assert "DOLocationID" not in drifted.reasons  # only what changed is named


def test_08_monitors_the_months_retrains_on_a_flagged_one_and_leaves_the_aliases_as_it_found_them(settings, tmp_path):
    """Notebook 08 on three months (the notebook's default is all eleven), against the session's model: the loop
    retrains on 2024-03 (its one month from 2023 on), and the notebook's last cells put the aliases back."""
    from ride_duration import lifecycle
    from ride_duration.settings import exported

    environment = {
        "MONITORING_DB_URL": f"sqlite:///{tmp_path / 'monitoring.db'}",
        "MONITORING_REPORTS_DIR": str(tmp_path / "reports"),
    }
    before = {alias: v and v.version for alias, v in lifecycle.status(settings=settings).items()}
    with exported(environment):
        executed = run_notebook("08-monitor", {"months": ["2021-03", "2022-01", "2024-03"]}, output_dir=tmp_path)
    text = executed.read_text()
    assert "green/2021-03: not flagged" in text and "green/2024-03: flagged" in text
    loop_line = r"green/2024-03: flagged, retrained on 2023-02\+2023-03 \(validated on 2024-03\): version \d+ (promoted|refused)"
    assert re.search(loop_line, text), "the loop did not retrain on 2024-03"
    assert {alias: v and v.version for alias, v in lifecycle.status(settings=settings).items()} == before
    assert noise(executed) == [], "08-monitor has library noise in its outputs"
    stored = monitoring.read_metrics(environment["MONITORING_DB_URL"])
    assert stored["month"].tolist() == ["2021-03", "2022-01", "2024-03"]
