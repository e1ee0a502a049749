# Exported from notebooks/score.ipynb by `make export`: edit the notebook, not this file.

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import pyarrow as pa

from ride_duration.batch import (
    MonthInput,
    arrow_array,
    atomic_parquet,
    check_pickup_month,
    default_output,
    fixed_width_strings,
    open_month,
    output_info_for,
    output_schema,
    pickups_in_month,
    ride_columns,
    scored_already,
)
from ride_duration.data import BadMonthFile, MonthNotAvailable, check_month, pickup_column
from ride_duration.features import FastPredictor
from ride_duration.model import ModelLoadError, load_model


def ride_ids(year: int, month: int, first_row: int, n: int) -> pa.Array:
    """f"{year:04d}/{month:02d}_{row}" for rows first_row .. first_row + n - 1, as an Arrow string array.

    Rows whose numbers have the same count of digits are one block of bytes, a row per ride: the
    prefix, then the digits, written four at a time for all rows at once from a table of "0000".."9999".
    """
    prefix = np.frombuffer(f"{year:04d}/{month:02d}_".encode(), dtype=np.uint8)
    blocks = []
    start, end = first_row, first_row + n
    while start < end:
        digits = len(str(start))
        stop = min(end, 10**digits)
        rest = np.arange(start, stop, dtype=np.int32)  # int32 divides twice as fast; rows < 2**31
        block = np.empty((stop - start, prefix.size + digits), dtype=np.uint8)
        block[:, : prefix.size] = prefix
        done = 0  # digits written, from the last one
        while done < digits:
            rest, four = np.divmod(rest, 10_000)
            width = min(4, digits - done)
            block[:, block.shape[1] - done - width : block.shape[1] - done] = np.take(FOUR_DIGITS, four, axis=0)[
                :, 4 - width :
            ]
            done += width
        blocks.append(block)
        start = stop
    return fixed_width_strings(blocks)


FOUR_DIGITS = np.array([list(f"{i:04d}".encode()) for i in range(10_000)], dtype=np.uint8)  # "0000".."9999"


def repeated(text: str, n: int) -> pa.Array:
    """The same string n times, as an Arrow string array."""
    data = np.frombuffer(text.encode(), dtype=np.uint8)
    return fixed_width_strings([np.broadcast_to(data, (n, data.size))])


def score_batch(
    rides, first_row: int, predictor: FastPredictor, model_version: str, taxi_type: str, year: int, month: int
) -> pa.Table:
    """The output rows for one batch of rides, an Arrow table (rides numbered from first_row in the month file)."""
    ride = ride_columns(rides, taxi_type)
    predicted = predictor.predict_arrays(ride.pu, ride.do, ride.distance)
    n = rides.num_rows
    columns = [
        ride_ids(year, month, first_row, n),
        ride.pickup,
        arrow_array(ride.pu),
        arrow_array(ride.do),
        arrow_array(ride.duration),
        arrow_array(predicted),
        arrow_array(ride.duration - predicted),
        repeated(model_version, n),
    ]
    return pa.Table.from_arrays(columns, schema=output_schema(taxi_type))


