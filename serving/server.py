"""The gRPC server: forecast and model services, health, reflection, hot reload, metrics, graceful stop."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from serving.batching import BatchingConfig
from serving.drain import Drain
from serving.forecast_service import ForecastServicer, ModelServicer
from serving.observability import ServerMetrics
from serving.proto.arcast.v1 import (
    forecast_pb2,
    models_pb2,
    models_pb2_grpc,
    recommend_pb2,
    recommend_pb2_grpc,
)
from serving.recommend_service import RecommendServicer
from serving.reflection import enable_server_reflection
from serving.registry import ModelRegistry
from serving.rpc import Calls, Limits
from serving.security import TokenAuthInterceptor, is_loopback, server_credentials
from serving.sessions import PROBE_FAILURES
from serving.wire import forecast_handlers

log = logging.getLogger(__name__)
FORECAST_SERVICE = forecast_pb2.DESCRIPTOR.services_by_name["ForecastService"].full_name
SERVICE_NAMES = (
    FORECAST_SERVICE,
    models_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
    recommend_pb2.DESCRIPTOR.services_by_name["RecommendService"].full_name,
)


@dataclass
class ServerConfig:
    store: Path
    host: str = "127.0.0.1"
    port: int = 0  # 0 picks a free port
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    limits: Limits = field(default_factory=Limits)
    providers: tuple[str, ...] | None = None  # default: every provider that loads here, best first
    intra_op_threads: int | None = None
    keep_versions: int = 2
    poll_interval_s: float = 5.0
    max_workers: int = 128  # concurrent RPCs being handled (each waits on its batch); more get RESOURCE_EXHAUSTED
    max_message_bytes: int = 4 * 1024 * 1024  # largest request, after decompression (gRPC's own default)
    max_concurrent_runs: int = 0  # onnxruntime runs in flight, all models together (0: twice the usable cores)
    metrics_port: int | None = None  # None: no /metrics endpoint
    grace_s: float = 30.0
    tls_cert: Path | None = None  # PEM certificate chain; with tls_key: TLS
    tls_key: Path | None = None  # PEM private key
    tls_client_ca: Path | None = None  # PEM CA bundle: mutual TLS, a client certificate signed by it is required
    tokens: frozenset[str] = frozenset()  # accepted bearer tokens; empty: no authentication
    open_health: bool = True  # health checks need no token (probes, load balancers)
    metrics_host: str = "127.0.0.1"  # /metrics binds here, not on `host`
    reuse_port: bool = False  # SO_REUSEPORT: several processes on one port (serve --workers); off: a port in use fails
    worker: str | None = None  # serve --workers: this process's index, the `worker` label of its metrics


class ForecastServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._credentials = server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
        self.metrics = ServerMetrics(config.worker)
        self.registry = ModelRegistry(
            Path(config.store),
            config.batching,
            config.providers,
            config.intra_op_threads,
            config.keep_versions,
            config.max_concurrent_runs,
            on_batch=lambda model, rows: self.metrics.child(self.metrics.batch_size, model).observe(rows),
            on_load=lambda outcome: self.metrics.models_loaded.labels(outcome).inc(),
            on_run=self.metrics.on_run,
        )
        options = [
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", -1),  # answers are bounded by Limits.max_forecast_values
            ("grpc.so_reuseport", int(config.reuse_port)),
        ]
        self._drain = Drain()
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.max_workers),
            interceptors=self._auth(),
            options=options,
            maximum_concurrent_rpcs=config.max_workers,  # beyond: RESOURCE_EXHAUSTED, not an unbounded queue
        )
        logging.getLogger("grpc._common").addFilter(_one_line_for_undecodable_requests)
        calls = Calls(self.metrics, self._drain)
        timed = _TimedCodecs(self._server, self.metrics)  # protobuf parse and serialize: the decode/encode stages
        # reads and writes the wire twins; public for the benchmarks that call it in process or on other servers
        self.forecast_servicer = ForecastServicer(self.registry, calls, config.limits)
        timed.add_registered_method_handlers(FORECAST_SERVICE, forecast_handlers(self.forecast_servicer.Forecast))
        recommend_pb2_grpc.add_RecommendServiceServicer_to_server(
            RecommendServicer(self.registry, calls, config.limits), timed
        )
        models_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(self.registry, calls), self._server)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME), self._server)  # v1 and v1alpha
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="store-poller", daemon=True)
        self.port: int | None = None
        self.metrics_port: int | None = None

    def start(self) -> int:
        store = Path(self.config.store)
        if not store.is_dir():
            raise FileNotFoundError(f"--store {store}: no such folder (a model store is a folder of <name>/<version>/)")
        self.registry.refresh()
        if not self.registry.loaded():
            log.warning("no model loaded from %s yet: serving none until one is published", store)
        address = f"{self.config.host}:{self.config.port}"
        try:
            self.port = self._add_port(address)
        except RuntimeError as err:  # grpc's "Failed to bind to address"
            raise OSError(f"--port: cannot listen on {address}: in use, or not an address of this machine") from err
        if self.port == 0:
            raise OSError(f"--port: cannot listen on {address}: in use, or not an address of this machine")
        self._server.start()
        if self.config.metrics_port is not None:
            self.metrics_port = self.metrics.serve_http(self.config.metrics_port, self.config.metrics_host)
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._poller.start()
        log.info(
            "serving",
            extra={
                "address": f"{self.config.host}:{self.port}",
                "metrics_port": self.metrics_port,
                "metrics_host": self.config.metrics_host,
                "tls": "off" if self._credentials is None else "mutual" if self.config.tls_client_ca else "on",
                "auth": "bearer token" if self.config.tokens else "none",
                "open_health": self.config.open_health,
                "models": [f"{m.name}/{m.version}" for m in self.registry.loaded()],
            },
        )
        unprotected = [w for w, off in (("TLS", self._credentials is None), ("tokens", not self.config.tokens)) if off]
        if unprotected and not is_loopback(self.config.host):
            log.warning(f"serving beyond this machine without {' and '.join(unprotected)}")
        return self.port

    def _auth(self) -> list[grpc.ServerInterceptor]:
        """With tokens configured, every service but health (when open) needs one, reflection included."""
        if not self.config.tokens:
            return []
        open_services = (health.SERVICE_NAME,) if self.config.open_health else ()
        return [TokenAuthInterceptor(self.config.tokens, open_services, on_denied=self._count_denied)]

    def _count_denied(self, method: str, reason: str) -> None:
        self.metrics.errors.labels(method.rsplit("/", 1)[-1], "UNAUTHENTICATED").inc()

    def _add_port(self, address: str) -> int:
        if self._credentials is None:
            return self._server.add_insecure_port(address)
        return self._server.add_secure_port(address, self._credentials)

    def _poll(self) -> None:
        while not self._stopping.wait(self.config.poll_interval_s):
            try:
                self.registry.refresh()
            except Exception:  # a store hiccup must not kill the poller
                log.exception("model store refresh failed")

    def stop(self, grace_s: float | None = None) -> None:
        """Answer new RPCs UNAVAILABLE, let those in flight finish (up to the grace period), release the models."""
        grace = self.config.grace_s if grace_s is None else grace_s
        self._stopping.set()
        self.health.enter_graceful_shutdown()
        left = self._drain.drain(grace)
        if left:
            log.warning("%d RPCs still running after the %.1f s grace period: cancelled", left, grace)
        self._server.stop(0 if left else min(grace, 1.0)).wait()
        self.registry.close()
        log.info("stopped")

    def wait_for_termination(self) -> None:
        self._server.wait_for_termination()


class _TimedCodecs:
    """Stands in for the server while a service's handlers are registered (by a generated ``add_*Servicer_to_server``
    or directly): they are registered with their protobuf parse and serialize timed (``ServerMetrics.timed_codec``)."""

    def __init__(self, server: grpc.Server, metrics: ServerMetrics) -> None:
        self._server, self._metrics = server, metrics

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        """The generated code's untimed generic handler: replaced by the timed one below."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        timed = {name: self._metrics.timed_codec(name, handler) for name, handler in handlers.items()}
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, timed),))
        self._server.add_registered_method_handlers(service, timed)


