"""Data access: real months, their quirks, the download, the clear error and the synthetic month."""

from __future__ import annotations

import http.server
import threading

import pandas as pd
import pytest

from ride_duration import data
from ride_duration.rides import RIDE_FIELDS
from tests.helpers import require_real_months


@pytest.fixture
def empty_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TAXI_DATA_DIR", str(tmp_path))
    return tmp_path


class TruncatingHandler(http.server.BaseHTTPRequestHandler):
    """Promises a 1 MB file and hangs up after 1 kB: a download cut off half way."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 20))
        self.end_headers()
        self.wfile.write(b"PAR1" + b"x" * 1020)
        self.wfile.flush()
        self.connection.close()

    def log_message(self, *args):
        pass


@pytest.fixture
def truncating_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TruncatingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_missing_month_is_a_clear_error_and_leaves_no_file(empty_data_dir, monkeypatch):
    monkeypatch.setattr(data, "TLC_URL", "http://127.0.0.1:9/trip-data/{filename}")  # nothing listens on port 9
    with pytest.raises(data.MonthNotAvailable) as error:
        data.read_month("green", 2021, 7)
    message = str(error.value)
    assert "green_tripdata_2021-07.parquet" in message
    assert "http://127.0.0.1:9/trip-data/green_tripdata_2021-07.parquet" in message
    assert "Fix:" in message and str(empty_data_dir) in message
    assert list(empty_data_dir.iterdir()) == []


def test_download_cut_off_half_way_leaves_no_partial_file(empty_data_dir, monkeypatch, truncating_server):
    monkeypatch.setattr(data, "TLC_URL", truncating_server + "/trip-data/{filename}")
    with pytest.raises(data.MonthNotAvailable, match="download failed"):
        data.read_month("green", 2021, 8)
    assert list(empty_data_dir.iterdir()) == []


def test_synthetic_fallback_is_labelled(empty_data_dir, monkeypatch, capsys):
    monkeypatch.setattr(data, "TLC_URL", "http://127.0.0.1:9/{filename}")
    df = data.read_month("green", 2021, 7, synthetic="fallback")
    assert data.is_synthetic(df)
    assert "using a SYNTHETIC month instead: green_tripdata_2021-07.parquet" in capsys.readouterr().err


def test_synthetic_month_is_deterministic_and_keeps_its_label_on_disk(tmp_path):
    first = data.synthetic_month("yellow", 2022, 3, n_rides=5_000)
    second = data.synthetic_month("yellow", 2022, 3, n_rides=5_000)
    pd.testing.assert_frame_equal(first, second)
    assert not first.equals(data.synthetic_month("yellow", 2022, 4, n_rides=5_000))
    assert {"tpep_pickup_datetime", "tpep_dropoff_datetime", *RIDE_FIELDS} <= set(first.columns)
    path = data.write_month_file(first, tmp_path / data.month_filename("yellow", 2022, 3))
    reread = data.read_month_file(path, "yellow")
    assert data.is_synthetic(reread)
    pd.testing.assert_frame_equal(reread, first, check_dtype=False)


def test_unknown_taxi_type_and_month():
    with pytest.raises(ValueError, match="unknown taxi type 'blue'"):
        data.read_month("blue", 2021, 1)
    with pytest.raises(ValueError, match="no such TLC month"):
        data.month_filename("green", 2021, 13)


def test_month_names():
    """One way to name a month (outputs, summaries, logs) and one list of taxi types."""
    assert data.TAXI_TYPES == ("green", "yellow")
    assert data.month_label("green", 2021, 3) == "green/2021-03"
    assert data.month_filename("yellow", 2022, 1) == "yellow_tripdata_2022-01.parquet"
    assert data.pickup_column("yellow") == "tpep_pickup_datetime"


def test_wrong_schema_is_a_clear_error(tmp_path):
    path = tmp_path / "green_tripdata_2021-01.parquet"
    pd.DataFrame({"a": [1]}).to_parquet(path)
    with pytest.raises(data.BadMonthFile, match="lacks"):
        data.read_month_file(path, "green")


def test_real_month_reproduces_the_published_counts():
    require_real_months(("green", 2021, 1))
    df = data.read_month("green", 2021, 1, allow_download=False)
    assert len(df) == 76_518
    assert len(data.training_rides(df, "green")) == 73_908
    assert data.stray_pickups(df, "green", 2021, 1) > 0  # real months carry rides from other months


def test_2023_type_change_is_smoothed_over():
    require_real_months(("green", 2023, 1), ("green", 2023, 2))
    before = data.read_month("green", 2023, 1, allow_download=False)
    after = data.read_month("green", 2023, 2, allow_download=False)
    for column in ("PULocationID", "DOLocationID", "trip_distance", "ehail_fee"):
        assert before[column].dtype == after[column].dtype, column
    assert after["PULocationID"].dtype == "int64"


def test_plausible_rides_removes_impossible_distances_and_speeds_and_counts_each_reason():
    rides = pd.DataFrame(
        {
            "trip_distance": [2.0, 0.0, -1.0, float("nan"), 244_152.01, 101.0, 30.0, 59.0, 100.0, 1.0],
            "duration": [10.0, 12.0, 5.0, 8.0, 20.0, 60.0, 20.0, 60.0, 60.0, 1.0],
        }
    )
    rides.attrs["source"] = "somewhere"
    kept, counts = data.plausible_rides(rides)
    # 30 miles in 20 minutes is 90 mph; 100 miles in an hour is 100 mph (too fast, though not too long)
    assert kept["trip_distance"].tolist() == [2.0, 59.0, 1.0]
    assert counts == {
        "rides": 10,
        "no distance (missing, or 0 miles or less)": 3,
        f"longer than {data.MAX_PLAUSIBLE_MILES:g} miles": 2,
        f"faster than {data.MAX_PLAUSIBLE_MPH:g} mph on average": 2,
        "kept": 3,
    }
    assert kept.index.tolist() == [0, 1, 2] and kept.attrs == {"source": "somewhere"}
    assert len(rides) == 10  # its input is left whole


def test_plausible_rides_of_a_real_month_keep_nearly_all_and_none_absurd():
    require_real_months(("green", 2021, 1))
    rides = data.training_rides(data.read_month("green", 2021, 1), "green")
    kept, counts = data.plausible_rides(rides)
    assert counts["rides"] == len(rides) and counts["kept"] == len(kept)
    assert sum(n for reason, n in counts.items() if reason not in ("rides", "kept")) == len(rides) - len(kept)
    assert len(kept) > 0.97 * len(rides)
    assert kept["trip_distance"].between(0, data.MAX_PLAUSIBLE_MILES, inclusive="right").all()
    assert (kept["trip_distance"] / (kept["duration"] / 60)).max() <= data.MAX_PLAUSIBLE_MPH
