"""Print the predictions a stream holds, one JSON line each, as a downstream service would read them.

    python streaming/consumer.py --stream ride_predictions
    python streaming/consumer.py --stream ride_predictions --start LATEST --idle-seconds 30

It reads every shard and stops after --max-records, --max-seconds, or once caught up for
--idle-seconds (a stream never ends by itself).
"""

from __future__ import annotations

import argparse
import json
import sys

from ride_duration.kinesis import read_stream


def read_predictions(client, stream: str, **limits) -> list[dict]:
    """The prediction records on the stream, decoded (limits: see ride_duration.kinesis.read_stream)."""
    return [json.loads(record["Data"]) for record in read_stream(client, stream, **limits)]


def main(argv=None) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from ride_duration import aws

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stream", default="ride_predictions")
    parser.add_argument("--start", choices=["TRIM_HORIZON", "LATEST"], default="TRIM_HORIZON")
    parser.add_argument("--max-records", type=int)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--idle-seconds", type=float, default=1.0)
    args = parser.parse_args(argv)
    records = read_stream(
        aws.client("kinesis"),
        args.stream,
        start=args.start,
        max_records=args.max_records,
        max_seconds=args.max_seconds,
        idle_seconds=args.idle_seconds,
    )
    try:
        for record in records:
            print(record["Data"].decode(errors="replace"), flush=True)
    except (BotoCoreError, ClientError) as error:
        print(f"error: could not read {args.stream}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
