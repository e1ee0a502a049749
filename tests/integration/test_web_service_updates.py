"""The web service while its model changes and while gunicorn restarts, under load: real gunicorn (2 workers),
a real MLflow tracking server started here on a free loopback port, two registered versions that predict
differently. A move of the `production` alias reaches every worker without a restart, and without a failed
request; with the tracking server down the service keeps serving and says its polls fail; SIGHUP and a
rolling restart lose no request of a client that retries the keep-alive race once (web-service/client.py)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from ride_duration import local_stack
from ride_duration.features import ride_features
from ride_duration.model import PRODUCTION_ALIAS, REGISTERED_MODEL
from tests.helpers import ROOT, stand_in_model, start_web_service, tracking_store

sys.path.insert(0, str(ROOT / "web-service"))
import client as web_client  # web-service/client.py: the project's client, with its one retry

POLL_SECONDS = 2
ALIAS_URI = f"models:/{REGISTERED_MODEL}@{PRODUCTION_ALIAS}"
SLOPES = {1: 1.0, 2: 3.0}  # minutes a mile of registered versions 1 and 2: every answer tells them apart


def example_rides(count: int = 64) -> list[dict]:
    generator = np.random.default_rng(11)
    return [
        {
            "PULocationID": int(generator.integers(1, 30)),
            "DOLocationID": int(generator.integers(1, 30)),
            "trip_distance": round(float(generator.uniform(0.2, 25)), 2),
        }
        for _ in range(count)
    ]


RIDES = example_rides()


@pytest.fixture(scope="module")
def tracking(tmp_path_factory, logs_dir):
    """A real `mlflow server` on a free loopback port (sqlite store and file artifacts in a temp dir) holding
    registered versions 1 and 2 of ride-duration, @production at 1. Yields a dict with the server's URL,
    restart() and stop(), the versions' model ids, and each version's expected durations of RIDES."""
    import mlflow
    from mlflow import MlflowClient

    from ride_duration import train

    folder = tmp_path_factory.mktemp("tracking-server")
    port = local_stack.free_port()
    url = f"http://{local_stack.HOST}:{port}"
    backend, artifacts = f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()
    server = {"process": None}

    def start():
        if server["process"] is None:
            server["process"] = local_stack.start_mlflow(port, logs_dir / f"mlflow-{port}.log", backend, artifacts)

    def stop():
        if server["process"] is not None:
            local_stack.stop(server["process"])
            server["process"] = None

    start()
    try:
        with tracking_store(url):
            train.setup_tracking()
            versions = {}
            for number, slope in SLOPES.items():
                pipeline = stand_in_model(f"slope-{slope}", slope=slope).pipeline
                info = train.log_pipeline(pipeline, params={"slope": slope}, metrics={}, tags={})
                registered = mlflow.register_model(info.model_uri, REGISTERED_MODEL)
                assert registered.version == str(number)
                versions[f"{REGISTERED_MODEL}/{number}"] = {
                    "model_id": info.model_id,
                    "durations": pipeline.predict([ride_features(ride) for ride in RIDES]),
                }
            MlflowClient(url).set_registered_model_alias(REGISTERED_MODEL, PRODUCTION_ALIAS, "1")
        yield {"url": url, "versions": versions, "start": start, "stop": stop}
    finally:
        stop()


def move_production(tracking: dict, version: int) -> float:
    """Point @production at `version` and @previous at the version it left, as a promotion does; returns when
    (time.monotonic) the registry said done."""
    from mlflow import MlflowClient

    from ride_duration.lifecycle import PREVIOUS_ALIAS

    registry = MlflowClient(tracking["url"])
    current = registry.get_model_version_by_alias(REGISTERED_MODEL, PRODUCTION_ALIAS).version
    if current != str(version):
        registry.set_registered_model_alias(REGISTERED_MODEL, PREVIOUS_ALIAS, current)
    registry.set_registered_model_alias(REGISTERED_MODEL, PRODUCTION_ALIAS, str(version))
    return time.monotonic()


def roll_back(tracking: dict) -> float:
    """The lifecycle's rollback (@production back to @previous); returns when it was done (time.monotonic)."""
    from ride_duration import lifecycle

    with tracking_store(tracking["url"]):
        assert lifecycle.rollback().restored == "1"
    return time.monotonic()


