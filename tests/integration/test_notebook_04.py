"""Notebook 04 under papermill: the handler on the sample event, the whole loop on its own moto_server,
an outage and the restart."""

from __future__ import annotations

from ride_duration.settings import PROJECT_ROOT
from tests.helpers import tracking_store


def test_notebook_04_runs_the_whole_loop(registered_model, tmp_path):
    import papermill

    from ride_duration.notebooks import noise

    output = tmp_path / "04-streaming.ipynb"
    with tracking_store(registered_model["tracking_uri"]):  # the kernel resolves the alias there
        papermill.execute_notebook(
            str(PROJECT_ROOT / "notebooks" / "04-streaming.ipynb"),
            str(output),
            parameters={"model_uri": registered_model["uri"], "n_rides": 300, "batch_size": 50},
            cwd=str(PROJECT_ROOT / "notebooks"),
            progress_bar=False,
            kernel_name="python3",
        )
    text = output.read_text()
    assert "300 predictions for 300 rides" in text
    assert "rides without a prediction: 0" in text
    assert "the runner stopped:" in text and "ResourceNotFoundException" in text  # the outage
    assert "checkpoint unchanged: True" in text and "records in the failure file: 2" in text
    assert "100 records read" in text and "0 to the failure destination" in text  # the restart
    assert noise(output) == []  # no library warnings or logs
