# Exported from notebooks/03-web-service.ipynb by `make export`: edit the notebook, not this file.

import hmac
import json
import os
import sys
import time

from flask import Flask, Response, g, request
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
from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    RequestEntityTooLarge,
    Unauthorized,
    UnprocessableEntity,
    UnsupportedMediaType,
)

from ride_duration.features import FastPredictor, ride_features

from ride_duration.rides import BadRide, validate_ride
from ride_duration.model import LoadedModel, ModelLoadError, load_model


DEFAULT_MODEL_URI = "models:/ride-duration@production"
DEFAULT_MAX_BODY_BYTES = 256 * 1024  # room for a list of 1,000 rides
DEFAULT_MAX_RIDES = 1000


def settings_from_env(environ=os.environ) -> dict:
    """create_app's keyword arguments from MAX_BODY_BYTES, MAX_RIDES and API_KEY."""
    settings = {"api_key": environ.get("API_KEY") or None}
    for name, default in (("MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES), ("MAX_RIDES", DEFAULT_MAX_RIDES)):
        text = environ.get(name, str(default))
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"{name} must be a positive integer, got {text!r}")
        settings[name.lower()] = int(text)
    return settings


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
        payload = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise BadRequest(f"the body is not valid JSON: {error}") from None
    if isinstance(payload, dict):
        try:
            return [validate_ride(payload)], True
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
            rides.append(validate_ride(ride))
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
    buckets=(1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120),
)
MODEL_INFO = Gauge(
    "ride_duration_model_info",
    "The model being served (value 1)",
    ["model_version", "registered_version", "model_uri"],
    multiprocess_mode="livemax",
)


def metrics_text() -> bytes:
    """Every metric in Prometheus text format, summed over gunicorn's workers when there are several."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


EXAMPLE_RIDE = {"PULocationID": 10, "DOLocationID": 50, "trip_distance": 40.0}


def json_response(payload, status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, mimetype="application/json")


def create_app(
    model: LoadedModel,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_rides: int = DEFAULT_MAX_RIDES,
    api_key: str | None = None,
) -> Flask:
    """The prediction service for one loaded model."""
    predictor = FastPredictor(model.pipeline)
    fast = predictor.predict_one(
        EXAMPLE_RIDE["PULocationID"], EXAMPLE_RIDE["DOLocationID"], EXAMPLE_RIDE["trip_distance"]
    )
    reference = float(model.pipeline.predict([ride_features(EXAMPLE_RIDE)])[0])
    if abs(fast - reference) > 1e-9:
        raise ModelLoadError(f"fast path disagrees with the pipeline on the example ride: {fast} != {reference}")
    about = {"model_version": model.version, "registered_version": model.registered_version}
    MODEL_INFO.labels(model.version, model.registered_version or "", model.uri).set(1)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    expected_key = api_key.encode() if api_key else None

    @app.before_request
    def start_timer():
        g.started = time.perf_counter()

    @app.after_request
    def record(response):
        endpoint = request.endpoint or "unknown"
        REQUESTS.labels(endpoint, str(response.status_code)).inc()
        LATENCY.labels(endpoint).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        return response

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

    @app.post("/predict")
    def predict():
        if expected_key and not hmac.compare_digest(
            request.headers.get("X-API-Key", "").encode("latin-1"), expected_key
        ):
            raise Unauthorized("missing or wrong X-API-Key header")
        if not request.is_json:
            raise UnsupportedMediaType("send JSON with the header Content-Type: application/json")
        try:
            body = request.get_data(cache=False)
            if request.content_length is None and len(body) >= max_body_bytes:
                request.stream.read(1)  # a chunked body stops at the limit; reading on raises 413
        except RequestEntityTooLarge:
            raise RequestEntityTooLarge(f"the body is larger than the limit of {max_body_bytes} bytes") from None
        rides, single = parse_rides(body, max_rides)
        if single:
            ride = rides[0]
            duration = predictor.predict_one(ride["PULocationID"], ride["DOLocationID"], ride["trip_distance"])
            PREDICTED.observe(duration)
            return json_response({"duration": duration, **about})
        durations = predictor.predict_rides(rides).tolist()
        for duration in durations:
            PREDICTED.observe(duration)
        return json_response([{"duration": duration, **about} for duration in durations])

    @app.get("/health")
    def health():
        return json_response({"status": "ready", "model_uri": model.uri, **about})

    @app.get("/metrics")
    def metrics():
        return app.response_class(metrics_text(), content_type=CONTENT_TYPE_LATEST)

    return app

try:
    app = create_app(load_model(os.environ.get("MODEL_URI", DEFAULT_MODEL_URI)), **settings_from_env())
except (ModelLoadError, ValueError) as error:
    sys.exit(f"predict.py: {' '.join(str(error).split())}")

if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "9696")))
