# Exported from notebooks/03-web-service.ipynb by `make export`: edit the notebook, not this file.

import hmac
import json
import math
import sys
import threading
import time

from flask import Flask, Response, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    RequestEntityTooLarge,
    Unauthorized,
    UnprocessableEntity,
    UnsupportedMediaType,
)
from werkzeug.wsgi import get_content_length

from ride_duration.metrics import PREDICTED_MINUTES_BUCKETS, MetricBuffer, bucket_bounds, reference_of
from ride_duration.model import ModelLoadError
from ride_duration.rides import BadRide, read_json
from ride_duration.serving import POLL_OUTCOMES, ModelService, Poll, ServedModel
from ride_duration.settings import WEB_SERVICE, SettingError, Settings


JSON_TYPES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def parse_rides(body: bytes, max_rides: int) -> tuple[list[dict], bool]:
    """The validated rides in a request body, and whether it held one ride (not a list)."""
    try:
        payload = read_json(body)
    except (ValueError, RecursionError) as error:
        raise BadRequest(f"the body is not valid JSON: {error}") from None
    if isinstance(payload, dict):
        try:
            return [ModelService.validate(payload)], True
        except BadRide as error:
            raise UnprocessableEntity(str(error)) from None
    if not isinstance(payload, list):
        raise UnprocessableEntity(f"send a ride (a JSON object) or a list of rides, not {JSON_TYPES[type(payload)]}")
    if not payload:
        raise UnprocessableEntity("the list of rides is empty")
    if len(payload) > max_rides:
        raise RequestEntityTooLarge(f"{len(payload)} rides in one request; the limit is {max_rides}")
    rides = []
    for index, ride in enumerate(payload):
        try:
            rides.append(ModelService.validate(ride))
        except BadRide as error:
            raise UnprocessableEntity(f"ride {index}: {error}") from None
    return rides, False


