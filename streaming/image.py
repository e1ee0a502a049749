"""The Lambda image, laid out without Docker (there is no Docker engine here), so that tests and the
benchmark run the handler exactly as the image would:

- the task root: what streaming/Dockerfile's COPY lines put in ${LAMBDA_TASK_ROOT},
- a virtualenv with only the image's packages: what the Dockerfile's RUN line installs (the
  requirements file it copies, exported from the lock's `lambda` group, checked against its hashes
  as the RUN line asks) plus boto3 and its
  dependencies, which the base image brings, at the versions the lock gives this project,
- the handler named by the Dockerfile's CMD.

Packages come from the package index through uv (its cache when it has them, as pip would in the image).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from ride_duration import local_stack
from ride_duration.settings import PROJECT_ROOT

DOCKERFILE = PROJECT_ROOT / "streaming" / "Dockerfile"
BASE_IMAGE_PACKAGES = ["boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3"]


@dataclass
class LambdaImage:
    task_root: Path
    python: Path
    handler: str  # "module.function", from the CMD line


def dockerfile_parts(path: Path = DOCKERFILE) -> dict:
    """The base image, the COPY (source, destination in the task root) pairs, the requirements file
    (in the task root) the RUN line installs and whether it requires hashes, and the CMD handler."""
    text = path.read_text()
    install = re.search(r"^RUN pip install (.*)-r \$\{LAMBDA_TASK_ROOT\}/(\S+)", text, re.M)
    return {
        "base": re.search(r"^FROM (\S+)", text, re.M).group(1),
        "copies": re.findall(r"^COPY (\S+) \$\{LAMBDA_TASK_ROOT\}/(\S*)$", text, re.M),
        "requirements": install.group(2),
        "require_hashes": "--require-hashes" in install.group(1).split(),
        "handler": json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))[0],
    }


def build(dest: Path) -> LambdaImage:
    """Lay out the task root and the image's virtualenv under dest; raise CalledProcessError if uv cannot."""
    parts = dockerfile_parts()
    task_root = dest / "task"
    for source, target in parts["copies"]:
        destination = task_root / (target or Path(source).name)
        if (PROJECT_ROOT / source).is_dir():
            shutil.copytree(
                PROJECT_ROOT / source, destination, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True
            )
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(PROJECT_ROOT / source, destination)
    venv = dest / "venv"
    python = venv / "bin" / "python"
    uv = local_stack.uv_binary()
    run = dict(cwd=PROJECT_ROOT, check=True, capture_output=True, text=True, timeout=600)
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], **run)
    hashes = ["--require-hashes"] if parts["require_hashes"] else []
    requirements = str(task_root / parts["requirements"])
    subprocess.run([uv, "pip", "install", "--quiet", *hashes, "--python", str(python), "-r", requirements], **run)
    base_packages = [f"{name}=={version(name)}" for name in BASE_IMAGE_PACKAGES]
    subprocess.run([uv, "pip", "install", "--no-deps", "--quiet", "--python", str(python), *base_packages], **run)
    return LambdaImage(task_root=task_root, python=python, handler=parts["handler"])