@dataclass
class Answer:
    sent: float  # time.monotonic()
    received: float
    ride: int  # index in RIDES
    status: int | None  # None: no answer at all
    body: dict | None
    error: str | None = None


@dataclass
class Load:
    """`clients` threads, each a web_client.PredictionClient (its own keep-alive session) sending RIDES in
    turn as fast as it is answered, until stop() or max_seconds or max_requests: never unbounded."""

    url: str
    clients: int = 4
    max_seconds: float = 180
    max_requests: int = 300_000
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._clients = [web_client.PredictionClient(f"{self.url}/predict") for _ in range(self.clients)]
        self._threads = [threading.Thread(target=self._run, args=(c, i)) for i, c in enumerate(self._clients)]

    def _run(self, client: web_client.PredictionClient, offset: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        index = offset
        while not self._stop.is_set() and time.monotonic() < deadline and len(self.answers) < self.max_requests:
            ride = index % len(RIDES)
            index += self.clients
            sent = time.monotonic()
            try:
                response = client.predict(RIDES[ride])
                body = response.json() if response.headers.get("Content-Type") == "application/json" else None
                self.answers.append(Answer(sent, time.monotonic(), ride, response.status_code, body))
            except requests.RequestException as error:
                self.answers.append(Answer(sent, time.monotonic(), ride, None, None, repr(error)))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        for client in self._clients:
            client.close()

    @property
    def retries(self) -> int:
        return sum(client.retries for client in self._clients)

    def since(self, moment: float) -> list[Answer]:
        return [answer for answer in list(self.answers) if answer.sent >= moment]


def failures(answers: list[Answer]) -> list[Answer]:
    return [answer for answer in answers if answer.status != 200]


def wrong_answers(answers: list[Answer], versions: dict) -> list[Answer]:
    """Answers whose duration is not, to 1e-9, what the version they name predicts for their ride."""
    wrong = []
    for answer in answers:
        version = versions.get(answer.body["registered_version"])
        if (
            version is None
            or answer.body["model_version"] != version["model_id"]
            or abs(answer.body["duration"] - version["durations"][answer.ride]) > 1e-9
        ):
            wrong.append(answer)
    return wrong


def health(url: str) -> dict:
    return requests.get(f"{url}/health", timeout=10).json()


def polls_metric(url: str) -> dict:
    """ride_duration_model_polls_total by outcome, summed over the workers."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    return {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "ride_duration_model_polls_total"
    }


def wait_until(condition, timeout: float, step: float = 0.25):
    """condition()'s first truthy value within timeout seconds, else its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


@pytest.fixture(scope="module")
def following_service(tracking, logs_dir):
    """predict.py under gunicorn, 2 workers, following @production every POLL_SECONDS."""
    process, url, log = start_web_service(
        logs_dir,
        "predict-follows",
        {
            "MODEL_URI": ALIAS_URI,
            "MLFLOW_TRACKING_URI": tracking["url"],
            "MODEL_POLL_SECONDS": str(POLL_SECONDS),
            "WEB_CONCURRENCY": "2",
        },
    )
    yield url
    local_stack.stop(process)
    print(local_stack.log_tail(log))


@pytest.mark.slow
def test_a_moved_alias_reaches_every_worker_under_load_and_survives_the_tracking_server_going_down(
    tracking, following_service
):
    url, versions = following_service, tracking["versions"]
    assert health(url)["follows"] == {"alias": f"{REGISTERED_MODEL}@{PRODUCTION_ALIAS}", "poll_seconds": POLL_SECONDS}
    load_seconds = load_time(tracking, 2)
    load_started = time.monotonic()
    with Load(url, clients=4) as load:
        time.sleep(6)
        moved = move_production(tracking, 2)
        time.sleep(max(0.0, load_started + 22 - time.monotonic()))  # at least 20 s of load in all
        tracking["stop"]()
        stopped = time.monotonic()
        time.sleep(12)
        down_health = wait_until(lambda: (h := health(url))["last_poll"]["outcome"] == "failed" and h, 30)
        down_polls = polls_metric(url)
    answers = list(load.answers)
    print(f"{len(answers)} requests over {answers[-1].received - answers[0].sent:.1f} s, {load.retries} retried")

    assert answers and failures(answers) == []
    assert wrong_answers(answers, versions) == []
    old = [a for a in answers if a.body["registered_version"] == f"{REGISTERED_MODEL}/1"]
    new = [a for a in answers if a.body["registered_version"] == f"{REGISTERED_MODEL}/2"]
    assert old and new and {a.body["registered_version"] for a in answers} == set(versions)
    last_old = max(a.received for a in old) - moved
    first_new = min(a.received for a in new) - moved
    print(f"after the move: first answer of v2 at {first_new:.2f} s, last of v1 at {last_old:.2f} s")
    assert last_old <= POLL_SECONDS + load_seconds + 5, f"v1 still answered {last_old:.1f} s after the move"
    assert len([a for a in answers if a.sent >= stopped]) > 0
    assert {a.body["registered_version"] for a in answers if a.sent >= stopped} == {f"{REGISTERED_MODEL}/2"}
    assert answers[-1].received - stopped >= 10

    assert down_health and down_health["status"] == "ready"
    assert down_health["registered_version"] == f"{REGISTERED_MODEL}/2"
    assert "kept ride-duration/2" in down_health["last_poll"]["message"] and down_health["failed_polls"] > 0
    assert down_polls.get("failed", 0) > 0 and down_polls.get("swapped", 0) >= 2  # each worker swapped once

    # Rollback: the tracking server comes back, and the lifecycle moves @production back to @previous, version 1.
    tracking["start"]()
    with Load(url, clients=2) as load:
        moved_back = roll_back(tracking)
        wait_until(
            lambda: any(a.body["registered_version"] == f"{REGISTERED_MODEL}/1" for a in load.since(moved_back)),
            POLL_SECONDS + 15,
        )
        followed_by = moved_back + POLL_SECONDS + load_seconds + 5  # every worker has checked and loaded since
        time.sleep(max(0.0, followed_by + 3 - time.monotonic()))  # and 3 s of answers after that
    late = [a for a in load.answers if a.sent >= followed_by]
    assert failures(load.answers) == [] and wrong_answers(load.answers, versions) == []
    assert late and {a.body["registered_version"] for a in late} == {f"{REGISTERED_MODEL}/1"}
    assert wait_until(lambda: health(url)["last_poll"]["outcome"] == "unchanged", 10)


def load_time(tracking: dict, version: int) -> float:
    """Seconds this machine takes to load and check a registered version, as a worker does on a swap."""
    from ride_duration.model import load_model
    from ride_duration.serving import serve

    started = time.monotonic()
    with tracking_store(tracking["url"]):
        serve(load_model(f"models:/{REGISTERED_MODEL}/{version}"))
    return time.monotonic() - started


def worker_pids(master: int) -> set[int]:
    """The live child processes of gunicorn's master (its workers, exiting ones included), read from /proc."""
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            state, parent = stat.rpartition(")")[2].split()[:2]
            if int(parent) == master and state != "Z":
                pids.add(int(entry))
    return pids


def replaced(master: int, old: set[int], timeout: float = 30) -> set[int]:
    """Wait until the master runs 2 workers again, none of them in `old`; returns them."""

    def new_workers() -> set[int]:
        now = worker_pids(master)
        return now if len(now) == 2 and not now & old else set()

    return wait_until(new_workers, timeout)


@pytest.mark.slow
def test_sighup_and_a_rolling_restart_lose_no_request_and_never_go_back_to_an_older_version(tracking, logs_dir):
    """gunicorn's reload (SIGHUP: new workers, the old ones exit gracefully) and a rolling restart (TTIN
    then TTOU, worker by worker) under 8 busy keep-alive clients. The master loaded version 1; the alias
    moved to 2 before the restarts: workers forked afterwards must check before they answer."""
    tracking["start"]()
    move_production(tracking, 1)
    process, url, log = start_web_service(
        logs_dir,
        "predict-restarts",
        {"MODEL_URI": ALIAS_URI, "MLFLOW_TRACKING_URI": tracking["url"], "MODEL_POLL_SECONDS": str(POLL_SECONDS)},
    )
    try:
        move_production(tracking, 2)
        time.sleep(POLL_SECONDS + 3)  # both workers have checked since the move
        workers = worker_pids(process.pid)
        assert len(workers) == 2
        with Load(url, clients=8, max_seconds=150) as load:
            started = time.monotonic()
            time.sleep(2)
            for _ in range(3):
                os.kill(process.pid, signal.SIGHUP)
                workers = replaced(process.pid, workers)
                assert workers, "a SIGHUP did not replace both workers within 30 s"
                time.sleep(1)
            before_rolling = workers
            for _ in range(2):  # a rolling restart: one more worker, then the oldest one goes
                os.kill(process.pid, signal.SIGTTIN)
                assert wait_until(lambda: len(worker_pids(process.pid)) == 3, 30)
                time.sleep(1)
                os.kill(process.pid, signal.SIGTTOU)
                assert wait_until(lambda: len(worker_pids(process.pid)) == 2, 30)
                time.sleep(1)
            assert not worker_pids(process.pid) & before_rolling, "the rolling restart left a worker"
            time.sleep(1)
        answers = load.since(started)
        print(f"{len(answers)} requests across 3 SIGHUPs and a rolling restart, {load.retries} retried")
        assert answers and failures(answers) == []
        assert wrong_answers(answers, tracking["versions"]) == []
        assert {a.body["registered_version"] for a in answers} == {f"{REGISTERED_MODEL}/2"}, "back to v1"
    finally:
        local_stack.stop(process)
        print(local_stack.log_tail(log))


class KeepAliveRaceServer:
    """A loopback HTTP server that answers the first request of each connection and then, on the second,
    closes the connection: `unanswered` without a byte (the keep-alive race), `half` halfway through
    the answer's body."""

    ANSWER = b'{"duration": 1.5}'

    def __init__(self, second: str):
        import socket

        self.second = second
        self.listener = socket.create_server((local_stack.HOST, 0))
        self.listener.settimeout(20)
        self.url = f"http://{local_stack.HOST}:{self.listener.getsockname()[1]}/predict"
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _read_request(self, connection) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(
            next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        )
        while len(body) < length:
            body += connection.recv(65536)
        return True

    def _answer(self, body_bytes: int | None = None) -> bytes:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(self.ANSWER)}\r\n\r\n"
        return head.encode() + self.ANSWER[:body_bytes]

    def _serve(self) -> None:
        for _ in range(4):  # bounded: no test needs more connections
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with connection:
                connection.settimeout(20)
                if self._read_request(connection):
                    connection.sendall(self._answer())
                if self._read_request(connection) and self.second == "half":
                    connection.sendall(self._answer(body_bytes=5))

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("second", ["unanswered", "half"])
def test_the_client_sends_a_request_again_only_if_the_connection_closed_before_any_answer(second):
    server = KeepAliveRaceServer(second)
    client = web_client.PredictionClient(server.url, timeout=10)
    try:
        assert client.predict({"ride": 1}).json() == {"duration": 1.5}
        if second == "unanswered":  # sent again on a new connection, and answered there
            assert client.predict({"ride": 2}).json() == {"duration": 1.5}
            assert (client.retries, server.connections) == (1, 2)
        else:  # the answer had begun: an error, not a second request
            with pytest.raises(requests.RequestException):
                client.predict({"ride": 2}).json()
            assert (client.retries, server.connections) == (0, 1)
    finally:
        client.close()
        server.close()
