"""Writing a file so that it is whole or absent: the one atomic write every part of the project uses.

A download, a month file, a batch output, the runner's checkpoint: each is written to a temporary file
beside its destination and renamed over it only once complete (a rename is atomic on one file system),
so a failed or killed run never leaves half a file where a reader looks.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL_SUFFIX = ".part"  # what a file being written is called until it is complete


@contextmanager
def atomic_path(destination: str | Path) -> Iterator[Path]:
    """A temporary path beside destination to write to; it becomes destination only if the block finishes.

    The temporary file is `.<name>.<random>.part` in the destination's folder (created if missing); it
    is removed if the block raises. The finished file gets the usual permissions (umask), not a
    temporary file's private ones.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=PARTIAL_SUFFIX, dir=destination.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~UMASK)
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomically(destination: str | Path, data: bytes | str) -> Path:
    """Write bytes or text to destination whole, or not at all."""
    with atomic_path(destination) as temporary:
        if isinstance(data, str):
            temporary.write_text(data)
        else:
            temporary.write_bytes(data)
    return Path(destination)


def read_umask() -> int:
    """The process's umask; reading it means setting it, so it is read once, at import, before any threads."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = read_umask()
