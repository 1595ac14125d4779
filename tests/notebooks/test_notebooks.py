"""Every analyst notebook runs top to bottom on small data; committed notebooks carry no outputs."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
SMALL = {"ARCAST_TRIALS": "3", "ARCAST_HORIZON": "36", "HF_HUB_OFFLINE": "1"}


def test_there_are_notebooks() -> None:
    assert {p.name for p in NOTEBOOKS} >= {"forecast.ipynb", "recommend.ipynb", "tuning.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: clear outputs before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_runs_top_to_bottom(path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    for key, value in SMALL.items():
        monkeypatch.setenv(key, os.environ.get(key, value))
    if path.name == "forecast.ipynb":  # the session's AR-Net on the ETTh1 slice; its training is tests/forecasting's
        monkeypatch.setenv("ARCAST_STORE", str(request.getfixturevalue("model_store")))
    if path.name == "tuning.ipynb":  # a study over the 2,000-row ETTh1 slice: the whole file cost a minute
        monkeypatch.setenv("ARCAST_DATASET", str(request.getfixturevalue("etth1_slice")))
    if path.name == "recommend.ipynb":
        # The session's recommender (the notebook's own training is the `python -m recsys train` CLI, which
        # tests/recsys/test_prorec_cli.py runs): a train inside the notebook cost about 4 minutes of the suite.
        artifact = request.getfixturevalue("beauty_slice_artifact")
        monkeypatch.setenv("ARCAST_STORE", str(artifact.path.parents[1]))
        monkeypatch.setenv("ARCAST_RECOMMENDER", artifact.name)
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    images = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, "the notebook should draw its plots"
