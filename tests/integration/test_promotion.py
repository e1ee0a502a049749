"""Choosing the production model honestly: the tutorial run offline (synthetic months), then on real data,
in one tracking store; and the promotion rules one by one."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import pytest

from ride_duration import batch, train
from tests.batch_support import import_score
from tests.helpers import ROOT, require_real_months, tracking_store

sys.path.insert(0, str(ROOT / "scripts"))
from run_notebooks import run_notebook

MODEL = "ride-duration"
PRODUCTION_URI = f"models:/{MODEL}@production"


def production(name: str = MODEL):
    from mlflow import MlflowClient

    return MlflowClient().get_model_version_by_alias(name, "production")


def code_output(executed: Path) -> str:
    import nbformat

    cells = nbformat.read(executed, as_version=4).cells
    return "".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for c in cells
        if c.cell_type == "code"
        for o in c.outputs
    )


def test_offline_then_real_tutorial_promotes_and_scores_with_the_real_model(tmp_path):
    """Notebooks 01 and 02 under papermill offline (synthetic months), a backfill, then the same on real data."""
    require_real_months(("green", 2021, 1), ("green", 2021, 2), ("green", 2021, 3))
    score = import_score()
    output_root = tmp_path / "output"
    months = [output_root / "green" / f"2021-0{month}.parquet" for month in (1, 2, 3)]
    with tracking_store(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        run_notebook("01-train", {"synthetic": True}, output_dir=tmp_path / "offline")
        run_notebook("02-register", {"server_mode": False}, output_dir=tmp_path / "offline")
        synthetic_champion = production()
        assert synthetic_champion.tags["data_source"] == "synthetic"
        offline = score.backfill("green", "2021-01", "2021-03", PRODUCTION_URI, str(output_root), synthetic=True)
        assert [row["status"] for row in offline] == ["scored"] * 3
        assert all(batch.output_info(output)["synthetic"] for output in months)

        run_notebook("01-train", {"synthetic": False}, output_dir=tmp_path / "real")  # asserts the course's RMSE
        registered = code_output(run_notebook("02-register", {"server_mode": False}, output_dir=tmp_path / "real"))
        runs = train.model_runs()
        by_source = {
            source: [r for r in runs if r.data.tags["data_source"] == source] for source in ("synthetic", "tlc")
        }
        best_real = min(by_source["tlc"], key=lambda run: run.data.metrics["val_rmse"])
        assert min(r.data.metrics["val_rmse"] for r in by_source["synthetic"]) < best_real.data.metrics["val_rmse"]
        champion = production()
        assert champion.run_id == best_real.info.run_id
        assert champion.tags["data_source"] == "tlc"
        assert champion.tags["validation_data"] == "green 2021-02 (tlc)"
        assert float(champion.tags["val_rmse"]) == best_real.data.metrics["val_rmse"]
        assert champion.tags["replaced_version"] == str(synthetic_champion.version)
        assert champion.tags["replaced_model_id"] == train.version_model_id(synthetic_champion)
        assert (
            "real data replaces a champion validated on green 2021-02 (synthetic)" in champion.tags["promoted_because"]
        )
        assert f"replaced version {synthetic_champion.version}" in champion.description
        assert "promoted: real data replaces" in registered

        real = score.backfill("green", "2021-01", "2021-03", PRODUCTION_URI, str(output_root), synthetic="fallback")
    assert [row["status"] for row in real] == ["scored"] * 3
    assert all("re-scored: existing output was scored from synthetic rides" in row["note"] for row in real)
    for output in months:  # real rides, the real model, and errors of a few minutes, not thousands
        frame = batch.read_output(output)
        assert not frame.attrs["synthetic"] and frame.attrs["model_version"] == train.version_model_id(champion)
        plausible = frame[frame["actual_duration"].between(1, 60)]
        assert (plausible["diff"] ** 2).mean() ** 0.5 < 15


# --- the rules, on synthetic months (seconds, no real data needed) ----------------------------------


def log_run(regressor, train_month: str, val_month: str, data_source: str = "synthetic"):
    """One run as notebook 01 logs it: fit on train_month, RMSE on val_month (synthetic months)."""
    from ride_duration.data import read_month, training_rides

    def rides(text):
        year, month = (int(part) for part in text.split("-"))
        return training_rides(read_month("green", year, month, synthetic=True), "green")

    pipeline = train.fit(train.make_pipeline(regressor), rides(train_month))
    val_rmse = train.rmse(pipeline, rides(val_month))
    info = train.log_pipeline(
        pipeline,
        params={
            "regressor": type(regressor).__name__,
            "taxi_type": "green",
            "train_month": train_month,
            "val_month": val_month,
        },
        metrics={"val_rmse": val_rmse},
        tags={"data_source": data_source},
    )
    return info.model_id, val_rmse


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One embedded tracking store for the rules below; each test has its own experiment and model name."""
    with tracking_store(f"sqlite:///{tmp_path_factory.mktemp('rules') / 'mlflow.db'}"):
        yield


