"""One suite for the serving core: every adapter gives the same rides the same numbers and the same version.

Run with stand-in models: a linear one (the fast path), one whose distance is capped first (ClipDistance) and a
tree ensemble (the sparse matrix, through the forest's own predict);
tests/integration/test_parity.py runs the same adapters with the registered model.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import RandomForestRegressor

from ride_duration.features import ride_features
from ride_duration.rides import EXAMPLE_RIDE
from ride_duration.serving import ModelService
from tests.adapters import ADAPTERS
from tests.helpers import stand_in_model

TOLERANCE = 1e-9

# Seen and unseen zone pairs, the "unknown" zones, no distance, the cap exactly, the longest ride accepted.
RIDES = [
    EXAMPLE_RIDE,
    {"PULocationID": 3, "DOLocationID": 7, "trip_distance": 2.5},
    {"PULocationID": 1, "DOLocationID": 1, "trip_distance": 3.0},
    {"PULocationID": 264, "DOLocationID": 265, "trip_distance": 1.2},
    {"PULocationID": 12, "DOLocationID": 4, "trip_distance": 0.0},
    {"PULocationID": 5, "DOLocationID": 9, "trip_distance": 10.0},
    {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 1000.0},
]

MODELS = {
    "linear": lambda: stand_in_model("m-linear"),
    "linear, distance capped": lambda: stand_in_model("m-capped", max_miles=10.0),
    "tree ensemble": lambda: stand_in_model(
        "m-forest", regressor=RandomForestRegressor(n_estimators=10, max_depth=6, random_state=1)
    ),
}


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_every_adapter_answers_each_ride_as_the_pipeline_does(adapter, kind):
    model = MODELS[kind]()
    expected = model.pipeline.predict([ride_features(ride) for ride in RIDES])
    answers = ADAPTERS[adapter](ModelService.for_model(model), RIDES)
    durations = np.array([duration for duration, _ in answers])
    assert durations.shape == expected.shape
    assert np.max(np.abs(durations - expected)) <= TOLERANCE
    assert {version for _, version in answers} == {model.version}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_every_adapter_serves_the_model_swapped_in(adapter):
    service = ModelService.for_model(stand_in_model("m-before", slope=1.0))
    service.swap(stand_in_model("m-after", slope=3.0))
    assert {version for _, version in ADAPTERS[adapter](service, RIDES)} == {"m-after"}
