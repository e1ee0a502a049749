"""Send the course's example ride to the prediction service and print the answer.

    python web-service/client.py                                  # http://127.0.0.1:9696/predict
    python web-service/client.py http://my-host:9696/predict
    API_KEY=secret python web-service/client.py                   # when the service wants a key

It exits 1 when the service cannot be reached or answers with an error status.

`PredictionClient` is the client to copy: one keep-alive session, and one retry of a request the server
closed the connection on before answering (see `closed_before_answer`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys

import requests
from urllib3.exceptions import ProtocolError

from ride_duration.rides import EXAMPLE_RIDE
from ride_duration.settings import WEB_SERVICE, SettingError, Settings


def closed_before_answer(error: requests.ConnectionError) -> bool:
    """True if the server closed (or reset) the connection before a byte of its answer arrived.

    That is the HTTP keep-alive race: a server may close an idle keep-alive connection (its keep-alive
    timeout, a worker exiting on a reload or a rolling restart) just as the client sends the next request
    down it. The request was then never answered, and a prediction is idempotent, so sending it again on a
    new connection is safe (RFC 9112 section 9.3.1). urllib3 calls such an error "Connection aborted.";
    a connection that breaks once the answer has begun is "Connection broken" and is not retried.
    """
    for cause in error.args:
        if isinstance(cause, ProtocolError) and cause.args[:1] == ("Connection aborted.",):
            inner = cause.args[1] if len(cause.args) > 1 else None
            return isinstance(inner, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError))
    return False


class PredictionClient:
    """Rides to the service's /predict over one keep-alive session; `retries` counts the requests sent twice."""

    def __init__(self, url: str, api_key: str = "", timeout: float = 10):
        self.url, self.timeout = url, timeout
        self.session = requests.Session()
        if api_key:
            self.session.headers["X-API-Key"] = api_key
        self.retries = 0

    def predict(self, rides: dict | list[dict]) -> requests.Response:
        """The service's answer to one ride or a list; a request the server closed on unanswered is sent
        once more (on a new connection), any other failure raises requests.RequestException."""
        try:
            return self.session.post(self.url, json=rides, timeout=self.timeout)
        except requests.ConnectionError as error:
            if not closed_before_answer(error):
                raise
        self.retries += 1
        return self.session.post(self.url, json=rides, timeout=self.timeout)

    def close(self) -> None:
        self.session.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", nargs="?", default="http://127.0.0.1:9696/predict")
    try:
        api_key = Settings.from_environ(groups=WEB_SERVICE).api_key
    except SettingError as error:
        parser.error(str(error))
    parser.add_argument("--api-key", default=api_key, help="sent as X-API-Key (default: $API_KEY)")
    args = parser.parse_args(argv)
    client = PredictionClient(args.url, args.api_key)
    try:
        response = client.predict(EXAMPLE_RIDE)
    except requests.RequestException as error:
        print(f"cannot reach {args.url}: {error}", file=sys.stderr)
        return 1
    finally:
        client.close()
    try:
        answer = response.json()
    except ValueError:
        answer = response.text
    print(f"ride {json.dumps(EXAMPLE_RIDE)} -> HTTP {response.status_code}")
    print(json.dumps(answer, indent=2))
    return 0 if response.ok else 1


if __name__ == "__main__":
    sys.exit(main())
