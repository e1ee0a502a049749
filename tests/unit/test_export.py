"""scripts/export.py in a sandbox project: an export keeps the code and names its source, leaves out what is
the notebook's only, refuses shell lines, and --check catches a hand edit of any export."""

from __future__ import annotations

import sys

import nbformat
import pytest

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import export


def make_notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Explained"),
        nbformat.v4.new_code_cell("year = 2021", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("def answer():\n    return 42"),
        nbformat.v4.new_code_cell("print(answer())", metadata={"tags": [export.NOTEBOOK_ONLY_TAG]}),
        nbformat.v4.new_raw_cell('if __name__ == "__main__":\n    print(answer())'),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A project tree with the real notebook->script mapping plus one notebook of the test's own."""
    exports = dict(export.EXPORTS)
    for notebook, script in export.EXPORTS.items():
        for name in (notebook, script):
            if (ROOT / name).exists():
                (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    make_notebook(tmp_path / "notebooks" / "demo.ipynb")
    exports["notebooks/demo.ipynb"] = "scripts/demo.py"
    monkeypatch.setattr(export, "ROOT", tmp_path)
    monkeypatch.setattr(export, "EXPORTS", exports)
    assert export.main([]) == 0
    return tmp_path


def test_export_drops_notebook_only_cells_and_names_its_source(sandbox):
    script = (sandbox / "scripts" / "demo.py").read_text()
    assert script.splitlines()[0].startswith("# Exported from notebooks/demo.ipynb")
    assert "def answer" in script and 'if __name__ == "__main__"' in script
    assert "print(answer())\n" not in script.split("__main__")[0]
    assert "# Explained" not in script


def test_check_export_fails_on_any_hand_edited_export(sandbox):
    assert export.main(["--check"]) == 0
    for script in export.EXPORTS.values():
        path = sandbox / script
        if not path.exists():
            continue
        original = path.read_text()
        path.write_text(original.replace("\n", "\n# a hand edit\n", 1))
        assert export.main(["--check"]) == 1, script
        path.write_text(original)
    assert export.main(["--check"]) == 0


def test_shell_lines_are_refused_in_exported_cells(sandbox):
    nb = nbformat.read(sandbox / "notebooks" / "demo.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("!pip install something"))
    nbformat.write(nb, sandbox / "notebooks" / "demo.ipynb")
    with pytest.raises(export.ExportError, match="shell/magic"):
        export.main([])
