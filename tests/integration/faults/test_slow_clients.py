"""Slow clients against the web service: connections that send their headers or their body a byte at a
time, or connect and send nothing, each holding what they can for as long as they can.

gunicorn alone gives each of them one of its few threads (2 workers x 4), and a normal client gets no
answers; behind the nginx of web-service/nginx/ride-duration.conf, which waits for such clients itself and
hands gunicorn complete requests only, the normal client is answered as if they were not there."""

from __future__ import annotations

import errno
import socket
import threading
import time

import numpy as np
import pytest
import requests

from ride_duration import local_stack
from ride_duration.features import ride_features
from ride_duration.rides import EXAMPLE_RIDE
from tests.helpers import start_nginx, start_web_service

SLOW_HEADERS, SLOW_BODIES, SILENT = 64, 16, 32
SECONDS_HELD = 20  # how long the normal client is timed while the proxy holds the slow clients
SECONDS_STARVED = 8  # the same against gunicorn alone: long enough to show it starves
REQUEST_TIMEOUT = 2.0


class SlowClients:
    """Slow-header, slow-body and silent connections to host:port, from one thread, re-opened whenever the
    server closes one (or answers it), for as long as the block lasts.

    A slow-header connection sends a request line and then one byte of a header that never ends every
    `interval` seconds; a slow-body one sends whole headers declaring a body it then sends a byte at a time;
    a silent one sends nothing."""

    REQUEST_LINE = b"POST /predict HTTP/1.1\r\nHost: ride-duration\r\nX-Slow: "
    BODY_HEADERS = (
        b"POST /predict HTTP/1.1\r\nHost: ride-duration\r\nContent-Type: application/json\r\n"
        b"Content-Length: 60000\r\n\r\n"
    )

    def __init__(self, host: str, port: int, *, slow_headers: int, slow_bodies: int, silent: int, interval=0.5):
        self.address = (host, port)
        self.kinds = ["header"] * slow_headers + ["body"] * slow_bodies + ["silent"] * silent
        self.sockets: list[socket.socket | None] = [None] * len(self.kinds)
        self.opened = dict.fromkeys(("header", "body", "silent"), 0)
        self.interval = interval
        self.fewest_held = len(self.kinds)  # the fewest connections open at the end of a round
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="slow-clients", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.thread.join(timeout=10)
        for connection in self.sockets:
            if connection is not None:
                connection.close()

    def open(self, kind: str) -> socket.socket | None:
        try:
            connection = socket.create_connection(self.address, timeout=0.2)
            connection.sendall(self.REQUEST_LINE if kind == "header" else self.BODY_HEADERS if kind == "body" else b"")
        except OSError:
            return None
        connection.setblocking(False)
        self.opened[kind] += 1
        return connection

    @staticmethod
    def still_open(connection: socket.socket) -> bool:
        """False once the server has closed the connection or answered on it (either frees the slot)."""
        try:
            connection.recv(4096)  # an answer, or b"" once closed
        except BlockingIOError:
            return True
        except OSError:
            pass
        return False

    def run(self) -> None:
        while not self.stopping.is_set():
            for slot, kind in enumerate(self.kinds):
                connection = self.sockets[slot]
                if connection is not None and not self.still_open(connection):
                    connection.close()
                    connection = None
                if connection is None:
                    connection = self.sockets[slot] = self.open(kind)
                elif kind != "silent":
                    try:
                        connection.send(b"a" if kind == "header" else b" ")
                    except OSError as error:
                        if error.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                            connection.close()
                            self.sockets[slot] = None
            self.fewest_held = min(self.fewest_held, sum(connection is not None for connection in self.sockets))
            self.stopping.wait(self.interval)


def normal_client(url: str, seconds: float, expected: float, max_requests: int = 2000) -> dict:
    """The example ride, one request at a time on a new connection each, for `seconds` (at most max_requests):
    the share answered correctly within REQUEST_TIMEOUT, and the p99 of every request's time (a failed one
    counts the time it took to fail)."""
    latencies, answered = [], 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(latencies) < max_requests:
        started = time.perf_counter()
        try:
            response = requests.post(f"{url}/predict", json=EXAMPLE_RIDE, timeout=REQUEST_TIMEOUT)
            answered += response.status_code == 200 and response.json()["duration"] == pytest.approx(expected, abs=1e-9)
        except requests.RequestException:
            pass
        latencies.append(time.perf_counter() - started)
        time.sleep(0.01)
    return {
        "requests": len(latencies),
        "success": answered / len(latencies),
        "p99_ms": float(np.percentile(latencies, 99)) * 1000,
    }


def attacked(url: str, seconds: float, expected: float) -> tuple[dict, SlowClients]:
    """normal_client's numbers while SlowClients hold connections to the server at `url`."""
    host, port = url.removeprefix("http://").split(":")
    with SlowClients(host, int(port), slow_headers=SLOW_HEADERS, slow_bodies=SLOW_BODIES, silent=SILENT) as slow:
        time.sleep(2)  # every slow client connected and holding
        numbers = normal_client(url, seconds, expected)
        numbers["slow clients held (fewest)"] = slow.fewest_held
    return numbers, slow


def settled(url: str, timeout: float = 30) -> None:
    """Wait until the service answers /health in under 50 ms again (the slow clients' threads freed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            if requests.get(f"{url}/health", timeout=1).ok and time.perf_counter() - started < 0.05:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not recover from the slow clients within {timeout} s")


@pytest.fixture(scope="module")
def gunicorn(registered_model, logs_dir):
    process, url, log = start_web_service(logs_dir, "slow-clients", {"MODEL_URI": registered_model["artifact_uri"]})
    yield url
    local_stack.stop(process)
    print(local_stack.log_tail(log))


@pytest.fixture(scope="module")
def proxy(gunicorn, tmp_path_factory):
    process, url, log = start_nginx(tmp_path_factory.mktemp("nginx"), gunicorn.removeprefix("http://"))
    yield url
    local_stack.stop(process)
    print(local_stack.log_tail(log))


def test_slow_clients_starve_gunicorn_alone_but_not_behind_the_proxy(gunicorn, proxy, registered_model):
    expected = float(registered_model["pipeline"].predict([ride_features(EXAMPLE_RIDE)])[0])

    alone, _ = attacked(gunicorn, SECONDS_STARVED, expected)
    print("gunicorn alone:", alone)
    assert alone["success"] < 0.99 or alone["p99_ms"] >= 100, (
        f"the slow clients did not starve gunicorn alone, so they prove nothing about the proxy: {alone}"
    )
    settled(gunicorn)

    proxied, slow = attacked(proxy, SECONDS_HELD, expected)
    print("behind nginx:", proxied, "connections opened:", slow.opened)
    assert proxied["slow clients held (fewest)"] == SLOW_HEADERS + SLOW_BODIES + SILENT
    assert slow.opened["body"] == SLOW_BODIES, "nginx should hold a body sent a byte at a time for the whole run"
    assert proxied["success"] >= 0.99, proxied
    assert proxied["p99_ms"] < 100, proxied
