"""Hot reload, refusing a corrupted artifact, graceful SIGTERM drain, committed stubs up to date."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from forecasting.export import export_run
from serving.artifact import staged_artifact, write_manifest
from serving.client import ArcastClient
from serving.protogen import OUT_ROOT, generate
from tests.serving.conftest import start_server

MODEL = "etth1-arnet"


def wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def latest_version(client: ArcastClient) -> str:
    return next(m.version for m in client.list_models() if m.latest)


def test_hot_reload_and_corrupted_artifact(arnet_run, model_store: Path, tmp_path: Path, histories: np.ndarray) -> None:
    store = tmp_path / "store"
    shutil.copytree(model_store, store)
    server = start_server(store, poll_interval_s=0.1)
    try:
        with ArcastClient(f"127.0.0.1:{server.port}") as client:
            before = client.forecast(MODEL, [histories[0]], 12)
            assert before.version == "1"
            export_run(arnet_run, store, MODEL)  # version 2 appears atomically while serving
            wait_for(lambda: latest_version(client) == "2")
            assert client.forecast(MODEL, [histories[0]], 12).version == "2"
            assert client.forecast(MODEL, [histories[0]], 12, version="1").version == "1"  # old one still served

            with staged_artifact(store, MODEL) as (folder, version):  # a corrupted version 3, published atomically
                shutil.copytree(store / MODEL / "2", folder, dirs_exist_ok=True)
                manifest = json.loads((folder / "manifest.json").read_text())
                write_manifest(folder, {**manifest, "version": version})  # right label: only the checksum is wrong
                with open(folder / "forecast.onnx", "r+b") as handle:
                    handle.seek(100)
                    handle.write(b"\x00\x01\x02\x03")
            assert version == "3"
            time.sleep(0.5)  # several polls
            assert latest_version(client) == "2"
            assert client.forecast(MODEL, [histories[0]], 12).version == "2"
            assert client.health() == "SERVING"
            assert server.metrics.models_loaded.labels("refused")._value.get() == 1  # refused once, not every poll
    finally:
        server.stop(grace_s=1)


def test_sigterm_drains_in_flight_requests(model_store: Path, histories: np.ndarray) -> None:
    # Requests wait up to 400 ms in the batcher, so they are in flight when SIGTERM arrives.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving",
            "serve",
            "--store",
            str(model_store),
            "--port",
            "0",
            "--max-wait-ms",
            "400",
            "--max-batch",
            "4096",
            "--log-format",
            "text",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on"), line + proc.stderr.read()
        target = line.split()[-1]
        with ArcastClient(target) as client:
            client.forecast(MODEL, [histories[0]], 12)  # warm
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(client.forecast, MODEL, [h], 12) for h in histories[:8]]
                time.sleep(0.15)
                os.kill(proc.pid, signal.SIGTERM)
                results = [f.result(timeout=10) for f in futures]
        assert all(len(r.forecasts) == 1 for r in results)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_committed_stubs_are_up_to_date(tmp_path: Path) -> None:
    fresh = {p.relative_to(tmp_path): p.read_text() for p in generate(tmp_path)}
    committed = {p.relative_to(OUT_ROOT): p.read_text() for p in OUT_ROOT.rglob("*_pb2*.py*")}
    assert fresh == committed, "protos changed: run `python -m serving.protogen` and commit serving/proto"


@pytest.mark.parametrize("command", ["serve", "forecast", "models", "batch"])
def test_cli_help(command: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "serving", command, "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "usage:" in out.stdout
