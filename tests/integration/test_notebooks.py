"""The tutorial's main job: notebooks 01 and 02 run under papermill, in order, into a tmp folder
with their own tracking store (never the project's mlflow.db), and print nothing but their own output.
(tests/unit/test_notebooks.py checks the noise check itself and the parameters papermill is given.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, tracking_store

sys.path.insert(0, str(ROOT / "scripts"))
from run_notebooks import run_notebook

from ride_duration.notebooks import noise

PUBLISHED_BASELINE_RMSE = 7.758715209092169


@pytest.fixture(scope="module")
def tutorial_store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tutorial")
    with tracking_store(f"sqlite:///{folder / 'mlflow.db'}"):
        yield folder


@pytest.fixture(scope="module")
def trained(tutorial_store, training_months):
    synthetic = training_months["synthetic"]
    run_notebook("01-train", {"synthetic": synthetic}, output_dir=tutorial_store)
    return synthetic


@pytest.fixture(scope="module")
def registered(trained, tutorial_store):
    """Notebook 02 run after 01, with its tracking-server part; returns the executed copy."""
    return run_notebook("02-register", {"server_mode": True}, output_dir=tutorial_store)


def test_01_trains_and_reproduces_the_course_baseline(trained):
    import mlflow

    runs = mlflow.search_runs(experiment_names=["ride-duration"], output_format="list")
    by_name = {run.info.run_name: run for run in runs}
    assert "LinearRegression" in by_name and len(runs) >= 2
    baseline = by_name["LinearRegression"].data.metrics["val_rmse"]
    if not trained:  # real green 2021-01 -> 2021-02 (always so in CI)
        assert abs(baseline - PUBLISHED_BASELINE_RMSE) < 1e-6
        assert by_name["LinearRegression"].data.tags["data_source"] == "tlc"
    else:
        assert by_name["LinearRegression"].data.tags["data_source"] == "synthetic"
    best = min(run.data.metrics["val_rmse"] for run in runs)
    assert best < baseline  # the stronger pipeline is stronger


def test_02_registers_the_best_run_and_loads_it_from_s3_with_the_server_down(registered):
    import mlflow
    from mlflow import MlflowClient

    version = MlflowClient().get_model_version_by_alias("ride-duration", "production")
    best = min(
        mlflow.search_runs(experiment_names=["ride-duration"], output_format="list"),
        key=lambda run: run.data.metrics["val_rmse"],
    )
    assert version.run_id == best.info.run_id
    text = Path(registered).read_text()
    assert "tracking server stopped; loaded s3://mlflow-artifacts/" in text


def test_executed_notebooks_print_no_library_warnings_or_logs(registered, tutorial_store):
    for executed in (tutorial_store / "01-train.ipynb", registered):
        assert noise(executed) == [], f"{executed.name} has library noise in its outputs"


def test_07_swaps_the_model_under_live_requests_and_rolls_back_without_a_failed_answer(registered, tutorial_store):
    """Notebook 07 after 01 and 02: a refused challenger, a promoted one the service follows, a rollback."""
    from mlflow import MlflowClient

    before = MlflowClient().get_model_version_by_alias("ride-duration", "production").version
    executed = run_notebook("07-lifecycle", {"poll_seconds": 1}, output_dir=tutorial_store)
    text = executed.read_text()
    assert "refused: fails" in text and "the course's example ride, 40 miles" in text
    assert "promoted: val_rmse" in text and "better by more than 1%" in text
    assert ", 0 failed, 0 not their version's prediction" in text
    assert "first answer from ride-duration/" in text and "the service followed in" in text
    assert MlflowClient().get_model_version_by_alias("ride-duration", "production").version == before
    assert noise(executed) == [], "07-lifecycle has library noise in its outputs"
