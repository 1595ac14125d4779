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


def test_the_staged_transfer_unpacks_each_archive_once_its_last_byte_has_arrived(tmp_path: Path) -> None:
    """bench/gpu_stage.sh recv: the three archives travel as one byte stream cut in pieces; each is unpacked as
    soon as it is whole, the stream read with no reader stopping early (SIGPIPE under pipefail, once)."""
    import io
    import lzma
    import tarfile

    def archive(name: str, size: int, compress: bool) -> bytes:
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            info = tarfile.TarInfo(f"{name}/payload.bin")
            info.size = size
            tar.addfile(info, io.BytesIO(os.urandom(size)))  # random: pieces as large as the archives
        return lzma.compress(raw.getvalue()) if compress else raw.getvalue()

    # megabytes, well past a pipe's buffer, so that a reader stopping early would show
    a, b, c = archive("a", 1_000_000, True), archive("b", 3_000_000, False), archive("c", 2_000_000, True)
    stream, piece = a + b + c, 2_500_000
    pieces = tmp_path / "pieces"
    pieces.mkdir()
    (pieces / "sizes.sh").write_text(f"A={len(a)} B={len(b)} C={len(c)}\n")
    cuts = [stream[i : i + piece] for i in range(0, len(stream), piece)]
    for n, cut in enumerate(cuts, start=1):
        (pieces / f"p{n}").write_bytes(cut)
    stage = tmp_path / "stage"
    env = {**os.environ, "GPU_STAGE": str(stage), "GPU_PIECES": str(pieces), "TRAINS_A": "", "TRAINS_B": ""}
    unpacked, marked = [], []
    for n in range(1, len(cuts) + 1):
        done = subprocess.run(
            ["bash", str(REPO / "bench" / "gpu_stage.sh"), "recv", str(n), "60"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        unpacked.append(sorted(p.name for p in stage.iterdir() if p.name in ("a", "b", "c")))
        marked.append(sorted(p.stem.lower() for p in stage.glob("*.done")))  # unpacked once: never again
    ends = {"a": len(a), "b": len(a) + len(b), "c": len(stream)}
    expected = [sorted(name for name, end in ends.items() if end <= n * piece) for n in range(1, len(cuts) + 1)]
    assert unpacked == expected == marked and expected[-1] == ["a", "b", "c"]
    assert ["a"] in expected  # a piece that leaves B half-arrived: it waits, whole, for the next
    assert (stage / "c" / "payload.bin").stat().st_size == 2_000_000
    assert (stage / "repo" / "serving").is_dir()  # the trainings' private copy of the code


def test_trainings_run_in_the_background_until_the_deadline_and_the_checks_wait_for_them(tmp_path: Path) -> None:
    """bench/gpu.sh train / checks with a stand-in interpreter: a training past the deadline is cut (exit 124, which
    is how a long one ends, not a failure), and the checks start their serving steps only after it has ended."""
    fake = tmp_path / "python"
    fake.write_text(
        '#!/bin/bash\necho "$(date +%s.%N) $*" >>"$GPU_RESULTS/calls.txt"\n'
        '[[ "$*" == *bench/informer.py* ]] && exec sleep 30\nexit 0\n'
    )
    fake.chmod(0o755)
    results = tmp_path / "results"
    env = {**os.environ, "PYTHON": str(fake), "GPU_RESULTS": str(results), "GPU_DEADLINE": "", "TRAIN_SECONDS": "3"}
    script = str(REPO / "bench" / "gpu.sh")
    started = subprocess.run(["bash", script, "train", "informer"], env=env, capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stdout + started.stderr
    checks = subprocess.run(["bash", script, "checks"], env=env, capture_output=True, text=True, timeout=120)
    log = (results / "gpu.log").read_text()
    assert (results / "informer.done").read_text().startswith("exit 124 ")  # cut by its deadline
    assert "== train informer: exit 124" in log and "failed steps: 0" in log, log
    calls = [line.split(" ", 1) for line in (results / "calls.txt").read_text().splitlines()]
    ended = float((results / "informer.done").read_text().split()[-1])
    serving = [float(t) for t, args in calls if "serve_forecast.py" in args]
    assert serving and serving[0] >= ended  # the serving benchmark waited for the training to end
    assert checks.returncode == 0, checks.stdout + checks.stderr
