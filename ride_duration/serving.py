"""The serving core: the one object every deployment predicts through.

The web service (HTTP requests), the Lambda handler (Kinesis records) and batch scoring (Arrow batches) are
thin adapters around a `ModelService`. It loads the model from a URI (at once, or lazily on first use where a
cold start matters), builds the fast path and checks it against the pipeline, knows the version it serves,
and swaps in a new model atomically: a caller takes `service.current` once and predicts a whole request
or batch with that `ServedModel`, so work in flight finishes on the model it started with.

A service started with a registry alias (`models:/ride-duration@production`) follows it: `check()` asks where
the alias points, and loads, checks and swaps in the version it moved to; the web service calls it from a
thread (`follow`), the Lambda handler between batches (`check_if_due`). A failed check keeps the current model
and says why in `last_poll`. Any other URI names one model for good, and is never checked.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from ride_duration.features import FastPredictor, ride_features
from ride_duration.model import LoadedModel, ModelLoadError, alias_of, load_model, resolve_alias
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


POLL_OUTCOMES = ("unchanged", "swapped", "failed")


def one_line(error: Exception) -> str:
    """An error as "Type: message" on one line, whatever the library's message looked like."""
    return " ".join(f"{type(error).__name__}: {error}".split())


@dataclass(frozen=True)
class Poll:
    """The outcome of one check of the alias: "unchanged", "swapped" or "failed", with a sentence saying more."""

    at: float  # seconds since the epoch, when the check started
    outcome: str
    message: str

    def as_dict(self) -> dict:
        return asdict(self)


class ModelService:
    """The served model of one deployment, loaded from a URI, swappable while it serves.

    lazy: load on first use of `current` (the Lambda handler: a container that only rejects records
    never loads a model). without_sklearn: see ride_duration.model.load_model. loader and resolver
    replace load_model and resolve_alias (tests serve stand-in models from a stand-in registry).
    """

    def __init__(
        self,
        uri: str,
        *,
        lazy: bool = False,
        without_sklearn: bool = False,
        settings: Settings | None = None,
        loader: Callable[[str], LoadedModel] | None = None,
        resolver: Callable[[str], str] | None = None,
    ):
        if not uri:
            raise ModelLoadError("no model URI given (set MODEL_URI)")
        self.uri = uri
        self.alias = alias_of(uri)  # (name, alias), or None for a URI that never moves
        self.without_sklearn = without_sklearn
        self.settings = settings
        self.poll_seconds = (settings or Settings.from_environ(groups=("model",))).model_poll_seconds
        self._loader = loader or (lambda uri: load_model(uri, without_sklearn=without_sklearn, settings=settings))
        self._resolver = resolver or (lambda uri: resolve_alias(uri, settings))
        self.last_poll: Poll | None = None
        self.failed_polls = 0
        self._checked_at = time.monotonic()
        self._current: ServedModel | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None
        if not lazy:
            self.load()

    @classmethod
    def from_settings(cls, settings: Settings, **options) -> ModelService:
        """The service for settings.model_uri (MODEL_URI)."""
        return cls(settings.model_uri, settings=settings, **options)

    @classmethod
    def for_model(cls, model: LoadedModel) -> ModelService:
        """A service for a model already in memory (a backfill loads once; tests pass stand-in models)."""
        service = cls(model.uri or "memory", lazy=True, loader=lambda uri: model, resolver=lambda uri: "")
        service.alias = None  # this one model, whatever URI it came from
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

    @property
    def follows(self) -> bool:
        """True if the URI is a registry alias, which can move to another version while the service runs."""
        return self.alias is not None

    def load(self) -> ServedModel:
        """Load the model at the service's URI again (for an alias: the version it points at now) and swap it in."""
        return self.swap(self._fetch())

    def swap(self, model: LoadedModel | ServedModel) -> ServedModel:
        """Serve this model from now on; it is checked first, and a model that fails leaves the current one."""
        served = model if isinstance(model, ServedModel) else serve(model)
        with self._lock:
            self._current = served
        return served

    def _fetch(self, registered_version: str | None = None) -> ServedModel:
        """The model the URI names, loaded and checked. For an alias, the version is asked first and loaded
        by its number, so that the version recorded is the one loaded even if the alias moves meanwhile."""
        self._checked_at = time.monotonic()
        if not self.alias:
            return serve(self._loader(self.uri))
        try:
            registered_version = registered_version or self._resolver(self.uri)
        except Exception as error:  # start-up's one-line reason: the registry's answer, or why it gave none
            raise ModelLoadError(f"cannot load model {self.uri}: {one_line(error)}") from error
        name, _, number = registered_version.rpartition("/")
        model = self._loader(f"models:/{name}/{number}")
        model.uri, model.registered_version = self.uri, registered_version
        return serve(model)

    def check(self) -> Poll:
        """Ask where the alias points; if it moved, load that version off the request path, check it and swap
        it in. Never raises: when the registry cannot be asked or the new version fails its check, the
        current model keeps serving, and `last_poll` and `failed_polls` say so."""
        started = time.time()
        self._checked_at = time.monotonic()
        serving = self._current.registered_version if self._current else None
        try:
            target = self._resolver(self.uri)
            if self._current is not None and target == serving:
                poll = Poll(started, "unchanged", f"@{self.alias[1]} still points at {target}")
            else:
                self.swap(self._fetch(target))
                poll = Poll(started, "swapped", f"@{self.alias[1]} moved to {target}: serving it (was {serving})")
        except Exception as error:
            self.failed_polls += 1
            poll = Poll(started, "failed", f"kept {serving}: {one_line(error)}")
        self.last_poll = poll
        return poll

    def check_if_due(self) -> Poll | None:
        """check() if the service follows an alias, has a model, and checked last at least poll_seconds ago:
        at most one check per interval, and none before the first model is loaded (a cold start costs no more)."""
        if self.alias and self._current is not None and time.monotonic() - self._checked_at >= self.poll_seconds:
            return self.check()
        return None

    def follow(self, on_poll: Callable[[Poll], None] | None = None, *, at_once: bool = False) -> bool:
        """Check the alias every poll_seconds from a daemon thread, calling on_poll with each outcome.

        Start it in the process that serves (each gunicorn worker: threads do not survive a fork); a second
        call while the thread runs does nothing. False, and no thread, for a URI that never moves.
        at_once: check first at once (a worker forked from a model loaded long ago, by gunicorn's reload).
        """
        if not self.alias:
            return False
        if self._follower is not None and self._follower.is_alive():
            return True
        self._stop.clear()

        def run():
            wait = 0 if at_once else self.poll_seconds
            while not self._stop.wait(wait):
                poll = self.check()
                if on_poll is not None:
                    on_poll(poll)
                wait = self.poll_seconds

        self._follower = threading.Thread(target=run, name="model-poll", daemon=True)
        self._follower.start()
        return True

    def stop_following(self, timeout: float = 30.0) -> None:
        """Stop the thread follow() started, waiting for a check in progress (at most `timeout` seconds)."""
        self._stop.set()
        if self._follower is not None:
            self._follower.join(timeout)

    validate = staticmethod(validate_ride)  # the one check of a ride, raising BadRide saying what is wrong
