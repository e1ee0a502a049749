"""A model's life in the registry: a challenger, the gate that may put it in production, and the way back.

Three aliases of the registered model say where each version stands:

- `challenger`: the version waiting for the gate;
- `production`: the version every deployment serves (services started with `models:/ride-duration@production`
  follow it by themselves);
- `previous`: the version production pointed at before the last promotion, the one a rollback restores.

The gate (`promote`) is the only way a version reaches production. It loads the challenger as the services
would, runs the behavioural tests (ride_duration.behaviour), measures the challenger and the champion on the
same held-out rides (the challenger's validation month), and promotes the challenger only if it beats the
champion by PROMOTION_MARGIN. Every decision is written on the version, in its tags, so that the registry says
why a version is in production, or why it is not.

    python -m ride_duration.lifecycle challenge   # the best comparable run of notebook 01 becomes @challenger
    python -m ride_duration.lifecycle promote     # the gate: exit 0 promoted, 3 refused
    python -m ride_duration.lifecycle rollback    # @production goes back to @previous
    python -m ride_duration.lifecycle status      # where each alias points, and why
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from ride_duration.behaviour import Finding, behaviour, describe, failures
from ride_duration.integrity import MODEL_SHA256_TAG
from ride_duration.model import (
    PRODUCTION_ALIAS,
    REGISTERED_MODEL,
    load_model,
    quiet_mlflow,
    tracking_uri,
    version_model_id,
)
from ride_duration.serving import ServedModel, one_line, serve
from ride_duration.settings import BATCH, Settings
from ride_duration.train import EXPERIMENT, REAL_DATA, best_run, describe_data, stored_sha256, validation_data

CHALLENGER_ALIAS = "challenger"
PREVIOUS_ALIAS = "previous"
ALIASES = (PRODUCTION_ALIAS, CHALLENGER_ALIAS, PREVIOUS_ALIAS)
# A challenger must be at least this much better (1% lower RMSE on the same rides): a smaller gain is as
# likely noise of one month as a better model, and every promotion costs a swap in every deployment.
PROMOTION_MARGIN = 0.01
METRIC = "val_rmse"
EXIT_PROMOTED, EXIT_NOTHING_TO_DO, EXIT_REFUSED = 0, 2, 3


def client():
    from mlflow import MlflowClient

    return MlflowClient()


def version_at(name: str, alias: str):
    """The model version `alias` points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version_by_alias(name, alias)
    except MlflowException:  # no such registered model, or no such alias yet
        return None


@dataclass
class Decision:
    """What the gate decided, and why."""

    promoted: bool
    reason: str
    version: str | None  # the version @production points at afterwards
    challenger: object | None = None  # mlflow ModelVersion
    champion: object | None = None  # the version @production pointed at before, if any
    challenger_rmse: float | None = None  # on the held-out rides
    champion_rmse: float | None = None  # on the same rides, if compared
    findings: list[Finding] = field(default_factory=list)  # the challenger's behavioural tests

    def __post_init__(self):
        self.version = None if self.version is None else str(self.version)  # MLflow's are ints or strings


def register_challenger(model_id: str, name: str = REGISTERED_MODEL):
    """Register a logged model as a new version of `name` and point @challenger at it.

    The version records the sha256 of its pickled file (tag model_sha256), which every load checks: the one
    recorded when the model was logged, else that of the file as stored now.
    """
    import mlflow

    logged = client().get_logged_model(model_id)
    run = mlflow.get_run(logged.source_run_id)
    data = validation_data(run)
    tags = {
        MODEL_SHA256_TAG: logged.tags.get(MODEL_SHA256_TAG) or stored_sha256(model_id),
        "validation_data": describe_data(data),
        "data_source": data["data_source"] or "unknown",
        "train_month": run.data.params.get("train_month", "unknown"),
        METRIC: repr(run.data.metrics.get(METRIC)),
    }
    with quiet_mlflow():
        version = mlflow.register_model(f"models:/{model_id}", name, tags=tags)
    client().set_registered_model_alias(name, CHALLENGER_ALIAS, version.version)
    return client().get_model_version(name, version.version)


