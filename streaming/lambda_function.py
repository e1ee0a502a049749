# Exported from notebooks/04-streaming.ipynb by `make export`: edit the notebook, not this file.

import base64
import json
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field

from ride_duration.kinesis import put_records
from ride_duration.rides import BadRide, read_json
from ride_duration.serving import ModelService
from ride_duration.settings import STREAMING, Settings

MODEL_NAME = "ride_duration_prediction_model"  # the name the course's consumers expect
MAX_RIDE_ID_LENGTH = 256  # the ride_id is the output's partition key, which Kinesis caps at 256
REMEMBERED_RECORDS = 100_000  # records a container wrote, kept to skip them when re-delivered
RIDE_ID_SLOT, DURATION_SLOT = "\0ride_id\0", "\0ride_duration\0"  # placeholders in encode_predictions' template

logger = logging.getLogger("lambda_function")


class BadRecord(ValueError):
    """A record that can never be predicted: not base64, not JSON, or not a ride event."""


def decode_record(record: dict) -> tuple:
    """(ride_id, ride) from one record of a Lambda Kinesis event; BadRecord saying why not."""
    try:
        data = base64.b64decode(record["kinesis"]["data"], validate=True)
    except (KeyError, TypeError, ValueError) as error:
        raise BadRecord(f"data is not base64: {error}") from error
    try:
        event = read_json(data)  # JSON text, refusing a lone UTF-16 surrogate anywhere in it
    except (ValueError, RecursionError) as error:  # ValueError includes bad UTF-8
        raise BadRecord(f"data is not JSON: {error}") from error
    if not isinstance(event, dict) or "ride" not in event or "ride_id" not in event:
        raise BadRecord('data is not a ride event {"ride": {...}, "ride_id": ...}')
    ride_id = event["ride_id"]
    if not good_ride_id(ride_id):
        raise BadRecord(
            f"ride_id must be an integer or a string of 1 to {MAX_RIDE_ID_LENGTH} characters, got {str(ride_id)[:80]!r}"
        )
    try:
        return ride_id, ModelService.validate(event["ride"])
    except BadRide as error:
        raise BadRecord(f"bad ride: {error}") from error


def good_ride_id(ride_id) -> bool:
    """An id the output can carry and use as its partition key."""
    return (
        isinstance(ride_id, (int, str))
        and not isinstance(ride_id, bool)
        and 0 < len(str(ride_id)) <= MAX_RIDE_ID_LENGTH
    )


def prediction_event(ride_id, duration: float, version: str) -> dict:
    """The output record, in the course's format, so that its consumers keep working."""
    return {
        "model": MODEL_NAME,
        "version": version,
        "prediction": {"ride_duration": duration, "ride_id": ride_id},
    }


def encode_predictions(ride_ids: list, durations: list[float], version: str) -> list[bytes]:
    """json.dumps(prediction_event(...)) of each ride, as bytes, by filling in one template per batch.

    The template is prediction_event's own JSON with placeholders, so the format is still defined once;
    json.dumps's cost per call is larger than the rest of the handler's work for a record.
    """
    template = json.dumps(prediction_event(RIDE_ID_SLOT, DURATION_SLOT, version))
    before, rest = template.split(json.dumps(DURATION_SLOT))
    middle, after = rest.split(json.dumps(RIDE_ID_SLOT))
    return [
        f"{before}{float.__repr__(d) if math.isfinite(d) else json.dumps(d)}{middle}{json.dumps(i)}{after}".encode()
        for i, d in zip(ride_ids, durations)
    ]


@dataclass
class Container:
    """What one Lambda container keeps between events."""

    settings: Settings
    service: ModelService
    kinesis: object = None  # a boto3 Kinesis client, made on the first write unless given
    written: OrderedDict = field(default_factory=OrderedDict)  # keys of the records written, oldest first

    @classmethod
    def from_settings(cls, settings: Settings) -> "Container":
        """A cold container: nothing loaded, no client made."""
        service = ModelService(settings.model_uri, lazy=True, without_sklearn=True, settings=settings)
        return cls(settings, service)

    def kinesis_client(self):
        """The Kinesis client, made on first use, with the settings' time limits (ride_duration.aws)."""
        if self.kinesis is None:
            from ride_duration import aws

            self.kinesis = aws.client("kinesis", self.settings)
        return self.kinesis

    def remember_written(self, key) -> None:
        self.written[key] = True
        if len(self.written) > REMEMBERED_RECORDS:
            self.written.popitem(last=False)

    def handle(self, event, context=None) -> dict:
        """Handle one Lambda Kinesis event (see handle_batch); a handler the runner can call."""
        return handle_batch(self, event)


