"""Writes an example notebook from a list of cells, with no outputs (shared by make_*.py).

Example: ``write_notebook([("md", "# Title"), ("code", "1 + 1")], Path("x.ipynb"))``.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """A notebook of ``("md" | "code", source)`` cells for the ipykernel Python 3 kernel."""
    nb = new_notebook(
        cells=[
            new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells
        ]
    )
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def write_notebook(cells: list[tuple[str, str]], path: Path) -> Path:
    nb = build(cells)
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return path
