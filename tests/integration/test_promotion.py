"""Choosing the production model honestly: the tutorial run offline (synthetic months), then on real data,
in one tracking store; and the promotion rules one by one."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import pytest

from ride_duration import batch, lifecycle, train
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
    """Notebooks 01 and 02 under papermill offline (synthetic months), a backfill, then the same on real data.
    Its forests have 10 trees, not the course's 100: this test is about the choice, tests/integration/
    test_notebooks.py runs notebook 01 as published."""
    require_real_months(("green", 2021, 1), ("green", 2021, 2), ("green", 2021, 3))
    score = import_score()
    output_root = tmp_path / "output"
    months = [output_root / "green" / f"2021-0{month}.parquet" for month in (1, 2, 3)]
    with tracking_store(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        run_notebook("01-train", {"synthetic": True, "forest_trees": 10}, output_dir=tmp_path / "offline")
        run_notebook("02-register", {"server_mode": False}, output_dir=tmp_path / "offline")
        synthetic_champion = production()
        assert synthetic_champion.tags["data_source"] == "synthetic"
        offline = score.backfill("green", "2021-01", "2021-03", PRODUCTION_URI, str(output_root), synthetic=True)
        assert [row["status"] for row in offline] == ["scored"] * 3
        assert all(batch.output_info(output)["synthetic"] for output in months)

        real_run = {"synthetic": False, "forest_trees": 10}
        run_notebook("01-train", real_run, output_dir=tmp_path / "real")  # asserts the course's RMSE
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
        assert champion.tags["replaced_model_id"] == lifecycle.version_model_id(synthetic_champion)
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
        assert not frame.attrs["synthetic"] and frame.attrs["model_version"] == lifecycle.version_model_id(champion)
        plausible = frame[frame["actual_duration"].between(1, 60)]
        assert (plausible["diff"] ** 2).mean() ** 0.5 < 15


# --- the gate, on synthetic months (no real data needed) --------------------------------------------
# Ridge(alpha=1.0) is the best of the simple pipelines on synthetic months; larger penalties are worse.


def log_run(regressor, train_on: str, validate_on: str, data_source: str = "synthetic", **params):
    """One run as notebook 01 logs it: fit on month train_on, RMSE on validate_on (synthetic months);
    `params` are logged too, and may say otherwise."""
    from ride_duration.data import read_month, training_rides

    def rides(text):
        year, month = (int(part) for part in text.split("-"))
        return training_rides(read_month("green", year, month, synthetic=True), "green")

    pipeline = train.fit(train.make_pipeline(regressor), rides(train_on))
    val_rmse = train.rmse(pipeline, rides(validate_on))
    info = train.log_pipeline(
        pipeline,
        params={
            "regressor": type(regressor).__name__,
            "taxi_type": "green",
            "train_month": train_on,
            "val_month": validate_on,
            **params,
        },
        metrics={"val_rmse": val_rmse},
        tags={"data_source": data_source},
    )
    return info.model_id, val_rmse


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One embedded tracking store for the rules below; each test has its own experiment and model name."""
    with tracking_store(f"sqlite:///{tmp_path_factory.mktemp('rules') / 'mlflow.db'}") as uri:
        yield uri


@pytest.fixture
def rules(store, request):
    """register_best and the production version for this test's own experiment and registered model."""
    name = request.node.name.removeprefix("test_")[:60]
    train.setup_tracking(name)
    return partial(lifecycle.register_best, experiment=name, name=name), partial(production, name), name


def aliases(name: str) -> dict:
    return {alias: str(version.version) if version else None for alias, version in lifecycle.status(name).items()}


def test_a_synthetic_data_model_never_replaces_a_real_data_one(rules):
    from mlflow import MlflowClient
    from sklearn.linear_model import Ridge

    register, current, experiment = rules
    real_id, _ = log_run(Ridge(alpha=1.0), "2021-01", "2021-02", data_source="tlc")  # labelled real
    version = lifecycle.register_challenger(real_id, experiment)
    MlflowClient().set_registered_model_alias(experiment, "production", version.version)  # past the gate by hand
    log_run(Ridge(alpha=1.0), "2021-02", "2021-03")
    kept = register()
    assert not kept.promoted and lifecycle.version_model_id(current()) == real_id
    assert "never replaces one validated on real data" in kept.reason


def test_first_model_is_promoted_and_the_same_one_is_not_registered_again(rules):
    from sklearn.linear_model import Ridge

    register, current, experiment = rules
    model_id, _ = log_run(Ridge(alpha=1.0), "2021-01", "2021-02")
    first = register()
    assert first.promoted and first.reason.startswith("no version was in production yet") and first.version == "1"
    assert lifecycle.version_model_id(current()) == model_id and current().tags["replaced_version"] == "none"
    assert [f for f in first.findings if not f.passed] == [] and len(first.findings) > 5
    again = register()
    assert not again.promoted and again.version == "1" and "in production already" in again.reason
    assert aliases(experiment) == {"production": "1", "challenger": None, "previous": None}


def test_champion_validated_on_another_month_is_evaluated_again_on_the_challengers(rules):
    from sklearn.linear_model import Ridge

    register, current, experiment = rules
    log_run(Ridge(alpha=1e4), "2021-01", "2021-02")
    register()
    worse_id, worse_rmse = log_run(Ridge(alpha=1e5), "2021-02", "2021-03")  # heavily shrunk: worse
    kept = register()
    assert not kept.promoted and kept.version == "1"
    assert kept.champion_rmse < worse_rmse == pytest.approx(kept.challenger_rmse, abs=1e-9)
    assert "not better by 1%" in kept.reason and "green 2021-03 (synthetic)" in kept.reason
    assert lifecycle.version_at(experiment, "challenger").tags["refused_because"] == kept.reason

    better_id, better_rmse = log_run(Ridge(alpha=1.0), "2021-02", "2021-03")
    promoted = register()
    assert promoted.promoted and lifecycle.version_model_id(current()) == better_id
    assert better_rmse < promoted.champion_rmse * 0.99
    assert float(current().tags["replaced_val_rmse_on_this_data"]) == promoted.champion_rmse
    assert aliases(experiment) == {"production": "3", "challenger": None, "previous": "1"}


