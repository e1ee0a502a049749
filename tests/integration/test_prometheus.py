"""web-service/monitoring/ against the real thing: promtool checks the config and the rules and runs their unit
tests, then a real Prometheus (Debian's `prometheus` package) scrapes a real gunicorn serving the registered
model. Rides of the model's own validation month leave the drift alert inactive; the same rides three times
as long fire it; every panel of the Grafana dashboard returns data from that Prometheus."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from ride_duration import local_stack
from ride_duration.metrics import reference_shares
from ride_duration.rides import MAX_TRIP_DISTANCE, validate_ride
from tests.helpers import ROOT
from tests.helpers import start_web_service as start_service

MONITORING = ROOT / "web-service" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "ride-duration.json"
RULE_FILES = sorted(str(path) for path in (MONITORING / "rules").glob("*.yml"))
DRIFT_ALERT = "RideDurationPredictionDrift"
TEST_DRIFT_FOR = "5s"  # the committed 15m, shortened for this test only (promtool tests the committed value)
RIDES_PER_REQUEST = 500
NORMAL_RIDES = 2000
SHIFTED_RIDES = 8000  # four times the normal ones: the 30-minute window is then mostly shifted rides
DISTANCE_FACTOR = 3.0
ALERT_DEADLINE_SECONDS = 120


def prometheus_tool(name: str) -> str:
    """The path of `prometheus` or `promtool`; a clear failure (not a skip) where it is not installed."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} is not installed: `sudo apt-get install prometheus` (Debian/Ubuntu), "
            f"or put Prometheus' {name} on the PATH"
        )
    return found


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([prometheus_tool("promtool"), *args], capture_output=True, text=True, timeout=60)


# --- promtool ------------------------------------------------------------------------------------


def test_promtool_checks_config_and_rules():
    """`check config` checks the rule files it names too; `check rules` runs the linter on them as well."""
    for args in (["check", "config", str(MONITORING / "prometheus.yml")], ["check", "rules", *RULE_FILES]):
        checked = promtool(*args)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "SUCCESS" in checked.stdout


