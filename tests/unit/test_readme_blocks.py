"""The README conventions read without running anything: malformed markers are refused, a marker belongs just
before a shell block, printed text matches as the README says, and every block the README runs skip is marked
with its reason."""

from __future__ import annotations

import pytest

from tests.helpers import ROOT
from tests.readme_blocks import READMES, ReadmeError, parse, shows


@pytest.mark.parametrize(
    "marker, problem",
    [
        ("<!-- readme-test: skip -->", "a skip needs a reason"),
        ("<!-- readme-test: skip () -->", "a skip needs a reason"),
        ("<!-- readme-test: skipp (typo) -->", "unknown readme-test clause"),
    ],
)
def test_malformed_markers_are_refused(marker, problem):
    with pytest.raises(ReadmeError, match=problem):
        parse(f"{marker}\n```bash\ntrue\n```\n", "README.md")


def test_a_marker_must_be_just_before_a_shell_block():
    with pytest.raises(ReadmeError, match="just before a shell block"):
        parse("<!-- readme-test: skip (why) -->\nprose\n```bash\ntrue\n```\n", "README.md")
    with pytest.raises(ReadmeError, match="before a text block"):
        parse("<!-- readme-test: skip (why) -->\n```text\nq1: A\n```\n", "README.md")


def test_printed_text_matching():
    assert shows('ride -> HTTP 200\n{\n  "duration": 25.8228,\n  "model_version": "m-1"\n}', '"duration": 25.8...')
    assert shows("a  b\n c", "a b c")
    assert not shows("duration 17.5", "duration 25.8...")


@pytest.mark.parametrize("readme", READMES)
def test_every_skip_has_a_reason(readme):
    """The blocks the README test does not run are exactly the marked ones, each with its reason."""
    text = (ROOT / readme).read_text()
    blocks = parse(text, readme)
    assert blocks, f"{readme} has no shell block"
    lines = text.splitlines()
    marked = []
    for number, line in enumerate(lines):
        if line.strip().startswith("<!-- readme-test: skip"):
            fence = next(n for n in range(number + 1, len(lines)) if lines[n].strip())
            marked.append(fence + 1)
    assert [b.line for b in blocks if b.skip] == marked
    for block in blocks:
        if block.skip:
            print(f"{block.where} skipped: {block.skip}")
