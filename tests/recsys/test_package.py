"""The recommender package stays importable without the serving stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.baselines import main as baselines_main

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULES = [
    "recsys.data",
    "recsys.split",
    "recsys.metrics",
    "recsys.evaluation",
    "recsys.popularity",
    "recsys.models.sasrec",
    "recsys.training",
    "recsys.text_embeddings",
    "recsys.baselines",
    "recsys.cli",
    "recsys.export",
    "recsys.tuning",
    "recsys.prorec_training",
    "recsys.sasrec_export",
]


def test_recsys_never_imports_grpc() -> None:
    # the serving side (every module, no torch) is tests/serving/test_imports.py
    code = f"import sys; import {', '.join(MODULES)}; print(sorted(m for m in sys.modules if m.startswith('grpc')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_baselines_cli_prints_json_for_popularity(capsys: pytest.CaptureFixture[str]) -> None:
    assert baselines_main(["--dataset", "toys", "--models", "popularity"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dataset"] == "toys" and report["users"] == 19412 and report["items"] == 11924
    test = report["results"]["popularity"]["test"]
    assert set(test) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (5, 10, 20)}
    assert 0 < test["ndcg@10"] < test["recall@10"] < test["recall@20"] < 1
