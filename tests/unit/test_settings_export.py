"""settings.exported: variables set for a block only, then the environment exactly as it was."""

from __future__ import annotations

import pytest

from ride_duration.settings import Settings, child_environment, exported


def test_a_block_sees_its_variables_and_leaves_the_environment_as_it_was():
    before = child_environment()
    unset = next(f"RIDE_DURATION_UNSET_{n}" for n in range(100) if f"RIDE_DURATION_UNSET_{n}" not in before)
    changed = {"MODEL_URI": "models:/m-in-the-block", unset: "1"}
    with pytest.raises(RuntimeError), exported(changed):
        inside = child_environment()
        assert Settings.from_environ().model_uri == "models:/m-in-the-block"
        raise RuntimeError("the block failed")
    assert {name: inside[name] for name in changed} == changed
    assert child_environment() == before and unset not in child_environment()
