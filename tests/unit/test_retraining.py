"""The retraining loop's decisions without a registry: which months it trains on, what it records when
monitoring cannot run or fails, and a backfill that keeps a month scored whatever its monitoring does."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ride_duration import retraining
from ride_duration.batch import backfills
from ride_duration.batch import cli as batch_cli
from ride_duration.data import month_filename
from ride_duration.monitoring import NoReferenceMonth
from ride_duration.settings import Settings, exported
from tests.batch_support import import_score, month_file
from tests.helpers import stand_in_model


@pytest.fixture
def settings(tmp_path):
    return replace(
        Settings(), monitoring_db_url=f"sqlite:///{tmp_path / 'monitoring.db'}", taxi_data_dir=tmp_path / "data"
    )


def test_training_months_are_the_two_latest_at_hand_before_the_flagged_one(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for year, month in [(2021, 5), (2022, 1), (2022, 2), (2023, 1), (2023, 3)]:
        (folder / month_filename("green", year, month)).touch()
    with exported({"TAXI_DATA_DIR": str(folder)}):
        assert retraining.training_months("green", 2023, 3) == [(2022, 2), (2023, 1)]
        assert retraining.training_months("green", 2022, 2) == [(2021, 5), (2022, 1)]
        assert retraining.training_months("green", 2021, 5) == []
    assert retraining.training_months("green", 2023, 1, synthetic=True) == [(2022, 11), (2022, 12)]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Months 2021-03 and 2021-04 (small stand-ins for TLC files) scored by a stand-in model."""
    tmp_path = tmp_path_factory.mktemp("scored")
    score = import_score()
    model = stand_in_model("m-stand-in")
    paths = {}
    for month in (3, 4):
        source = month_file(tmp_path / "months", 2021, month, synthetic=False, n_rides=200)
        paths[month] = score.score_month(
            "green", 2021, month, model, str(tmp_path / f"{month}.parquet"), input_file=str(source)
        )["output"]
    return paths


def test_a_model_without_a_validation_month_is_said_once_and_its_months_stay_unmonitored(settings, scored):
    lines = []
    loop = retraining.RetrainingLoop(settings, say=lines.append)
    loop.installed = True  # as with the extra installed: what it does with the missing reference is tested
    lines.clear()  # what the loop said about the extra when it started

    def no_reference(*args):
        raise NoReferenceMonth("model m-stand-in has no validation month in its run")

    loop.monitor = no_reference
    steps = [loop.after_scoring("green", 2021, month, scored[month]) for month in (3, 4)]
    assert [step.action for step in steps] == ["not monitored"] * 2
    assert lines == [
        "green/2021-03: not monitored: NoReferenceMonth: model m-stand-in has no validation month in its run "
        "(its months are scored unmonitored)"
    ]


def test_a_monitoring_failure_is_recorded_and_said_not_raised(settings, scored):
    lines = []
    loop = retraining.RetrainingLoop(settings, say=lines.append)
    loop.installed = True  # as with the extra installed: the failure is what is tested
    lines.clear()  # what the loop said about the extra when it started

    def broken(*args):
        raise RuntimeError("the reference month cannot be read")

    loop.monitor = broken
    step = loop.after_scoring("green", 2021, 3, scored[3])
    assert (step.action, step.model_version, step.flagged) == ("monitoring failed", "m-stand-in", None)
    assert step.detail == "RuntimeError: the reference month cannot be read"
    assert lines == ["green/2021-03: monitoring failed: RuntimeError: the reference month cannot be read"]
    stored = retraining.read_steps(settings.monitoring_url)
    assert stored[["month", "action", "detail"]].values.tolist() == [["2021-03", step.action, step.detail]]


def test_without_the_extra_the_loop_says_so_once_and_records_nothing(settings, scored, monkeypatch):
    monkeypatch.setattr(retraining, "monitoring_installed", lambda: False)
    lines = []
    loop = retraining.RetrainingLoop(settings, say=lines.append)
    assert [loop.after_scoring("green", 2021, m, scored[m]).action for m in (3, 4)] == ["not monitored"] * 2
    assert lines == ["monitoring is not installed (uv sync --extra monitoring): months are scored, not monitored"]
    assert retraining.read_steps(settings.monitoring_url).empty


def test_a_step_replaces_the_one_stored_for_the_same_month_and_model(settings):
    first = retraining.LoopStep("green", "2023-03", "m-1", "refused", "not better by 1%", True, challenger_version="2")
    retraining.store_step(first, settings.monitoring_url)
    again = replace(first, action="promoted", challenger_version="3", production_version="3")
    retraining.store_step(again, settings.monitoring_url)
    stored = retraining.read_steps(settings.monitoring_url)
    assert stored[["action", "challenger_version"]].values.tolist() == [["promoted", "3"]]
    assert again.note == "flagged; v3 promoted"
    assert again.line().startswith("green/2023-03: flagged, retrained on")


def test_a_backfill_keeps_a_month_scored_when_its_monitoring_fails(tmp_path):
    score = import_score()
    source = month_file(tmp_path / "months", 2021, 3, synthetic=False, n_rides=200)
    with exported({"TAXI_DATA_DIR": str(source.parent)}):
        served = score.served_model(stand_in_model("m-stand-in"))

        def broken(*args):
            raise OSError("monitoring database is read-only")

        lines = []
        (row,) = backfills.backfill_months(
            score.score_month,
            served,
            "green",
            [(2021, 3)],
            str(tmp_path / "out"),
            say=lines.append,
            after_scoring=broken,
        )
    assert row["status"] == "scored" and row["note"] == "monitoring failed: monitoring database is read-only"
    assert (tmp_path / "out" / "green" / "2021-03.parquet").exists()
    assert lines[-1] == "green/2021-03: monitoring failed: monitoring database is read-only"


def test_the_backfill_command_line_passes_monitor_and_retrain_on(capsys):
    calls = []

    def backfill(*args, **options):
        calls.append(options)
        return []

    argv = ["backfill", "--from", "2023-01", "--to", "2023-03"]
    assert batch_cli.main(None, backfill, [*argv, "--monitor", "--no-retrain"]) == 0
    assert batch_cli.main(None, backfill, argv) == 0
    assert calls[0]["monitor"] is True and calls[0]["retrain"] is False
    assert "monitor" not in calls[1]  # as before: no monitoring unless asked
    with pytest.raises(SystemExit):
        batch_cli.main(None, backfill, [*argv, "--no-retrain"])
    assert "--no-retrain applies with --monitor only" in capsys.readouterr().err
