"""The web service under a real gunicorn on loopback: what the in-process tests (tests/unit/test_web_app.py)
cannot show. A model loaded from the registry and from its artifact URI, metrics summed over gunicorn's
workers, body limits as gunicorn passes bodies on (chunked ones too), start-up failures, client.py over
HTTP, the container's install and start from requirements.txt alone, and notebook 03 under papermill."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from ride_duration import local_stack
from ride_duration.features import ride_features
from ride_duration.rides import EXAMPLE_RIDE, validate_ride
from tests.helpers import ROOT
from tests.helpers import WEB_SERVICE_COMMAND as PREDICT_COMMAND
from tests.helpers import start_web_service as start_service

WEB = ROOT / "web-service"
API_KEY = "s3cret-key"


@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prometheus")


@pytest.fixture(scope="module")
def service(registered_model, logs_dir, metrics_dir):
    """Served from the artifact URI, with MLFLOW_TRACKING_URI pointing at a port where nothing
    listens: serving must not need the tracking server."""
    dead_tracking = f"http://{local_stack.HOST}:{local_stack.free_port()}"
    process, url, log = start_service(
        logs_dir,
        "predict",
        {
            "MODEL_URI": registered_model["artifact_uri"],
            "MLFLOW_TRACKING_URI": dead_tracking,
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        },
    )
    yield url
    local_stack.stop(process)
    print(local_stack.log_tail(log))


@pytest.fixture(scope="module")
def keyed_service(registered_model, logs_dir):
    """Served through the registry alias (models:/ride-duration@production), with an API key."""
    process, url, log = start_service(
        logs_dir,
        "predict-keyed",
        {
            "MODEL_URI": registered_model["uri"],
            "MLFLOW_TRACKING_URI": registered_model["tracking_uri"],
            "API_KEY": API_KEY,
        },
    )
    yield url
    local_stack.stop(process)
    print(local_stack.log_tail(log))


@pytest.fixture(scope="module")
def validation_rides(training_months):
    """Valid rides of the validation month (real green 2021-02 in CI), in the API's types."""
    from ride_duration.data import read_month

    month = read_month(training_months["taxi_type"], *training_months["val"], synthetic=training_months["synthetic"])
    month = month.dropna(subset=["PULocationID", "DOLocationID", "trip_distance"]).sample(n=3000, random_state=3)
    rides = []
    for pu, do, distance in zip(month["PULocationID"], month["DOLocationID"], month["trip_distance"]):
        ride = {"PULocationID": int(pu), "DOLocationID": int(do), "trip_distance": float(distance)}
        try:
            rides.append(validate_ride(ride))
        except ValueError:
            continue
    return rides


def expected(registered_model, rides) -> np.ndarray:
    return registered_model["pipeline"].predict([ride_features(ride) for ride in rides])


# --- answers -------------------------------------------------------------------------------------


def test_course_example_ride(service, registered_model):
    response = requests.post(f"{service}/predict", json=EXAMPLE_RIDE, timeout=10)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["duration"] == pytest.approx(expected(registered_model, [EXAMPLE_RIDE])[0], abs=1e-9)
    assert answer["model_version"] == registered_model["model_id"]
    assert answer["registered_version"] is None  # loaded by artifact URI: the registry was not asked


def test_chunked_body_is_answered(service, registered_model):
    """A body without Content-Length (Transfer-Encoding: chunked) is read whole, not cut short."""
    chunks = iter([b'{"PULocationID": 10, ', b'"DOLocationID": 50, "trip_distance": 40}'])
    response = requests.post(
        f"{service}/predict", data=chunks, headers={"Content-Type": "application/json"}, timeout=10
    )
    assert response.status_code == 200, response.text
    assert response.json()["duration"] == pytest.approx(expected(registered_model, [EXAMPLE_RIDE])[0], abs=1e-9)


