"""The server's histograms (serving.observability.FastHistogram) read exactly as prometheus_client's do."""

from __future__ import annotations

import random
import threading

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from serving.observability import FastHistogram

BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)


def test_the_exposition_equals_prometheus_clients_histogram() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("arcast_stage_seconds", "doc", ["task", "stage"], registry=theirs, buckets=BUCKETS)
    fast = FastHistogram("arcast_stage_seconds", "doc", ["task", "stage"], registry=ours, buckets=BUCKETS)
    rng = random.Random(0)
    values = [rng.choice(BUCKETS) for _ in range(300)] + [rng.random() ** 4 for _ in range(300)] + [0.0, 7.0]
    for i, value in enumerate(values):  # bucket bounds themselves, values between them, beyond the last
        labels = ("forecast", "run" if i % 3 else "validate")
        reference.labels(*labels).observe(value)
        fast.labels(*labels).observe(value)
    expected = [line for line in generate_latest(theirs).decode().splitlines() if "_created" not in line]
    assert generate_latest(ours).decode().splitlines() == expected
    runs = sum(1 for i in range(len(values)) if i % 3)
    assert ours.get_sample_value("arcast_stage_seconds_count", {"task": "forecast", "stage": "run"}) == runs


def test_concurrent_observations_are_all_counted() -> None:
    registry = CollectorRegistry()
    fast = FastHistogram("rows", "doc", ["model"], registry=registry, buckets=(1, 2, 4))
    threads = [threading.Thread(target=lambda: [fast.labels("m").observe(2) for _ in range(20_000)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert registry.get_sample_value("rows_count", {"model": "m"}) == 80_000
    assert registry.get_sample_value("rows_sum", {"model": "m"}) == 160_000
