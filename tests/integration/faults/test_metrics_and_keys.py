"""The web service under real gunicorn: its metrics across a restart on a named PROMETHEUS_MULTIPROC_DIR,
keep-alive at gunicorn's drain limit, empty keys, what /health says without the key, and a key for /metrics."""

from __future__ import annotations

import http.client
import os
import subprocess
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from ride_duration import local_stack
from tests.helpers import WEB_SERVICE_COMMAND, move_alias, start_web_service

API_KEY = "predict-key"
METRICS_API_KEY = "scrape-token"


def served_models(metrics_text: str) -> dict[str, float]:
    """ride_duration_model_info by model URI."""
    return {
        sample.labels["model_uri"]: sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == "ride_duration_model_info"
    }


def test_a_restart_on_a_named_metrics_folder_reports_only_the_model_it_serves(registered_model, logs_dir, tmp_path):
    """The same folder across two runs serving the model by two URIs: the second run's /metrics names one model,
    and files in the folder that prometheus_client did not write are left alone."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "README").write_text("not a metrics file\n")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(folder), "MLFLOW_TRACKING_URI": registered_model["tracking_uri"]}
    for uri in (registered_model["uri"], registered_model["artifact_uri"]):
        process, url, log = start_web_service(logs_dir, "named-metrics", {**env, "MODEL_URI": uri})
        try:
            served = served_models(requests.get(f"{url}/metrics", timeout=10).text)
        finally:
            local_stack.stop(process)
    assert served == {registered_model["artifact_uri"]: 1.0}
    assert (folder / "README").read_text() == "not a metrics file\n"


def test_after_the_alias_moves_only_the_new_model_is_reported_as_served(two_versions, logs_dir):
    """Every worker swaps to version 2; ride_duration_model_info then says 1 for version 2 only (the master, which
    loaded version 1 before forking, must not keep naming it)."""
    settings, versions = two_versions
    move_alias(settings, versions[0]["number"])
    process, url, log = start_web_service(
        logs_dir,
        "model-info",
        {
            "MODEL_URI": "models:/ride-duration@production",
            "MLFLOW_TRACKING_URI": settings.tracking_uri,
            "MODEL_POLL_SECONDS": "1",
        },
    )
    try:
        move_alias(settings, versions[1]["number"])
        deadline = time.monotonic() + 20
        while True:
            text = requests.get(f"{url}/metrics", timeout=10).text
            served = {
                sample.labels["model_version"]
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == "ride_duration_model_info" and sample.value == 1
            }
            if served == {versions[1]["model_id"]} or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        local_stack.stop(process)
        move_alias(settings, versions[0]["number"])
    assert served == {versions[1]["model_id"]}, {"version 1": versions[0]["model_id"], "served": served}


@pytest.fixture(scope="module")
def keyed_service(registered_model, logs_dir):
    process, url, log = start_web_service(
        logs_dir,
        "keys",
        {"MODEL_URI": registered_model["artifact_uri"], "API_KEY": API_KEY, "METRICS_API_KEY": METRICS_API_KEY},
    )
    yield url
    local_stack.stop(process)
    print(local_stack.log_tail(log))


@pytest.mark.parametrize("size", [65_535, 65_536, 65_537])
def test_an_answer_that_says_keep_alive_keeps_the_connection(keyed_service, size):
    """A body the app refuses unread (415) is drained by gunicorn up to just under 64 KiB: below that, the
    connection serves the next request, sent as soon as the answer is read; from 64 KiB on, the answer says
    Connection: close (gunicorn would drop the connection after it). Ten connections each: the next request
    may arrive while gunicorn still drains, which lost it now and then (gunicorn.conf.py's worker mends it)."""
    host, port = keyed_service.removeprefix("http://").split(":")
    for _ in range(10):
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            headers = {"Content-Type": "text/plain", "X-API-Key": API_KEY}
            connection.request("POST", "/predict", body=b" " * size, headers=headers)
            refused = connection.getresponse()
            refused.read()
            assert refused.status == 415
            keep_alive = refused.getheader("Connection") == "keep-alive"
            assert keep_alive == (size < 65_536), refused.getheaders()
            if keep_alive:
                connection.request("GET", "/health")  # down the same connection
                assert connection.getresponse().status == 200
        finally:
            connection.close()


def test_health_without_the_key_says_only_that_the_service_is_ready(keyed_service, registered_model):
    for headers in ({}, {"X-API-Key": "guess"}):
        anonymous = requests.get(f"{keyed_service}/health", headers=headers, timeout=10)
        assert anonymous.status_code == 200
        assert anonymous.json() == {"status": "ready"}
    keyed = requests.get(f"{keyed_service}/health", headers={"X-API-Key": API_KEY}, timeout=10)
    assert keyed.status_code == 200
    assert keyed.json()["status"] == "ready"
    assert keyed.json()["model_uri"] == registered_model["artifact_uri"]
    assert keyed.json()["model_version"] == registered_model["model_id"]


def test_metrics_want_their_bearer_token(keyed_service, registered_model):
    refusals = {
        "no header": {},
        "wrong token": {"Authorization": "Bearer guess"},
        "the predict key": {"X-API-Key": API_KEY},
        "not a bearer token": {"Authorization": f"Basic {METRICS_API_KEY}"},
    }
    for case, headers in refusals.items():
        refused = requests.get(f"{keyed_service}/metrics", headers=headers, timeout=10)
        assert refused.status_code == 401, case
        assert refused.headers["WWW-Authenticate"].lower().startswith("bearer"), case
        assert "METRICS_API_KEY" in refused.json()["message"], case
        assert "ride_duration" not in refused.text, case
    scraped = requests.get(
        f"{keyed_service}/metrics", headers={"Authorization": f"Bearer {METRICS_API_KEY}"}, timeout=10
    )
    assert scraped.status_code == 200
    assert served_models(scraped.text) == {registered_model["artifact_uri"]: 1.0}


@pytest.mark.parametrize("name", ["API_KEY", "METRICS_API_KEY"])
def test_an_empty_key_stops_start_up_with_one_line(registered_model, name):
    env = {
        **os.environ,
        "MODEL_URI": registered_model["artifact_uri"],
        "BIND": f"{local_stack.HOST}:{local_stack.free_port()}",
        name: "",
    }
    run = subprocess.run(
        WEB_SERVICE_COMMAND, env=env, capture_output=True, text=True, timeout=120, start_new_session=True
    )
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert run.returncode != 0
    assert lines == [f"gunicorn.conf.py: {name} is set but empty: give the key, or unset it to ask for none"]
