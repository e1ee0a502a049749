"""Writing a file so that it is whole or absent: the one atomic write every part of the project uses.

A download, a month file, a batch output, the runner's checkpoint: each is written to a temporary file
beside its destination and renamed over it only once complete (a rename is atomic on one file system),
so a failed or killed run never leaves half a file where a reader looks.

A killed run cannot remove its temporary file, so every writer holds a lock on its own (flock, which
the system releases when the process dies, however it dies), and the next write to the same
destination removes the temporary files no one holds any more: they do not pile up. Only regular
files are written: a FIFO, a device or a folder at the destination is refused, not replaced.
"""

from __future__ import annotations

import fcntl
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL_SUFFIX = ".part"  # what a file being written is called until it is complete
# A temporary file younger than this is left alone by the sweep even if unlocked: its writer may be
# between creating it and locking it.
SWEEP_MIN_AGE_SECONDS = 2.0


class NotARegularFile(OSError):
    """The destination exists and is not a regular file (a FIFO, a device, a folder): it is left as it is."""


def check_regular_destination(destination: Path) -> None:
    """Raise NotARegularFile unless destination is missing or a regular file; never opens it (a FIFO would block)."""
    try:
        mode = os.stat(destination).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a folder"
            if stat.S_ISDIR(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "not a regular file"
        )
        raise NotARegularFile(f"{destination} is {kind}, not a regular file: only regular files are written")


@contextmanager
def partial_file(folder: Path, name: str) -> Iterator[Path]:
    """A new, locked temporary file `.<name>.<random>.part` in folder (created if missing), removed when the
    block ends; first, the temporary files of the same name left by writers that died are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    remove_abandoned(folder, name)
    handle, path = tempfile.mkstemp(prefix=f".{name}.", suffix=PARTIAL_SUFFIX, dir=folder)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)  # held while this process lives: the sweep's sign of a live writer
        yield Path(path)
    finally:
        Path(path).unlink(missing_ok=True)
        os.close(handle)


def remove_abandoned(folder: Path, name: str) -> list[Path]:
    """Remove folder's `.<name>.*.part` files that no live process holds locked (their writer was killed);
    returns those removed."""
    removed = []
    now = time.time()
    for path in folder.glob(f".{name}.*{PARTIAL_SUFFIX}"):
        try:
            handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:  # gone meanwhile, or not ours to open
            continue
        try:
            if not stat.S_ISREG(os.fstat(handle).st_mode) or now - os.fstat(handle).st_mtime < SWEEP_MIN_AGE_SECONDS:
                continue
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # locked: its writer is alive
            continue
        finally:
            os.close(handle)
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


@contextmanager
def atomic_path(destination: str | Path) -> Iterator[Path]:
    """A temporary path beside destination to write to; it becomes destination only if the block finishes.

    The temporary file is `.<name>.<random>.part` in the destination's folder (created if missing), see
    partial_file; it is removed if the block raises. The finished file gets the usual permissions
    (umask), not a temporary file's private ones. NotARegularFile, before anything is written, if
    destination is there and not a regular file.
    """
    destination = Path(destination)
    check_regular_destination(destination)
    with partial_file(destination.parent, destination.name) as temporary:
        yield temporary
        os.chmod(temporary, 0o666 & ~UMASK)
        os.replace(temporary, destination)


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
