"""What the images and the uv bootstrap install is pinned by hash: every package of the images' requirement
files carries the lock's hashes and the Dockerfiles refuse anything else (pip --require-hashes); the uv that
`make` installs when there is none comes from a hash-pinned file the same way. (That the hashes are the
lock's is checked by the integration tests that re-run `uv export`.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import ROOT

IMAGES = {"web-service": "requirements.txt", "streaming": "requirements.txt"}
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def requirements(path: Path) -> list[str]:
    """The requirements of a pip requirements file, one string each (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def pinned_with_hashes(requirement: str) -> bool:
    return bool(re.match(r"^[A-Za-z0-9._-]+==\S+", requirement)) and len(HASH.findall(requirement)) >= 1


@pytest.mark.parametrize("folder", IMAGES)
def test_every_package_an_image_installs_is_pinned_with_hashes(folder):
    entries = requirements(ROOT / folder / IMAGES[folder])
    assert entries, f"{folder}/{IMAGES[folder]} names no package"
    unhashed = [entry.split()[0] for entry in entries if not pinned_with_hashes(entry)]
    assert unhashed == [], f"{folder}/{IMAGES[folder]}: not pinned with hashes (uv export without --no-hashes)"


def pip_installs(text: str) -> list[str]:
    """The pip install commands of a Dockerfile or Makefile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in text.splitlines() if re.search(r"\bpip install\b", line)]


@pytest.mark.parametrize("folder", IMAGES)
def test_the_image_installs_its_requirements_with_require_hashes(folder):
    dockerfile = (ROOT / folder / "Dockerfile").read_text()
    [copied] = re.findall(rf"^COPY {folder}/{IMAGES[folder]} (\S+)$", dockerfile, re.M)
    [install] = pip_installs(dockerfile)
    assert "--require-hashes" in install.split(), install
    assert install.endswith(f"-r {copied}"), install


def test_make_installs_uv_from_a_hash_pinned_file():
    makefile = (ROOT / "Makefile").read_text()
    [install] = pip_installs(makefile)
    pinned = re.fullmatch(r".*pip install (?:--quiet )?--require-hashes -r (\S+)", install)
    assert pinned, f"the uv bootstrap is not hash-pinned: {install}"
    [uv] = requirements(ROOT / pinned.group(1))
    assert re.match(r"^uv==\d+\.\d+\.\d+ ", uv) and pinned_with_hashes(uv), uv
