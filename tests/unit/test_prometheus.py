"""The pieces of online monitoring that need no server: a model's reference distribution of predictions, its
export by the web service (in-process, a stand-in model) and the monitoring files agreeing with each other.
A real Prometheus runs them in tests/integration/test_prometheus.py."""

from __future__ import annotations

import dataclasses
import json
import math
import sys

import pytest
import yaml
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ride_duration.metrics import PREDICTED_MINUTES_BUCKETS, REFERENCE_KEY, reference_of, reference_shares
from ride_duration.serving import ModelService
from ride_duration.settings import Settings
from tests.helpers import ROOT, stand_in_model

sys.path.insert(0, str(ROOT / "web-service"))
import predict  # web-service/ is not a package; importing predict builds no app

MONITORING = ROOT / "web-service" / "monitoring"
GRAFANA = MONITORING / "grafana"


def samples(text: str, name: str) -> dict[str, float]:
    """{le: value} of the samples called `name` in Prometheus text."""
    return {
        sample.labels["le"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def test_reference_shares_are_the_histograms_cumulative_shares_under_its_own_le_labels():
    predictions = [0.5, 3.0, 3.0, 12.0, 50.0, 200.0, math.nan]
    registry = CollectorRegistry()
    histogram = Histogram("predicted", "", buckets=PREDICTED_MINUTES_BUCKETS, registry=registry)
    for value in predictions:
        histogram.observe(value)
    buckets = samples(generate_latest(registry).decode(), "predicted_bucket")
    shares = reference_shares(predictions)
    assert list(shares) == list(buckets)
    assert shares == {le: count / 6 for le, count in buckets.items()}  # NaN counts nowhere, as in observe
    assert shares["+Inf"] == 1.0


def test_no_predictions_make_no_reference():
    with pytest.raises(ValueError, match="no predictions"):
        reference_shares([math.nan])


def exported_reference(client) -> dict[str, float]:
    return samples(client.get("/metrics").get_data(as_text=True), "ride_duration_reference_share")


def test_the_service_exports_the_served_models_reference_and_follows_it_on_a_swap():
    shares = reference_shares([3.0, 12.0, 12.0, 40.0])
    logged = dataclasses.replace(stand_in_model("m-with-reference"), info={"metadata": {REFERENCE_KEY: shares}})
    assert reference_of(logged.info) == shares
    service = ModelService.for_model(logged)
    client = predict.create_app(Settings(), service).test_client()
    assert exported_reference(client) == shares
    service.swap(stand_in_model("m-without-reference"))
    exported = exported_reference(client)  # a scrape names the model served now, as a request does
    client.application.metrics.buffer.flush()  # this app's counts, not left for another test's scrapes
    assert list(exported) == list(shares) and all(math.isnan(value) for value in exported.values())


def test_prometheus_config_scrapes_the_service_port_with_the_committed_rules():
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["static_configs"] == [{"targets": ["127.0.0.1:9696"]}]
    assert sorted(config["rule_files"]) == sorted(
        str(path.relative_to(MONITORING)) for path in MONITORING.glob("rules/*.yml")
    )


def test_the_dashboard_uses_the_provisioned_data_source_and_every_panel_has_a_query():
    (source,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "ride-duration.yml").read_text())[
        "providers"
    ]
    assert source["type"] == "prometheus" and provider["type"] == "file"
    dashboard = json.loads((GRAFANA / "dashboards" / "ride-duration.json").read_text())
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
        assert panel["targets"] and all(target["expr"].strip() for target in panel["targets"]), panel["title"]