def test_the_gate_refuses_a_challenger_that_fails_a_behavioural_test(rules):
    from sklearn.linear_model import Ridge

    register, current, experiment = rules
    log_run(Ridge(alpha=1.0), "2021-01", "2021-02")
    register()
    flat, _ = log_run(Ridge(alpha=1e12), "2021-01", "2021-02")  # shrunk to about the mean, whatever the distance
    lifecycle.register_challenger(flat, experiment)
    refused = lifecycle.promote(experiment)
    assert not refused.promoted and refused.version == "1"
    assert "behavioural tests" in refused.reason and "the course's example ride, 40 miles" in refused.reason
    assert refused.challenger_rmse is None  # refused before any RMSE


def test_the_gate_refuses_a_challenger_no_better_than_the_margin(rules):
    from sklearn.linear_model import Ridge

    register, current, experiment = rules
    log_run(Ridge(alpha=1.0), "2021-01", "2021-02")
    register()
    again, _ = log_run(Ridge(alpha=1.0), "2021-01", "2021-02", note="the same model again")
    lifecycle.register_challenger(again, experiment)
    same = lifecycle.promote(experiment)
    assert not same.promoted and same.challenger_rmse == pytest.approx(same.champion_rmse, abs=1e-9)
    assert "not better by 1%" in same.reason
    lenient = lifecycle.promote(experiment, margin=0.0)  # a margin of 0 accepts an equal RMSE
    assert lenient.promoted and lenient.version == "2" and str(current().version) == "2"


def test_the_gate_refuses_a_challenger_validated_on_other_data(rules):
    from mlflow import MlflowClient
    from sklearn.linear_model import Ridge

    register, current, experiment = rules
    log_run(Ridge(alpha=1.0), "2021-01", "2021-02")
    register()
    other_type, _ = log_run(Ridge(alpha=1.0), "2021-01", "2021-02", taxi_type="yellow")
    lifecycle.register_challenger(other_type, experiment)
    refused = lifecycle.promote(experiment)
    assert not refused.promoted and "production serves a model of green 2021-02" in refused.reason
    # a run that says it was validated on March, with the RMSE of February
    mislabelled, _ = log_run(Ridge(alpha=1.0), "2021-01", "2021-02", val_month="2021-03")
    lifecycle.register_challenger(mislabelled, experiment)
    refused = lifecycle.promote(experiment)
    assert not refused.promoted and "it was not validated on these rides" in refused.reason
    assert str(current().version) == "1" and MlflowClient().get_model_version(experiment, "3").tags["refused_because"]


def test_rollback_restores_the_previous_version_once(rules):
    from sklearn.linear_model import Ridge

    register, current, experiment = rules
    log_run(Ridge(alpha=1e4), "2021-01", "2021-02")
    register()
    log_run(Ridge(alpha=1.0), "2021-01", "2021-02")
    assert register().promoted
    assert aliases(experiment) == {"production": "2", "challenger": None, "previous": "1"}
    done = lifecycle.rollback(experiment)
    assert (done.restored, done.replaced) == ("1", "2")
    assert aliases(experiment) == {"production": "1", "challenger": None, "previous": None}
    from mlflow import MlflowClient

    assert "went back to version 1" in MlflowClient().get_model_version(experiment, "2").tags["rolled_back"]
    with pytest.raises(LookupError, match="nothing to roll back to"):
        lifecycle.rollback(experiment)


def test_the_commands_are_what_ci_cd_calls(store, tmp_path):
    """challenge, promote, status, rollback as a pipeline would run them, with their exit codes."""
    import subprocess

    from sklearn.linear_model import Ridge

    from ride_duration.settings import child_environment

    experiment = train.EXPERIMENT  # the commands' defaults: experiment and model ride-duration
    train.setup_tracking(experiment)

    def command(*args):
        done = subprocess.run(
            [sys.executable, "-m", "ride_duration.lifecycle", *args],
            cwd=ROOT,
            env=child_environment({"MLFLOW_TRACKING_URI": store}),
            capture_output=True,
            text=True,
            timeout=120,
        )
        return done.returncode, done.stdout + done.stderr

    code, out = command("promote")
    assert code == 2 and "no version of ride-duration is @challenger: make one first" in out
    log_run(Ridge(alpha=1e4), "2021-01", "2021-02")
    code, out = command("challenge")
    assert code == 0 and "@challenger: version 1" in out, out
    code, out = command("promote")
    assert code == 0 and "promoted: no version was in production yet" in out and "PASS directional" in out
    log_run(Ridge(alpha=1.0), "2021-01", "2021-02")
    command("challenge")
    code, out = command("promote")
    assert code == 0 and "@production is version 2" in out
    code, out = command("status")
    assert "@production: version 2" in out and "@previous: version 1" in out and "@challenger: -" in out
    code, out = command("rollback")
    assert code == 0 and "rolled back: @production is version 1 again (was 2)" in out
    assert command("rollback")[0] == 2
    code, out = command("challenge")  # the best run is the one just rolled back
    assert code == 2 and "was rolled back from production (version 2" in out
    worse, _ = log_run(Ridge(alpha=1e5), "2021-01", "2021-02")
    assert command("challenge", "--model-id", worse)[0] == 0
    code, out = command("promote")
    assert code == 3 and "refused:" in out and "@production is version 1" in out