def kinesis_records(event) -> list:
    records = event.get("Records") if isinstance(event, dict) else None
    if not isinstance(records, list):
        raise ValueError("not a Kinesis event: expected {'Records': [...]}")
    return records


def record_key(record: dict) -> tuple:
    """What identifies a record across shards and streams: the same record re-delivered has the same key."""
    return record.get("eventSourceARN"), record.get("eventID"), record["kinesis"]["sequenceNumber"]


def follow_alias(service: ModelService) -> None:
    """Swap in the version the alias moved to, if a check is due; a failed check is a warning, not an error."""
    poll = service.check_if_due()
    if poll is not None and poll.outcome == "swapped":
        logger.info("model: %s", poll.message)
    elif poll is not None and poll.outcome == "failed":
        logger.warning("model check failed, predicting with the current model: %s", poll.message)


def predict(service: ModelService, rides: list[dict]) -> tuple[str, list[float]]:
    """(version, durations) of a batch, all predicted by the one model serving now."""
    served = service.current
    return served.version, served.predict_rides(rides).tolist()


class PredictionsNotWritten(RuntimeError):
    """The output stream kept rejecting some predictions: its fault, not the records'."""


def write_predictions(container: Container, keys: list, ride_ids: list, predictions: list[bytes]) -> None:
    """put_records to the predictions stream, remembering each record whose prediction is written."""
    entries = [{"Data": p, "PartitionKey": str(i)} for p, i in zip(predictions, ride_ids)]
    stream = container.settings.predictions_stream_name
    rejected = set(put_records(container.kinesis_client(), stream, entries))  # raises if the stream is missing
    for index, key in enumerate(keys):
        if index not in rejected:
            container.remember_written(key)
    if rejected:
        raise PredictionsNotWritten(
            f"{stream} kept rejecting {len(rejected)} of {len(entries)} predictions (throttled?); "
            f"the other {len(entries) - len(rejected)} are written, and a retry by this container writes only the rest"
        )


def handle_batch(container: Container, event) -> dict:
    """Predict a batch of ride events at once, write the predictions, name the records that failed."""
    records = kinesis_records(event)
    failed, keys, ride_ids, rides = [], [], [], []
    for record in records:
        key = record_key(record)
        if key in container.written:
            continue  # re-delivered after a retry: this container already wrote its prediction
        try:
            ride_id, ride = decode_record(record)
        except BadRecord as error:
            logger.warning("record %s rejected: %s", key[2], error)
            failed.append(key[2])
            continue
        keys.append(key)
        ride_ids.append(ride_id)
        rides.append(ride)
    response = {"batchItemFailures": [{"itemIdentifier": s} for s in failed]}
    follow_alias(container.service)
    version, durations = predict(container.service, rides) if rides else ("", [])
    if container.settings.dry_run:
        return {**response, "predictions": [prediction_event(*p, version) for p in zip(ride_ids, durations)]}
    if rides:
        write_predictions(container, keys, ride_ids, encode_predictions(ride_ids, durations, version))
    logger.info("%d records: %d predictions written, %d bad records", len(records), len(rides), len(failed))
    return response


default_container: Container | None = None


def container() -> Container:
    """This process's container, built on first use from the environment's settings."""
    global default_container
    if default_container is None:
        default_container = Container.from_settings(Settings.from_environ(groups=STREAMING))
    return default_container


def reset_container() -> None:
    """Forget the container (model, client, records written): the next event starts cold."""
    global default_container
    default_container = None


def lambda_handler(event, context):
    return container().handle(event, context)

if __name__ == "__main__":
    import sys

    # Try the handler on an event file: DRY_RUN=1 MODEL_URI=... python streaming/lambda_function.py streaming/events/kinesis-sample.json
    logging.basicConfig(level=logging.INFO)
    with open(sys.argv[1]) as f:
        print(json.dumps(lambda_handler(json.load(f), None), indent=2))
