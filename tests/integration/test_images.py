"""The diagrams in images/ are what scripts/make_images.py draws (tests/unit/test_images.py: images/ holds
only what the docs show)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT

IMAGES = ROOT / "images"


def test_make_images_draws_the_committed_diagrams(tmp_path):
    import matplotlib.image
    import numpy as np

    sys.path.insert(0, str(ROOT / "scripts"))
    from make_images import DIAGRAMS

    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_images.py"), "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    for name in DIAGRAMS:
        drawn, committed = matplotlib.image.imread(tmp_path / name), matplotlib.image.imread(IMAGES / name)
        assert drawn.shape == committed.shape, f"images/{name} is not what make_images.py draws: run make images"
        assert np.abs(drawn - committed).mean() < 0.01, (
            f"images/{name} is not what make_images.py draws: run make images"
        )
