"""The READMEs' commands are tests: every shell block of the five READMEs runs as written, in order,
one bash session per README, in a fresh copy of the project (tests/readme_blocks.py says how).

README.md runs from a clean copy (its Quick start makes the environment and runs the tutorial); the
other READMEs each start from a fresh copy of the project as it is after that Quick start.
(tests/unit/test_readme_blocks.py checks the markers, the printed-text matching and the skips without running.)"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from ride_duration import local_stack
from tests.helpers import ROOT, require_real_months
from tests.readme_blocks import READMES, network_namespace_works, run_readme

DEFAULT_PORTS = [4200, 4566, 5000, 9090, 9696]  # Prefect, moto_server, MLflow, Prometheus, the web service
OWN_NETWORK = network_namespace_works()
# What the READMEs' commands read: green 2021-01..05 (the tutorial, the backfills, the homework, the producer).
REAL_MONTHS = [("green", 2021, m) for m in range(1, 6)]


def shell_env(with_uv: bool = False) -> dict:
    """A reader's environment: this one's PATH (without a virtual environment's bin, with the uv that
    made this .venv when asked), HOME, locale, uv and pip settings, TAXI_DATA_DIR; none of the settings
    the tests make for themselves (AWS, MLflow, Prefect, ports)."""
    path = [p for p in os.environ.get("PATH", "/usr/bin:/bin").split(":") if not (Path(p) / "activate").exists()]
    if with_uv:
        path.insert(0, str(Path(local_stack.uv_binary()).parent))
    keep = {"HOME", "USER", "LANG", "TERM", "TZ", "TAXI_DATA_DIR", "CI", "PYTHONDONTWRITEBYTECODE"}
    prefixes = ("UV_", "PIP_", "XDG_", "LC_", "SSL_")
    env = {k: v for k, v in os.environ.items() if k in keep or k.startswith(prefixes)}
    return {**env, "PATH": ":".join(path)}


def running(pid: int) -> bool:
    """Whether the process is alive (a zombie waiting for init to reap it is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def run_sample(tmp_path: Path, readme_text: str, own_network: bool = False):
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text(textwrap.dedent(readme_text))
    return run_readme(project, "README.md", shell_env(), tmp_path / "logs", own_network)


# --- the conventions, on READMEs written for the test -------------------------------------------

SAMPLE = """\
    # Sample

    ```bash
    export GREETING=hello
    mkdir -p sub && cd sub
    ```

    A server in a terminal of its own:

    <!-- readme-test: background until "serving" -->
    ```bash
    python3 -c "import time; print('serving', flush=True); time.sleep(600)" &
    echo started; wait
    ```

    ```bash
    echo "$GREETING from $(basename "$PWD")"   # prints: hello from sub
    ```

    <!-- readme-test: skip (needs a Docker engine) -->
    ```bash
    docker build .
    ```

    ```text
    not a command
    ```

    ```console
    $ echo one two
    one two
    ```
"""


def test_blocks_run_in_one_session_in_order(tmp_path):
    report = run_sample(tmp_path, SAMPLE)
    assert report.failures == [], report.failure_text()
    assert [r.status for r in report.results] == ["passed", "passed", "passed", "skipped", "passed"]
    assert report.skipped == [("README.md:21", "needs a Docker engine")]
    assert [r.block.line for r in report.results] == [3, 11, 16, 21, 29]


def test_background_blocks_are_stopped_at_the_end(tmp_path):
    text = SAMPLE.replace("time.sleep(600)", "import os; open('pid', 'w').write(str(os.getpid())); time.sleep(600)")
    report = run_sample(tmp_path, text)
    assert report.failures == [], report.failure_text()
    pid = int((tmp_path / "project" / "sub" / "pid").read_text())  # the session had gone into sub/
    assert not running(pid)


def test_a_server_in_a_session_of_its_own_is_stopped_too(tmp_path):
    report = run_sample(
        tmp_path,
        """\
        ```bash
        setsid python3 -c "import os, time; open('pid', 'w').write(str(os.getpid())); time.sleep(600)" &
        sleep 1
        ```
    """,
    )
    assert report.failures == [], report.failure_text()
    assert not running(int((tmp_path / "project" / "pid").read_text()))


def test_a_broken_command_is_reported_with_its_line_and_output(tmp_path):
    report = run_sample(
        tmp_path,
        """\
        # Sample

        ```bash
        echo fine
        ```

        Then:

        ```bash
        echo about to fail
        ls /no/such/folder
        echo never printed
        ```

        ```bash
        echo not reached
        ```
    """,
    )
    assert [r.status for r in report.results] == ["passed", "failed", "not run"]
    failure = report.failure_text()
    assert failure.startswith("README.md:9: block failed")
    assert "about to fail" in failure and "/no/such/folder" in failure
    assert "never printed" not in report.results[1].output


def test_output_that_differs_from_the_readme_fails(tmp_path):
    report = run_sample(
        tmp_path,
        """\
        ```bash
        echo '{"duration": 17.5}'   # prints: {"duration": 25.8...}
        ```
    """,
    )
    assert report.results[0].status == "failed"
    assert "does not show" in report.failure_text() and "17.5" in report.failure_text()


def test_a_block_that_hangs_times_out(tmp_path):
    started = time.monotonic()
    report = run_sample(
        tmp_path,
        """\
        <!-- readme-test: timeout 2 -->
        ```bash
        sleep 600
        ```
    """,
    )
    assert report.results[0].status == "timed out"
    assert time.monotonic() - started < 30


def test_a_server_that_dies_before_it_is_ready_fails(tmp_path):
    report = run_sample(
        tmp_path,
        """\
        <!-- readme-test: background until "Listening" -->
        ```bash
        echo "cannot bind"; exit 3
        ```
    """,
    )
    assert report.results[0].status == "failed"
    assert "cannot bind" in report.failure_text()


@pytest.mark.skipif(not OWN_NETWORK, reason="unshare -rn is not available here")
def test_a_network_namespace_gives_the_readme_its_own_default_ports(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        report = run_sample(
            tmp_path,
            f"""\
            ```bash
            python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', {port})); print('bound')"  # prints: bound
            ```
        """,
            own_network=True,
        )
    assert report.failures == [], report.failure_text()


# --- the project's READMEs ----------------------------------------------------------------------


def copy_project(destination: Path) -> None:
    """What a reader's clone holds: the tracked files and the new ones git does not ignore, as they
    are in this working tree (so an edited README is tested before it is committed)."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def copy_tree(source: Path, destination: Path) -> None:
    """A copy of a project folder; .venv hard-linked (uv itself links it from its cache and replaces
    files rather than writing into them), the rest copied."""
    destination.mkdir(parents=True)
    for entry in source.iterdir():
        flags = "-al" if entry.name == ".venv" else "-a"
        subprocess.run(["cp", flags, str(entry), str(destination / entry.name)], check=True)


def in_own_network(command: list[str]) -> list[str]:
    return (
        ["unshare", "-rn", "bash", "-c", 'ip link set lo up && exec "$@"', "bash", *command] if OWN_NETWORK else command
    )


@pytest.fixture(scope="session")
def after_quickstart(tmp_path_factory):
    """The project as it is after README.md's Quick start (`make tutorial` in a fresh copy), and a
    snapshot of it to restore at the same path (mlflow.db and .venv hold absolute paths)."""
    base = tmp_path_factory.mktemp("quickstart")
    project = base / "project"
    copy_project(project)
    log = base / "make-tutorial.log"
    with open(log, "wb") as out:
        done = subprocess.run(
            in_own_network(["make", "tutorial"]),
            cwd=project,
            env=shell_env(with_uv=True),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=1800,
        )
    if done.returncode:
        pytest.fail(f"the Quick start's make tutorial failed:\n{log.read_text()[-5000:]}")
    snapshot = base / "snapshot"
    copy_tree(project, snapshot)
    return project, snapshot


def check_default_ports_free() -> None:
    """Without a network namespace the README's servers take their default ports on this machine."""
    for port in DEFAULT_PORTS:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.fail(
                    f"port {port} is in use and unshare -rn is not available: the README's commands "
                    "use the default ports; stop what listens there"
                )


def test_a_broken_readme_fails_at_its_line(tmp_path):
    """A copy of the project whose README.md has a typo in its first command: the README test names
    that block's line, shows what make said, and runs nothing after it."""
    project = tmp_path / "project"
    copy_project(project)
    readme = (project / "README.md").read_text()
    assert readme.count("make tutorial   #") == 1
    (project / "README.md").write_text(readme.replace("make tutorial   #", "make tutorail   #"))
    line = next(n for n, text in enumerate(readme.splitlines(), 1) if text.startswith("make tutorial   #")) - 1
    report = run_readme(project, "README.md", shell_env(), tmp_path / "logs", OWN_NETWORK)
    assert [r.status for r in report.results if r.status != "skipped"][:2] == ["failed", "not run"]
    assert report.failure_text().startswith(f"README.md:{line}: block failed")
    assert "No rule to make target 'tutorail'" in report.failures[0].output
    assert report.count("passed") == 0


def test_a_server_that_answers_a_url(tmp_path):
    port = local_stack.free_port()
    report = run_sample(
        tmp_path,
        f"""\
        <!-- readme-test: background until http://127.0.0.1:{port}/ -->
        ```bash
        python3 -m http.server {port} --bind 127.0.0.1
        ```

        ```bash
        python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/').status)"  # prints: 200
        ```
    """,
    )
    assert report.failures == [], report.failure_text()
    assert "GET / HTTP" in report.background_logs["README.md:2"]


@pytest.mark.slow
@pytest.mark.timeout(5400)
@pytest.mark.parametrize("readme", READMES)
def test_readme_commands_work(readme, tmp_path, request):
    """Every shell block of the README, run as written in a fresh copy, passes (or is marked skip)."""
    require_real_months(*REAL_MONTHS)
    if not OWN_NETWORK:
        check_default_ports_free()
    if readme == "README.md":
        project = tmp_path / "project"
        copy_project(project)
    else:
        project, snapshot = request.getfixturevalue("after_quickstart")
        shutil.rmtree(project)
        copy_tree(snapshot, project)
    report = run_readme(project, readme, shell_env(with_uv=True), tmp_path / "logs", OWN_NETWORK)
    print(report.summary())
    assert not report.failures, report.failure_text()
    assert report.count("passed") + report.count("skipped") == len(report.results), report.summary()
