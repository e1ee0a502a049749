"""The daemon a local Spark forks its Python workers from: pyspark's own, importing the installed pyspark.

Spark puts its zipped copy of pyspark (SPARK_HOME/python/lib/pyspark.zip) first on its Python workers' path.
Python keeps no compiled bytecode for a zip, so the daemon and each worker compile what they import of pyspark
from source, and each worker reads the zip's index again for every package taken from it when the task's files
join the path (`importlib.invalidate_caches`). When pyspark is installed the usual way (pip, uv), the zip sits inside the
installed package and holds the same files: this daemon takes it off the path, and its workers import the
installed, compiled pyspark. A zip of another Spark (SPARK_HOME elsewhere) is left in place.

scripts/score_spark.py starts it for local runs: spark.python.daemon.module=ride_duration.spark_daemon.
"""

from __future__ import annotations

import sys
from importlib.machinery import PathFinder
from pathlib import Path


def installed_pyspark_zip(path: list[str]) -> str | None:
    """The entry of path that is the zip inside the pyspark installed on the rest of path; None if there is none."""
    spec = PathFinder.find_spec("pyspark", [entry for entry in path if not entry.endswith(".zip")])
    if spec is None or not spec.origin:
        return None
    inside = Path(spec.origin).resolve().parent / "python" / "lib" / "pyspark.zip"
    return next((entry for entry in path if entry.endswith(".zip") and Path(entry).resolve() == inside), None)


def drop_installed_pyspark_zip() -> None:
    """Take the installed pyspark's zip off sys.path, and its importers out of Python's cache."""
    zipped = installed_pyspark_zip(sys.path)
    if zipped is None:
        return
    sys.path.remove(zipped)
    for entry in [entry for entry in sys.path_importer_cache if entry == zipped or entry.startswith(zipped + "/")]:
        del sys.path_importer_cache[entry]


if __name__ == "__main__":
    drop_installed_pyspark_zip()
    from pyspark import daemon

    daemon.manager()
