# Exported from notebooks/04-streaming.ipynb by `make export`: edit the notebook, not this file.

import base64
import json
import logging
import os
from collections import OrderedDict

from ride_duration.features import FastPredictor

from ride_duration.rides import BadRide, validate_ride
from ride_duration.kinesis import put_records
from ride_duration.model import load_model

MODEL_NAME = "ride_duration_prediction_model"  # the name the course's consumers expect
DEFAULT_PREDICTIONS_STREAM = "ride_predictions"
MAX_RIDE_ID_LENGTH = 256  # the ride_id is the output's partition key, which Kinesis caps at 256
REMEMBERED_RECORDS = 100_000  # records this container wrote, kept to skip them when re-delivered

logger = logging.getLogger("lambda_function")


def predictions_stream() -> str:
    return os.environ.get("PREDICTIONS_STREAM_NAME") or DEFAULT_PREDICTIONS_STREAM


def dry_run() -> bool:
    return os.environ.get("DRY_RUN", "").lower() in ("1", "true", "yes")


container = {}  # what one Lambda container keeps between events


def served_model():
    """(LoadedModel, FastPredictor) for MODEL_URI, loaded on first use, once per container.

    The handler only predicts through FastPredictor, so a linear pipeline is loaded without
    importing scikit-learn: one to three seconds less of every cold start.
    """
    if "model" not in container:
        model = load_model(os.environ.get("MODEL_URI", ""), without_sklearn=True)
        container["predictor"] = FastPredictor(model.pipeline)
        container["model"] = model
    return container["model"], container["predictor"]


def kinesis_client():
    if "kinesis" not in container:
        import boto3

        container["kinesis"] = boto3.client("kinesis")
    return container["kinesis"]


def written_records() -> OrderedDict:
    return container.setdefault("written", OrderedDict())


def remember_written(key) -> None:
    written = written_records()
    written[key] = True
    if len(written) > REMEMBERED_RECORDS:
        written.popitem(last=False)


def reset_container() -> None:
    """Forget the model, the client and the records written: the next event starts cold."""
    container.clear()


class BadRecord(ValueError):
    """A record that can never be predicted: not base64, not JSON, or not a ride event."""


def decode_record(record: dict) -> tuple:
    """(ride_id, ride) from one record of a Lambda Kinesis event; BadRecord saying why not."""
    try:
        data = base64.b64decode(record["kinesis"]["data"], validate=True)
    except (KeyError, TypeError, ValueError) as error:
        raise BadRecord(f"data is not base64: {error}") from error
    try:
        event = json.loads(data)
    except (ValueError, RecursionError) as error:  # ValueError includes bad UTF-8
        raise BadRecord(f"data is not JSON: {error}") from error
    if not isinstance(event, dict) or "ride" not in event or "ride_id" not in event:
        raise BadRecord('data is not a ride event {"ride": {...}, "ride_id": ...}')
    ride_id = event["ride_id"]
    good_id = (
        isinstance(ride_id, (int, str))
        and not isinstance(ride_id, bool)
        and 0 < len(str(ride_id)) <= MAX_RIDE_ID_LENGTH
    )
    if not good_id:
        raise BadRecord(
            f"ride_id must be an integer or a string of 1 to {MAX_RIDE_ID_LENGTH} characters, got {str(ride_id)[:80]!r}"
        )
    try:
        ride = validate_ride(event["ride"])
    except BadRide as error:
        raise BadRecord(f"bad ride: {error}") from error
    return ride_id, ride


def prediction_event(ride_id, duration: float, version: str) -> dict:
    """The output record, in the course's format, so that its consumers keep working."""
    return {
        "model": MODEL_NAME,
        "version": version,
        "prediction": {"ride_duration": duration, "ride_id": ride_id},
    }


def kinesis_records(event) -> list:
    records = event.get("Records") if isinstance(event, dict) else None
    if not isinstance(records, list):
        raise ValueError("not a Kinesis event: expected {'Records': [...]}")
    return records


class PredictionsNotWritten(RuntimeError):
    """The output stream kept rejecting some predictions: its fault, not the records'."""


def lambda_handler(event, context):
    """Predict a batch of ride events at once, write the predictions, name the records that failed."""
    records = kinesis_records(event)
    failed, keys, ride_ids, rides = [], [], [], []
    for record in records:
        sequence_number = record["kinesis"]["sequenceNumber"]
        key = (record.get("eventSourceARN"), record.get("eventID"), sequence_number)  # unique across shards
        if key in written_records():
            continue  # re-delivered after a retry: this container already wrote its prediction
        try:
            ride_id, ride = decode_record(record)
        except BadRecord as error:
            logger.warning("record %s rejected: %s", sequence_number, error)
            failed.append(sequence_number)
            continue
        keys.append(key)
        ride_ids.append(ride_id)
        rides.append(ride)

    predictions = []
    if rides:
        model, predictor = served_model()
        durations = predictor.predict_rides(rides)
        predictions = [prediction_event(i, float(d), model.version) for i, d in zip(ride_ids, durations)]
    if dry_run():
        return {"batchItemFailures": [{"itemIdentifier": s} for s in failed], "predictions": predictions}

    entries = [{"Data": json.dumps(p).encode(), "PartitionKey": str(i)} for p, i in zip(predictions, ride_ids)]
    stream = predictions_stream()
    rejected = set(put_records(kinesis_client(), stream, entries))  # raises if the stream is missing
    for index, key in enumerate(keys):
        if index not in rejected:
            remember_written(key)
    if rejected:
        raise PredictionsNotWritten(
            f"{stream} kept rejecting {len(rejected)} of {len(entries)} predictions (throttled?); "
            f"the other {len(entries) - len(rejected)} are written, and a retry by this container writes only the rest"
        )
    logger.info("%d records: %d predictions written, %d bad records", len(records), len(entries), len(failed))
    return {"batchItemFailures": [{"itemIdentifier": s} for s in failed]}

if __name__ == "__main__":
    import sys

    # Try the handler on an event file: DRY_RUN=1 MODEL_URI=... python streaming/lambda_function.py streaming/events/kinesis-sample.json
    logging.basicConfig(level=logging.INFO)
    with open(sys.argv[1]) as f:
        print(json.dumps(lambda_handler(json.load(f), None), indent=2))
