"""The serving core: the one object every deployment predicts through.

The web service (HTTP requests), the Lambda handler (Kinesis records) and batch scoring (Arrow batches) are
thin adapters around a `ModelService`. It loads the model from a URI (at once, or lazily on first use where a
cold start matters), builds the fast path and checks it against the pipeline, knows the version it serves,
and swaps in a new model atomically: a caller takes `service.current` once and predicts a whole request
or batch with that `ServedModel`, so work in flight finishes on the model it started with.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ride_duration.features import FastPredictor, ride_features
from ride_duration.model import LoadedModel, ModelLoadError, load_model
from ride_duration.rides import EXAMPLE_RIDE, validate_ride
from ride_duration.settings import Settings

SELF_CHECK_TOLERANCE = 1e-9  # minutes; the fast path does the pipeline's sums in the same order


@dataclass(frozen=True)
class ServedModel:
    """One loaded model whose fast path passed its check: what one request or batch is predicted with."""

    model: LoadedModel
    predictor: FastPredictor
    loaded_at: float = field(default_factory=time.time)  # seconds since the epoch

    @property
    def version(self) -> str:
        """The logged model's id ("m-..."): the version every prediction carries."""
        return self.model.version

    @property
    def registered_version(self) -> str | None:
        return self.model.registered_version

    @property
    def uri(self) -> str:
        return self.model.uri

    def predict_one(self, ride: dict) -> float:
        """The duration of one validated ride, in minutes."""
        return self.predictor.predict_one(ride)

    def predict_rides(self, rides: list[dict]) -> np.ndarray:
        """The durations of validated rides, in order."""
        return self.predictor.predict_rides(rides)

    def predict_columns(self, columns) -> np.ndarray:
        """The durations of rides given as columns (a DataFrame, an Arrow-backed dict of numpy arrays)."""
        return self.predictor.predict_columns(columns)


def serve(model: LoadedModel) -> ServedModel:
    """The model with its fast path, checked on the example ride; ModelLoadError if the check fails.

    The fast path must agree with itself (one ride, a batch) and, where the pipeline is a real scikit-learn
    object, with pipeline.predict; a model that predicts nothing finite is refused too.
    """
    predictor = FastPredictor(model.pipeline)
    one = predictor.predict_one(EXAMPLE_RIDE)
    batch = float(predictor.predict_rides([EXAMPLE_RIDE])[0])
    reference = float(model.pipeline.predict([ride_features(EXAMPLE_RIDE)])[0]) if has_predict(model) else batch
    if not math.isfinite(one):
        raise ModelLoadError(f"model {model.uri} predicts {one} minutes for the example ride")
    if abs(one - reference) > SELF_CHECK_TOLERANCE or abs(batch - reference) > SELF_CHECK_TOLERANCE:
        raise ModelLoadError(
            f"the fast path disagrees with the pipeline of {model.uri} on the example ride: "
            f"{one} (one ride), {batch} (a batch), {reference} (pipeline.predict)"
        )
    return ServedModel(model, predictor)


def has_predict(model: LoadedModel) -> bool:
    """False for a pipeline loaded as fitted attributes only (load_model's without_sklearn)."""
    return callable(getattr(model.pipeline, "predict", None))


class ModelService:
    """The served model of one deployment, loaded from a URI, swappable while it serves.

    lazy: load on first use of `current` (the Lambda handler: a container that only rejects records
    never loads a model). without_sklearn: see ride_duration.model.load_model.
    """

    def __init__(
        self, uri: str, *, lazy: bool = False, without_sklearn: bool = False, settings: Settings | None = None
    ):
        if not uri:
            raise ModelLoadError("no model URI given (set MODEL_URI)")
        self.uri = uri
        self.without_sklearn = without_sklearn
        self.settings = settings
        self._current: ServedModel | None = None
        self._lock = threading.Lock()
        if not lazy:
            self.load()

    @classmethod
    def from_settings(cls, settings: Settings, **options) -> ModelService:
        """The service for settings.model_uri (MODEL_URI)."""
        return cls(settings.model_uri, settings=settings, **options)

    @classmethod
    def for_model(cls, model: LoadedModel) -> ModelService:
        """A service for a model already in memory (a backfill loads once; tests pass stand-in models)."""
        service = cls(model.uri or "memory", lazy=True)
        service.swap(model)
        return service

    @property
    def current(self) -> ServedModel:
        """The model serving now; take it once per request or batch."""
        served = self._current
        if served is None:
            with self._lock:
                if self._current is None:
                    self._current = self._fetch()
                served = self._current
        return served

    @property
    def loaded(self) -> bool:
        return self._current is not None

    def load(self) -> ServedModel:
        """Load the model at the service's URI again (e.g. after its alias moved) and swap it in."""
        return self.swap(self._fetch())

    def swap(self, model: LoadedModel | ServedModel) -> ServedModel:
        """Serve this model from now on; it is checked first, and a model that fails leaves the current one."""
        served = model if isinstance(model, ServedModel) else serve(model)
        with self._lock:
            self._current = served
        return served

    def _fetch(self) -> ServedModel:
        return serve(load_model(self.uri, without_sklearn=self.without_sklearn, settings=self.settings))

    validate = staticmethod(validate_ride)  # the one check of a ride, raising BadRide saying what is wrong
