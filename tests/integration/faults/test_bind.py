"""Where gunicorn listens: loopback outside a container (nginx in front reaches it there), every interface
inside the container, as its Dockerfile says. Read from gunicorn's own resolved configuration
(`--print-config`), so no port is taken. gunicorn prints it before it loads the app, so no model is needed:
MODEL_URI names none, and the load that follows the print fails (in a second, not the seconds a model takes)."""

from __future__ import annotations

import os
import re
import subprocess

from ride_duration import local_stack
from tests.helpers import ROOT, WEB_SERVICE_COMMAND

NO_MODEL = "file:///no/model/needed"


def resolved_bind(command: list[str], env: dict, cwd=None) -> str:
    """The bind gunicorn resolves from its config and `env`, with BIND unset unless `env` sets it."""
    env = {**{name: value for name, value in os.environ.items() if name != "BIND"}, "MODEL_URI": NO_MODEL, **env}
    run = subprocess.run(
        [*command, "--print-config"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,
    )
    found = re.search(r"^bind\s*=\s*(.*)$", run.stdout, re.MULTILINE)
    assert found, run.stdout + run.stderr
    return found.group(1)


def dockerfile_env() -> dict:
    """The ENV pairs of web-service/Dockerfile (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "web-service" / "Dockerfile").read_text())
    pairs = [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("ENV ")]
    return dict(pair.split("=", 1) for line in pairs for pair in line.split())


def test_gunicorn_listens_on_loopback_but_in_the_container_on_every_interface():
    assert resolved_bind(WEB_SERVICE_COMMAND, {}) == "['127.0.0.1:9696']"
    # The Dockerfile's ENV and CMD (`gunicorn predict:app`), in the folder it copies gunicorn.conf.py to.
    in_container = [local_stack.bin_path("gunicorn"), "predict:app"]
    env = {**dockerfile_env(), "MODEL_URI": NO_MODEL}
    assert resolved_bind(in_container, env, cwd=ROOT / "web-service") == "['0.0.0.0:9696']"
