"""bench/gpu.sh, the GPU machine's checks: its dry run (the same steps on the CPU provider, tiny inputs) passes and
writes what the GPU run writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_gpu_script_dry_run_checks_parity_and_the_device_rollout(tmp_path: Path, data_dir: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "ARCAST_DATA_DIR": str(data_dir)}
    done = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu.sh"), "--dry-run"], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu.json").read_text())
    assert results["dry_run"] and results["providers"] == ["CPUExecutionProvider"]
    assert set(results["parity"]) == {"naive", "arnet"} and results["all_within_tolerance"]
    for kind in results["parity"].values():
        assert kind["providers"]["CPUExecutionProvider"]["max_abs_diff_vs_cpu"] == 0.0
    (rollout,) = results["rollout_on_device"]
    assert rollout["device"] == "cpu"  # the I/O-binding path, on the CPU
    assert all(b["max_abs_diff"] < 1e-5 for b in rollout["batches"].values())
    assert "failed steps: 0" in (tmp_path / "gpu.log").read_text()
