"""The JVM class archive of local Spark runs (scripts/score_spark.py), on files only: which option a JVM is
started with, what a run leaves behind, when an archive is published. The real JVM writing and mapping it is
tests/integration/test_spark.py's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ride_duration.settings import PROJECT_ROOT, Settings
from tests.batch_support import import_script

SCORE_SPARK_PY = PROJECT_ROOT / "scripts" / "score_spark.py"


score_spark = import_script(SCORE_SPARK_PY)  # pyspark itself is imported only once a session starts


def gone_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_without_an_archive_the_jvm_writes_one_to_a_part_file_of_this_process(tmp_path):
    archive = tmp_path / "classes" / "spark-4.0.0-abc.jsa"
    options = score_spark.archive_options(archive)
    assert options == [f'-XX:ArchiveClassesAtExit="{archive}.{os.getpid()}.part"']
    assert archive.parent.is_dir() and not archive.exists()


def test_with_an_archive_the_jvm_starts_from_it(tmp_path):
    archive = tmp_path / "classes with a space" / "spark-4.0.0-abc.jsa"
    archive.parent.mkdir()
    archive.write_bytes(b"made by an earlier run")
    assert score_spark.archive_options(archive) == [f'-XX:SharedArchiveFile="{archive}"']


def test_part_files_of_processes_that_are_gone_are_removed_and_others_kept(tmp_path):
    folder = tmp_path / "classes"
    folder.mkdir()
    abandoned = folder / f"spark-4.0.0-abc.jsa.{gone_pid()}.part"
    being_written = folder / f"spark-4.0.0-abc.jsa.{os.getppid()}.part"
    unrelated = folder / "notes.part"
    for path in (abandoned, being_written, unrelated):
        path.write_bytes(b"x")
    score_spark.archive_options(folder / "spark-4.0.0-abc.jsa")
    assert not abandoned.exists()
    assert being_written.exists() and unrelated.exists()


def test_where_no_folder_can_be_made_the_jvm_starts_without_an_archive(tmp_path):
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    assert score_spark.archive_options(not_a_folder / "spark-4.0.0-abc.jsa") == []


def test_a_cleanly_written_archive_is_published_and_replaces_other_versions(tmp_path):
    older = tmp_path / "spark-3.5.0-old.jsa"
    older.write_bytes(b"older")
    part = tmp_path / f"spark-4.0.0-abc.jsa.{os.getpid()}.part"
    part.write_bytes(b"archive")
    score_spark.publish_archive(part, written=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spark-4.0.0-abc.jsa"]
    assert (tmp_path / "spark-4.0.0-abc.jsa").read_bytes() == b"archive"


def test_an_archive_from_a_jvm_that_did_not_exit_cleanly_is_never_published(tmp_path):
    """A truncated archive crashes the JVM that maps it (SIGBUS): it must not reach the name runs start from."""
    part = tmp_path / f"spark-4.0.0-abc.jsa.{os.getpid()}.part"
    part.write_bytes(b"half an archive")
    score_spark.publish_archive(part, written=False)
    assert list(tmp_path.iterdir()) == []


def test_no_archive_is_asked_for_when_it_is_turned_off():
    settings = Settings.from_environ({"SPARK_CLASS_ARCHIVE": "0"})
    assert score_spark.class_archive(settings, 'openjdk version "17.0.15"') is None


def test_the_project_keeps_its_archive_out_of_git():
    assert ".spark-classes/" in (PROJECT_ROOT / ".gitignore").read_text().splitlines()
    assert Settings().spark_class_archive_dir == Path(PROJECT_ROOT / ".spark-classes")
