"""The analysis notebook is committed without outputs and executes on a tiny real sweep."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path: Path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip outputs"


@pytest.mark.slow
def test_analysis_notebook_executes_on_a_sweep(tiny_sweep: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("P3BENCH_RUN_DIRS", str(tiny_sweep))
    monkeypatch.setenv("P3BENCH_REPORT_DIR", str(tmp_path / "report"))
    notebook = nbformat.read(NOTEBOOKS[0].parent / "analysis.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 7  # the quality, compute and curve plots, and the diagnostics
    text = "".join(o.get("text", "") for o in outputs)
    assert "8 runs, 0 not finished" in text and "p3_no_dpp @ 0.3" in text
    assert (tmp_path / "report" / "summary.md").is_file()
