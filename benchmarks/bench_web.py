"""The web service, ours against the course's, side by side on loopback (`python -m benchmarks web`).

Servers, all started on free loopback ports, measured in interleaved rounds, then stopped:
  - the course's predict.py (benchmarks/course_predict.py: pickled DictVectorizer + model, a dict
    per request) under Flask's development server, under gunicorn the way the course starts it
    (`gunicorn predict:app`: one sync worker), and under gunicorn with our worker settings;
  - ours, web-service/predict.py under gunicorn with web-service/gunicorn.conf.py: validation,
    Prometheus metrics (multiprocess mode) and the fast single-ride path all on;
  - ours again, serving the course's random forest (100 trees, trained on the plausible rides of
    the same month): what a tree ensemble costs per request, beside the linear model;
  - the floor, benchmarks/web_floor.py under the same gunicorn.conf.py: Flask answering a constant
    JSON answer, what gunicorn and Flask alone cost; "ours / floor" is the share of it we keep.
The course's server and ours serve the same LinearRegression, trained on green 2021-01 (a synthetic
month when TAXI_DATA_DIR lacks it, and the table says so), so they give the same answers.

The load generator is bounded in requests AND time: N threads, each with one keep-alive
connection (re-opened when a server closes it, as gunicorn's sync worker does after every
response), hand-written HTTP/1.1 on raw sockets so that the client costs little CPU next to the
servers on this small machine. Latency is measured per request from send to last byte.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests

from benchmarks import Table
from ride_duration import local_stack
from ride_duration.rides import EXAMPLE_RIDE

ROOT = Path(__file__).resolve().parents[1]
CONNECTIONS = (1, 8)
MAX_REQUESTS = {1: 2_000, 8: 8_000}  # per measurement...
TIME_CAP = 5.0  # ...and at most this many seconds each
ROUNDS = 3
WARM_UP_REQUESTS = 300
OUR_WORKERS, OUR_THREADS = "2", "4"  # gunicorn.conf.py's defaults, spelled out for the table


@dataclass
class Load:
    requests: int
    errors: int
    seconds: float
    latencies_ns: np.ndarray

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_ns, q)) / 1e6


class Connection:
    """One HTTP/1.1 client connection on a raw socket: keep-alive, re-opened when the server closes."""

    def __init__(self, host: str, port: int):
        self.address = (host, port)
        self.sock = None

    def open(self):
        self.sock = socket.create_connection(self.address, timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def send(self, request: bytes) -> int:
        """Send one request, read the whole response; return its status code."""
        if self.sock is None:
            self.open()
        self.sock.sendall(request)
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection mid-response")
            buffer += chunk
        head, _, body = buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.lower().split(b":", 1) for line in lines[1:])
        length = int(headers.get(b"content-length", b"0"))
        while len(body) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection mid-body")
            body += chunk
        if headers.get(b"connection", b"").strip() == b"close" or lines[0].startswith(b"HTTP/1.0"):
            self.close()
        return status


def http_request(port: int, body: bytes) -> bytes:
    return (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def generate_load(port: int, bodies: list[bytes], connections: int, max_requests: int, time_cap: float) -> Load:
    """Send up to max_requests over `connections` keep-alive connections, for at most time_cap seconds."""
    prepared = [http_request(port, body) for body in bodies]
    tickets = itertools.count()  # next() on a count is atomic under the GIL
    latencies = [[] for _ in range(connections)]
    errors = [0] * connections
    started = time.perf_counter()
    deadline = started + time_cap

    def client(index: int):
        connection = Connection(local_stack.HOST, port)
        own = latencies[index]
        try:
            while True:
                ticket = next(tickets)
                if ticket >= max_requests or time.perf_counter() > deadline:
                    return
                request = prepared[ticket % len(prepared)]
                sent = time.perf_counter_ns()
                try:
                    status = connection.send(request)
                except OSError:
                    connection.close()
                    status = 0
                own.append(time.perf_counter_ns() - sent)
                if status != 200:
                    errors[index] += 1
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    all_latencies = np.concatenate([np.asarray(own, dtype=np.int64) for own in latencies])
    return Load(requests=len(all_latencies), errors=sum(errors), seconds=seconds, latencies_ns=all_latencies)


def start_server(command: list[str], env: dict, port: int, log: Path, timeout: float = 60) -> subprocess.Popen:
    """Start a server in its own process group; ready when it answers the example ride."""
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ, **env},
            start_new_session=True,
        )
    url = f"http://{local_stack.HOST}:{port}/predict"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise local_stack.ServiceFailed(f"{command} exited; log:\n{local_stack.log_tail(log)}")
        try:
            if requests.post(url, json=EXAMPLE_RIDE, timeout=2).status_code == 200:
                return process
        except requests.RequestException:
            pass
        time.sleep(0.2)
    local_stack.stop(process)
    raise local_stack.ServiceFailed(f"{command} not ready after {timeout:.0f}s; log:\n{local_stack.log_tail(log)}")


def training_data():
    """Green 2021-01 rides from TAXI_DATA_DIR, or the synthetic month; never a download."""
    from ride_duration.data import is_synthetic, read_month, training_rides

    month = read_month("green", 2021, 1, synthetic="fallback", allow_download=False)
    label = (
        "synthetic green 2021-01 (TAXI_DATA_DIR lacks the real month)" if is_synthetic(month) else "green 2021-01 (TLC)"
    )
    return training_rides(month, "green"), label


def save_models(rides, folder: Path) -> tuple[Path, str, str]:
    """The same fitted LinearRegression two ways, the course's pickle and our MLflow artifact, and the course's random forest as an MLflow artifact: (pickle, linear model URI, forest artifact URI)."""
    import mlflow
    from sklearn.linear_model import LinearRegression

    from ride_duration import train
    from ride_duration.data import plausible_rides
    from ride_duration.model import artifact_uri

    pipeline = train.fit(train.make_pipeline(LinearRegression()), rides)
    forest = train.fit_forest(plausible_rides(rides)[0])
    course_file = folder / "lin_reg.bin"
    with open(course_file, "wb") as f_out:
        pickle.dump((pipeline.steps[0][1], pipeline.steps[1][1]), f_out)

    os.environ["ALLOW_UNVERIFIED_MODEL"] = "1"  # models made a moment ago by this benchmark, served by URI: local work
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    try:
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        mlflow.create_experiment(train.EXPERIMENT, artifact_location=(folder / "artifacts").as_uri())
        train.setup_tracking()
        info = train.log_pipeline(pipeline, params={"regressor": "LinearRegression"}, metrics={}, tags={})
        forest_info = train.log_pipeline(forest, params={"regressor": "RandomForestRegressor"}, metrics={}, tags={})
        return (
            course_file,
            artifact_uri(f"models:/{info.model_id}"),  # the course's model, served as is
            artifact_uri(f"models:/{forest_info.model_id}"),
        )
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def request_bodies(rides, count: int = 1000) -> list[bytes]:
    """JSON bodies for `count` real rides that pass validation (the same for every server)."""
    from ride_duration.rides import BadRide, validate_ride

    bodies = []
    shuffled = rides.sample(frac=1.0, random_state=42)
    for pu, do, distance in zip(shuffled["PULocationID"], shuffled["DOLocationID"], shuffled["trip_distance"]):
        ride = {"PULocationID": int(pu), "DOLocationID": int(do), "trip_distance": float(distance)}
        try:
            validate_ride(ride)
        except BadRide:  # e.g. the odd 10,000-mile trip in TLC data: ours would rightly refuse it
            continue
        bodies.append(json.dumps(ride).encode())
        if len(bodies) == count:
            break
    return bodies


def servers(course_file: Path, model_uri: str, forest_uri: str) -> list[tuple[str, str, list[str], dict]]:
    """(key, label, command with {port}, environment) for each server measured."""
    gunicorn = local_stack.bin_path("gunicorn")
    gunicorn_conf = str(ROOT / "web-service" / "gunicorn.conf.py")
    our_settings = {
        "BIND": f"{local_stack.HOST}:{{port}}",
        "WEB_CONCURRENCY": OUR_WORKERS,
        "GUNICORN_THREADS": OUR_THREADS,
    }
    course_env = {"COURSE_MODEL_FILE": str(course_file)}
    course_app = "benchmarks.course_predict:app"
    return [
        (
            "course-dev",
            "course: Flask dev server",
            [sys.executable, "-m", "flask", "--app", course_app, "run", "--host", local_stack.HOST, "--port", "{port}"],
            course_env,
        ),
        (
            "course-gunicorn",
            "course: gunicorn, as the course runs it (1 sync worker)",
            [gunicorn, "--bind", f"{local_stack.HOST}:{{port}}", "--no-control-socket", course_app],
            course_env,
        ),
        (
            "course-our-settings",
            f"course: gunicorn, our settings ({OUR_WORKERS} gthread workers x {OUR_THREADS} threads)",
            [
                gunicorn,
                "--bind",
                f"{local_stack.HOST}:{{port}}",
                "--no-control-socket",
                "--workers",
                OUR_WORKERS,
                "--worker-class",
                "gthread",
                "--threads",
                OUR_THREADS,
                course_app,
            ],
            course_env,
        ),
        (
            "ours",
            f"ours: gunicorn.conf.py ({OUR_WORKERS} gthread workers x {OUR_THREADS} threads), validation + metrics",
            [gunicorn, "-c", gunicorn_conf, "predict:app"],
            {"MODEL_URI": model_uri, **our_settings},
        ),
        (
            "ours-forest",
            "ours, serving the course's random forest (100 trees): same settings",
            [gunicorn, "-c", gunicorn_conf, "predict:app"],
            {"MODEL_URI": forest_uri, **our_settings},
        ),
        (
            "floor",
            "floor: Flask returning a constant answer, same gunicorn settings",
            [gunicorn, "-c", gunicorn_conf, "--pythonpath", str(ROOT), "benchmarks.web_floor:app"],
            our_settings,
        ),
    ]


def measure_all(server_list, bodies: list[bytes], logs: Path) -> dict:
    """Start every server, then measure them in interleaved rounds, so that the machine's noise
    (other jobs share these cores) falls on all of them alike. Returns {(key, connections): [Load]}."""
    running = {}
    try:
        for key, _, command, env in server_list:
            port = local_stack.free_port()
            command = [part.replace("{port}", str(port)) for part in command]
            env = {name: value.replace("{port}", str(port)) for name, value in env.items()}
            running[key] = (start_server(command, env, port, logs / f"{key}-{port}.log"), port)
            generate_load(port, bodies, 8, WARM_UP_REQUESTS, TIME_CAP)
        loads = {}
        for _ in range(ROUNDS):
            for key, (_, port) in running.items():
                for connections in CONNECTIONS:
                    load = generate_load(port, bodies, connections, MAX_REQUESTS[connections], TIME_CAP)
                    loads.setdefault((key, connections), []).append(load)
        return loads
    finally:
        for process, _ in running.values():
            local_stack.stop(process)


def check_same_answers(course_file: Path, model_uri: str) -> None:
    """Both servers' models give the example ride the same duration (else the race is unfair)."""
    from ride_duration.features import ride_features
    from ride_duration.model import load_model

    with open(course_file, "rb") as f_in:
        dv, model = pickle.load(f_in)  # a pickle written just now, so safe to load
    ours = load_model(model_uri).pipeline.predict([ride_features(EXAMPLE_RIDE)])[0]
    course = model.predict(dv.transform(ride_features(EXAMPLE_RIDE)))[0]
    if abs(ours - course) > 1e-9:
        raise AssertionError(f"the two models disagree on the example ride: {ours} != {course}")


