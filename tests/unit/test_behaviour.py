"""The behavioural tests of a model: each kind passes a sensible model and catches the flaw it is for."""

from __future__ import annotations

import numpy as np

from ride_duration.behaviour import NAMED_RIDES, ZONE_PAIRS, behaviour, describe, failures
from ride_duration.serving import serve
from tests.helpers import stand_in_model


def failed_kinds(served) -> set[str]:
    return {finding.kind for finding in failures(behaviour(served))}


def test_a_model_that_knows_longer_rides_take_longer_passes_every_test():
    findings = behaviour(serve(stand_in_model(slope=2.0)))
    assert not failures(findings), describe(findings)
    assert len(findings) == len(ZONE_PAIRS) + 1 + len(NAMED_RIDES)
    assert {f.kind for f in findings} == {"directional", "invariance", "minimum functionality"}


def test_a_model_that_ignores_distance_fails_on_the_long_named_ride():
    """The course's LinearRegression on raw rides: flat in distance, so never 'shorter', but 40 miles in minutes."""
    findings = behaviour(serve(stand_in_model(slope=0.0)))
    failed = failures(findings)
    assert [f.name for f in failed] == ["the course's example ride, 40 miles"]
    assert "expected 40 to 240" in failed[0].detail


def test_a_model_that_predicts_shorter_rides_for_longer_distances_fails_the_directional_test():
    served = serve(stand_in_model(slope=-0.1))
    directional = [f for f in behaviour(served) if f.kind == "directional"]
    assert directional and not any(f.passed for f in directional)
    assert "mi" in directional[0].detail and ">" in directional[0].detail


class BatchDependent:
    """A served model whose answer for a ride moves with the batch around it (e.g. normalising per batch)."""

    def __init__(self, served):
        self.served = served

    def predict_one(self, ride):
        return self.served.predict_one(ride)

    def predict_rides(self, rides):
        minutes = self.served.predict_rides(rides)
        return minutes + 0.01 * np.arange(len(rides))


def test_a_model_whose_answer_depends_on_the_batch_fails_the_invariance_test():
    assert failed_kinds(BatchDependent(serve(stand_in_model()))) == {"invariance"}


def test_the_findings_read_as_a_report():
    report = describe(behaviour(serve(stand_in_model(slope=0.0))))
    assert report.splitlines()[0].startswith("PASS directional: zones 74 to 75")
    assert "FAIL minimum functionality: the course's example ride, 40 miles" in report