@pytest.fixture
def rules(store, request):
    """register_best and the production version for this test's own experiment and registered model."""
    name = request.node.name.removeprefix("test_")[:60]
    train.setup_tracking(name)
    return partial(train.register_best, experiment=name, name=name), partial(production, name), name


def test_a_synthetic_data_model_never_replaces_a_real_data_one(rules):
    from sklearn.linear_model import LinearRegression, Ridge

    register, current, experiment = rules
    real_id, _ = log_run(Ridge(alpha=1e5), "2021-01", "2021-02", data_source="tlc")  # labelled real, and poor
    register()
    log_run(LinearRegression(), "2021-01", "2021-02")  # better, on synthetic rides
    kept = register()
    assert not kept.promoted and train.version_model_id(current()) == real_id
    assert "never replaces one validated on real data" in kept.reason


def test_first_model_is_promoted_and_the_same_one_is_not_registered_again(rules):
    from sklearn.linear_model import LinearRegression

    register, current, experiment = rules
    model_id, _ = log_run(LinearRegression(), "2021-01", "2021-02")
    first = register()
    assert first.promoted and first.reason == "no version had the alias yet" and first.version == "1"
    assert train.version_model_id(current()) == model_id and current().tags["replaced_version"] == "none"
    again = register()
    assert not again.promoted and again.version == "1" and "already the champion" in again.reason


def test_champion_validated_on_another_month_is_evaluated_again_on_the_candidates(rules):
    from sklearn.linear_model import LinearRegression, Ridge

    register, current, experiment = rules
    log_run(LinearRegression(), "2021-01", "2021-02")
    register()
    worse_id, worse_rmse = log_run(Ridge(alpha=1e5), "2021-02", "2021-03")  # heavily shrunk: worse
    kept = register()
    assert not kept.promoted and kept.version == "1"
    assert kept.champion_rmse < worse_rmse and "does not beat the champion's" in kept.reason
    assert "green 2021-03 (synthetic)" in kept.reason

    better_id, better_rmse = log_run(LinearRegression(), "2021-02", "2021-03")
    promoted = register()
    assert promoted.promoted and train.version_model_id(current()) == better_id
    assert better_rmse < promoted.champion_rmse
    assert float(current().tags["replaced_val_rmse_on_this_data"]) == promoted.champion_rmse


def test_runs_on_other_data_are_not_compared(rules):
    from sklearn.linear_model import LinearRegression

    experiment = rules[2]
    earlier, _ = log_run(LinearRegression(), "2021-01", "2021-02")
    newest, _ = log_run(LinearRegression(), "2021-03", "2021-04")
    assert train.best_run(experiment).outputs.model_outputs[0].model_id == newest
    older = train.best_run(
        experiment, validation={"taxi_type": "green", "val_month": "2021-02", "data_source": "synthetic"}
    )
    assert older.outputs.model_outputs[0].model_id == earlier
    with pytest.raises(LookupError, match="green 2021-02 \\(tlc\\)"):
        train.best_run(experiment, validation={"taxi_type": "green", "val_month": "2021-02", "data_source": "tlc"})
