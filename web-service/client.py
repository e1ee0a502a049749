"""Send the course's example ride to the prediction service and print the answer.

    python web-service/client.py                                  # http://127.0.0.1:9696/predict
    python web-service/client.py http://my-host:9696/predict
    API_KEY=secret python web-service/client.py                   # when the service wants a key

It exits 1 when the service cannot be reached or answers with an error status.
"""

from __future__ import annotations

import argparse
import json
import sys

import requests

from ride_duration.rides import EXAMPLE_RIDE
from ride_duration.settings import WEB_SERVICE, SettingError, Settings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", nargs="?", default="http://127.0.0.1:9696/predict")
    try:
        api_key = Settings.from_environ(groups=WEB_SERVICE).api_key
    except SettingError as error:
        parser.error(str(error))
    parser.add_argument("--api-key", default=api_key, help="sent as X-API-Key (default: $API_KEY)")
    args = parser.parse_args(argv)
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    try:
        response = requests.post(args.url, json=EXAMPLE_RIDE, headers=headers, timeout=10)
    except requests.RequestException as error:
        print(f"cannot reach {args.url}: {error}", file=sys.stderr)
        return 1
    try:
        answer = response.json()
    except ValueError:
        answer = response.text
    print(f"ride {json.dumps(EXAMPLE_RIDE)} -> HTTP {response.status_code}")
    print(json.dumps(answer, indent=2))
    return 0 if response.ok else 1


if __name__ == "__main__":
    sys.exit(main())