def test_promtool_rule_unit_tests():
    tested = promtool("test", "rules", str(MONITORING / "tests" / "alerts_test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_firing_and_a_quiet_case():
    """Each alert of the rules appears in the unit tests both with expected alerts and with none."""
    alerts = {rule["alert"] for group in rule_groups("alerts.yml") for rule in group["rules"]}
    cases = yaml.safe_load((MONITORING / "tests" / "alerts_test.yml").read_text())["tests"]
    firing, quiet = set(), set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert alerts == firing, f"alerts without a firing case: {alerts - firing}"
    assert alerts == quiet, f"alerts without a case expecting none: {alerts - quiet}"


def rule_groups(name: str) -> list[dict]:
    return yaml.safe_load((MONITORING / "rules" / name).read_text())["groups"]


# --- a live Prometheus ---------------------------------------------------------------------------


def scrape_config(folder: Path, target: str) -> Path:
    """The committed prometheus.yml with only its target and intervals replaced (1 s), its rules the committed
    files, the drift alert's `for:` shortened to TEST_DRIFT_FOR."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [target]}]
    groups = rule_groups("alerts.yml")
    (drift,) = [rule for group in groups for rule in group["rules"] if rule.get("alert") == DRIFT_ALERT]
    assert drift["for"] == "15m"
    drift["for"] = TEST_DRIFT_FOR
    alerts = folder / "alerts.yml"
    alerts.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    committed = [str(MONITORING / path) for path in config["rule_files"]]
    config["rule_files"] = [str(alerts) if path.endswith("/alerts.yml") else path for path in committed]
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def monitored(registered_model, logs_dir, tmp_path_factory):
    """(web service URL, Prometheus URL): gunicorn following the registered model's alias, scraped every second."""
    service, service_url, service_log = start_service(
        logs_dir,
        "predict-monitored",
        {"MODEL_URI": registered_model["uri"], "MLFLOW_TRACKING_URI": registered_model["tracking_uri"]},
    )
    folder = tmp_path_factory.mktemp("prometheus")
    port = local_stack.free_port()
    prometheus_url = f"http://{local_stack.HOST}:{port}"
    log = logs_dir / f"prometheus-{port}.log"
    command = [
        prometheus_tool("prometheus"),
        f"--config.file={scrape_config(folder, service_url.removeprefix('http://'))}",
        f"--web.listen-address={local_stack.HOST}:{port}",
        f"--storage.tsdb.path={folder / 'data'}",
    ]
    try:
        prometheus = local_stack.start(command, log, f"{prometheus_url}/-/ready", timeout=60)
    except BaseException:
        local_stack.stop(service)
        raise
    try:  # the first scrape must come before the first ride, or Prometheus sees no increase
        wait_for(lambda: query(prometheus_url, "ride_duration_predicted_minutes_count"), 30, "first scrape")
        yield service_url, prometheus_url
    finally:
        local_stack.stop(prometheus)
        local_stack.stop(service)
        print(local_stack.log_tail(log))
        print(local_stack.log_tail(service_log))


@pytest.fixture(scope="module")
def month_rides(training_months):
    """Rides of the model's validation month (real green 2021-02 in CI), the rides its reference was taken on,
    which the API accepts as they are and DISTANCE_FACTOR times as long (a few recorded distances are absurd)."""
    from ride_duration.data import read_month, training_rides

    taxi = training_months["taxi_type"]
    month = training_rides(read_month(taxi, *training_months["val"], synthetic=training_months["synthetic"]), taxi)
    month = month[month["trip_distance"] * DISTANCE_FACTOR <= MAX_TRIP_DISTANCE]
    month = month.dropna(subset=["PULocationID", "DOLocationID", "trip_distance"])
    month = month.sample(n=NORMAL_RIDES + SHIFTED_RIDES, random_state=7)
    return [
        validate_ride({"PULocationID": int(pu), "DOLocationID": int(do), "trip_distance": float(distance)})
        for pu, do, distance in zip(month["PULocationID"], month["DOLocationID"], month["trip_distance"])
    ]


def send(service_url: str, rides: list[dict]) -> None:
    """POST the rides RIDES_PER_REQUEST at a time; every request must be answered."""
    with requests.Session() as session:
        for start in range(0, len(rides), RIDES_PER_REQUEST):
            answer = session.post(f"{service_url}/predict", json=rides[start : start + RIDES_PER_REQUEST], timeout=30)
            assert answer.status_code == 200, answer.text


def query(prometheus_url: str, expr: str) -> list[dict]:
    answer = requests.get(f"{prometheus_url}/api/v1/query", params={"query": expr}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]["result"]


def alert_states(prometheus_url: str, name: str) -> set[str]:
    """The states ("pending", "firing") of alert `name` in Prometheus' alerts API; empty while inactive."""
    answer = requests.get(f"{prometheus_url}/api/v1/alerts", timeout=10)
    assert answer.status_code == 200, answer.text
    return {alert["state"] for alert in answer.json()["data"]["alerts"] if alert["labels"]["alertname"] == name}


def wait_for(condition, timeout: float, what: str, every: float = 0.5):
    """condition()'s first truthy answer within `timeout` seconds; fail naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = condition()
        if answer:
            return answer
        time.sleep(every)
    pytest.fail(f"no {what} within {timeout:.0f}s")


def finite_value(result: list[dict]) -> float | None:
    values = [float(sample["value"][1]) for sample in result]
    return next((value for value in values if math.isfinite(value)), None)


def test_prometheus_holds_the_served_models_reference_from_its_validation_month(
    monitored, registered_model, training_months
):
    """The model was logged with its predictions' shares on its validation month; the service exports them."""
    from ride_duration.data import read_month, training_rides
    from ride_duration.features import frame_features

    taxi = training_months["taxi_type"]
    month = training_rides(read_month(taxi, *training_months["val"], synthetic=training_months["synthetic"]), taxi)
    expected = reference_shares(registered_model["pipeline"].predict(frame_features(month)))
    result = wait_for(lambda: query(monitored[1], "ride_duration:reference_share:max"), 10, "reference shares")
    assert {sample["metric"]["le"]: float(sample["value"][1]) for sample in result} == pytest.approx(expected)


def test_rides_of_the_validation_month_leave_the_drift_alert_inactive(monitored, month_rides):
    service_url, prometheus_url = monitored
    send(service_url, month_rides[:NORMAL_RIDES])
    wait_for(
        lambda: finite_value(query(prometheus_url, "ride_duration:predictions:increase30m >= 1000")),
        30,
        "count of 1000 predictions in Prometheus",
    )
    gap = wait_for(
        lambda: finite_value(query(prometheus_url, "ride_duration:prediction_drift:max_share_gap30m")),
        10,
        "drift measure",
    )
    print(f"largest share gap on the validation month's rides: {gap:.3f}")
    assert gap < 0.05, f"largest share gap {gap:.3f} on the reference month's own rides"
    quiet_until = time.monotonic() + 8  # past the test's `for:` of 5 s, at an evaluation a second
    while time.monotonic() < quiet_until:
        assert not alert_states(prometheus_url, DRIFT_ALERT)
        time.sleep(0.5)


@pytest.fixture(scope="module")
def shifted_rides_sent(monitored, month_rides):
    """The rest of the month's rides, each DISTANCE_FACTOR times as long, sent once."""
    shifted = [
        {**ride, "trip_distance": ride["trip_distance"] * DISTANCE_FACTOR} for ride in month_rides[NORMAL_RIDES:]
    ]
    send(monitored[0], shifted)
    return time.monotonic()


def wait_for_drift_alert(prometheus_url: str, sent_at: float) -> None:
    left = ALERT_DEADLINE_SECONDS - (time.monotonic() - sent_at)
    wait_for(lambda: "firing" in alert_states(prometheus_url, DRIFT_ALERT), left, f"firing {DRIFT_ALERT}")


def test_longer_rides_fire_the_drift_alert(monitored, shifted_rides_sent):
    _, prometheus_url = monitored
    wait_for_drift_alert(prometheus_url, shifted_rides_sent)
    gap = finite_value(query(prometheus_url, "ride_duration:prediction_drift:max_share_gap30m"))
    print(f"largest share gap on rides {DISTANCE_FACTOR:g} times as long, once firing: {gap:.3f}")
    assert gap > 0.1


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every target of every panel of the dashboard."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel["targets"]]


def test_every_dashboard_panel_returns_data(monitored, shifted_rides_sent):
    _, prometheus_url = monitored
    wait_for_drift_alert(prometheus_url, shifted_rides_sent)  # so that the alerts panel has one to show
    empty = [
        f"{title}: {expr}" for title, expr in dashboard_queries() if finite_value(query(prometheus_url, expr)) is None
    ]
    assert not empty, "panels without data:\n" + "\n".join(empty)
