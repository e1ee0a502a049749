"""The retraining loop end to end: a real MLflow server, gunicorn following @production, real green months.

The 2021 model (linear, trained on 2021-01, validated on 2021-02) meets the real 2023-03: the backfill scores
it, monitoring flags it (its zones and distances drifted), the production pipeline is retrained on 2023-01 and
2023-02 and validated on 2023-03, where it is no better than the 2021 model: the gate refuses it, production and
the service stay, and the refusal is recorded in the registry and in the loop's table. Then the same months
with drift injected, every ride a third longer (a city that got slower): the 2021 model's errors grow, the
challenger retrained on the slower months is much better, the gate promotes it, and the running web service
answers with the new version without a restart.

Needs the extra `monitoring` (Evidently). The models are linear (seconds to fit), as the loop's recipe is
whatever production's pipeline is.
"""

from __future__ import annotations

import time

import pytest
import requests

from ride_duration import lifecycle, retraining, train
from ride_duration.model import REGISTERED_MODEL
from ride_duration.rides import EXAMPLE_RIDE
from ride_duration.settings import exported
from tests.batch_support import import_score
from tests.helpers import registry_server, require_real_months, start_web_service, tracking_store

if not retraining.monitoring_installed():  # make test-monitoring installs it; make test-core ignores this file
    pytest.skip("the retraining loop monitors with the extra `monitoring`", allow_module_level=True)

ALIAS_URI = f"models:/{REGISTERED_MODEL}@production"
POLL_SECONDS = 1
MONTHS = [("green", 2021, 1), ("green", 2021, 2), ("green", 2022, 2), ("green", 2023, 1), ("green", 2023, 2)]
MONTHS += [("green", 2023, 3)]


def served_version(url: str) -> str:
    return requests.post(f"{url}/predict", json=EXAMPLE_RIDE, timeout=10).json()["registered_version"]


def wait_until_served(url: str, version: str, timeout: float = 30) -> float:
    """Seconds until the service answers with this registered version (TimeoutError after timeout)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if served_version(url) == version:
            return time.monotonic() - started
        time.sleep(0.2)
    raise TimeoutError(f"the service still answers with {served_version(url)}, not {version}, after {timeout} s")


@pytest.fixture(scope="module")
def loop_stack(tmp_path_factory, logs_dir):
    """A registry server with the 2021 linear model at @production (through the gate), a web service following
    the alias, and the environment the backfill reads (tracking server, monitoring database and reports)."""
    from sklearn.linear_model import LinearRegression

    from ride_duration.data import plausible_rides

    require_real_months(*MONTHS)
    folder = tmp_path_factory.mktemp("retraining-loop")
    with registry_server(folder, logs_dir) as settings, tracking_store(settings.tracking_uri):
        environment = {
            "MLFLOW_TRACKING_URI": settings.tracking_uri,
            "MONITORING_DB_URL": f"sqlite:///{folder / 'monitoring.db'}",
            "MONITORING_REPORTS_DIR": str(folder / "reports"),
            "MODEL_URI": ALIAS_URI,
        }
        with exported(environment):
            train.setup_tracking(settings=settings)
            rides, _ = plausible_rides(retraining.month_training_rides("green", 2021, 1))
            pipeline = train.make_pipeline(LinearRegression(), float(rides["trip_distance"].max()))
            first = retraining.log_challenger(
                pipeline,
                rides,
                retraining.month_training_rides("green", 2021, 2),
                taxi_type="green",
                train_months=[(2021, 1)],
                val_month=(2021, 2),
                note="the 2021 model",
            )
            assert lifecycle.promote(settings=settings).promoted
            service, url, log = start_web_service(
                logs_dir, "retraining-loop", {**environment, "MODEL_POLL_SECONDS": str(POLL_SECONDS)}
            )
            try:
                assert served_version(url) == f"{REGISTERED_MODEL}/{first.version}"
                yield {"settings": settings, "url": url, "folder": folder, "first": first, **environment}
            finally:
                from ride_duration import local_stack

                local_stack.stop(service)


SLOWER = 4 / 3  # the injected drift: every ride takes a third longer


def slower_months(folder, months):
    """A data folder with the real months, those of `months` rewritten with every ride SLOWER times as long."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ride_duration.data import DATETIME_COLUMNS, month_filename
    from tests.helpers import data_folder

    folder.mkdir()
    pickup, dropoff = DATETIME_COLUMNS["green"]
    for taxi_type, year, month in MONTHS:
        name = month_filename(taxi_type, year, month)
        if (year, month) not in months:
            (folder / name).symlink_to(data_folder() / name)
            continue
        table = pq.read_table(data_folder() / name)
        frame = table.to_pandas()
        frame[dropoff] = frame[pickup] + (frame[dropoff] - frame[pickup]) * SLOWER
        pq.write_table(pa.Table.from_pandas(frame, schema=table.schema, preserve_index=False), folder / name)
    return folder


def backfill_one(month: str, output_root, **options) -> dict:
    (row,) = import_score().backfill("green", month, month, ALIAS_URI, str(output_root), **options)
    assert row["status"] == "scored", row
    return row


def test_a_drifted_month_whose_challenger_is_worse_is_refused_and_production_stays(loop_stack, capsys):
    first = loop_stack["first"].version
    row = backfill_one("2023-03", loop_stack["folder"] / "output", monitor=True)
    step = retraining.read_steps(loop_stack["MONITORING_DB_URL"]).set_index("month").loc["2023-03"]
    assert (step["action"], step["flagged"]) == ("refused", True), step["detail"]
    assert (step["train_months"], step["val_month"]) == ("2023-01+2023-02", "2023-03")
    assert "not better by 1%" in step["detail"] and step["production_version"] == first
    assert row["note"] == f"flagged; v{step['challenger_version']} refused"
    assert f"version {step['challenger_version']} refused by the gate" in capsys.readouterr().err
    refused = lifecycle.client().get_model_version(REGISTERED_MODEL, step["challenger_version"])
    assert refused.tags["refused_because"] == step["detail"]
    assert refused.tags["retrained_for"].startswith("green/2023-03: ")
    assert lifecycle.version_at(REGISTERED_MODEL, "production").version == first
    time.sleep(2 * POLL_SECONDS)
    assert served_version(loop_stack["url"]) == f"{REGISTERED_MODEL}/{first}"


def test_a_slower_month_is_retrained_on_promoted_and_served(loop_stack, tmp_path):
    first = loop_stack["first"].version
    slower = slower_months(tmp_path / "slower", [(2023, 1), (2023, 2), (2023, 3)])
    monitoring_db = f"sqlite:///{tmp_path / 'monitoring.db'}"
    with exported({"TAXI_DATA_DIR": str(slower), "MONITORING_DB_URL": monitoring_db}):
        row = backfill_one("2023-03", tmp_path / "output", monitor=True)
    (step,) = retraining.read_steps(monitoring_db).itertuples()
    assert (step.month, step.action, step.flagged) == ("2023-03", "promoted", True), step.detail
    assert (step.train_months, step.val_month) == ("2023-01+2023-02", "2023-03")
    assert "better by more than 1%" in step.detail
    new = step.challenger_version
    assert step.production_version == new and row["note"] == f"flagged; v{new} promoted"
    production = lifecycle.version_at(REGISTERED_MODEL, "production")
    assert production.version == new and "RMSE " in production.tags["retrained_for"]
    assert lifecycle.version_at(REGISTERED_MODEL, "previous").version == first
    seconds = wait_until_served(loop_stack["url"], f"{REGISTERED_MODEL}/{new}")
    print(f"the service answered with version {new} {seconds:.1f} s after the loop")
