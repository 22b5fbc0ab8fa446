"""examples/notebooks/search.ipynb runs headless (nbclient) and shows what it promises: the
validation error, the best trial, a plot, the loaded model. About a minute on 2 cores."""

import os
from pathlib import Path

import pytest

from conftest import REPO, binary

NOTEBOOK = REPO / "examples" / "notebooks" / "search.ipynb"
DATA = os.environ.get("NASOP_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.append(str(out.get("data", {}).get("text/plain", "")))
    return "".join(parts)


def test_the_notebook_searches_plots_and_loads_the_winner(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    pytest.importorskip("pandas")
    pytest.importorskip("safetensors")
    nasop_binary, trainer = binary("nasop", "NASOP"), binary("nasop-trainer", "NASOP_TRAINER")
    if not nasop_binary or not trainer:
        pytest.skip("the notebook needs the nasop and nasop-trainer binaries (set NASOP and NASOP_TRAINER, or PATH)")
    if not Path(DATA).is_dir():
        pytest.skip(f"no Fashion-MNIST in {DATA} (make data, or set NASOP_FASHION_MNIST)")
    # The kernel inherits this environment: both binaries on PATH, runs in tmp_path.
    dirs = [str(Path(nasop_binary).parent), str(Path(trainer).parent)]
    monkeypatch.setenv("PATH", os.pathsep.join(dirs + [os.environ.get("PATH", "")]))
    monkeypatch.setenv("NASOP_NOTEBOOK_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("NASOP_FASHION_MNIST", DATA)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "the notebook is committed with outputs: clear them (Jupyter: Clear All Outputs)"
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()

    code = [c for c in nb.cells if c.cell_type == "code"]
    text = "\n".join(_text(c) for c in code)
    assert "field: spec.budget.maxTrials" in text
    assert "spec.budget.maxTrials: Invalid value: 0: spec.budget.maxTrials in body should be greater than or equal to 1" in text
    assert "IProgress not found" not in text, "the progress bar is not a notebook widget"
    assert "Succeeded - all 4 trials ended, 4 succeeded" in text
    assert "best trial: fmnist-notebook-" in text
    images = [o for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 1, "the plot cell drew no figure"
    assert "loaded model: " in text and " tensors, " in text
    assert (tmp_path / "runs" / "fmnist-notebook" / "journal.jsonl").exists()
