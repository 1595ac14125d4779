"""serve --workers: several server processes on one port, each with its own metrics; SIGTERM drains them all;
a worker that dies is replaced. And the per-stage histograms every server keeps."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np

from serving.cli import build_parser
from serving.client import ArcastClient
from serving.observability import STAGES
from serving.proto.arcast.v1 import forecast_pb2_grpc
from serving.workers import child_argv

MODEL = "etth1-arnet"


def scrape(endpoint: str) -> dict[str, float]:
    """/metrics as {sample with labels: value}."""
    text = urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def forecast_on_own_connection(target: str, history: np.ndarray) -> int:
    """One Forecast over a connection of its own (SO_REUSEPORT spreads connections, not calls)."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(target, options=options) as channel:
        request = ArcastClient.forecast_request(MODEL, [history], 12)
        response = forecast_pb2_grpc.ForecastServiceStub(channel).Forecast(request, timeout=20)
    return len(response.forecasts)


def test_the_supervisor_passes_every_flag_but_its_own_to_the_workers() -> None:
    argv = ["serve", "--store", "s", "--workers", "3", "--port", "7", "--no-batching", "--max-wait-ms", "2"]
    argv += ["--no-open-health", "--metrics-port", "9100", "--threads", "4", "--max-workers", "64"]
    args = build_parser().parse_args(argv)
    out = child_argv(args, args.parser)
    assert out == ["--store", "s", "--no-batching", "--max-wait-ms", "2.0", "--max-workers", "64", "--no-open-health"]


def test_two_workers_share_one_port_label_their_metrics_survive_a_death_and_drain(model_store: Path, histories) -> None:
    # Requests wait up to 400 ms in the batcher, so they are in flight when SIGTERM arrives.
    cmd = [sys.executable, "-m", "serving", "serve", "--store", str(model_store), "--port", "0", "--workers", "2"]
    cmd += ["--metrics-port", "0", "--max-wait-ms", "400", "--max-batch", "4096", "--log-format", "text"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on"), line + proc.stderr.read()
        target = line.split()[-1]
        endpoints = proc.stdout.readline().split()[-1].split(",")
        assert len(endpoints) == 2 and len(children(proc.pid)) == 2

        with concurrent.futures.ThreadPoolExecutor(16) as pool:  # 16 connections: both workers get some
            assert sum(pool.map(lambda h: forecast_on_own_connection(target, h), histories[:16])) == 16
        served = {}
        for worker, endpoint in enumerate(endpoints):
            samples = scrape(endpoint)
            key = f'arcast_requests_total{{method="Forecast",model="{MODEL}",worker="{worker}"}}'
            served[worker] = samples.get(key, 0.0)
            for stage in STAGES:  # every stage of its requests observed, with the worker label
                count = f'arcast_stage_seconds_count{{stage="{stage}",task="forecast",worker="{worker}"}}'
                assert samples.get(count, 0.0) == served[worker], (stage, samples)
        assert sum(served.values()) == 16 and all(served.values()), served

        before = children(proc.pid)  # a worker killed outright is replaced; the other answers meanwhile
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        while Path(f"/proc/{victim}").exists() and "Z" not in Path(f"/proc/{victim}/stat").read_text().split()[2]:
            time.sleep(0.01)  # dead (a zombie until the supervisor reaps it): its socket has left the port
        for attempt in range(5):  # a connection racing the death is reset: UNAVAILABLE, which clients retry
            try:
                assert forecast_on_own_connection(target, histories[0]) == 1
                break
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE and attempt < 4, err
                time.sleep(0.2)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(children(proc.pid) - {victim}) < 2:
            time.sleep(0.1)
        assert len(children(proc.pid) - {victim}) == 2

        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # in flight on both workers when SIGTERM comes
            calls = [pool.submit(forecast_on_own_connection, target, h) for h in histories[16:24]]
            time.sleep(0.15)
            proc.send_signal(signal.SIGTERM)
            assert [c.result(timeout=30) for c in calls] == [1] * 8  # none failed
        assert proc.wait(timeout=60) == 0
        assert "exited with status -9: restarting it" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_each_request_is_timed_by_stage(server, client: ArcastClient, histories) -> None:
    assert server.metrics_port is not None
    before = scrape(f"127.0.0.1:{server.metrics_port}")
    client.forecast(MODEL, [histories[0]], 12)
    after = scrape(f"127.0.0.1:{server.metrics_port}")
    for stage in STAGES:
        count = f'arcast_stage_seconds_count{{stage="{stage}",task="forecast"}}'
        assert after[count] - before.get(count, 0.0) == 1, stage