def test_client_script_prints_the_answer(service, registered_model):
    run = subprocess.run(
        [sys.executable, str(WEB / "client.py"), f"{service}/predict"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout.split("\n", 1)[1])
    assert answer["duration"] == pytest.approx(expected(registered_model, [EXAMPLE_RIDE])[0], abs=1e-9)


def test_list_of_rides_gets_answers_in_order(service, registered_model, validation_rides):
    rides = validation_rides[:1000]
    response = requests.post(f"{service}/predict", json=rides, timeout=30)
    assert response.status_code == 200, response.text
    answers = response.json()
    assert len(answers) == len(rides)
    assert {a["model_version"] for a in answers} == {registered_model["model_id"]}
    np.testing.assert_allclose([a["duration"] for a in answers], expected(registered_model, rides), rtol=0, atol=1e-9)


def test_health_names_the_model(service, registered_model):
    response = requests.get(f"{service}/health", timeout=10)
    assert response.status_code == 200
    health = response.json()
    assert health.pop("loaded_at") <= time.time()
    assert health == {
        "status": "ready",
        "model_uri": registered_model["artifact_uri"],
        "model_version": registered_model["model_id"],
        "registered_version": None,
        "follows": None,  # an artifact URI names one model for good: nothing polls
        "last_poll": None,
        "failed_polls": 0,
    }


def scrape(url: str) -> dict:
    """{(metric sample name, frozenset(labels)): value} from /metrics."""
    response = requests.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def settled_scrape(url: str, timeout: float = 10) -> dict:
    """/metrics once two scrapes more than a write interval apart agree: every worker writes its pending
    updates once a second (ride_duration.metrics), so then none are left unwritten."""

    def predict_samples(samples: dict) -> dict:  # a scrape counts itself: leave the metrics endpoint out
        return {key: value for key, value in samples.items() if ("endpoint", "metrics_page") not in key[1]}

    deadline = time.monotonic() + timeout
    previous = scrape(url)
    while True:
        time.sleep(1.2)
        current = scrape(url)
        if predict_samples(current) == predict_samples(previous) or time.monotonic() > deadline:
            return current
        previous = current


def test_metrics_add_up_over_every_worker(service, registered_model, metrics_dir):
    """Requests land on both gunicorn workers; /metrics must count all of them, whichever answers."""
    from concurrent.futures import ThreadPoolExecutor

    predict_ok = ("ride_duration_requests_total", frozenset({("endpoint", "predict"), ("status", "200")}))
    predict_422 = ("ride_duration_requests_total", frozenset({("endpoint", "predict"), ("status", "422")}))
    predicted = ("ride_duration_predicted_minutes_count", frozenset())
    latency = ("ride_duration_request_seconds_count", frozenset({("endpoint", "predict")}))
    before = settled_scrape(service)  # earlier tests' requests all written
    with ThreadPoolExecutor(8) as pool:  # concurrent new connections, so that both workers get some
        statuses = list(
            pool.map(
                lambda _: requests.post(f"{service}/predict", json=EXAMPLE_RIDE, timeout=10).status_code, range(40)
            )
        )
    assert statuses == [200] * 40
    assert len(list(metrics_dir.glob("counter_*.db"))) >= 2, "only one worker served: the test proves nothing"
    for _ in range(3):
        assert requests.post(f"{service}/predict", json={"PULocationID": 10}, timeout=10).status_code == 422
    assert requests.post(f"{service}/predict", json=[EXAMPLE_RIDE] * 5, timeout=10).status_code == 200
    expected = {predict_ok: 41, predict_422: 3, predicted: 45, latency: 44}

    # Each worker writes its updates once a second (ride_duration.metrics): wait up to a few of them.
    deadline = time.monotonic() + 5
    while True:
        after = scrape(service)
        if all(after.get(m, 0) - before.get(m, 0) == n for m, n in expected.items()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert after[predict_ok] - before.get(predict_ok, 0) == 41
    assert after[predict_422] - before.get(predict_422, 0) == 3
    assert after[predicted] - before.get(predicted, 0) == 45
    assert after[latency] - before.get(latency, 0) == 44
    info = {
        dict(labels)["model_version"]: value
        for (name, labels), value in after.items()
        if name == "ride_duration_model_info"
    }
    assert info == {registered_model["model_id"]: 1.0}


# --- errors --------------------------------------------------------------------------------------

# Bodies as gunicorn hands them to the app: a declared length over the limit, and chunked bodies (no
# length at all) that must be refused whole, not cut at the limit and parsed. The other bad inputs are
# checked in-process (tests/unit/test_web_app.py).
BAD_REQUESTS = {
    "too many rides": ({"json": [EXAMPLE_RIDE] * 1001}, 413, "the limit is 1000"),
    "oversized chunked body": (
        {"data": iter([b"[" + b" " * 300_000 + b"]"]), "headers": {"Content-Type": "application/json"}},
        413,
        "larger than the limit",
    ),
    "oversized body": (
        {"data": b" " * 300_000 + json.dumps(EXAMPLE_RIDE).encode(), "headers": {"Content-Type": "application/json"}},
        413,
        "larger than the limit of 262144 bytes",
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_body_limits_hold_through_gunicorn(service, case):
    kwargs, status, message = BAD_REQUESTS[case]
    response = requests.post(f"{service}/predict", timeout=30, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert message in response.json()["message"]


def test_connection_stays_usable_after_a_refused_body(service, registered_model):
    """A body refused unread is more than gunicorn drains: the 413 must say Connection: close, so
    that a keep-alive client opens a new connection instead of writing into a closed one."""
    headers = {"Content-Type": "application/json"}
    with requests.Session() as session:
        for size in (300_000, 1_000_000):
            refused = session.post(f"{service}/predict", data=b" " * size, headers=headers, timeout=10)
            assert refused.status_code == 413 and refused.headers["Connection"] == "close"
            answer = session.post(f"{service}/predict", json=EXAMPLE_RIDE, timeout=10)
            assert answer.status_code == 200 and answer.headers["Connection"] == "keep-alive"


def test_alias_uri_and_api_key(keyed_service, registered_model):
    """models:/ride-duration@production resolves through the registry; /predict wants the key."""
    url = f"{keyed_service}/predict"
    assert requests.post(url, json=EXAMPLE_RIDE, timeout=10).status_code == 401
    wrong = requests.post(url, json=EXAMPLE_RIDE, headers={"X-API-Key": "guess"}, timeout=10)
    assert wrong.status_code == 401 and "X-API-Key" in wrong.json()["message"]
    answer = requests.post(url, json=EXAMPLE_RIDE, headers={"X-API-Key": API_KEY}, timeout=10).json()
    assert answer["duration"] == pytest.approx(expected(registered_model, [EXAMPLE_RIDE])[0], abs=1e-9)
    assert answer["model_version"] == registered_model["model_id"]
    assert answer["registered_version"] == f"ride-duration/{registered_model['version']}"
    health = requests.get(f"{keyed_service}/health", timeout=10)  # no key needed to ask for health
    assert health.status_code == 200 and health.json()["model_uri"] == registered_model["uri"]
    assert health.json()["follows"] == {"alias": "ride-duration@production", "poll_seconds": 30}
    assert health.json()["last_poll"]["outcome"] == "unchanged"  # each worker checks once before it serves


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"MODEL_URI": "file:///nowhere/at/all"}, "predict.py: cannot load model file:///nowhere/at/all"),
        (
            {"MODEL_URI": "models:/no-such-model@production"},
            "predict.py: cannot load model models:/no-such-model@production",
        ),
        # gunicorn.conf.py reads the same settings before gunicorn imports predict.py, so it meets a bad one first
        ({"MAX_RIDES": "lots"}, "gunicorn.conf.py: MAX_RIDES must be a positive integer"),
    ],
    ids=["missing artifact", "unknown registered model", "bad setting"],
)
def test_bad_configuration_stops_start_up_with_one_line(registered_model, env, reason):
    env = {
        **os.environ,
        "MODEL_URI": registered_model["artifact_uri"],
        "BIND": f"{local_stack.HOST}:{local_stack.free_port()}",
        "MLFLOW_TRACKING_URI": registered_model["tracking_uri"],
        **env,
    }
    run = subprocess.run(PREDICT_COMMAND, env=env, capture_output=True, text=True, timeout=120, start_new_session=True)
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert run.returncode != 0
    assert len(lines) == 1, lines
    assert lines[0].startswith(reason), lines[0]


# --- packaging: requirements, the container's install and start -----------------------------------


def without_header(text: str) -> list[str]:
    """requirements.txt minus uv's header comment (which names the output file)."""
    lines = text.splitlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return lines


def test_requirements_are_in_sync_with_the_lock(tmp_path):
    fresh = tmp_path / "requirements.txt"
    subprocess.run(
        [
            local_stack.uv_binary(),
            "export",
            "--frozen",
            "--only-group",
            "web",
            "--no-emit-project",
            "-o",
            str(fresh),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert without_header((WEB / "requirements.txt").read_text()) == without_header(fresh.read_text()), (
        "web-service/requirements.txt is stale; regenerate it (see web-service/README.md)"
    )


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of web-service/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (WEB / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [tuple(line.split(None, 1)) for line in lines]


def replay_dockerfile(app_root: Path, venv: Path) -> tuple[Path, dict, list[str]]:
    """Do what `docker build` would, outside a container: the Python version, the COPYs into
    WORKDIR, ENV, the pip install (as uv pip install into venv); return (workdir, env, CMD)."""
    workdir, env, command = app_root, {}, None
    for instruction, arguments in dockerfile_instructions():
        if instruction == "FROM":
            assert arguments.startswith(f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"), (
                "the image's Python must be the one this test installs into"
            )
        elif instruction == "WORKDIR":
            workdir = app_root / arguments.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction == "ENV":
            env.update(dict(pair.split("=", 1) for pair in arguments.split()))
        elif instruction == "COPY":
            *sources, target = arguments.split()
            for source in sources:
                destination = workdir / target
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, destination, ignore=shutil.ignore_patterns("__pycache__"))
                elif target.endswith("/") or len(sources) > 1:
                    destination.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / source, destination / Path(source).name)
                else:
                    shutil.copy(ROOT / source, destination)
        elif instruction == "RUN" and arguments.startswith("pip install"):
            assert arguments == "pip install --require-hashes -r requirements.txt"
            subprocess.run(
                [
                    local_stack.uv_binary(),
                    "pip",
                    "install",
                    "--require-hashes",
                    "--python",
                    str(venv / "bin" / "python"),
                    "-r",
                    str(workdir / "requirements.txt"),
                ],
                check=True,
                capture_output=True,
                timeout=600,
            )
        elif instruction == "RUN":
            assert arguments.startswith("useradd "), f"a RUN step this test does not replay: {arguments}"
        elif instruction == "CMD":
            command = json.loads(arguments)
        else:
            assert instruction in ("USER", "EXPOSE", "HEALTHCHECK"), f"unexpected Dockerfile instruction {instruction}"
    return workdir, env, command


def test_fresh_venv_from_requirements_runs_the_dockerfile_cmd(tmp_path, registered_model, logs_dir):
    """The container's install and start, without Docker: a venv holding requirements.txt and
    nothing else, the Dockerfile's COPY layout, its CMD verbatim, and an answer to the example ride."""
    venv = tmp_path / "venv"
    subprocess.run(
        [local_stack.uv_binary(), "venv", "--python", sys.executable, str(venv)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    workdir, image_env, command = replay_dockerfile(tmp_path / "image", venv)
    lean = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.util as u; print([m for m in ('pandas', 'moto', 'jupyterlab', 'ipykernel', 'papermill') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert lean.stdout.strip() == "[]", f"the image would carry {lean.stdout}"
    port = local_stack.free_port()
    url = f"http://{local_stack.HOST}:{port}"
    env = {
        **image_env,
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",  # the image's python and gunicorn first
        "PYTHONPATH": "",  # nothing from this project's environment: an empty value is ignored by Python
        "PROMETHEUS_MULTIPROC_DIR": "",
        "MODEL_URI": registered_model["artifact_uri"],
        "BIND": f"{local_stack.HOST}:{port}",
    }
    process = local_stack.start(
        command, logs_dir / f"image-{port}.log", f"{url}/health", env=env, timeout=90, cwd=workdir
    )
    try:
        answer = requests.post(f"{url}/predict", json=EXAMPLE_RIDE, timeout=10).json()
        assert answer["duration"] == pytest.approx(expected(registered_model, [EXAMPLE_RIDE])[0], abs=1e-9)
        assert answer["model_version"] == registered_model["model_id"]
    finally:
        local_stack.stop(process)


# --- notebook 03 ---------------------------------------------------------------------------------


def test_notebook_03_runs_under_papermill(tmp_path, registered_model):
    import papermill

    from ride_duration.notebooks import noise

    output = tmp_path / "03-web-service.ipynb"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "03-web-service.ipynb"),
        str(output),
        parameters={"model_uri": registered_model["artifact_uri"]},
        cwd=str(ROOT / "notebooks"),
        progress_bar=False,
        kernel_name="python3",
    )
    printed = "".join(
        "".join(out.get("text", ""))
        for cell in json.loads(output.read_text())["cells"]
        if cell["cell_type"] == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream"
    )
    example = re.search(r"example ride: \{'duration': ([0-9.e+-]+)", printed)
    assert example, printed[:2000]
    assert float(example.group(1)) == pytest.approx(expected(registered_model, [EXAMPLE_RIDE])[0], abs=1e-9)
    assert "-> HTTP 200" in printed, "the gunicorn demo cell did not get an answer through client.py"
    assert noise(output) == []  # no library warnings or logs