REQUESTS = Counter("ride_duration_requests", "HTTP requests by endpoint and status", ["endpoint", "status"])
LATENCY = Histogram(
    "ride_duration_request_seconds",
    "Time to answer a request",
    ["endpoint"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
PREDICTED = Histogram(
    "ride_duration_predicted_minutes",
    "Predicted ride durations",
    buckets=PREDICTED_MINUTES_BUCKETS,
)
REFERENCE = Gauge(
    "ride_duration_reference_share",
    "Share of the served model's predictions on its validation month at or below le minutes",
    ["le"],
    multiprocess_mode="livemostrecent",
)
MODEL_INFO = Gauge(
    "ride_duration_model_info",
    "The model being served (value 1)",
    ["model_version", "registered_version", "model_uri"],
    multiprocess_mode="livemax",
)
POLLS = Counter("ride_duration_model_polls", "Checks of where the registry alias points, by outcome", ["outcome"])


class RequestMetrics:
    """Counts and times requests and their predictions, through a MetricBuffer; each labelled metric
    child is looked up once, not per request."""

    def __init__(self):
        self.buffer = MetricBuffer()
        self.lock = threading.Lock()
        self.counted = {}  # (endpoint, status code) -> the requests counter's child
        self.timed = {}  # endpoint -> the latency histogram's child
        self.shown = None  # the ServedModel ride_duration_model_info names

    def record(self, endpoint: str, status: int, seconds: float) -> None:
        counter = self.counted.get((endpoint, status))
        if counter is None:
            counter = self.counted[endpoint, status] = REQUESTS.labels(endpoint, str(status))
        latency = self.timed.get(endpoint)
        if latency is None:
            latency = self.timed[endpoint] = LATENCY.labels(endpoint)
        self.buffer.inc(counter)
        self.buffer.observe(latency, seconds)

    def predicted(self, durations: list[float]) -> None:
        self.buffer.observe_all(PREDICTED, durations)

    def count_polls(self) -> None:
        """Show every outcome of a check of the alias, at 0 until it happens (an alert on failures needs the series)."""
        for outcome in POLL_OUTCOMES:
            POLLS.labels(outcome)

    def polled(self, poll: Poll) -> None:
        POLLS.labels(poll.outcome).inc()  # a few a minute: written at once, not buffered

    def show_model(self, service: ModelService) -> None:
        """Name the model `service` serves now as the live one (1), and the one before it as no longer (0).

        Under a lock, and always the service's current model: a request that started on the model
        before a swap cannot name it live again. (In multiprocess mode a series cannot be removed,
        only set to 0.)
        """
        served = service.current
        if served is self.shown:
            return
        with self.lock:
            served = service.current
            if served is self.shown:
                return
            if self.shown is not None:
                MODEL_INFO.labels(*model_labels(self.shown)).set(0)
            MODEL_INFO.labels(*model_labels(served)).set(1)
            show_reference(served)
            self.shown = served


def show_reference(served: ServedModel) -> None:
    """Export the reference the served model was logged with, NaN for a model logged without one."""
    reference = reference_of(served.model.info) or {}
    for le in bucket_bounds():
        REFERENCE.labels(le).set(reference.get(le, math.nan))


def model_labels(served: ServedModel) -> tuple[str, str, str]:
    return served.version, served.registered_version or "", served.uri


def metrics_text(settings: Settings) -> bytes:
    """Every metric in Prometheus text format, summed over gunicorn's workers when there are several."""
    if settings.prometheus_multiproc_dir:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=settings.prometheus_multiproc_dir)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def json_response(payload, status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, content_type="application/json")


def add_error_handlers(app: Flask) -> None:
    """Answer every error as JSON {"error": ..., "message": ...}."""

    @app.errorhandler(HTTPException)
    def http_error(error):
        response = error.get_response()
        response.data = json.dumps({"error": error.name, "message": error.description})
        response.content_type = "application/json"
        return response

    @app.errorhandler(Exception)
    def unexpected_error(error):
        app.logger.exception("unexpected error on %s", request.path)
        return json_response(
            {"error": "Internal Server Error", "message": "unexpected error; see the service log"}, 500
        )


def read_body(req, max_body_bytes: int) -> bytes:
    """The whole request body; 413 when it is larger than max_body_bytes, declared or chunked."""
    length = get_content_length(req.environ)  # the same answer as req.content_length, without building headers
    try:
        if length is not None:
            if length > max_body_bytes:
                raise RequestEntityTooLarge()
            return req.environ["wsgi.input"].read(length)  # the declared length, without Werkzeug's stream wrapper
        body = req.get_data(cache=False)
        if len(body) >= max_body_bytes:
            req.stream.read(1)  # a chunked body stops at the limit; reading on raises 413
        return body
    except RequestEntityTooLarge:
        raise RequestEntityTooLarge(f"the body is larger than the limit of {max_body_bytes} bytes") from None


def has_key(presented: str, expected: bytes | None) -> bool:
    """True when no key is expected, or `presented` is it (compared in constant time)."""
    return expected is None or hmac.compare_digest(presented.encode("latin-1"), expected)


def bearer_token(environ: dict) -> str:
    """The token of an `Authorization: Bearer <token>` header, else ""."""
    scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def add_routes(app: "MeteredFlask", settings: Settings, service: ModelService, metrics: RequestMetrics) -> None:
    """/predict, /health and /metrics for the model `service` serves."""
    expected_key = settings.api_key.encode() if settings.api_key else None
    metrics_key = settings.metrics_api_key.encode() if settings.metrics_api_key else None
    max_body_bytes, max_rides = settings.max_body_bytes, settings.max_rides

    @app.post("/predict")
    def predict():
        req = request._get_current_object()  # the request itself: each use of the proxy costs a look-up
        environ = req.environ
        if not has_key(environ.get("HTTP_X_API_KEY", ""), expected_key):
            raise Unauthorized("missing or wrong X-API-Key header")
        if environ.get("CONTENT_TYPE") != "application/json" and not req.is_json:  # the common case first
            raise UnsupportedMediaType("send JSON with the header Content-Type: application/json")
        rides, single = parse_rides(read_body(req, max_body_bytes), max_rides)
        served = service.current
        metrics.show_model(service)
        about = {"model_version": served.version, "registered_version": served.registered_version}
        if single:
            duration = served.predict_one(rides[0])
            metrics.predicted([duration])
            return json_response({"duration": duration, **about})
        durations = served.predict_rides(rides).tolist()
        metrics.predicted(durations)
        return json_response([{"duration": duration, **about} for duration in durations])

    @app.get("/health")
    def health():
        if not has_key(request.environ.get("HTTP_X_API_KEY", ""), expected_key):
            return json_response({"status": "ready"})
        served = service.current
        return json_response(
            {
                "status": "ready",
                "model_uri": served.uri,
                "model_version": served.version,
                "registered_version": served.registered_version,
                "loaded_at": served.loaded_at,
                "follows": {"alias": "@".join(service.alias), "poll_seconds": service.poll_seconds}
                if app.following
                else None,
                "last_poll": service.last_poll.as_dict() if service.last_poll else None,
                "failed_polls": service.failed_polls,
            }
        )

    @app.get("/metrics")
    def metrics_page():
        if not has_key(bearer_token(request.environ), metrics_key):
            raise Unauthorized(
                "missing or wrong METRICS_API_KEY: send Authorization: Bearer <key>",
                www_authenticate=WWWAuthenticate("Bearer"),
            )
        metrics.show_model(service)
        metrics.buffer.flush()  # this worker's updates of the last second; the others' are at most that old
        return Response(metrics_text(settings), content_type=CONTENT_TYPE_LATEST)


class MeteredFlask(Flask):
    """Flask that counts and times every request it dispatches, errors included.

    One override instead of a before_request and an after_request hook: the same span (routing,
    the view or its error handler, the response), without two hook calls and a stored start time
    per request.
    """

    def __init__(self, *args, service: ModelService, **kwargs):
        super().__init__(*args, **kwargs)
        self.service = service
        self.metrics = RequestMetrics()
        self.following = False

    def follow_model(self, first_check_seconds: float = 10.0) -> bool:
        """Check where the registry alias points every MODEL_POLL_SECONDS, from a thread of this process, and
        serve the version it moves to; False, and no thread, for a URI that names one model for good.

        gunicorn.conf.py calls it in each worker once forked: the master loads the model but never polls,
        and a thread started before the fork would not run in the workers. The first check is made at once
        and waited for (up to first_check_seconds, well within gunicorn's worker timeout): a worker forked
        by a reload (SIGHUP) starts from the model the master loaded at start-up, which the alias may have
        left since, and must not answer with it again.
        """
        if not self.service.follows:
            return False
        self.metrics.count_polls()
        first_check = threading.Event()

        def polled(poll: Poll) -> None:
            self.polled(poll)
            first_check.set()

        self.following = self.service.follow(on_poll=polled, at_once=True)
        first_check.wait(first_check_seconds)
        return self.following

    def check_model(self) -> Poll:
        """One check of the alias now, counted like the thread's (a demo, a test, an operator in a hurry)."""
        poll = self.service.check()
        self.polled(poll)
        return poll

    def polled(self, poll: Poll) -> None:
        self.metrics.polled(poll)
        self.metrics.show_model(self.service)  # ride_duration_model_info names the new version before a request does

    def full_dispatch_request(self):
        started = time.perf_counter()
        response = super().full_dispatch_request()
        self.metrics.record(request.endpoint or "unknown", response.status_code, time.perf_counter() - started)
        return response


def create_app(settings: Settings | None = None, service: ModelService | None = None) -> MeteredFlask:
    """The prediction service: `service`'s model behind HTTP, limited and keyed by `settings`."""
    settings = Settings.from_environ(groups=WEB_SERVICE) if settings is None else settings
    service = ModelService.from_settings(settings) if service is None else service
    app = MeteredFlask(__name__, service=service)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.metrics.show_model(service)
    add_error_handlers(app)
    add_routes(app, settings, service, app.metrics)
    return app


def app_from_environment() -> MeteredFlask:
    """create_app() for gunicorn and `python predict.py`: a bad setting or model ends start-up with one line."""
    try:
        return create_app()
    except (ModelLoadError, SettingError) as error:
        sys.exit(f"predict.py: {' '.join(str(error).split())}")

def __getattr__(name: str):
    """`predict.app`, built from the environment the first time it is asked for (by gunicorn)."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()["app"] = built = app_from_environment()
    return built


if __name__ == "__main__":
    app = app_from_environment()
    app.follow_model()
    app.run(host="127.0.0.1", port=Settings.from_environ().port)
