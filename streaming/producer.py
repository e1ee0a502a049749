"""Send rides of a TLC month to a Kinesis stream, in the course's input format, the way a ride app
would publish its events: {"ride": {...}, "ride_id": "2021/01_42"}.

    python streaming/producer.py --stream ride_events --year 2021 --month 1 -n 1000

ride_id is the ride's month and its row in the month's file (ride_duration.rides.ride_id), as in the
batch scorer, so a prediction can be joined back to its ride. Records go out with put_records, 500 a
call; the ride_id is the partition key, so one ride's events stay in order on one shard.
"""

from __future__ import annotations

import argparse
import json
import sys

from ride_duration.data import TAXI_TYPES, read_month
from ride_duration.kinesis import put_all
from ride_duration.rides import RIDE_FIELDS, ride_id


def ride_events(df, year: int, month: int, n_rides: int, start_row: int = 0) -> list[dict]:
    """The input records for rows start_row .. start_row + n_rides of a month's frame: each ride's fields
    as JSON numbers (the month's columns are int64 and float64, so they stay integers and floats)."""
    rows = df.iloc[start_row : start_row + n_rides]
    columns = [rows[name].to_numpy().tolist() for name in RIDE_FIELDS]
    return [
        {"ride": dict(zip(RIDE_FIELDS, values)), "ride_id": ride_id(year, month, row)}
        for row, *values in zip(rows.index.tolist(), *columns)
    ]


def send(client, stream: str, events: list[dict]) -> int:
    """Put the events on the stream (partition key: ride_id); raise if the stream kept rejecting some."""
    return put_all(
        client, stream, [{"Data": json.dumps(e).encode(), "PartitionKey": str(e["ride_id"])} for e in events]
    )


def main(argv=None) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from ride_duration import aws

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stream", default="ride_events")
    parser.add_argument("--taxi-type", default=TAXI_TYPES[0], choices=TAXI_TYPES)
    parser.add_argument("--year", type=int, default=2021)
    parser.add_argument("--month", type=int, default=1)
    parser.add_argument("-n", "--rides", type=int, default=100, help="how many rides to send")
    parser.add_argument("--start-row", type=int, default=0, help="the first row of the month to send")
    parser.add_argument(
        "--synthetic",
        choices=["no", "fallback", "yes"],
        default="no",
        help="use a synthetic month: never, when the real one is not available, always",
    )
    args = parser.parse_args(argv)
    synthetic = {"no": False, "fallback": "fallback", "yes": True}[args.synthetic]
    try:
        df = read_month(args.taxi_type, args.year, args.month, synthetic=synthetic)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    events = ride_events(df, args.year, args.month, args.rides, args.start_row)
    try:
        sent = send(aws.client("kinesis"), args.stream, events)
    except (RuntimeError, BotoCoreError, ClientError) as error:
        print(f"error: could not send the rides to {args.stream}: {error}", file=sys.stderr)
        return 1
    print(
        f"sent {sent} rides of {args.taxi_type} {args.year:04d}-{args.month:02d} "
        f"({df.attrs.get('source')}) to {args.stream}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
