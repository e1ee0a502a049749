"""Behavioural tests of a model, in Made-With-ML's three kinds, run by the promotion gate before any RMSE.

An RMSE says how wrong a model is on average; it does not say whether the model has learnt what everybody
knows about taxi rides. The course's LinearRegression, trained on rides that claim up to 244,152 miles,
predicts 25.8 minutes for its own example ride whether it is 2.5 or 40 miles long, with a respectable RMSE.
These checks catch that:

- directional: for the same zones, a longer distance never predicts a shorter ride;
- invariance: a ride's prediction does not depend on the other rides of its batch, nor on their order;
- minimum functionality: named rides get durations anyone who has taken a taxi would accept.

Each check takes a ServedModel, the object every deployment predicts through, so what is checked is what
would be served.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ride_duration.rides import EXAMPLE_RIDE

DISTANCES = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0)  # miles, for the directional check
# Zone pairs of green-taxi country (East Harlem, Harlem, Astoria to LaGuardia, Jamaica to Saint Albans,
# Central Harlem North), the course's example pair, and a pair no month has: the model's fallback.
# A drop of less than a second is noise of the fit, not behaviour: least squares on durations that do not
# depend on distance gives a coefficient of a few millionths of a minute per mile, of either sign.
NOISE_MINUTES = 0.01
ZONE_PAIRS = ((74, 75), (41, 42), (7, 138), (130, 205), (43, 151), (10, 50), (300, 299))


@dataclass(frozen=True)
class NamedRide:
    """A ride whose duration must lie in [low, high] minutes."""

    name: str
    ride: dict
    low: float
    high: float


NAMED_RIDES = (
    NamedRide("a mile through East Harlem", {"PULocationID": 74, "DOLocationID": 75, "trip_distance": 1.0}, 2, 20),
    NamedRide("two miles in Harlem", {"PULocationID": 41, "DOLocationID": 42, "trip_distance": 2.0}, 4, 30),
    NamedRide("Jamaica to Saint Albans", {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}, 5, 40),
    NamedRide("the course's example ride, 40 miles", EXAMPLE_RIDE, 40, 240),
)


@dataclass(frozen=True)
class Finding:
    """One behavioural test's verdict, with the numbers behind it."""

    kind: str  # "directional", "invariance" or "minimum functionality"
    name: str
    passed: bool
    detail: str


def longer_is_never_shorter(served) -> list[Finding]:
    """For each zone pair, predictions over DISTANCES never go down."""
    findings = []
    for pu, do in ZONE_PAIRS:
        rides = [{"PULocationID": pu, "DOLocationID": do, "trip_distance": d} for d in DISTANCES]
        minutes = served.predict_rides(rides)
        drops = [
            f"{DISTANCES[i]:g} mi {minutes[i]:.2f} min > {DISTANCES[i + 1]:g} mi {minutes[i + 1]:.2f} min"
            for i in range(len(DISTANCES) - 1)
            if minutes[i + 1] < minutes[i] - NOISE_MINUTES
        ]
        detail = "; ".join(drops) if drops else " ≤ ".join(f"{m:.1f}" for m in minutes) + " min"
        findings.append(
            Finding("directional", f"zones {pu} to {do}, {DISTANCES[0]:g} to {DISTANCES[-1]:g} mi", not drops, detail)
        )
    return findings


def batch_does_not_matter(served) -> list[Finding]:
    """Each named ride predicts the same alone, in a batch of all of them, and in that batch reversed."""
    rides = [named.ride for named in NAMED_RIDES]
    alone = np.array([served.predict_one(ride) for ride in rides])
    together = served.predict_rides(rides)
    reversed_ = served.predict_rides(rides[::-1])[::-1]
    worst = float(max(np.max(np.abs(alone - together)), np.max(np.abs(alone - reversed_))))
    passed = worst <= 1e-9
    return [Finding("invariance", "alone, in a batch, in another order", passed, f"largest difference {worst:.3g} min")]


def named_rides_make_sense(served) -> list[Finding]:
    """Each of NAMED_RIDES lies in its range."""
    findings = []
    for named in NAMED_RIDES:
        minutes = served.predict_one(named.ride)
        passed = named.low <= minutes <= named.high
        findings.append(
            Finding(
                "minimum functionality",
                named.name,
                passed,
                f"{minutes:.1f} min (expected {named.low:g} to {named.high:g})",
            )
        )
    return findings


def behaviour(served) -> list[Finding]:
    """Every behavioural test of the model, in order: directional, invariance, minimum functionality."""
    return longer_is_never_shorter(served) + batch_does_not_matter(served) + named_rides_make_sense(served)


def failures(findings: list[Finding]) -> list[Finding]:
    return [finding for finding in findings if not finding.passed]


def describe(findings: list[Finding]) -> str:
    """The findings as lines such as "PASS directional zones 74 to 75, ...: 3.1 ≤ 4.0 ... min"."""
    return "\n".join(f"{'PASS' if f.passed else 'FAIL'} {f.kind}: {f.name}: {f.detail}" for f in findings)
