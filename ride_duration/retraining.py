"""The retraining loop: after a month is scored, monitor it; when it is flagged, retrain the production pipeline
on the most recent labelled months and let the gate decide.

Which months: the challenger is validated on the flagged month and trained on the RETRAIN_MONTHS labelled months
before it that are at hand. The gate (ride_duration.lifecycle) measures challenger and champion on the
challenger's validation month, so validating on the flagged month judges both on the rides where the champion
was found wanting, the newest rides with known durations; training only on months before it keeps those rides
out of the training set. The recipe is the production model's own: its pipeline, cloned unfitted, as notebook 07
retrains it.

What the loop did with each month is a row of a small table (`loop_steps`) beside the monitoring rows, in the
same database: month -> flagged -> retrained -> version N promoted, or refused and why. The gate's reason is also
on the challenger's registry tags. Services following the `production` alias pick a promoted version up by
themselves.

A monitoring failure never loses a scored month: the month stays scored and its row says what failed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime

from ride_duration.data import MonthNotAvailable, month_label
from ride_duration.lifecycle import PROMOTION_MARGIN, promote, register_challenger, version_at, version_model_id
from ride_duration.model import PRODUCTION_ALIAS, REGISTERED_MODEL
from ride_duration.monitoring import KEY, NoReferenceMonth, read_rows, replace_row
from ride_duration.serving import one_line
from ride_duration.settings import Settings

TABLE = "loop_steps"  # keyed as the monitoring rows are (KEY)
# Training months: two, as notebook 07's challenger; looked for at most this far back.
RETRAIN_MONTHS = 2
LOOK_BACK_MONTHS = 36


def monitoring_installed() -> bool:
    """Whether the optional extra `monitoring` (Evidently) is installed."""
    return importlib.util.find_spec("evidently") is not None


@dataclass
class LoopStep:
    """What the loop did after one month was scored: one row of the `loop_steps` table."""

    taxi_type: str
    month: str  # "YYYY-MM"
    model_version: str  # the logged model that scored the month ("m-..."), "" if unknown
    action: str  # not monitored, monitoring failed, not flagged, flagged, promoted, refused, retraining failed
    detail: str = ""  # why, in one line: the monitoring reasons, the gate's reason, the error
    flagged: bool | None = None  # None: not monitored
    train_months: str = ""  # "2023-01+2023-02"
    val_month: str = ""
    challenger_version: str | None = None  # the registered version retraining made
    production_version: str | None = None  # where @production points afterwards
    decided_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def line(self) -> str:
        """The one line a backfill prints for this step."""
        label = f"{self.taxi_type}/{self.month}"
        if self.action in ("promoted", "refused"):
            verdict = "promoted" if self.action == "promoted" else "refused by the gate"
            return (
                f"{label}: flagged, retrained on {self.train_months} (validated on {self.val_month}): "
                f"version {self.challenger_version} {verdict}: {self.detail}"
            )
        return f"{label}: {self.action}" + (f": {self.detail}" if self.detail else "")

    @property
    def note(self) -> str:
        """A few words for a backfill's summary table."""
        if self.action in ("promoted", "refused"):
            return f"flagged; v{self.challenger_version} {self.action}"
        return self.action


def previous_month(year: int, month: int) -> tuple[int, int]:
    return (year - 1, 12) if month == 1 else (year, month - 1)


def training_months(
    taxi_type: str, year: int, month: int, count: int = RETRAIN_MONTHS, *, synthetic: bool | str = False
) -> list[tuple[int, int]]:
    """The `count` most recent months before (year, month) whose rides are at hand, oldest first.

    At hand: in the data folder (nothing is downloaded to look); with synthetic=True any month is.
    """
    from ride_duration.data import locate_month

    found, at = [], (year, month)
    for _ in range(LOOK_BACK_MONTHS):
        at = previous_month(*at)
        if synthetic is True:
            found.append(at)
        else:
            try:
                locate_month(taxi_type, *at, allow_download=False)
                found.append(at)
            except MonthNotAvailable:
                pass
        if len(found) == count:
            break
    return sorted(found)


def month_text(year: int, month: int) -> str:
    return f"{year:04d}-{month:02d}"


def month_training_rides(taxi_type: str, year: int, month: int, synthetic: bool | str = False):
    """A month's rides of 1 to 60 minutes, as notebook 01 reads them."""
    from ride_duration.data import read_month, training_rides

    return training_rides(read_month(taxi_type, year, month, synthetic=synthetic), taxi_type)


