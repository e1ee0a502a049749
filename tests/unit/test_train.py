"""The parts of training and promotion that need no tracking store: where an embedded store keeps its
artifacts, how a run's validation data is read and named. (tests/integration/test_promotion.py runs the
gate against a real registry.)"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from ride_duration import lifecycle, train


def run(model_id: str = "m-new", val_rmse: float = 6.5, **data):
    """A stand-in for mlflow.entities.Run: what judge and validation_data read of one."""
    params = {"taxi_type": data.get("taxi_type", "green"), "val_month": data.get("val_month", "2021-02")}
    return SimpleNamespace(
        data=SimpleNamespace(
            params=params, tags={"data_source": data.get("data_source", "tlc")}, metrics={"val_rmse": val_rmse}
        ),
        outputs=SimpleNamespace(model_outputs=[SimpleNamespace(model_id=model_id)]),
    )


def test_an_embedded_store_keeps_its_artifacts_beside_its_database(tmp_path):
    assert train.sqlite_artifact_location(f"sqlite:///{tmp_path}/mlflow.db") == (tmp_path / "mlartifacts").as_uri()
    assert train.sqlite_artifact_location("sqlite:///mlflow.db") == (Path.cwd() / "mlartifacts").as_uri()
    assert train.sqlite_artifact_location("http://127.0.0.1:5000") is None


def test_validation_data_is_read_from_params_and_tags_and_named_in_a_few_words():
    data = train.validation_data(run(data_source="synthetic", val_month="2021-03"))
    assert data == {"taxi_type": "green", "val_month": "2021-03", "data_source": "synthetic"}
    assert train.describe_data(data) == "green 2021-03 (synthetic)"
    assert train.describe_data({"taxi_type": None, "val_month": None, "data_source": None}) == "? ? (unknown source)"


def test_a_versions_model_id_is_its_own_or_the_one_its_source_names():
    assert lifecycle.version_model_id(SimpleNamespace(model_id="m-1", source="models:/m-2")) == "m-1"
    assert lifecycle.version_model_id(SimpleNamespace(model_id="", source="models:/m-2")) == "m-2"