def challenge_with_best(experiment: str = EXPERIMENT, name: str = REGISTERED_MODEL):
    """Make the best comparable run (train.best_run) the challenger; None if it is in production already.

    Its version at @challenger is reused when it has one, so that running this twice registers nothing twice.
    LookupError if its model was rolled back from production once: it is known to be wrong somewhere, and
    only a person (`challenge --model-id`) brings it back.
    """
    model_id = best_run(experiment, METRIC).outputs.model_outputs[0].model_id
    for alias in (PRODUCTION_ALIAS, CHALLENGER_ALIAS):
        version = version_at(name, alias)
        if version is not None and version_model_id(version) == model_id:
            return None if alias == PRODUCTION_ALIAS else version
    for version in client().search_model_versions(f"name = '{name}'"):
        if version_model_id(version) == model_id and "rolled_back" in version.tags:
            raise LookupError(
                f"the best run's model {model_id} was rolled back from production (version {version.version}: "
                f"{version.tags['rolled_back']}); train a better one, or challenge with --model-id {model_id}"
            )
    return register_challenger(model_id, name)


def held_out_rides(data: dict):
    """The rides a version was validated on, read as notebook 01 reads them (rides of 1 to 60 minutes)."""
    from ride_duration.data import read_month, training_rides

    year, month = (int(part) for part in data["val_month"].split("-"))
    rides = read_month(data["taxi_type"], year, month, synthetic=data["data_source"] != REAL_DATA)
    return training_rides(rides, data["taxi_type"])


def served_rmse(served: ServedModel, rides) -> float:
    """The RMSE of what the deployments would answer for these rides."""
    return float(np.sqrt(np.mean((rides["duration"].to_numpy() - served.predict_columns(rides)) ** 2)))


def judge(challenger, champion, margin: float, settings: Settings | None) -> Decision:
    """The gate's verdict on a challenger against the champion (None: nothing in production yet); changes nothing."""
    import mlflow

    name = challenger.name

    def refuse(reason: str, **known) -> Decision:
        return Decision(False, reason, champion.version if champion else None, challenger, champion, **known)

    if champion is not None and champion.version == challenger.version:
        return refuse(f"version {challenger.version} is in production already")
    try:
        served = serve(load_model(f"models:/{name}/{challenger.version}", settings=settings))
    except Exception as error:
        return refuse(f"the challenger cannot be served: {one_line(error)}")
    findings = behaviour(served)
    failed = failures(findings)
    if failed:
        listed = "; ".join(f"{f.kind} {f.name}: {f.detail}" for f in failed)
        return refuse(f"fails {len(failed)} of {len(findings)} behavioural tests ({listed})", findings=findings)
    challenger_run = mlflow.get_run(challenger.run_id)
    data = validation_data(challenger_run)
    champion_data = validation_data(mlflow.get_run(champion.run_id)) if champion is not None else None
    if champion_data is not None:
        if champion_data["data_source"] == REAL_DATA and data["data_source"] != REAL_DATA:
            return refuse(
                f"validated on {describe_data(data)}: a model validated on synthetic rides never replaces one "
                f"validated on real data ({describe_data(champion_data)})",
                findings=findings,
            )
        if champion_data["taxi_type"] != data["taxi_type"]:
            return refuse(
                f"validated on {describe_data(data)}, while production serves a model of "
                f"{describe_data(champion_data)}: not the same rides",
                findings=findings,
            )
    try:
        rides = held_out_rides(data)
    except Exception as error:
        return refuse(f"the held-out rides {describe_data(data)} cannot be read: {one_line(error)}", findings=findings)
    challenger_rmse = served_rmse(served, rides)
    logged = challenger_run.data.metrics.get(METRIC)
    if logged is None or abs(logged - challenger_rmse) > 1e-6 * max(1.0, logged):
        return refuse(
            f"its run logged {METRIC} {logged} on {describe_data(data)}, the gate measures {challenger_rmse:.6f} "
            "there: it was not validated on these rides",
            challenger_rmse=challenger_rmse,
            findings=findings,
        )
    known = {"challenger_rmse": challenger_rmse, "findings": findings}
    if champion is None:
        return Decision(
            True,
            f"no version was in production yet; {METRIC} {challenger_rmse:.4f} on {describe_data(data)}",
            challenger.version,
            challenger,
            None,
            **known,
        )
    if champion_data["data_source"] != REAL_DATA and data["data_source"] == REAL_DATA:
        reason = f"real data replaces a champion validated on {describe_data(champion_data)}"
        return Decision(True, reason, challenger.version, challenger, champion, **known)
    try:
        champion_rmse = served_rmse(serve(load_model(f"models:/{name}/{champion.version}", settings=settings)), rides)
    except Exception as error:  # the champion cannot be measured: keep what serves now
        return refuse(f"the champion could not be evaluated on {describe_data(data)}: {one_line(error)}", **known)
    known["champion_rmse"] = champion_rmse
    comparison = f"{METRIC} {challenger_rmse:.4f} against the champion's {champion_rmse:.4f} on {describe_data(data)}"
    if challenger_rmse <= champion_rmse * (1 - margin):
        return Decision(
            True, f"{comparison}: better by more than {margin:.0%}", challenger.version, challenger, champion, **known
        )
    return refuse(f"{comparison}: not better by {margin:.0%}", **known)


