"""The command line of scripts/score.py: its options, their checks, its messages and exit codes.

`main` is given the script's own `score_month` and `backfill` (the adapter around the serving core),
so the plumbing here is the same whatever scores the rides.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ride_duration.batch.backfills import one_line, summary_table
from ride_duration.batch.output import model_label
from ride_duration.data import TAXI_TYPES, BadMonthFile, MonthNotAvailable
from ride_duration.model import ModelLoadError
from ride_duration.settings import BATCH, DEFAULT_MODEL_URI, Settings

PROG = "score.py"


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """score.py's options; --model-uri defaults to MODEL_URI (settings)."""
    settings = settings or Settings.from_environ(groups=BATCH)
    model_help = (
        f"model to score with: {DEFAULT_MODEL_URI}, models:/m-..., or the artifact's "
        f"s3:// or file:// URI (default: $MODEL_URI, else {DEFAULT_MODEL_URI})"
    )

    def add_data_options(parser, inherit=False):
        """The options score and backfill share; the backfill's copies (inherit=True) have no default of
        their own, so that `score.py --taxi-type yellow backfill ...` keeps yellow."""

        def default(value):
            return argparse.SUPPRESS if inherit else value

        parser.add_argument(
            "--taxi-type",
            choices=list(TAXI_TYPES),
            default=default(TAXI_TYPES[0]),
            help=f"which TLC trip records to score (default: {TAXI_TYPES[0]})",
        )
        parser.add_argument("--model-uri", default=default(settings.model_uri), help=model_help)
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
        prog=PROG,
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
        description="Score every month from --from to --to, with the model taken once (an alias is resolved "
        "once per run); a month whose output is readable and holds that month, scored from the same kind of "
        "rides (real or synthetic) by the same model version, is skipped unless --force; a month another "
        "version scored (an older one after a promotion, a newer one after a rollback) is scored again. "
        "Prints a line per month saying why, then a summary table; exit code 1 if a month failed.",
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
    backfill_parser.add_argument(
        "--monitor",
        action="store_true",
        help="monitor each month scored and retrain when one is flagged (needs the extra `monitoring`)",
    )
    backfill_parser.add_argument(
        "--no-retrain",
        dest="retrain",
        action="store_const",
        const=False,
        default=None,
        help="with --monitor: record flagged months, train nothing (default: $RETRAIN_FLAGGED_MONTHS, else on)",
    )
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The options, or a usage error (exit code 2) for those that do not go together."""
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
        if args.retrain is False and not args.monitor:
            parser.error("--no-retrain applies with --monitor only")
    elif args.year is None or args.month is None:
        parser.error("--year and --month are required (or use the backfill command)")
    return args


def main(
    score_month: Callable[..., dict],
    backfill: Callable[..., list[dict]],
    argv: list[str] | None = None,
    settings: Settings | None = None,
) -> int:
    """Run score.py's command line with the adapter's score_month and backfill; returns the exit code.

    Bad input, a model that does not load or an output that cannot be written: one line on stderr, exit 1.
    """
    parser = build_parser(settings)  # the model group's variables are text: nothing there fails to parse
    args = parse_args(parser, argv)
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
                **({"monitor": True, "retrain": args.retrain} if args.monitor else {}),
            )
            print(summary_table(summary))
            return 1 if any(row["status"] == "failed" for row in summary) else 0
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
        print(f"{PROG}: error: {one_line(error)}", file=sys.stderr)
        return 1
    print(scored_message(result))
    return 0


def scored_message(result: dict) -> str:
    """The line score.py prints for a month it scored."""
    label = " (SYNTHETIC)" if result["synthetic"] else ""
    model = model_label(result["model_version"], result.get("registered_version"))
    return (
        f"scored {result['rows']:,} rides of {result['month']}{label} with model {model} "
        f"in {result['seconds']:.3f}s (model loaded in {result['model_seconds']:.2f}s) -> {result['output']}"
    )
