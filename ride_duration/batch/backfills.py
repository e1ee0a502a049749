"""A backfill: score a range of months, skipping those already scored as they would be now.

After a promotion (or a rollback) the months an older model scored are no longer "as they would be now":
the backfill scores them again with the model it serves, and says so, one line per month.

The scoring of one month is the batch adapter's (scripts/score.py, exported from notebooks/score.ipynb);
it is passed in, so the machinery here knows nothing of models or predictions.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from ride_duration.batch.months import open_month
from ride_duration.batch.output import StorageUnavailable, default_output, model_label, scored_already
from ride_duration.data import check_month, month_label

SUMMARY_COLUMNS = ["month", "status", "rows", "seconds", "output", "note"]


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


def tell(line: str) -> None:
    """A backfill's line about one month, on stderr (beside the progress bar on a terminal)."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)


def backfill_months(
    score_month: Callable[..., dict],
    served,
    taxi_type: str,
    months: list[tuple[int, int]],
    output_root: str = "output",
    *,
    force: bool = False,
    synthetic: bool | str = False,
    say: Callable[[str], None] = tell,
) -> list[dict]:
    """Score each (year, month) into output_root with score_month; one summary row per month.

    served: the model, taken once for the whole backfill (its `version` decides what is scored already;
    its `registered_version` names it in messages). score_month(taxi_type, year, month, served, destination,
    month_input=...) scores one month and returns its summary. Before each month, `say` gets one line with
    what the backfill decided and why ("green/2021-01: scored by m-old (ride-duration/1), re-scoring with
    m-new (ride-duration/2)"). A month's failure (its data or its output) is its summary row; the others go on.
    StorageUnavailable (S3 down, after the client's retries) stops the backfill: it is no month's fault.
    """
    from tqdm.auto import tqdm

    serving = model_label(served.version, served.registered_version)
    summary = []
    # disable=None: a progress bar on a terminal, none in a log file or a pipe
    for year, month in tqdm(months, desc=f"backfill {taxi_type}", unit="month", disable=None):
        destination = default_output(taxi_type, year, month, output_root)
        row = {"month": month_label(taxi_type, year, month), "output": destination}
        try:
            month_input = open_month(taxi_type, year, month, synthetic=synthetic)
            done, why = scored_already(destination, month_input, served.version, served.registered_version)
            if done and not force:
                say(f"{row['month']}: {why}, skipped")
                summary.append({**row, "status": "skipped", "rows": None, "seconds": None, "note": why})
                continue
            why = "forced" if done else why
            say(f"{row['month']}: {why}, {'scoring' if why == 'no output yet' else 're-scoring'} with {serving}")
            result = score_month(taxi_type, year, month, served, destination, month_input=month_input)
        except StorageUnavailable:
            raise
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
    cells = [
        [("" if r[h] is None else f"{r[h]:,}" if h == "rows" else str(r[h])) for h in SUMMARY_COLUMNS] for r in summary
    ]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(SUMMARY_COLUMNS)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(SUMMARY_COLUMNS, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)
