"""The settings module: one default per variable, clear errors, and the READMEs' tables kept in sync."""

from __future__ import annotations

import re
from dataclasses import fields

import pytest

from ride_duration.settings import (
    BATCH,
    DEFAULT_MODEL_URI,
    PROJECT_ROOT,
    WEB_SERVICE,
    SettingError,
    Settings,
    environment_names,
    markdown_table,
)

READMES = ["README.md", "web-service/README.md", "streaming/README.md", "scripts/README.md"]
TABLE = re.compile(r"<!-- settings: (\w+) -->\n(.*?)\n<!-- /settings -->", re.S)


def test_unset_and_empty_variables_mean_the_defaults():
    assert Settings.from_environ({}) == Settings()
    assert Settings.from_environ({"MODEL_URI": "", "MAX_RIDES": ""}) == Settings()
    assert Settings().model_uri == DEFAULT_MODEL_URI
    assert Settings().tracking_uri == f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def test_values_are_parsed_to_their_types():
    settings = Settings.from_environ(
        {"MAX_RIDES": "10", "DRY_RUN": "true", "TAXI_DATA_DIR": "/data", "MLFLOW_TRACKING_URI": "http://x:5000"}
    )
    assert settings.max_rides == 10 and settings.dry_run is True
    assert str(settings.taxi_data_dir) == "/data" and settings.tracking_uri == "http://x:5000"


@pytest.mark.parametrize(
    "name, value, message",
    [("MAX_RIDES", "0", "positive integer"), ("MOTO_PORT", "x", "positive integer"), ("DRY_RUN", "maybe", "1 or 0")],
)
def test_a_bad_value_names_its_variable(name, value, message):
    with pytest.raises(SettingError, match=f"{name} must be .*{message}|{name} must be {message}"):
        Settings.from_environ({name: value})


def test_every_variable_has_one_name_and_a_line_of_documentation():
    names = environment_names()
    assert len(names) == len(set(names)) == len(fields(Settings))
    assert all(spec.metadata["doc"] and spec.metadata["group"] for spec in fields(Settings))


def test_nothing_but_the_settings_module_reads_the_environment():
    sources = [
        path
        for folder in ("ride_duration", "web-service", "streaming", "scripts")
        for path in sorted((PROJECT_ROOT / folder).rglob("*.py"))
        if path.relative_to(PROJECT_ROOT).as_posix() != "ride_duration/settings.py"
    ]
    found = [
        f"{path.relative_to(PROJECT_ROOT)}:{number}: {line.strip()}"
        for path in sources
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "os.environ" in line or "getenv" in line
    ]
    assert found == []


def test_every_readme_table_of_variables_is_the_settings_module():
    tables = {readme: TABLE.findall((PROJECT_ROOT / readme).read_text()) for readme in READMES}
    groups = sorted({spec.metadata["group"] for spec in fields(Settings)})
    assert sorted(group for found in tables.values() for group, _ in found) == groups
    for readme, found in tables.items():
        for group, table in found:
            assert table == markdown_table(group), f"{readme}: regenerate with python -m ride_duration.settings {group}"


def test_a_component_reads_only_its_groups_so_a_stray_variable_cannot_stop_it():
    environ = {"MLFLOW_PORT": "tcp://10.0.0.7:5000", "MAX_RIDES": "5", "MODEL_URI": "models:/m-1"}
    with pytest.raises(SettingError, match="MLFLOW_PORT"):
        Settings.from_environ(environ)
    web = Settings.from_environ(environ, groups=WEB_SERVICE)
    assert (web.max_rides, web.model_uri, web.mlflow_port) == (5, "models:/m-1", Settings().mlflow_port)
    assert Settings.from_environ(environ, groups=BATCH).max_rides == Settings().max_rides


@pytest.mark.parametrize("name", ["API_KEY", "METRICS_API_KEY"])
def test_a_key_set_but_empty_is_an_error_and_unset_means_none(name):
    with pytest.raises(SettingError, match=f"{name} is set but empty"):
        Settings.from_environ({name: ""})
    with pytest.raises(SettingError, match=f"{name} is set but empty"):
        Settings.from_environ({name: "  "})
    assert Settings.from_environ({}).api_key == Settings.from_environ({}).metrics_api_key == ""
