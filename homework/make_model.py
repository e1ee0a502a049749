"""How the homework's fixed model was made (run once; its files are committed in homework/model/).

    TAXI_DATA_DIR=/path/to/tlc python homework/make_model.py

The course's baseline: DictVectorizer(PU_DO, trip_distance) + LinearRegression on real green
2021-01, rides of 1 to 60 minutes. It is logged to a throwaway MLflow store so that it is a real
MLflow model (with its own model id), then its artifact folder is copied to homework/model/.
Re-running makes a new model (a new id and new bytes), so the homework would change: don't,
unless you mean to publish a new homework model and its checksum.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from answers import model_sha256
from sklearn.linear_model import LinearRegression

from ride_duration.settings import Settings

HERE = Path(__file__).resolve().parent
MODEL_DIR = HERE / "model"


def main() -> None:
    from ride_duration import train
    from ride_duration.data import read_month, training_rides
    from ride_duration.model import artifact_uri

    rides = training_rides(read_month("green", 2021, 1, allow_download=False), "green")
    with tempfile.TemporaryDirectory() as store:
        settings = replace(Settings.from_environ(), mlflow_tracking_uri=f"sqlite:///{store}/mlflow.db")
        train.setup_tracking("homework", settings)
        pipeline = train.fit(train.make_pipeline(LinearRegression()), rides)
        info = train.log_pipeline(
            pipeline,
            params={"regressor": "LinearRegression", "train_month": "2021-01", "taxi_type": "green"},
            metrics={},
            tags={"data_source": "tlc", "purpose": "homework"},
        )
        source = Path(artifact_uri(f"models:/{info.model_id}", settings)[len("file://") :])
        shutil.rmtree(MODEL_DIR, ignore_errors=True)
        shutil.copytree(source, MODEL_DIR)
    print(f"homework model {info.model_id} in {MODEL_DIR}\nsha256(model.pkl) = {model_sha256()}")


if __name__ == "__main__":
    main()
