"""The project's habits that need no tool to check: the GitHub workflow downloads the TLC months CI reads, and
`make test` runs every test file once, in the targets .ci/run runs, the unit layer first.
(tests/integration/test_habits.py runs ruff and actionlint.)"""

from __future__ import annotations

import re
import shlex

import pytest

from tests.helpers import ROOT, real_green_months

WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
TEST_FILES = {path.relative_to(ROOT).as_posix() for path in (ROOT / "tests").rglob("test_*.py")}


def test_the_workflow_downloads_every_month_ci_reads():
    """The GitHub workflow fetches into TAXI_DATA_DIR each green month that this machine's CI has there."""
    months = real_green_months()
    if not months:
        pytest.skip("TAXI_DATA_DIR has no green months to compare with")
    text = WORKFLOW.read_text()
    assert "TAXI_DATA_DIR: " in text and '--output "$TAXI_DATA_DIR/green_tripdata_${month}.parquet"' in text
    assert "https://d37ci6vzurychx.cloudfront.net/trip-data/green_tripdata_${month}.parquet" in text
    listed = set(re.findall(r"\b(20\d\d)-(\d\d)\b", text))
    missing = [f"{year}-{month:02d}" for year, month in months if (str(year), f"{month:02d}") not in listed]
    assert not missing, f"{WORKFLOW.relative_to(ROOT)} does not download {missing}"


def make_rules() -> dict[str, tuple[list[str], list[str]]]:
    """{target: (prerequisites, recipe lines)} of the Makefile."""
    rules, target = {}, None
    for line in (ROOT / "Makefile").read_text().splitlines():
        rule = re.match(r"^([\w-]+):(?!=)\s*([^#]*)", line)
        if rule:
            target = rule.group(1)
            rules[target] = (rule.group(2).split(), [])
        elif line.startswith("\t") and target:
            rules[target][1].append(line.strip())
        elif not line.startswith("#"):
            target = None
    return rules


def selected_files(recipe: list[str]) -> set[str]:
    """The test files the recipe's pytest runs select: its paths (tests/ when none) less its --ignore's."""
    selected = set()
    for line in recipe:
        words = shlex.split(line)
        if "pytest" not in words:
            continue
        arguments = words[words.index("pytest") + 1 :]
        paths = [a for a in arguments if not a.startswith("-")] or ["tests"]
        ignored = {a.removeprefix("--ignore=") for a in arguments if a.startswith("--ignore=")}
        selected |= {
            name
            for name in TEST_FILES
            if any(name == path or name.startswith(path.rstrip("/") + "/") for path in paths)
            and not any(name == path or name.startswith(path.rstrip("/") + "/") for path in ignored)
        }
    return selected


def test_make_test_runs_every_test_file_once_and_test_unit_runs_the_unit_layer():
    rules = make_rules()
    parts = [target for target in rules["test"][0] if target.startswith("test-")]
    assert parts[0] == "test-unit", parts
    runs = [name for target in parts for name in selected_files(rules[target][1])]
    assert sorted(runs) == sorted(TEST_FILES), "make test must run each test file exactly once"
    assert selected_files(rules["test-unit"][1]) == {name for name in TEST_FILES if name.startswith("tests/unit/")}


def test_ci_runs_the_parts_of_make_test_in_order():
    phases = re.findall(r"^phase ([\w-]+) make ([\w-]+)$", (ROOT / ".ci" / "run").read_text(), flags=re.MULTILINE)
    tests = [target for _, target in phases if target.startswith("test")]
    assert tests == [target for target in make_rules()["test"][0] if target.startswith("test-")]
    assert all(name == target for name, target in phases)
