"""Put each line of a file on a Kinesis stream as one record, as it is (homework Q9).

    python homework/send_events.py homework/stream-sample.jsonl --stream homework_events

Unlike streaming/producer.py, which sends good rides of a TLC month, this sends whatever the lines
say, bad ones included: that is the point of the sample. The partition key is the line number.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ride_duration.kinesis import put_all


def sample_records(path: Path) -> list[dict]:
    """put_records entries, one per non-empty line."""
    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    return [{"Data": line, "PartitionKey": str(number)} for number, line in enumerate(lines, start=1)]


def send(client, stream: str, path: Path) -> int:
    return put_all(client, stream, sample_records(path))


def main(argv=None) -> int:
    import boto3

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, help="one record per line")
    parser.add_argument("--stream", default="homework_events")
    args = parser.parse_args(argv)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        sent = send(boto3.client("kinesis"), args.stream, args.file)
    except (OSError, RuntimeError, BotoCoreError, ClientError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"sent {sent} records of {args.file} to {args.stream}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
