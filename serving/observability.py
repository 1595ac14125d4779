"""Structured (JSON-lines) logs and Prometheus metrics for the server."""

from __future__ import annotations

import bisect
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "info", json_lines: bool = True) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class _HistogramChild:
    """One label set's buckets: a bisect and one lock per observation."""

    __slots__ = ("_bounds", "_counts", "_lock", "_sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last one: +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self._bounds, value)  # the first bucket whose upper bound is >= value
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def snapshot(self) -> tuple[list[int], float]:
        with self._lock:
            return list(self._counts), self._sum


class FastHistogram(Collector):
    """A labelled histogram exposed as prometheus_client's ``Histogram`` is (``_bucket``, ``_count``, ``_sum``;
    no ``_created``), observed at about a third of its cost: its ``observe`` takes two locks and walks the buckets
    in Python, and a request observes eight of them (the stage histograms)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: list[str],
        registry: CollectorRegistry,
        buckets: tuple[float, ...],
    ) -> None:
        self._name, self._documentation, self._labelnames = name, documentation, labelnames
        self._bounds = tuple(float(b) for b in buckets)
        self._children: dict[tuple[str, ...], _HistogramChild] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, *values: str) -> _HistogramChild:
        child = self._children.get(values)
        if child is None:
            with self._lock:
                child = self._children.setdefault(values, _HistogramChild(self._bounds))
        return child

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        bounds = [*map(floatToGoString, self._bounds), "+Inf"]
        for values, child in list(self._children.items()):
            counts, total = child.snapshot()
            cumulative, running = [], 0
            for bound, count in zip(bounds, counts, strict=True):
                running += count
                cumulative.append((bound, float(running)))
            family.add_metric(list(values), cumulative, total)
        yield family


# Where a request's time goes on the server, in order: protobuf parsing, request checks, waiting for a batch run,
# the run (onnxruntime and the rollout's numpy), the answer built from the arrays (Forecast: its bytes), protobuf
# serialization (Recommend; Forecast's answer is sent as built).
STAGES = ("decode", "validate", "batch_wait", "run", "build", "encode")
TASK_OF_METHOD = {"Forecast": "forecast", "Recommend": "recommend", "RecommendBatch": "recommend"}


class ServerMetrics:
    """The server's Prometheus metrics, in a registry of its own (several servers can share a process).

    ``worker``: in ``serve --workers N`` each worker process serves its own /metrics, every sample labelled
    ``worker="<index>"`` (added when the endpoint is scraped, so the metrics themselves keep their labels).
    """

    def __init__(self, worker: str | None = None) -> None:
        self.worker = worker
        self.registry = CollectorRegistry()
        self.requests = Counter("arcast_requests", "RPCs handled", ["method", "model"], registry=self.registry)
        self.errors = Counter(
            "arcast_errors", "RPCs that failed, by status code", ["method", "code"], registry=self.registry
        )
        self.latency = FastHistogram(
            "arcast_request_seconds",
            "RPC latency",
            ["method"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.batch_size = FastHistogram(
            "arcast_batch_rows",
            "Series (forecasts) or users (recommendations) per onnxruntime run",
            ["model"],
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        )
        self.models_loaded = Counter(
            "arcast_model_loads", "Artifacts loaded, by outcome", ["outcome"], registry=self.registry
        )
        self.stages = FastHistogram(
            "arcast_stage_seconds",
            "Server time of one request by stage: decode (protobuf parse), validate, batch_wait (queued until its "
            "run starts), run (onnxruntime and the rollout, the whole merged run), build (the answer: Forecast "
            "writes its bytes), encode (protobuf serialize: Recommend's answer; Forecast's is sent as built)",
            ["task", "stage"],
            registry=self.registry,
            buckets=(1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
        )

        # labels() takes a lock and builds a key on every call: the per-request children are looked up here instead
        self._children: dict[tuple[object, ...], Any] = {}

    def child(self, metric: Counter | FastHistogram, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: what every request uses (label values must be bounded)."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def stage(self, task: str, stage: str, started: float) -> float:
        """Observe ``stage`` of one ``task`` request as the time since ``started`` (``time.perf_counter``); returns
        now, the next stage's start."""
        now = time.perf_counter()
        self.child(self.stages, task, stage).observe(now - started)
        return now

    def on_run(self, task: str, waits: list[float], seconds: float) -> None:
        """One onnxruntime run served ``len(waits)`` requests: each waited its own time and took the whole run."""
        wait, run = self.child(self.stages, task, "batch_wait"), self.child(self.stages, task, "run")
        for w in waits:
            wait.observe(w)
            run.observe(seconds)

    def timed_codec(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` with its protobuf parse and serialize observed as the decode and encode stages."""
        task = TASK_OF_METHOD.get(method)
        if task is None:
            return handler
        return handler._replace(  # type: ignore[attr-defined]  # grpc's handlers are namedtuples
            request_deserializer=self._timed(handler.request_deserializer, task, "decode"),
            response_serializer=self._timed(handler.response_serializer, task, "encode"),
        )

    def _timed(self, codec: Callable[[Any], Any] | None, task: str, stage: str) -> Callable[[Any], Any] | None:
        if codec is None:
            return None
        child = self.child(self.stages, task, stage)

        def timed(message: Any) -> Any:
            started = time.perf_counter()
            try:
                return codec(message)
            finally:
                child.observe(time.perf_counter() - started)

        return timed

    def serve_http(self, port: int, host: str = "127.0.0.1") -> int:
        """Expose /metrics on ``port`` (0 picks a free one); returns the port."""
        registry = self.registry
        if self.worker is not None:
            registry = CollectorRegistry()
            registry.register(_Labelled(self.registry, {"worker": self.worker}))
        server, _thread = start_http_server(port, addr=host, registry=registry)
        return int(server.server_port)


class _Labelled(Collector):
    """Every sample of ``source`` with ``labels`` added (one worker's metrics, told apart from its siblings')."""

    def __init__(self, source: CollectorRegistry, labels: dict[str, str]) -> None:
        self._source, self._labels = source, labels

    def collect(self) -> Iterable[Metric]:
        return self._relabelled(self._source.collect())

    def _relabelled(self, metrics: Iterable[Metric]) -> Iterator[Metric]:
        for metric in metrics:
            copy = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            copy.samples = [s._replace(labels={**s.labels, **self._labels}) for s in metric.samples]
            yield copy
