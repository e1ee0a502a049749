# Exported from notebooks/score.ipynb by `make export`: edit the notebook, not this file.

from __future__ import annotations

import sys
import time

import pyarrow as pa

from ride_duration.batch import (
    MonthInput,
    PickupCount,
    arrow_array,
    atomic_parquet,
    backfills,
    cli,
    default_output,
    month_range,
    open_month,
    output_info_for,
    output_schema,
    repeated,
    ride_columns,
    ride_ids,
)
from ride_duration.data import month_label
from ride_duration.serving import ModelService, ServedModel


def served_model(model) -> ServedModel:
    """The model a month (or a backfill) is scored with, taken once from the serving core.

    model: a URI (loaded without scikit-learn), a LoadedModel already in memory, or a ServedModel.
    """
    if isinstance(model, ServedModel):
        return model
    if isinstance(model, str):
        return ModelService(model, without_sklearn=True).current
    return ModelService.for_model(model).current


def score_batch(rides: pa.Table, first_row: int, served: ServedModel, month_input: MonthInput) -> pa.Table:
    """The output rows of one batch of rides (numbered from first_row in the month file), an Arrow table;
    rides the web service would reject have no prediction (null)."""
    ride = ride_columns(rides, month_input.taxi_type)
    predicted = served.predict_columns(ride.fields)
    n = rides.num_rows
    columns = [
        ride_ids(month_input.year, month_input.month, first_row, n),
        ride.pickup,
        arrow_array(ride.pu),
        arrow_array(ride.do),
        arrow_array(ride.duration),
        arrow_array(predicted, ride.valid),
        arrow_array(ride.duration - predicted, ride.valid),
        repeated(served.version, n),
    ]
    return pa.Table.from_arrays(columns, schema=output_schema(month_input.taxi_type))


def rejected_message(rejected: int, rows: int) -> str:
    return f"{rejected:,} of {rows:,} rides are ones the web service would reject: they have no prediction (null)"


def score_month(
    taxi_type: str,
    year: int,
    month: int,
    model,
    output_file: str | None = None,
    *,
    input_file: str | None = None,
    synthetic: bool | str = False,
    allow_other_month: bool = False,
    month_input: MonthInput | None = None,
) -> dict:
    """Score every ride of one month and write output_file atomically; return a summary.

    model: a URI, a loaded model or a served one (see served_model). month_input: the month already
    opened by open_month (a backfill opens it to decide); else it is opened from input_file and synthetic.
    allow_other_month: write the rides as this month even if most of their pickups are of another.
    The summary's "seconds" is the reading, scoring and writing; "model_seconds" taking the model;
    "rejected" the rides without a prediction (the web service would reject them), also in the output's
    metadata (ride_duration.rejected_rides) and, when there are any, in a line on stderr.
    Raises MonthNotAvailable, BadMonthFile, ModelLoadError or ValueError; none leaves output behind.
    """
    month_input = month_input or open_month(taxi_type, year, month, input_file=input_file or None, synthetic=synthetic)
    loading = time.perf_counter()
    served = served_model(model)
    started = time.perf_counter()
    destination = output_file or default_output(taxi_type, year, month)
    if month_input.banner:
        print(month_input.banner, file=sys.stderr)
    info = output_info_for(served.version, taxi_type, year, month, month_input.synthetic, served.registered_version)
    rows, rejected, pickups = 0, 0, PickupCount(month_input)
    with atomic_parquet(destination, output_schema(taxi_type), info) as writer:
        for first_row, rides in month_input.batches():
            scored = score_batch(rides, first_row, served, month_input)
            writer.write_table(scored)
            rows += scored.num_rows
            rejected += scored.column("predicted_duration").null_count
            pickups.add(scored)
        if not allow_other_month:
            pickups.check()
        writer.info["rejected_rides"] = str(rejected)
    if rejected:
        print(f"{rejected_message(rejected, rows)} ({month_label(taxi_type, year, month)})", file=sys.stderr)
    return {
        "month": month_label(taxi_type, year, month),
        "rows": rows,
        "rejected": rejected,
        "output": str(destination),
        "model_version": served.version,
        "registered_version": served.registered_version,
        "synthetic": month_input.synthetic,
        "source": month_input.source,
        "seconds": round(time.perf_counter() - started, 3),
        "model_seconds": round(started - loading, 3),
    }


def backfill(
    taxi_type: str,
    start: str,
    end: str,
    model,
    output_root: str = "output",
    *,
    force: bool = False,
    synthetic: bool | str = False,
) -> list[dict]:
    """score_month over every month from start to end ("YYYY-MM", both included) into output_root,
    with the model taken once; one summary row per month."""
    months = month_range(start, end)  # a bad range fails before the model loads
    served = served_model(model)
    return backfills.backfill_months(
        score_month, served, taxi_type, months, output_root, force=force, synthetic=synthetic
    )


def main(argv: list[str] | None = None) -> int:
    """score.py's command line with this adapter's scoring; returns the exit code."""
    return cli.main(score_month, backfill, argv)

if __name__ == "__main__":
    sys.exit(main())
