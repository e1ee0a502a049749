"""Backfills by `models:/ride-duration@production` on a real MLflow server holding two registered versions that
predict differently: the alias is resolved once per run; after a promotion the next backfill re-scores the
months version 1 scored and says so, one line per month; after a rollback it re-scores them back."""

from __future__ import annotations

import numpy as np
import pytest

from ride_duration import batch, data, lifecycle, serving
from ride_duration.data import add_duration, month_filename, read_month_file
from ride_duration.features import frame_features
from ride_duration.model import PRODUCTION_ALIAS, REGISTERED_MODEL
from tests.batch_support import import_score, month_file, run_cli
from tests.helpers import move_alias, tracking_store

score = import_score()
PRODUCTION_URI = f"models:/{REGISTERED_MODEL}@{PRODUCTION_ALIAS}"
MONTHS = (1, 2, 3)


def test_a_backfill_follows_promotions_and_rollbacks(two_versions, tmp_path, monkeypatch, capsys):
    settings, (first, second) = two_versions
    move_alias(settings, first["number"])
    folder, root = tmp_path / "data", tmp_path / "output"
    for month in MONTHS:
        month_file(folder, 2021, month, synthetic=False, n_rides=2_000)
    monkeypatch.setenv("TAXI_DATA_DIR", str(folder))
    monkeypatch.setattr(data, "download", lambda url, dest, timeout=30: pytest.fail(f"tried to download {url}"))
    asked = []
    resolve = serving.resolve_alias
    monkeypatch.setattr(serving, "resolve_alias", lambda uri, s=None: asked.append(uri) or resolve(uri, s))
    names = {v["number"]: f"{v['model_id']} (ride-duration/{v['number']})" for v in (first, second)}

    def backfill(last_month: str) -> tuple[list[str], list[str]]:
        """score.py backfill from 2021-01; (each month's status in the summary table, the lines on stderr)."""
        asked.clear()
        code, out, err = run_cli(
            score,
            ["backfill", "--from", "2021-01", "--to", last_month, "--model-uri", PRODUCTION_URI, "--output-root", root],
            capsys,
        )
        assert code == 0, err
        assert asked == [PRODUCTION_URI]  # the alias is resolved once per run, whatever the months
        return [line.split()[1] for line in out.splitlines()[1:]], err.splitlines()

    def assert_scored_by(version: dict, months=MONTHS) -> None:
        for month in months:
            scored = batch.read_output(root / "green" / f"2021-{month:02d}.parquet")
            rides = add_duration(read_month_file(folder / month_filename("green", 2021, month), "green"), "green")
            assert set(scored["model_version"]) == {version["model_id"]}
            assert scored.attrs["registered_version"] == f"ride-duration/{version['number']}"
            expected = version["pipeline"].predict(frame_features(rides))
            assert np.allclose(scored["predicted_duration"].to_numpy(), expected, rtol=0, atol=1e-9)

    with tracking_store(settings.tracking_uri):
        assert backfill("2021-02") == (
            ["scored", "scored"],
            [f"green/2021-0{m}: no output yet, scoring with {names[1]}" for m in (1, 2)],
        )
        assert_scored_by(first, (1, 2))

        move_alias(settings, second["number"])  # a promotion, as the gate makes it: @previous keeps version 1
        move_alias(settings, first["number"], lifecycle.PREVIOUS_ALIAS)
        assert backfill("2021-03") == (
            ["scored"] * 3,
            [
                f"green/2021-01: scored by {names[1]}, re-scoring with {names[2]}",
                f"green/2021-02: scored by {names[1]}, re-scoring with {names[2]}",
                f"green/2021-03: no output yet, scoring with {names[2]}",
            ],
        )
        assert_scored_by(second)
        assert backfill("2021-03") == (
            ["skipped"] * 3,
            [f"green/2021-0{m}: already scored by {names[2]} from real rides, skipped" for m in MONTHS],
        )

        assert lifecycle.rollback(settings=settings).restored == str(first["number"])
        assert backfill("2021-03") == (
            ["scored"] * 3,
            [f"green/2021-0{m}: scored by {names[2]}, re-scoring with {names[1]}" for m in MONTHS],
        )
        assert_scored_by(first)

        code, out, _ = run_cli(
            score,
            ["--year", "2021", "--month", "1", "--model-uri", PRODUCTION_URI, "--output", tmp_path / "one.parquet"],
            capsys,
        )
    assert code == 0 and f"with model {names[1]} in" in out
