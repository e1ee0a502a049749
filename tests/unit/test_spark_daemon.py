"""The daemon local Spark forks its Python workers from (ride_duration/spark_daemon.py), on paths only: which
zip it takes off the workers' path. That the workers then import the installed pyspark is
tests/integration/test_spark.py's."""

from __future__ import annotations

from pathlib import Path

from ride_duration.spark_daemon import installed_pyspark_zip


def installed_pyspark(site: Path) -> Path:
    """A pyspark installed in site, as pip or uv installs it (SPARK_HOME is the package): its lib folder."""
    lib = site / "pyspark" / "python" / "lib"
    lib.mkdir(parents=True)
    (site / "pyspark" / "__init__.py").write_text("")
    for name in ("pyspark.zip", "py4j-0.10.9.9-src.zip"):
        (lib / name).write_bytes(b"")
    return lib


def test_the_zip_inside_the_installed_pyspark_is_the_one_taken_off(tmp_path):
    lib = installed_pyspark(tmp_path / "site-packages")
    path = [str(lib / "pyspark.zip"), str(lib / "py4j-0.10.9.9-src.zip"), str(tmp_path / "site-packages")]
    assert installed_pyspark_zip(path) == str(lib / "pyspark.zip")


def test_the_zip_of_another_spark_home_stays(tmp_path):
    installed_pyspark(tmp_path / "site-packages")
    other = tmp_path / "spark-4.0.1" / "python" / "lib"
    other.mkdir(parents=True)
    (other / "pyspark.zip").write_bytes(b"")
    assert installed_pyspark_zip([str(other / "pyspark.zip"), str(tmp_path / "site-packages")]) is None


def test_with_pyspark_only_zipped_the_zip_stays(tmp_path):
    lib = tmp_path / "spark" / "python" / "lib"
    lib.mkdir(parents=True)
    (lib / "pyspark.zip").write_bytes(b"")
    assert installed_pyspark_zip([str(lib / "pyspark.zip"), str(tmp_path / "empty-site")]) is None