def promote(
    name: str = REGISTERED_MODEL, margin: float = PROMOTION_MARGIN, settings: Settings | None = None
) -> Decision:
    """The gate: judge the version at @challenger and, if it passes, point @production at it and @previous
    at the version it replaces. The decision is written on the challenger's tags either way.

    `settings` names the tracking store (default: the environment's MLFLOW_TRACKING_URI, else mlflow.db).
    LookupError if no version is @challenger.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(settings))
    challenger = version_at(name, CHALLENGER_ALIAS)
    if challenger is None:
        raise LookupError(
            f"no version of {name} is @{CHALLENGER_ALIAS}: make one first (python -m ride_duration.lifecycle challenge)"
        )
    champion = version_at(name, PRODUCTION_ALIAS)
    decision = judge(challenger, champion, margin, settings)
    registry = client()
    decided_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if not decision.promoted:
        registry.set_model_version_tag(name, challenger.version, "refused_because", decision.reason)
        registry.set_model_version_tag(name, challenger.version, "refused_at", decided_at)
        return decision
    tags = {
        "promoted_because": decision.reason,
        "promoted_at": decided_at,
        "replaced_version": champion.version if champion else "none",
        "replaced_model_id": version_model_id(champion) if champion else "none",
        f"replaced_{METRIC}_on_this_data": "not compared"
        if decision.champion_rmse is None
        else repr(decision.champion_rmse),
        f"gate_{METRIC}": repr(decision.challenger_rmse),
    }
    for key, value in tags.items():
        registry.set_model_version_tag(name, challenger.version, key, value)
    if "refused_because" in challenger.tags:  # refused once, promoted since (e.g. against another champion)
        registry.delete_model_version_tag(name, challenger.version, "refused_because")
    description = f"Promoted to @{PRODUCTION_ALIAS} on {decided_at}: {decision.reason}" + (
        f" (replaced version {champion.version})." if champion else "."
    )
    registry.update_model_version(name, challenger.version, description=description)
    if champion is not None:
        registry.set_registered_model_alias(name, PREVIOUS_ALIAS, champion.version)
    registry.set_registered_model_alias(name, PRODUCTION_ALIAS, challenger.version)
    registry.delete_registered_model_alias(name, CHALLENGER_ALIAS)
    return decision


def register_best(
    experiment: str = EXPERIMENT, name: str = REGISTERED_MODEL, settings: Settings | None = None
) -> Decision:
    """Notebook 02's step: the best comparable run becomes the challenger, then the gate decides."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(settings))
    if challenge_with_best(experiment, name) is None:
        champion = version_at(name, PRODUCTION_ALIAS)
        return Decision(False, "the best comparable run is in production already", champion.version, None, champion)
    return promote(name, settings=settings)


