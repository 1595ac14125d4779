"""The shared training loop under torchrun: two CPU processes (DDP, gloo) train what one process trains."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from forecasting.data import DataConfig, prepare_data

LOOKBACK, HORIZON, BATCH = 48, 13, 64


def train(launcher: list[str], data: Path, out: Path) -> subprocess.CompletedProcess[str]:
    args = [
        "train", "--dataset", str(data), "--lookback", str(LOOKBACK), "--horizon", str(HORIZON), "--epochs", "4",
        "--batch-size", str(BATCH), "--lr", "0.003", "--param", "hidden_sizes=[16]", "--param", "sparsity=0.5",
        "--out", str(out),
    ]  # fmt: skip
    result = subprocess.run([*launcher, "-m", "forecasting", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains(etth1_slice: Path, tmp_path: Path) -> None:
    """Why the two runs are mathematically the same training, not merely similar:

    - One seed: the same initial weights on every rank, and the same shuffled order of the training windows in
      every epoch on every rank and in the single process.
    - The single process takes steps of 64 consecutive windows of that order. Each rank keeps every other window
      (``shard=(rank, 2)``) and takes 32 a step, so step k of the two ranks together is exactly the 64 windows of
      the single process's step k. 1340 windows split evenly, so every step, the last one too, is two equal halves.
    - Each rank's loss is the mean over its 32 windows (Huber plus AR-Net's sparsity penalty, which depends on the
      weights only), and DDP averages the two ranks' gradients: the mean of two equal-sized means is the mean over
      the 64, so the averaged gradient is the single process's gradient. This holds for the MLP used here as for a
      linear model, for any loss that is a mean of per-window terms (no batch norm). AdamW and the LR schedule (the
      same number of steps) then move every rank's weights exactly as the single process moves its own.
    - The epoch's train and validation losses are all-reduced sums, so both report the single process's numbers:
      the same regulariser weight (measured from the train loss), early stopping and best checkpoint.

    Only the order of floating-point sums differs (~1e-7 relative), hence a tolerance of 1e-5.
    """
    prepared = prepare_data(DataConfig(dataset=str(etth1_slice), lookback=LOOKBACK, horizon=HORIZON))
    assert len(prepared.train) % 2 == 0 and BATCH % 2 == 0  # the premise of the equality above

    train([sys.executable], etth1_slice, tmp_path / "single")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    distributed = train(torchrun, etth1_slice, tmp_path / "ddp")

    assert distributed.stdout.count("saved run to") == 1  # rank 0 alone reports and saves
    one = torch.load(tmp_path / "single" / "model.pt", weights_only=True)
    two = torch.load(tmp_path / "ddp" / "model.pt", weights_only=True)
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-5, msg=name)
    assert float(one["reg_lambda"]) > 0  # the regulariser switched on, from the all-reduced train loss
    fit_one = json.loads((tmp_path / "single" / "run.json").read_text())["fit"]
    fit_two = json.loads((tmp_path / "ddp" / "run.json").read_text())["fit"]
    assert (fit_two["best_epoch"], fit_two["epochs_run"]) == (fit_one["best_epoch"], fit_one["epochs_run"])
    for a, b in zip(fit_one["history"], fit_two["history"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