def log_challenger(
    pipeline,
    training,
    validation,
    *,
    taxi_type: str,
    train_months: list[tuple[int, int]],
    val_month: tuple[int, int],
    note: str,
    name: str = REGISTERED_MODEL,
    tags: dict | None = None,
):
    """Fit the pipeline on the training rides, log it as notebook 01 does (its val_rmse on the validation
    rides, what it was trained and validated on), and register it as @challenger. Returns the version."""
    from ride_duration import train
    from ride_duration.data import is_synthetic

    train.fit(pipeline, training)
    run = train.log_pipeline(
        pipeline,
        params={
            "regressor": type(pipeline.steps[-1][1]).__name__,
            "taxi_type": taxi_type,
            "train_month": "+".join(month_text(*m) for m in train_months),
            "val_month": month_text(*val_month),
            "note": note,
        },
        metrics={"val_rmse": train.rmse(pipeline, validation)},
        tags={"data_source": "synthetic" if is_synthetic(validation) else train.REAL_DATA, **(tags or {})},
        reference_rides=validation,  # its predictions on them, for the web service's drift alert
    )
    return register_challenger(run.model_id, name)


def retrain(
    champion,
    taxi_type: str,
    train_months: list[tuple[int, int]],
    val_month: tuple[int, int],
    *,
    note: str = "the production pipeline on newer rides",
    name: str = REGISTERED_MODEL,
    synthetic: bool | str = False,
    tags: dict | None = None,
):
    """The champion's pipeline, cloned unfitted (its steps and settings), trained on the plausible rides of
    train_months, validated on val_month, logged and registered as @challenger. Returns the version.

    champion: a LoadedModel with its scikit-learn pipeline (ride_duration.model.load_model).
    """
    import pandas as pd
    from sklearn.base import clone

    from ride_duration.data import plausible_rides

    training = pd.concat(
        [plausible_rides(month_training_rides(taxi_type, *m, synthetic))[0] for m in train_months], ignore_index=True
    )
    validation = month_training_rides(taxi_type, *val_month, synthetic)
    return log_challenger(
        clone(champion.pipeline),
        training,
        validation,
        taxi_type=taxi_type,
        train_months=train_months,
        val_month=val_month,
        note=note,
        name=name,
        tags=tags,
    )


