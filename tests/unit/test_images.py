"""images/ holds only what the docs show, and every image the docs show is there."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import ROOT

IMAGES = ROOT / "images"
MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)")
HTML_IMAGE = re.compile(r"<img [^>]*src=\"([^\"]+)\"")


def documents() -> dict[Path, str]:
    """Every README and notebook markdown cell, as {file: text}."""
    import nbformat

    found = {path: path.read_text() for path in ROOT.glob("**/README.md") if ".venv" not in path.parts}
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        cells = nbformat.read(str(path), as_version=4).cells
        found[path] = "\n".join(cell.source for cell in cells if cell.cell_type == "markdown")
    return found


def referenced_images() -> dict[Path, list[Path]]:
    """{image path, resolved from the document that shows it: [documents]}."""
    shown: dict[Path, list[Path]] = {}
    for document, text in documents().items():
        for link in MARKDOWN_IMAGE.findall(text) + HTML_IMAGE.findall(text):
            if not re.match(r"[a-z]+://", link):
                shown.setdefault((document.parent / link).resolve(), []).append(document)
    return shown


def test_every_image_is_shown_somewhere_and_every_shown_image_exists():
    shown = referenced_images()
    missing = {
        str(image): [str(d.relative_to(ROOT)) for d in docs] for image, docs in shown.items() if not image.exists()
    }
    assert missing == {}, "documents show images that do not exist"
    unused = sorted(path.name for path in IMAGES.iterdir() if path.resolve() not in shown)
    assert unused == [], "images/ holds files no README or notebook shows; remove them or show them"