# --- during a model swap: the alias moves under load ---------------------------------------------------

SWAP_SECONDS = 12.0  # each measurement, steady and during the swap
SWAP_AFTER = 3.0  # seconds into the second measurement when @production moves
SWAP_POLL_SECONDS = "1"  # MODEL_POLL_SECONDS of the service: the swap lands well inside the measurement


def register_two_versions(rides, folder: Path) -> str:
    """Versions 1 and 2 of ride-duration (LinearRegression fitted on the month and on its first half, so they
    answer differently) in an embedded store of their own, @production at 1; returns its tracking URI."""
    import mlflow
    from mlflow import MlflowClient
    from sklearn.linear_model import LinearRegression

    from ride_duration import train
    from ride_duration.model import PRODUCTION_ALIAS, REGISTERED_MODEL
    from ride_duration.settings import exported

    uri = f"sqlite:///{folder / 'swap-mlflow.db'}"
    with exported({"MLFLOW_TRACKING_URI": uri}):
        mlflow.set_tracking_uri(uri)
        mlflow.create_experiment(train.EXPERIMENT, artifact_location=(folder / "swap-artifacts").as_uri())
        train.setup_tracking()
        for part in (rides, rides.iloc[: len(rides) // 2]):
            pipeline = train.fit(train.make_pipeline(LinearRegression()), part)
            info = train.log_pipeline(pipeline, params={"rides": len(part)}, metrics={}, tags={})
            mlflow.register_model(info.model_uri, REGISTERED_MODEL)
        MlflowClient(uri).set_registered_model_alias(REGISTERED_MODEL, PRODUCTION_ALIAS, "1")
    return uri


def measure_swap(bodies: list[bytes], tracking: str, logs: Path) -> tuple[Load, Load, str]:
    """Ours following @production: SWAP_SECONDS of load as it is, then SWAP_SECONDS during which the alias moves
    from version 1 to 2 (at SWAP_AFTER). Returns both loads and the registered version answering afterwards."""
    from mlflow import MlflowClient

    from ride_duration.model import PRODUCTION_ALIAS, REGISTERED_MODEL

    port = local_stack.free_port()
    env = {
        "MODEL_URI": f"models:/{REGISTERED_MODEL}@{PRODUCTION_ALIAS}",
        "MLFLOW_TRACKING_URI": tracking,
        "MODEL_POLL_SECONDS": SWAP_POLL_SECONDS,
        "BIND": f"{local_stack.HOST}:{port}",
        "WEB_CONCURRENCY": OUR_WORKERS,
        "GUNICORN_THREADS": OUR_THREADS,
    }
    command = [local_stack.bin_path("gunicorn"), "-c", str(ROOT / "web-service" / "gunicorn.conf.py"), "predict:app"]
    process = start_server(command, env, port, logs / f"swap-{port}.log")
    try:
        generate_load(port, bodies, 8, WARM_UP_REQUESTS, TIME_CAP)
        steady = generate_load(port, bodies, 8, 10**7, SWAP_SECONDS)
        mover = threading.Timer(
            SWAP_AFTER,
            lambda: MlflowClient(tracking).set_registered_model_alias(REGISTERED_MODEL, PRODUCTION_ALIAS, "2"),
        )
        mover.start()
        during = generate_load(port, bodies, 8, 10**7, SWAP_SECONDS)
        mover.join()
        after = requests.post(f"http://{local_stack.HOST}:{port}/predict", json=EXAMPLE_RIDE, timeout=10).json()
        return steady, during, after["registered_version"]
    finally:
        local_stack.stop(process)


def run_swap(rides=None, data_label: str | None = None) -> Table:
    """The web service's requests/s and p99 during a model swap, beside the same service in steady state."""
    if rides is None:
        rides, data_label = training_data()
    with tempfile.TemporaryDirectory(prefix="bench-web-swap-") as tmp:
        folder = Path(tmp)
        tracking = register_two_versions(rides, folder)
        steady, during, serving_after = measure_swap(request_bodies(rides), tracking, folder)
    label = f"ours: gunicorn.conf.py ({OUR_WORKERS} x {OUR_THREADS}), following @production every {SWAP_POLL_SECONDS} s"
    rows = [
        [
            f"{label}, steady",
            8,
            steady.requests,
            steady.errors,
            steady.per_second,
            steady.percentile_ms(50),
            steady.percentile_ms(99),
        ],
        [
            f"{label}, the alias moves v1 -> v2",
            8,
            during.requests,
            during.errors,
            during.per_second,
            during.percentile_ms(50),
            during.percentile_ms(99),
        ],
    ]
    ratio = during.percentile_ms(99) / steady.percentile_ms(99)
    note = (
        f"Models: two LinearRegressions on {data_label} (the month, its first half), registered as versions 1 and 2 "
        f"in an embedded store. Each row is one {SWAP_SECONDS:.0f} s measurement at 8 keep-alive connections; in the "
        f"second, @production moves to version 2 after {SWAP_AFTER:.0f} s, and each worker loads, checks and swaps it "
        f"in at its next check (afterwards the service answered with {serving_after}). p99 during the swap is "
        f"{ratio:.2f}x steady state (targets: 0 errors, under 3x)."
    )
    return Table(
        title="Web service during a model swap (the registry alias moves under load)",
        headers=["server", "connections", "requests", "errors", "requests/s", "p50 ms", "p99 ms"],
        rows=rows,
        note=note,
    )


def run() -> list[Table]:
    rides, data_label = training_data()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        folder = Path(tmp)
        course_file, model_uri, forest_uri = save_models(rides, folder)
        check_same_answers(course_file, model_uri)
        bodies = request_bodies(rides)
        server_list = servers(course_file, model_uri, forest_uri)
        loads = measure_all(server_list, bodies, folder)
    median = {
        key: (
            float(np.median([load.per_second for load in runs])),
            float(np.median([load.percentile_ms(50) for load in runs])),
            float(np.median([load.percentile_ms(99) for load in runs])),
        )
        for key, runs in loads.items()
    }
    rows = [
        [
            label,
            connections,
            sum(load.requests for load in loads[key, connections]),
            sum(load.errors for load in loads[key, connections]),
            *median[key, connections],
        ]
        for key, label, _, _ in server_list
        for connections in CONNECTIONS
    ]
    rows += [
        [
            "ours / floor",
            connections,
            "",
            "",
            f"{median['ours', connections][0] / median['floor', connections][0]:.0%}",
            "",
            "",
        ]
        for connections in CONNECTIONS
    ]
    ours, course, course_our_settings = (
        median[key, 8][0] for key in ("ours", "course-gunicorn", "course-our-settings")
    )
    note = (
        f"Model: DictVectorizer + LinearRegression trained on {data_label} (the forest: the course's "
        f"RandomForestRegressor, 100 trees, on its plausible rides); bodies: 1,000 of its rides, cycled. "
        f"requests/s, p50 and p99 are medians of {ROUNDS} interleaved rounds (requests and errors are totals); "
        f"each round stops at {MAX_REQUESTS[1]:,} (1 connection) / {MAX_REQUESTS[8]:,} (8 connections) requests "
        f"or {TIME_CAP:.0f} s. Client and servers share this machine's {os.cpu_count()} cores with other jobs "
        f"(load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after).\n"
        f"At 8 connections ours does {ours / course:.2f}x the course's gunicorn (as the course runs it) and "
        f"{ours / course_our_settings:.2f}x the course's app under our gunicorn settings and "
        f"{ours / median['floor', 8][0]:.0%} of the constant-answer floor; ours p99 {median['ours', 8][2]:.2f} ms "
        f"(targets: >= 1.5x the course's gunicorn, >= 90% of the floor, p99 < 10 ms). "
        f"Serving the forest instead, ours does {median['ours-forest', 8][0] / ours:.0%} of its linear "
        f"requests/s: for every request scikit-learn runs each of the 100 trees in turn, with Python's overhead per tree."
    )
    return [
        Table(
            title="Web service: requests/s and latency on loopback (ours vs the course's predict.py)",
            headers=["server", "connections", "requests", "errors", "requests/s", "p50 ms", "p99 ms"],
            rows=rows,
            note=note,
        ),
        run_swap(rides, data_label),
    ]