@dataclass
class Rollback:
    restored: str  # the version @production points at now
    replaced: str | None  # the version it pointed at before


def rollback(name: str = REGISTERED_MODEL, settings: Settings | None = None) -> Rollback:
    """Point @production back at @previous (and remove @previous: a second rollback has nothing to go back to).

    The version rolled back keeps a tag saying when and to what. LookupError if no version is @previous.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(settings))
    previous = version_at(name, PREVIOUS_ALIAS)
    if previous is None:
        raise LookupError(f"no version of {name} is @{PREVIOUS_ALIAS}: there is nothing to roll back to")
    current = version_at(name, PRODUCTION_ALIAS)
    registry = client()
    registry.set_registered_model_alias(name, PRODUCTION_ALIAS, previous.version)
    registry.delete_registered_model_alias(name, PREVIOUS_ALIAS)
    if current is not None:
        rolled_back_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        note = f"{rolled_back_at}: @{PRODUCTION_ALIAS} went back to version {previous.version}"
        registry.set_model_version_tag(name, current.version, "rolled_back", note)
    return Rollback(str(previous.version), str(current.version) if current else None)


def status(name: str = REGISTERED_MODEL, settings: Settings | None = None) -> dict:
    """{alias: the version it points at, or None} for the three aliases."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(settings))
    return {alias: version_at(name, alias) for alias in ALIASES}


def describe_version(version) -> str:
    if version is None:
        return "-"
    why = version.tags.get("promoted_because") or version.tags.get("refused_because") or ""
    return f"version {version.version} ({version_model_id(version)}, {version.tags.get('validation_data', '?')})" + (
        f": {why}" if why else ""
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ride_duration.lifecycle",
        description="Challenge, promote through the gate, or roll back the registered model (MLFLOW_TRACKING_URI).",
    )
    parser.add_argument("command", choices=("challenge", "promote", "rollback", "status"))
    parser.add_argument("--name", default=REGISTERED_MODEL, help="the registered model (default: %(default)s)")
    parser.add_argument(
        "--experiment", default=EXPERIMENT, help="where `challenge` looks for the best run (default: %(default)s)"
    )
    parser.add_argument("--model-id", help="`challenge` with this logged model (m-...) instead of the best run")
    parser.add_argument(
        "--margin",
        type=float,
        default=PROMOTION_MARGIN,
        help="how much lower the challenger's RMSE must be, as a fraction (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    settings = Settings.from_environ(groups=BATCH)
    try:
        if args.command == "challenge":
            import mlflow

            mlflow.set_tracking_uri(tracking_uri(settings))
            if args.model_id:
                version = register_challenger(args.model_id, args.name)
            else:
                version = challenge_with_best(args.experiment, args.name)
            if version is None:
                print(f"the best comparable run of {args.experiment} is in production already")
                return EXIT_NOTHING_TO_DO
            print(f"@{CHALLENGER_ALIAS}: {describe_version(version)}")
        elif args.command == "promote":
            decision = promote(args.name, args.margin, settings)
            if decision.findings:
                print(describe(decision.findings))
            verdict = "promoted" if decision.promoted else "refused"
            print(f"{verdict}: {decision.reason}\n@{PRODUCTION_ALIAS} is version {decision.version}")
            return EXIT_PROMOTED if decision.promoted else EXIT_REFUSED
        elif args.command == "rollback":
            done = rollback(args.name, settings)
            print(f"rolled back: @{PRODUCTION_ALIAS} is version {done.restored} again (was {done.replaced})")
        else:
            for alias, version in status(args.name, settings).items():
                print(f"@{alias}: {describe_version(version)}")
    except LookupError as error:
        print(f"{parser.prog} {args.command}: {error}", file=sys.stderr)
        return EXIT_NOTHING_TO_DO
    return 0


if __name__ == "__main__":
    sys.exit(main())
