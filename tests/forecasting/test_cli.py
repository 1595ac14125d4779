"""The CLI end to end: train -> export -> evaluate in subprocesses on a slice of ETTh1; its errors and --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from forecasting.cli import main


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "forecasting", *args], capture_output=True, text=True, timeout=300)


def test_train_export_evaluate(etth1_slice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, store = tmp_path / "run", tmp_path / "store"
    trained = cli(
        "train",
        "--dataset",
        str(etth1_slice),
        "--lookback",
        "48",
        "--horizon",
        "12",
        "--epochs",
        "3",
        "--batch-size",
        "64",
        "--lr",
        "0.003",
        "--out",
        str(run),
    )
    assert trained.returncode == 0, trained.stderr
    assert "test" in trained.stdout and (run / "run.json").is_file()
    # export and evaluate in process: the subprocess above proves `python -m forecasting` runs; two more cost ~15 s
    assert main(["export", "--run", str(run), "--store", str(store), "--name", "slice"]) == 0
    assert "version 1" in capsys.readouterr().out
    # AutoTimes' choice, refused for AR-Net
    assert main(["export", "--run", str(run), "--store", str(store), "--name", "other", "--rollout", "sliding"]) == 2
    assert "arnet has one rollout (window_shift)" in capsys.readouterr().err
    report = tmp_path / "eval.json"
    assert main(["evaluate", "--store", str(store), "--name", "slice", "--horizon", "36", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["horizon"] == 36 and result["data_matches_training"]
    assert result["windows"] == 400 + 48 - 48 - 36 + 1  # 20% test rows, each window, lookback rows early
    # The served rollout is close to training's own test error at its trained step on these windows.
    assert 0 < result["metrics"]["scaled"]["mse"] < 2.0


def test_bad_input_exits_2_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("date,OT\n2020-01-01,1\n2020-01-02,oops\n")
    result = cli("train", "--dataset", str(bad), "--out", str(tmp_path / "run"))  # the process's exit status
    assert result.returncode == 2
    assert "line 3, column 'OT': non-numeric value 'oops'" in result.stderr
    assert main(["evaluate", "--store", str(tmp_path), "--name", "nothing"]) == 2
    assert "no model named 'nothing'" in capsys.readouterr().err
    assert main(["tune", "--folds", "0", "--out", str(tmp_path / "tune")]) == 2
    assert "--folds must be at least 1, got 0" in capsys.readouterr().err


def test_help_explains_each_command(capsys: pytest.CaptureFixture[str]) -> None:
    # in process: the subprocesses above already prove `python -m forecasting` runs; four more cost ~20 s
    for command in ("train", "tune", "export", "evaluate"):
        with pytest.raises(SystemExit) as stop:
            main([command, "--help"])
        out = capsys.readouterr().out
        assert stop.value.code == 0 and "usage:" in out and len(out) > 400