class RetrainingLoop:
    """The step after scoring, for one backfill or one flow run: monitor the month, retrain when it is flagged.

    The reference of each model version (its validation month, scored by it) is computed once; a model with no
    validation month is said once and its months are scored without monitoring. retrain=False: flagged months
    are recorded, nothing is trained.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        retrain: bool | None = None,
        thresholds=None,
        margin: float = PROMOTION_MARGIN,
        name: str = REGISTERED_MODEL,
        synthetic: bool | str = False,
        say: Callable[[str], None] = print,
    ):
        self.settings = settings or Settings.from_environ()
        self.retrain = self.settings.retrain_flagged_months if retrain is None else retrain
        self.thresholds, self.margin, self.name, self.synthetic, self.say = thresholds, margin, name, synthetic, say
        self.references: dict[str, tuple] = {}
        self.without_reference: set[str] = set()
        self.installed = monitoring_installed()
        if not self.installed:
            say("monitoring is not installed (uv sync --extra monitoring): months are scored, not monitored")

    def after_scoring(self, taxi_type: str, year: int, month: int, scored_path) -> LoopStep:
        """Monitor a scored month and act on its verdict; the step is stored and returned, never raised."""
        from ride_duration.batch.output import output_info

        step = LoopStep(taxi_type, month_text(year, month), "", "not monitored")
        if not self.installed:
            return step
        try:
            step.model_version = output_info(scored_path).get("model_version") or ""
        except Exception as error:  # the output cannot be read back: the month is scored, its monitoring failed
            step.action, step.detail = "monitoring failed", one_line(error)
            return self.record(step)
        model_version = step.model_version
        if model_version in self.without_reference:
            return step
        try:
            row = self.monitor(taxi_type, year, month, scored_path, model_version)
        except NoReferenceMonth as error:  # nothing to compare with
            self.without_reference.add(model_version)
            step.detail = one_line(error)
            self.say(f"{taxi_type}/{step.month}: not monitored: {step.detail} (its months are scored unmonitored)")
            return step
        except Exception as error:  # the month is scored; what failed is recorded and said
            step.action, step.detail = "monitoring failed", one_line(error)
            return self.record(step)
        step.flagged, step.detail = row.flagged, row.reasons
        if not row.flagged:
            step.action = "not flagged"
        elif not self.retrain:
            step.action = "flagged"
            step.detail += " (retraining is off)"
        else:
            self.retrain_for(step, row, year, month)
        return self.record(step)

    def monitor(self, taxi_type, year, month, scored_path, model_version):
        from ride_duration import monitoring

        if model_version not in self.references:
            model = monitoring.production_model(replace(self.settings, model_uri=f"models:/{model_version}"))
            self.references[model_version] = monitoring.reference_rides(
                model, settings=self.settings, synthetic=self.synthetic
            )
        return monitoring.monitor_scored_month(
            taxi_type,
            year,
            month,
            scored_path=scored_path,
            settings=self.settings,
            thresholds=self.thresholds,
            reference=self.references[model_version],
            synthetic=self.synthetic,
        )

    def retrain_for(self, step: LoopStep, row, year: int, month: int) -> None:
        """Retrain on the months before the flagged one, validate on it, and run the gate; fills in step."""
        import mlflow

        from ride_duration import train
        from ride_duration.model import load_model

        try:
            train.setup_tracking(settings=self.settings)
            production = version_at(self.name, PRODUCTION_ALIAS)
            if production is None or version_model_id(production) != step.model_version:
                now = f"version {production.version}" if production else "nothing"
                step.action = "flagged"
                step.detail += f" (not retrained: scored by {step.model_version}; @{PRODUCTION_ALIAS} is {now})"
                return
            months = training_months(step.taxi_type, year, month, synthetic=self.synthetic)
            if not months:
                step.action = "flagged"
                step.detail += " (not retrained: no labelled month before it is at hand)"
                return
            step.train_months = "+".join(month_text(*m) for m in months)
            step.val_month = month_text(year, month)
            label = month_label(step.taxi_type, year, month)
            champion = load_model(f"models:/{self.name}/{production.version}", settings=self.settings)
            challenger = retrain(
                champion,
                step.taxi_type,
                months,
                (year, month),
                note=f"retrained: {label} flagged",
                name=self.name,
                synthetic=self.synthetic,
                tags={"retrained_for": f"{label}: {row.reasons}"},
            )
            mlflow.MlflowClient().set_model_version_tag(
                self.name, challenger.version, "retrained_for", f"{label}: {row.reasons}"
            )
            decision = promote(self.name, self.margin, self.settings)
        except Exception as error:  # the registry or the data: the month stays scored and monitored
            step.action, step.detail = "retraining failed", one_line(error)
            return
        step.challenger_version = str(challenger.version)
        step.production_version = decision.version
        step.action = "promoted" if decision.promoted else "refused"
        step.detail = decision.reason

    def record(self, step: LoopStep) -> LoopStep:
        try:
            store_step(step, self.settings.monitoring_url)
        except Exception as error:  # the database: the step is still said and returned
            self.say(f"{step.line()} (not stored: {one_line(error)})")
            return step
        self.say(step.line())
        return step


def steps_table(metadata):
    """The table's columns follow LoopStep's fields; (taxi_type, month, model_version) is the key."""
    import sqlalchemy as sa

    def kind(spec):
        if spec.name in KEY:
            return sa.String(256)  # keys are short; an index needs a bounded length
        return sa.Boolean() if str(spec.type).startswith("bool") else sa.Text()

    return sa.Table(
        TABLE, metadata, *(sa.Column(spec.name, kind(spec), primary_key=spec.name in KEY) for spec in fields(LoopStep))
    )


def _engine_and_table(url: str):
    import sqlalchemy as sa

    from ride_duration.monitoring import _engine_and_table as monitoring_engine

    engine, _ = monitoring_engine(url)  # the database, created as monitoring creates it
    table = steps_table(sa.MetaData())
    table.metadata.create_all(engine)
    return engine, table


def store_step(step: LoopStep, url: str | None = None) -> None:
    """Store a step; one already there for the same month and model version is replaced."""
    replace_row(*_engine_and_table(url or Settings.from_environ().monitoring_url), asdict(step))


def read_steps(url: str | None = None):
    """Every stored step, by taxi type, month and time (a DataFrame)."""
    return read_rows(*_engine_and_table(url or Settings.from_environ().monitoring_url), "decided_at")
