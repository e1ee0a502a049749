"""scripts/score.py, the batch adapter around the serving core, in this process with stand-in models: its
output rows, a month written whole or not at all, the backfill's decisions, the command line's checks."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from ride_duration import batch, data
from ride_duration.batch import cli as batch_cli
from ride_duration.batch import months
from ride_duration.data import add_duration, read_month_file
from ride_duration.features import FastPredictor, frame_features
from ride_duration.model import ModelLoadError
from ride_duration.serving import ModelService
from ride_duration.settings import DEFAULT_MODEL_URI, Settings
from tests.batch_support import assert_clean_failure, import_score, leftovers, month_file, run_cli
from tests.helpers import stand_in_model

score = import_score()


@pytest.fixture(scope="module")
def model():
    return stand_in_model("m-stand-in")


@pytest.fixture
def offline(monkeypatch):
    """No TLC download: a month missing from TAXI_DATA_DIR stays missing, online or not."""

    def no_download(url, dest, timeout=30):
        raise ConnectionError("offline (test)")

    monkeypatch.setattr(data, "download", no_download)


# --- the output rows of a batch ------------------------------------------------------------------


def test_score_batch_predicts_as_the_pipeline_bit_for_bit(model, tmp_path):
    path = month_file(tmp_path, 2021, 3, synthetic=False, n_rides=2_000)
    month_input = batch.open_month("green", 2021, 3, input_file=path)
    served = score.served_model(model)
    first_row, rides = next(month_input.batches())
    scored = score.score_batch(rides.slice(100, 900), first_row + 100, served, month_input)

    expected_rides = add_duration(read_month_file(path, "green"), "green").iloc[100:1000]
    expected = model.pipeline.predict(frame_features(expected_rides))
    assert scored.schema == batch.output_schema("green")
    assert np.array_equal(scored.column("predicted_duration").to_numpy(), expected)
    assert np.array_equal(scored.column("actual_duration").to_numpy(), expected_rides["duration"].to_numpy())
    assert np.array_equal(scored.column("diff").to_numpy(), expected_rides["duration"].to_numpy() - expected)
    assert scored.column("ride_id").to_pylist() == [f"2021/03_{row}" for row in range(100, 1000)]
    assert set(scored.column("model_version").to_pylist()) == {"m-stand-in"}


def test_served_model_is_taken_once_from_the_serving_core(model, tmp_path):
    served = score.served_model(model)
    assert served.version == "m-stand-in"
    assert score.served_model(served) is served
    assert score.served_model(ModelService.for_model(model).current).version == "m-stand-in"
    with pytest.raises(ModelLoadError, match="no MLmodel file"):
        score.served_model(str(tmp_path / "no-model"))


# --- a month, whole or not at all --------------------------------------------------------------------


def test_synthetic_month_is_labelled(model, tmp_path, capsys):
    result = score.score_month("green", 2021, 3, model, str(tmp_path / "synthetic.parquet"), synthetic=True)
    assert result["synthetic"] and result["source"] == "synthetic" and result["month"] == "green/2021-03"
    assert "SYNTHETIC DATA: green 2021-03 is a generated month" in capsys.readouterr().err
    assert batch.read_output(result["output"]).attrs["synthetic"]
    assert batch.output_info(result["output"]) == {
        "model_version": "m-stand-in",
        "month": "green/2021-03",
        "synthetic": True,
    }


def test_small_batches_give_the_same_output_with_global_ride_ids(model, tmp_path, monkeypatch):
    """Reading in batches must not change a single row, nor restart the ride numbering."""
    path = month_file(tmp_path, 2021, 3, synthetic=False, n_rides=5_000)
    whole = score.score_month("green", 2021, 3, model, str(tmp_path / "whole.parquet"), input_file=str(path))
    monkeypatch.setattr(months, "BATCH_ROWS", 1_000)
    batched = score.score_month("green", 2021, 3, model, str(tmp_path / "batched.parquet"), input_file=str(path))
    assert pq.ParquetFile(batched["output"]).metadata.num_row_groups == 5
    assert pq.read_table(batched["output"]).equals(pq.read_table(whole["output"]))
    assert pq.read_table(batched["output"]).column("ride_id")[-1].as_py() == "2021/03_4999"


def test_a_failure_midway_leaves_nothing_and_keeps_the_previous_output(model, tmp_path, monkeypatch):
    """A run failing after some batches are written: no file, no temporary left; an earlier output
    of the month stays whole until a run succeeds, which then replaces it whole."""
    destination = tmp_path / "month.parquet"
    monkeypatch.setattr(months, "BATCH_ROWS", 20_000)
    batches = {"n": 0}
    real_predict = FastPredictor.predict_columns

    def predict_then_fail(self, columns):
        if len(columns["PULocationID"]) > 1:  # a batch, not the serving core's self-check
            batches["n"] += 1
            if batches["n"] == 3:
                raise RuntimeError("injected: scorer died on batch 3")
        return real_predict(self, columns)

    monkeypatch.setattr(FastPredictor, "predict_columns", predict_then_fail)
    with pytest.raises(RuntimeError, match="injected"):
        score.score_month("green", 2021, 3, model, str(destination), synthetic=True)
    assert not destination.exists() and leftovers(tmp_path) == []

    monkeypatch.setattr(FastPredictor, "predict_columns", real_predict)
    first = score.score_month("green", 2021, 3, model, str(destination), synthetic=True)
    before = destination.read_bytes()
    monkeypatch.setattr(FastPredictor, "predict_columns", predict_then_fail)
    batches["n"] = 0
    with pytest.raises(RuntimeError, match="injected"):
        score.score_month("green", 2021, 3, model, str(destination), synthetic=True)
    assert destination.read_bytes() == before and leftovers(tmp_path) == []
    assert len(batch.read_output(destination)) == first["rows"]


def test_empty_month_gives_empty_output_with_the_schema(model, tmp_path):
    empty = data.write_month_file(data.synthetic_month("green", 2021, 3, n_rides=0), tmp_path / "empty-month.parquet")
    destination = tmp_path / "out.parquet"
    result = score.score_month("green", 2021, 3, model, str(destination), input_file=str(empty))
    assert result["rows"] == 0 and batch_cli.scored_message(result).startswith("scored 0 rides of green/2021-03")
    table = pq.read_table(destination)
    assert table.num_rows == 0 and table.schema.remove_metadata() == batch.output_schema("green")
    assert batch.output_info(destination)["model_version"] == model.version


def test_another_months_file_is_refused_unless_allowed(model, tmp_path):
    april = month_file(tmp_path, 2021, 4, synthetic=False)
    destination = tmp_path / "out.parquet"
    with pytest.raises(data.BadMonthFile, match="holds rides of 2021-04"):
        score.score_month("green", 2021, 3, model, str(destination), input_file=str(april))
    assert not destination.exists() and leftovers(tmp_path) == []
    score.score_month("green", 2021, 3, model, str(destination), input_file=str(april), allow_other_month=True)
    scored = batch.read_output(destination)
    assert scored.attrs["month"] == "green/2021-03" and scored["ride_id"].iloc[0] == "2021/03_0"


# --- the backfill ---------------------------------------------------------------------------------------


def test_backfill_scores_again_what_is_not_done_and_skips_what_is(model, tmp_path, offline, monkeypatch):
    """Months first scored from synthetic stand-ins are scored again from the real files; a truncated output
    or one by another model is scored again; a matching one is skipped."""
    folder, root = tmp_path / "data", tmp_path / "output"
    for month in (1, 2, 3):
        month_file(folder, 2021, month, synthetic=False)
    monkeypatch.setenv("TAXI_DATA_DIR", str(tmp_path / "nothing"))

    def statuses(**options):
        summary = score.backfill("green", "2021-01", "2021-03", model, str(root), **options)
        return [(row["status"], row["note"]) for row in summary]

    assert [status for status, _ in statuses(synthetic="fallback")] == ["scored"] * 3  # no files: synthetic
    outputs = [root / "green" / f"2021-0{month}.parquet" for month in (1, 2, 3)]
    assert all(batch.output_info(output)["synthetic"] for output in outputs)

    monkeypatch.setenv("TAXI_DATA_DIR", str(folder))  # the real files arrived
    assert (
        statuses(synthetic="fallback")
        == [("scored", "re-scored: existing output was scored from synthetic rides, these are real")] * 3
    )
    assert not any(batch.output_info(output)["synthetic"] for output in outputs)
    assert [status for status, _ in statuses()] == ["skipped"] * 3

    whole = outputs[0].read_bytes()
    outputs[0].write_bytes(whole[: len(whole) // 2])
    score.score_month("green", 2021, 2, stand_in_model("m-another-model"), str(outputs[1]))
    untouched = outputs[2].stat().st_mtime_ns
    summary = statuses()
    assert [status for status, _ in summary] == ["scored", "scored", "skipped"]
    assert summary[0][1].startswith("re-scored: existing output unreadable")
    assert summary[1][1] == "re-scored: scored by m-another-model"
    assert outputs[2].stat().st_mtime_ns == untouched
    assert {batch.output_info(output)["model_version"] for output in outputs} == {model.version}

    forced = score.backfill("green", "2021-01", "2021-03", model, str(root), force=True)
    assert [(row["status"], row["note"]) for row in forced] == [("scored", "re-scored: forced")] * 3


def registered_stand_in(number: int):
    """Version `number` of ride-duration as a stand-in model (slope `number`), named as the registry names it."""
    model = stand_in_model(f"m-{number}", slope=float(number))
    model.registered_version = f"ride-duration/{number}"
    return model


def test_a_backfill_after_a_promotion_rescores_what_the_older_version_scored_and_says_so(
    tmp_path, offline, monkeypatch, capsys
):
    folder, root = tmp_path / "data", tmp_path / "output"
    for month in (1, 2, 3):
        month_file(folder, 2021, month, synthetic=False)
    monkeypatch.setenv("TAXI_DATA_DIR", str(folder))
    first, second = registered_stand_in(1), registered_stand_in(2)

    def backfill(model, last_month="2021-03") -> tuple[list, list[str]]:
        capsys.readouterr()
        summary = score.backfill("green", "2021-01", last_month, model, str(root))
        return [row["status"] for row in summary], capsys.readouterr().err.splitlines()

    assert backfill(first, "2021-02") == (
        ["scored", "scored"],
        [f"green/2021-0{m}: no output yet, scoring with m-1 (ride-duration/1)" for m in (1, 2)],
    )
    assert backfill(second) == (  # promoted: version 2 re-scores what version 1 scored
        ["scored", "scored", "scored"],
        [
            "green/2021-01: scored by m-1 (ride-duration/1), re-scoring with m-2 (ride-duration/2)",
            "green/2021-02: scored by m-1 (ride-duration/1), re-scoring with m-2 (ride-duration/2)",
            "green/2021-03: no output yet, scoring with m-2 (ride-duration/2)",
        ],
    )
    outputs = [root / "green" / f"2021-0{month}.parquet" for month in (1, 2, 3)]
    assert [batch.output_info(o)["registered_version"] for o in outputs] == ["ride-duration/2"] * 3
    assert backfill(second) == (
        ["skipped"] * 3,
        [f"green/2021-0{m}: already scored by m-2 (ride-duration/2) from real rides, skipped" for m in (1, 2, 3)],
    )
    statuses, lines = backfill(first)  # rolled back: version 1 scores them all again
    assert statuses == ["scored"] * 3
    assert lines == [
        f"green/2021-0{m}: scored by m-2 (ride-duration/2), re-scoring with m-1 (ride-duration/1)" for m in (1, 2, 3)
    ]
    for month, output in zip((1, 2, 3), outputs):
        scored = batch.read_output(output)
        rides = add_duration(read_month_file(folder / data.month_filename("green", 2021, month), "green"), "green")
        assert set(scored["model_version"]) == {"m-1"} and scored.attrs["registered_version"] == "ride-duration/1"
        assert np.array_equal(scored["predicted_duration"].to_numpy(), first.pipeline.predict(frame_features(rides)))


def test_backfill_goes_on_past_a_failed_month(model, tmp_path, offline, monkeypatch):
    folder = tmp_path / "data"
    month_file(folder, 2021, 1, synthetic=False)
    (folder / data.month_filename("green", 2021, 2)).write_text("not parquet")
    month_file(folder, 2021, 3, synthetic=False)
    monkeypatch.setenv("TAXI_DATA_DIR", str(folder))
    summary = score.backfill("green", "2021-01", "2021-04", model, str(tmp_path / "output"))
    assert [row["status"] for row in summary] == ["scored", "failed", "scored", "failed"]
    assert "is not a readable parquet file" in summary[1]["note"]
    assert "green_tripdata_2021-04.parquet is not in" in summary[3]["note"] and "\n" not in summary[3]["note"]


def test_a_bad_range_fails_before_the_model_loads(tmp_path):
    with pytest.raises(ValueError, match="is after"):
        score.backfill("green", "2021-03", "2021-01", str(tmp_path / "no-model"), str(tmp_path))


# --- the command line -------------------------------------------------------------------------------------


def cli(argv, capsys) -> tuple[int, str, str]:
    return run_cli(score, argv, capsys)


def test_options_before_backfill_are_kept_and_misplaced_ones_refused(capsys):
    parser = batch_cli.build_parser()
    args = parser.parse_args(
        ["--model-uri", "m", "--taxi-type", "yellow", "backfill", "--from", "2021-01", "--to", "2021-02"]
    )
    assert (args.model_uri, args.taxi_type, args.synthetic) == ("m", "yellow", False)
    args = parser.parse_args(["backfill", "--from", "2021-01", "--to", "2021-02", "--synthetic"])
    assert (args.taxi_type, args.synthetic) == ("green", True)
    code, _, err = cli(["--year", "2021", "backfill", "--from", "2021-01", "--to", "2021-02"], capsys)
    assert code == 2 and "--year do not apply to backfill" in err
    code, _, err = cli(["--year", "2021"], capsys)
    assert code == 2 and "--year and --month are required" in err


def test_the_default_model_is_model_uri():
    assert batch_cli.build_parser(Settings.from_environ({})).parse_args([]).model_uri == DEFAULT_MODEL_URI
    settings = Settings.from_environ({"MODEL_URI": "models:/m-123"})
    assert batch_cli.build_parser(settings).parse_args([]).model_uri == "models:/m-123"


def test_bad_input_is_one_clear_line_and_no_output(tmp_path, capsys, offline, monkeypatch):
    destination = tmp_path / "out.parquet"
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pq.read_table(month_file(tmp_path / "data", 2021, 3, synthetic=False)).select([0, 1]), wrong)
    not_parquet = tmp_path / "notes.parquet"
    not_parquet.write_text("these are not trip records\n")
    yellow = data.write_month_file(data.synthetic_month("yellow", 2022, 1, n_rides=100), tmp_path / "yellow.parquet")
    monkeypatch.setenv("TAXI_DATA_DIR", str(tmp_path / "empty"))
    month = ["--year", 2021, "--month", 3, "--model-uri", tmp_path / "no-model", "--output", destination]
    for argv, fragments in [
        (month, ("score.py: error:", "green_tripdata_2021-03.parquet is not in", "--synthetic")),
        ([*month, "--input", wrong], ("is not a green TLC file: it lacks",)),
        ([*month, "--input", not_parquet], ("is not a readable parquet file",)),
        ([*month, "--input", yellow], ("lpep_pickup_datetime",)),
        ([*month, "--synthetic"], ("cannot load model", "no MLmodel file")),
        (["--year", 2021, "--month", 13, "--output", destination], ("no such TLC month: 2021-13",)),
        (
            ["--taxi-type", "purple", "--year", 2021, "--month", 3, "--output", destination],
            ("invalid choice: 'purple'",),
        ),
    ]:
        code, _, err = cli(argv, capsys)
        assert_clean_failure(code, err, destination, *fragments)


def test_unknown_taxi_type_is_a_clear_error(model, tmp_path):
    with pytest.raises(ValueError, match="unknown taxi type 'purple'"):
        score.score_month("purple", 2021, 3, model, str(tmp_path / "out.parquet"))
    assert list(tmp_path.iterdir()) == []
