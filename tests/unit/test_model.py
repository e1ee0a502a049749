"""Loading a model by URI fails with a one-line reason, before any server or registry is asked."""

from __future__ import annotations

import pytest

from ride_duration.model import ModelLoadError, load_model


def test_no_uri_says_to_set_model_uri():
    with pytest.raises(ModelLoadError, match=r"no model URI given \(set MODEL_URI\)"):
        load_model("")


@pytest.mark.parametrize(
    "mlmodel, reason",
    [
        (None, "no MLmodel file there"),
        ("flavors:\n  python_function: {}\n", "not a scikit-learn model"),
        ("flavors: [unclosed\n", "cannot load model"),
    ],
)
def test_a_folder_that_is_no_model_gives_a_one_line_reason(tmp_path, mlmodel, reason):
    if mlmodel is not None:
        (tmp_path / "MLmodel").write_text(mlmodel)
    for uri in (str(tmp_path), tmp_path.as_uri()):
        with pytest.raises(ModelLoadError, match=reason) as error:
            load_model(uri)
        assert "\n" not in str(error.value) and uri in str(error.value)