def _one_line_for_undecodable_requests(record: logging.LogRecord) -> bool:
    """grpc logs every request it cannot decode with a traceback at error level: one client sending garbage would
    flood the log. Keep one warning line (the client gets grpc's INTERNAL "Exception deserializing request!")."""
    if record.getMessage().startswith("Exception deserializing"):
        record.msg, record.args = "undecodable request (not a valid protobuf message of the method's type)", ()
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
    return True


def serve_until_signal(config: ServerConfig) -> int:
    """Run until SIGTERM or SIGINT, then drain gracefully and return 0."""
    server = ForecastServer(config)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    port = server.start()
    for provider, why in PROBE_FAILURES.items():  # a GPU build on a machine without its libraries says which
        log.info("%s is not used: it does not load here", provider, extra={"provider": provider, "reason": why})
    metrics = f"metrics on {config.metrics_host}:{server.metrics_port}" if server.metrics_port is not None else ""
    if metrics and config.worker is not None:  # a worker of serve --workers: its supervisor reads this first
        print(metrics, flush=True)
    print(f"listening on {config.host}:{port}", flush=True)  # the one plain line: scripts wait for it
    if metrics and config.worker is None:
        print(metrics, flush=True)
    stop.wait()
    log.info("signal received: draining")
    server.stop()
    return 0


def spawn_server(store: Path, *options: str) -> tuple[subprocess.Popen[str], str]:
    """``python -m serving serve --store STORE --port 0 OPTIONS`` in a process of its own, for scripts and benchmarks.

    Returns the process and its ``host:port`` once it listens; stop it with ``terminate()`` (a graceful drain).
    """
    cmd = [sys.executable, "-m", "serving", "serve", "--store", str(store), "--port", "0", *options]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("listening on"):
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r} (its log is on stderr)")
    return proc, line.split()[-1]
