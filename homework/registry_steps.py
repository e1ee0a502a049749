"""The registry steps of homework Q4: two promotions, then a rollback.

    python homework/registry_steps.py runs/homework-registry

Makes a new MLflow store in that folder (mlflow.db and mlartifacts/; a folder that already exists is
refused, so the steps always start from nothing), logs the homework model there once, registers it as
`ride-duration` three times and moves the aliases as a release process would. Read `release_steps`,
say which version each alias names at the end, then ask the store (homework/README.md, Q4).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from answers import MODEL_SHA256

from ride_duration.settings import Settings

HERE = Path(__file__).resolve().parent
NAME = "ride-duration"
EXPERIMENT = "homework-registry"


def release_steps(client, register) -> None:
    """The steps, in order; register() makes a new version of ride-duration and returns its number."""
    v1 = register()
    client.set_registered_model_alias(NAME, "production", v1)

    v2 = register()
    client.set_registered_model_alias(NAME, "challenger", v2)
    # promote the challenger: the served version is kept as "previous", for a rollback
    client.set_registered_model_alias(NAME, "previous", v1)
    client.set_registered_model_alias(NAME, "production", v2)
    client.delete_registered_model_alias(NAME, "challenger")

    v3 = register()
    client.set_registered_model_alias(NAME, "challenger", v3)
    client.set_registered_model_alias(NAME, "previous", v2)
    client.set_registered_model_alias(NAME, "production", v3)
    client.delete_registered_model_alias(NAME, "challenger")

    # version 3 misbehaves in production: roll back to the previous one
    rollback_to = client.get_model_version_by_alias(NAME, "previous").version
    client.set_registered_model_alias(NAME, "production", rollback_to)
    client.delete_registered_model_alias(NAME, "previous")


def make_store(folder: Path) -> str:
    """Run the steps in a new store in folder (whatever store the shell names); returns its tracking URI.
    MLflow's own tracking URI is left pointing at the new store."""
    import mlflow
    from mlflow import MlflowClient

    from ride_duration import train
    from ride_duration.model import load_model

    folder.mkdir(parents=True)
    uri = f"sqlite:///{folder.resolve() / 'mlflow.db'}"
    train.setup_tracking(EXPERIMENT, replace(Settings.from_environ(), mlflow_tracking_uri=uri))
    checked = replace(Settings.from_environ(), model_sha256=MODEL_SHA256)
    homework_model = load_model(str(HERE / "model"), settings=checked)
    logged = train.log_pipeline(homework_model.pipeline, params={}, metrics={}, tags={"purpose": "homework"})
    client = MlflowClient(uri)

    def register() -> str:
        return mlflow.register_model(f"models:/{logged.model_id}", NAME).version

    release_steps(client, register)
    return uri


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a new folder for the store, e.g. runs/homework-registry")
    args = parser.parse_args(argv)
    if args.folder.exists():
        print(
            f"error: {args.folder} already exists; the steps start from an empty store: "
            f"remove it (rm -r {args.folder}) or name another folder",
            file=sys.stderr,
        )
        return 1
    uri = make_store(args.folder)
    print(f"registry steps done in {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