SYNTHETIC_BANNER = (
    "*** SYNTHETIC DATA: {month} is a generated month, not TLC rides; its output is labelled synthetic ***"
)


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

    The summary's "seconds" is the reading, scoring and writing; "model_seconds" the model's loading
    (and the fast path's vocabulary table).
    model: a model URI or an already loaded ride_duration.model.LoadedModel (a backfill loads it once).
    month_input: the month already opened by open_month (a backfill opens it to decide); else it is
    opened here from input_file and synthetic.
    allow_other_month: write the rides as this month even if most of their pickups are of another.
    Raises MonthNotAvailable, BadMonthFile, ModelLoadError or ValueError; none leaves output behind.
    """
    month_input = month_input or open_month(taxi_type, year, month, input_file=input_file or None, synthetic=synthetic)
    loading = time.perf_counter()
    model = load_model(model, without_sklearn=True) if isinstance(model, str) else model
    predictor = FastPredictor(model.pipeline)
    started = time.perf_counter()
    destination = output_file or default_output(taxi_type, year, month)
    if month_input.synthetic:
        print(SYNTHETIC_BANNER.format(month=f"{taxi_type} {year:04d}-{month:02d}"), file=sys.stderr)
    info = output_info_for(model.version, taxi_type, year, month, month_input.synthetic)
    rows = in_month = with_time = 0
    with atomic_parquet(destination, output_schema(taxi_type), info) as writer:
        for first_row, rides in month_input.batches():
            scored = score_batch(rides, first_row, predictor, model.version, taxi_type, year, month)
            writer.write_table(scored)
            rows += len(rides)
            counts = pickups_in_month(scored.column(pickup_column(taxi_type)), year, month)
            in_month, with_time = in_month + counts[0], with_time + counts[1]
        if not allow_other_month:
            check_pickup_month(month_input, in_month, with_time)
    return {
        "month": f"{taxi_type}/{year:04d}-{month:02d}",
        "rows": rows,
        "output": str(destination),
        "model_version": model.version,
        "synthetic": month_input.synthetic,
        "source": month_input.source,
        "seconds": round(time.perf_counter() - started, 3),  # read, score and write
        "model_seconds": round(started - loading, 3),
    }


def month_range(start: str, end: str) -> list[tuple[int, int]]:
    """[(year, month), ...] from "YYYY-MM" to "YYYY-MM", both included."""

    def parse(text: str) -> tuple[int, int]:
        try:
            year, month = (int(part) for part in text.split("-"))
        except ValueError:
            raise ValueError(f"not a month: {text!r} (use YYYY-MM)") from None
        return check_month(year, month)

    (year, month), last = parse(start), parse(end)
    if last < (year, month):
        raise ValueError(f"empty range: {start} is after {end}")
    months = []
    while (year, month) <= last:
        months.append((year, month))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


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
    """Score every month from start to end into output_root; returns one summary row per month."""
    months = month_range(start, end)
    from tqdm.auto import tqdm

    model = load_model(model, without_sklearn=True) if isinstance(model, str) else model
    summary = []
    # disable=None: a progress bar on a terminal, none in a log file or a pipe
    for year, month in tqdm(months, desc=f"backfill {taxi_type}", unit="month", disable=None):
        destination = default_output(taxi_type, year, month, output_root)
        row = {"month": f"{taxi_type}/{year:04d}-{month:02d}", "output": destination}
        try:
            month_input = open_month(taxi_type, year, month, synthetic=synthetic)
            done, why = scored_already(destination, month_input, model.version)
            if done and not force:
                summary.append({**row, "status": "skipped", "rows": None, "seconds": None, "note": why})
                continue
            why = "forced" if done else why
            result = score_month(taxi_type, year, month, model, destination, month_input=month_input)
        except (ValueError, OSError) as error:  # this month's data or output; the others go on
            summary.append({**row, "status": "failed", "rows": None, "seconds": None, "note": one_line(error)})
            continue
        notes = ["SYNTHETIC"] if result["synthetic"] else []
        if why != "no output yet":
            notes.append(f"re-scored: {why}")
        summary.append(
            {**row, "status": "scored", "rows": result["rows"], "seconds": result["seconds"], "note": "; ".join(notes)}
        )
    return summary


def summary_table(summary: list[dict]) -> str:
    """The backfill summary as a fixed-width text table."""
    headers = ["month", "status", "rows", "seconds", "output", "note"]
    cells = [[("" if r[h] is None else f"{r[h]:,}" if h == "rows" else str(r[h])) for h in headers] for r in summary]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    model_help = (
        "model to score with: models:/ride-duration@production, models:/m-..., or the artifact's "
        "s3:// or file:// URI (default: $MODEL_URI, else models:/ride-duration@production)"
    )
    default_model = os.environ.get("MODEL_URI", "models:/ride-duration@production")

    def add_data_options(parser, inherit=False):
        """The options score and backfill share; the backfill's copies (inherit=True) have no default of
        their own, so that `score.py --taxi-type yellow backfill ...` keeps yellow."""

        def default(value):
            return argparse.SUPPRESS if inherit else value

        parser.add_argument(
            "--taxi-type",
            choices=["green", "yellow"],
            default=default("green"),
            help="which TLC trip records to score (default: green)",
        )
        parser.add_argument("--model-uri", default=default(default_model), help=model_help)
        source = parser.add_mutually_exclusive_group()
        source.add_argument(
            "--synthetic",
            action="store_const",
            const=True,
            default=default(False),
            help="score the deterministic synthetic month instead of TLC data (output labelled synthetic)",
        )
        source.add_argument(
            "--synthetic-fallback",
            dest="synthetic",
            action="store_const",
            const="fallback",
            default=default(False),
            help="use the synthetic month only if the real one is neither local nor downloadable",
        )

    parser = argparse.ArgumentParser(
        prog="score.py",
        description="Score every ride of one TLC month with the ride-duration model and write a parquet file "
        "(written atomically: a failed run leaves nothing at the destination).",
        epilog="Backfill many months: score.py backfill --help",
    )
    add_data_options(parser)
    parser.add_argument("--year", type=int, help="year of the month to score, e.g. 2021")
    parser.add_argument("--month", type=int, help="month to score, 1-12")
    parser.add_argument(
        "--output",
        help="where to write: a local path or s3://bucket/key (default: output/{taxi_type}/{YYYY-MM}.parquet)",
    )
    parser.add_argument(
        "--input",
        help="a TLC parquet file to score instead of looking the month up in "
        "$TAXI_DATA_DIR (default data/) or downloading it",
    )
    parser.add_argument(
        "--allow-other-month",
        action="store_true",
        help="score the file as --year/--month even if most of its pickups are of another month (refused otherwise)",
    )
    commands = parser.add_subparsers(dest="command", metavar="{backfill}")
    backfill_parser = commands.add_parser(
        "backfill",
        help="score a range of months",
        description="Score every month from --from to --to; a month whose output is readable and holds that "
        "month, scored from the same kind of rides (real or synthetic) by the same model version, is "
        "skipped unless --force. Prints a summary table; exit code 1 if a month failed.",
    )
    add_data_options(backfill_parser, inherit=True)
    backfill_parser.add_argument("--from", dest="start", required=True, metavar="YYYY-MM", help="first month")
    backfill_parser.add_argument("--to", dest="end", required=True, metavar="YYYY-MM", help="last month (included)")
    backfill_parser.add_argument(
        "--output-root",
        default="output",
        help="folder or s3://bucket/prefix; each month goes to {root}/{taxi_type}/{YYYY-MM}.parquet (default: output)",
    )
    backfill_parser.add_argument(
        "--force", action="store_true", help="score months again even if their output is up to date"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "backfill":
        misplaced = [
            flag
            for flag, value in (
                ("--year", args.year),
                ("--month", args.month),
                ("--output", args.output),
                ("--input", args.input),
                ("--allow-other-month", args.allow_other_month or None),
            )
            if value is not None
        ]
        if misplaced:
            parser.error(f"{', '.join(misplaced)} do not apply to backfill: use --from, --to and --output-root")
    try:
        if args.command == "backfill":
            summary = backfill(
                args.taxi_type,
                args.start,
                args.end,
                args.model_uri,
                args.output_root,
                force=args.force,
                synthetic=args.synthetic,
            )
            print(summary_table(summary))
            return 1 if any(row["status"] == "failed" for row in summary) else 0
        if args.year is None or args.month is None:
            parser.error("--year and --month are required (or use the backfill command)")
        result = score_month(
            args.taxi_type,
            args.year,
            args.month,
            args.model_uri,
            args.output,
            input_file=args.input,
            synthetic=args.synthetic,
            allow_other_month=args.allow_other_month,
        )
    except (MonthNotAvailable, BadMonthFile, ModelLoadError, ValueError, OSError) as error:
        print(f"score.py: error: {one_line(error)}", file=sys.stderr)
        return 1
    label = " (SYNTHETIC)" if result["synthetic"] else ""
    print(
        f"scored {result['rows']:,} rides of {result['month']}{label} with model {result['model_version']} "
        f"in {result['seconds']:.3f}s (model loaded in {result['model_seconds']:.2f}s) -> {result['output']}"
    )
    return 0

if __name__ == "__main__":
    sys.exit(main())
