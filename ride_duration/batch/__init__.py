"""Batch scoring plumbing, by concern; scripts/score.py (exported from notebooks/score.ipynb) is the adapter
that predicts through the serving core, and everything around it is here:

- `months`: a month opened without reading it, its rides as Arrow batches and numpy columns, the month check;
- `arrow`: numpy and Arrow into each other without copies, ride ids and repeated strings as bytes;
- `output`: the output's schema and metadata, its one atomic write (local or s3://), what an output holds;
- `backfills`: month ranges, a backfill over them, its summary table;
- `cli`: score.py's command line.

The names below are the ones notebooks, scripts and tests import from `ride_duration.batch`.
"""

from ride_duration.batch.arrow import arrow_array, fixed_width_strings, numpy_values, repeated, ride_ids
from ride_duration.batch.backfills import backfill_months, month_range, one_line, summary_table
from ride_duration.batch.months import (
    BATCH_ROWS,
    MonthInput,
    PickupCount,
    RideColumns,
    check_pickup_month,
    duration_minutes,
    input_columns,
    open_month,
    pickups_in_month,
    read_ahead,
    ride_columns,
)
from ride_duration.batch.output import (
    COMPRESSED_COLUMNS,
    DICTIONARY_COLUMNS,
    PARQUET_OPTIONS,
    OutputNotWritten,
    StorageUnavailable,
    atomic_parquet,
    default_output,
    is_s3,
    model_label,
    output_info,
    output_info_for,
    output_schema,
    publish,
    read_output,
    s3_client,
    scored_already,
    split_s3,
    staging_path,
)

__all__ = [
    "BATCH_ROWS",
    "COMPRESSED_COLUMNS",
    "DICTIONARY_COLUMNS",
    "PARQUET_OPTIONS",
    "MonthInput",
    "OutputNotWritten",
    "PickupCount",
    "RideColumns",
    "StorageUnavailable",
    "arrow_array",
    "atomic_parquet",
    "backfill_months",
    "check_pickup_month",
    "default_output",
    "duration_minutes",
    "fixed_width_strings",
    "input_columns",
    "is_s3",
    "model_label",
    "month_range",
    "numpy_values",
    "one_line",
    "open_month",
    "output_info",
    "output_info_for",
    "output_schema",
    "pickups_in_month",
    "publish",
    "read_ahead",
    "read_output",
    "repeated",
    "ride_columns",
    "ride_ids",
    "s3_client",
    "scored_already",
    "split_s3",
    "staging_path",
    "summary_table",
]
