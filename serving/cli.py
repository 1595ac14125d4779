"""Command line: python -m serving serve | forecast | models | batch."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

import grpc
import polars as pl

from serving.artifact import ArtifactError
from serving.batching import BatchingConfig
from serving.interval_cli import add_interval_arguments, forecast_frame_with_intervals
from serving.security import TOKEN_ENV, TOKENS_ENV
from serving.tables import TableError, scan_table, series_from_frame

EXIT_BAD_INPUT = 2
DESCRIPTION = """\
Serve exported models over gRPC, call the service, and run batch scoring jobs.

  python -m serving serve --store models --port 50051 --metrics-port 9100
  python -m serving models --target 127.0.0.1:50051
  python -m serving forecast --target 127.0.0.1:50051 --model etth1-arnet --horizon 24 --input history.csv
  python -m serving batch --store models --model etth1-arnet --horizon 24 --input series.parquet --output out.parquet

TLS and bearer tokens (see `serve --help`):

  ARCAST_TOKENS=s3cret python -m serving serve --store models --tls-cert server.pem --tls-key server.key
  ARCAST_TOKEN=s3cret python -m serving models --target localhost:50051 --tls-ca ca.pem

Series files (CSV or parquet) are long tables: series_id (optional), timestamp or date (optional; another
name with --date-column) and a value column
(or one column per model channel).
"""


def cmd_serve(args: argparse.Namespace) -> int:
    from serving.observability import configure_logging
    from serving.rpc import Limits
    from serving.security import load_tokens
    from serving.server import ServerConfig, serve_until_signal

    configure_logging(args.log_level, json_lines=args.log_format == "json")
    if args.workers < 1:
        raise ValueError("--workers: at least 1")
    if args.workers > 1:
        from serving.workers import supervise

        return supervise(args, args.parser)
    if args.worker_index is not None:
        from serving.workers import die_with_parent

        die_with_parent()
    config = ServerConfig(
        store=Path(args.store),
        host=args.host,
        port=args.port,
        batching=BatchingConfig(
            enabled=not args.no_batching,
            max_rows=args.max_batch,
            max_wait_s=args.max_wait_ms / 1000,
            max_queued_rows=args.max_queued_rows,
        ),
        limits=Limits(
            max_series=args.max_series,
            max_forecast_values=args.max_forecast_values,
            max_beam_rows=args.max_beam_rows,
            request_timeout_s=args.request_timeout,
        ),
        max_concurrent_runs=args.max_concurrent_runs,
        providers=tuple(args.providers.split(",")) if args.providers else None,
        intra_op_threads=args.threads,
        keep_versions=args.keep_versions,
        poll_interval_s=args.poll_interval,
        max_workers=args.max_workers,
        max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        metrics_port=args.metrics_port,
        grace_s=args.grace,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        tokens=load_tokens(args.token_file),
        open_health=args.open_health,
        metrics_host=args.metrics_host,
        reuse_port=args.reuse_port,
        worker=None if args.worker_index is None else str(args.worker_index),
    )
    return serve_until_signal(config)


def _security(args: argparse.Namespace) -> dict:
    """ArcastClient's TLS and token options from a client command's flags (token: --token, --token-file, then
    $ARCAST_TOKEN)."""
    from serving.security import SecurityError, read_token_file

    token = args.token
    if token is None and args.token_file is not None:
        tokens = read_token_file(args.token_file)
        if not tokens:
            raise SecurityError(f"--token-file {args.token_file}: no token in it")
        token = tokens[0]
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    return {"tls_ca": args.tls_ca, "tls_cert": args.tls_cert, "tls_key": args.tls_key, "token": token}


def _add_date_column(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--date-column",
        help="the input's time column, as for training (default: a 'timestamp' or 'date' column if there is one)",
    )


def _read_series(path: str, channels: list[str], date_column: str | None = None) -> list:
    return series_from_frame(scan_table(path).collect(), channels, date_column)


def cmd_forecast(args: argparse.Namespace) -> int:
    from serving.client import ArcastClient

    with ArcastClient(args.target, timeout_s=args.timeout, **_security(args)) as client:
        info = [
            m
            for m in client.list_models(args.model)
            if m.name == args.model and (m.version == args.version if args.version else m.latest)
        ]
        if not info:
            print(
                f"error: model {args.model!r} (version {args.version or 'latest'}) is not served at {args.target}",
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT
        channels = list(info[0].channels)
        series = _read_series(args.input, channels, args.date_column)
        result = client.forecast(
            args.model,
            [s.values for s in series],
            args.horizon,
            version=args.version,
            ids=[s.id for s in series],
            timestamps=[s.timestamps for s in series],
            levels=args.levels or (),
            method=args.method,
        )
    frame = pl.concat([forecast_frame_with_intervals(f, channels) for f in result.forecasts])
    if args.output:
        out = Path(args.output)
        frame.write_parquet(out) if out.suffix == ".parquet" else frame.write_csv(out)
        print(f"{len(result.forecasts)} forecasts from {result.model} v{result.version} written to {out}")
    else:
        with pl.Config(tbl_rows=-1, tbl_hide_dataframe_shape=True):
            print(f"{result.model} v{result.version}")
            print(frame)
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from serving.client import ArcastClient

    try:
        history = [int(x) for x in args.history.split(",") if x.strip()]
        exclude = [int(x) for x in args.exclude.split(",") if x.strip()] if args.exclude else []
    except ValueError as err:
        raise ValueError(f"--history/--exclude: comma-separated integer item ids expected ({err})") from err
    with ArcastClient(args.target, timeout_s=args.timeout, **_security(args)) as client:
        response = client.recommend(
            args.model,
            history,
            args.k,
            version=args.version,
            exclude=exclude,
            beam_width=args.beam_width,
            include_seen=args.include_seen,
            diversity=args.diversity,
        )
    print(f"{response.model} v{response.version}: top {len(response.items)} for a history of {len(history)} items")
    print(f"{'rank':>4} {'item':>8} {'score':>9}  codes            title")
    for rank, item in enumerate(response.items, 1):
        codes = "-".join(str(c) for c in item.codes)
        print(f"{rank:>4} {item.item_id:>8} {item.score:>9.3f}  {codes:<16} {item.title[:70]}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from serving.client import ArcastClient

    with ArcastClient(args.target, timeout_s=args.timeout, **_security(args)) as client:
        models = client.list_models(args.prefix)
    print(f"{'name':<24} {'version':>7} {'kind':<10} {'rollout':<14} {'context':>7} {'step':>5} {'max h':>6} latest")
    for m in models:
        print(
            f"{m.name:<24} {m.version:>7} {m.model_kind:<10} {m.rollout_kind:<14} {m.context_length:>7} {m.step:>5} "
            f"{m.max_horizon:>6} {'yes' if m.latest else ''}"
        )
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from serving.batch import run_batch, summary_json

    if args.ray:
        if args.levels:
            raise ValueError("--levels: prediction intervals are written by the in-process job (without --ray)")
        if args.k:
            raise ValueError("--ray scores forecasting models only: run recommendation jobs without --ray")
        return _ray_batch(args)
    summary = run_batch(
        args.store,
        args.model,
        args.input,
        args.output,
        args.horizon or args.k,
        version=args.version,
        chunk_series=args.chunk_series,
        date_column=args.date_column,
        levels=args.levels,
        method=args.method,
    )
    print(summary_json(summary))
    return 0


def _ray_batch(args: argparse.Namespace) -> int:
    from serving.batch import summary_json

    if args.date_column not in (None, "timestamp"):
        raise ValueError("--ray reads the time from a 'timestamp' column: rename the column or run without --ray")
    try:  # Ray is an optional extra: only --ray imports it
        from serving.ray_batch import run_ray_batch
    except ImportError as err:
        raise ValueError(f"--ray needs Ray Data ({err}): pip install 'arcast[ray]'") from err
    # Ray's driver prints its raylet's messages (such as a worker that died and whose task was retried) to stdout,
    # from a background thread; stdout carries the summary that scripts parse, so the job's chatter goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        summary = run_ray_batch(
            args.store,
            args.model,
            args.input,
            args.output,
            args.horizon,
            version=args.version,
            address=args.ray,
            workers=args.ray_workers,
        )
    print(summary_json(summary))
    return 0


def _add_client_security(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-ca", type=Path, help="PEM CA that signed the server's certificate: connect with TLS")
    parser.add_argument("--tls-cert", type=Path, help="PEM client certificate, for a server that wants mutual TLS")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    token = parser.add_mutually_exclusive_group()
    token.add_argument(
        "--token", help=f"bearer token (default ${TOKEN_ENV}; prefer it or --token-file: argv is visible to others)"
    )
    token.add_argument("--token-file", type=Path, help="file holding the bearer token (its first token line)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="serve every model in a store over gRPC",
        description="Load every artifact in the model store (checksums and schema verified; a bad "
        "one is refused and logged, the rest are served), pick up new versions without "
        "a restart, batch concurrent requests, and drain gracefully on SIGTERM.",
    )
    serve.add_argument("--store", required=True, help="model store folder (models/<name>/<version>/)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=50051, help="gRPC port (0 picks a free one; default 50051)")
    serve.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port (off by default)")
    serve.add_argument("--no-batching", action="store_true", help="run each request alone (no dynamic batching)")
    serve.add_argument("--max-batch", type=int, default=256, help="series per merged onnxruntime run (default 256)")
    serve.add_argument(
        "--max-wait-ms",
        type=float,
        default=0.0,
        help="how long the first request of a batch waits for company (default 0: batches form from what arrives "
        "while one runs, and a lone request waits for nothing)",
    )
    serve.add_argument(
        "--max-queued-rows",
        type=int,
        default=4096,
        help="series or users waiting per model; beyond, requests get RESOURCE_EXHAUSTED (default 4096)",
    )
    serve.add_argument("--max-series", type=int, default=1024, help="series or users per request (default 1024)")
    serve.add_argument(
        "--max-forecast-values",
        type=int,
        default=4_000_000,
        help="series x horizon x channels per Forecast (default 4000000)",
    )
    serve.add_argument(
        "--max-beam-rows",
        type=int,
        default=65_536,
        help="users x beam width per RecommendBatch (default 65536, e.g. 128 users at beam 512)",
    )
    serve.add_argument(
        "--max-concurrent-runs",
        type=int,
        default=0,
        help="onnxruntime runs in flight, all models together: bounds the server's memory (default 0: twice the "
        "usable cores)",
    )
    serve.add_argument(
        "--max-message-mb",
        type=float,
        default=4,
        help="largest request in MiB, after decompression (default 4, gRPC's own default)",
    )
    serve.add_argument("--request-timeout", type=float, default=30.0, help="seconds, when the client sets no deadline")
    serve.add_argument("--providers", help="onnxruntime providers, comma-separated (default: what loads, GPU first)")
    serve.add_argument("--threads", type=int, help="onnxruntime intra-op threads per session (default: usable cores)")
    serve.add_argument("--keep-versions", type=int, default=2, help="newest versions kept loaded per model (default 2)")
    serve.add_argument("--poll-interval", type=float, default=5.0, help="seconds between store scans (default 5)")
    serve.add_argument("--max-workers", type=int, default=128, help="RPCs handled concurrently (default 128)")
    serve.add_argument("--grace", type=float, default=30.0, help="seconds to finish in-flight RPCs on SIGTERM")
    serve.add_argument("--metrics-host", default="127.0.0.1", help="address /metrics binds (default 127.0.0.1)")
    serve.add_argument("--tls-cert", type=Path, help="PEM server certificate (chain): serve TLS, with --tls-key")
    serve.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    serve.add_argument(
        "--tls-client-ca", type=Path, help="PEM CA bundle: mutual TLS, clients must show a certificate it signed"
    )
    serve.add_argument(
        "--token-file",
        type=Path,
        help=f"accepted bearer tokens, one per line (# comments); ${TOKENS_ENV} adds comma-separated ones. With "
        "any token, every call needs 'authorization: Bearer <token>' (reflection too); none: no authentication",
    )
    serve.add_argument(
        "--open-health",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="health checks without a token (default: open, for probes and load balancers)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port (SO_REUSEPORT), each loading the store and reloading it on its own: "
        "one Python process uses about one core. Each worker's /metrics is --metrics-port + its index, labelled "
        "worker; onnxruntime threads default to the cores / N; SIGTERM drains them all; a worker that dies is "
        "restarted (default 1: this process serves)",
    )
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # set on the workers
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set on the workers
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", default="json", choices=["json", "text"])
    serve.set_defaults(func=cmd_serve, parser=serve)

    forecast = sub.add_parser(
        "forecast",
        help="call Forecast on a running server",
        description="Read series from a CSV/parquet file, call Forecast, and print the forecasts "
        "as a table or write them to --output (.csv or .parquet).",
    )
    forecast.add_argument("--target", required=True, help="server address HOST:PORT")
    forecast.add_argument("--model", required=True)
    forecast.add_argument("--version", help="model version (default latest)")
    forecast.add_argument("--horizon", type=int, required=True)
    forecast.add_argument("--input", required=True, help="series file: series_id?, timestamp?, value")
    _add_date_column(forecast)
    forecast.add_argument("--output", help="write forecasts here instead of printing")
    add_interval_arguments(forecast)
    forecast.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")
    _add_client_security(forecast)
    forecast.set_defaults(func=cmd_forecast)

    recommend = sub.add_parser(
        "recommend",
        help="call Recommend on a running server",
        description="Recommend the next items for one history with a generative recommender (beam search over "
        "semantic IDs) or a SASRec (one score per item); every result is a real item, seen items are excluded "
        "unless asked.",
    )
    recommend.add_argument("--target", required=True, help="server address HOST:PORT")
    recommend.add_argument("--model", required=True)
    recommend.add_argument("--version", help="model version (default latest)")
    recommend.add_argument("--history", required=True, help="item ids, most recent last, e.g. 12,34,56")
    recommend.add_argument("--k", type=int, default=10, help="items to return (default 10)")
    recommend.add_argument("--exclude", help="item ids never to return, comma-separated")
    recommend.add_argument(
        "--beam-width", type=int, default=0, help="beam width (default: the model's, at least k; not for a SASRec)"
    )
    recommend.add_argument(
        "--diversity",
        type=float,
        default=0.0,
        help="diverse beam search's penalty per earlier group on the same code (default 0: plain; not for a SASRec)",
    )
    recommend.add_argument("--include-seen", action="store_true", help="allow items of the history")
    recommend.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")
    _add_client_security(recommend)
    recommend.set_defaults(func=cmd_recommend)

    models = sub.add_parser("models", help="list the models a server has loaded")
    models.add_argument("--target", required=True, help="server address HOST:PORT")
    models.add_argument("--prefix", default="", help="only names starting with this")
    models.add_argument("--timeout", type=float, default=10.0)
    _add_client_security(models)
    models.set_defaults(func=cmd_models)

    batch = sub.add_parser(
        "batch",
        help="score many series from a file in-process (resumable)",
        description="Score every series of a long-format CSV/parquet file with the serving rollout "
        "and write long-format parquet. Killed and restarted with the same arguments, it "
        "resumes; unscorable series are listed in OUTPUT's .errors.parquet. With --ray the same "
        "scoring runs on a Ray cluster (Ray Data) and writes the same files.",
    )
    batch.add_argument("--store", required=True, help="model store folder")
    batch.add_argument("--model", required=True)
    batch.add_argument("--version", help="model version (default latest)")
    size = batch.add_mutually_exclusive_group(required=True)
    size.add_argument("--horizon", type=int, help="forecast horizon (forecasting models)")
    size.add_argument("--k", type=int, help="items per user (recommenders: input user_id, item_id[, timestamp])")
    batch.add_argument("--input", required=True, help="series_id, timestamp?, value (CSV or parquet)")
    batch.add_argument("--output", required=True, help="output parquet file")
    _add_date_column(batch)
    batch.add_argument("--chunk-series", type=int, default=512, help="series per resumable chunk (default 512)")
    add_interval_arguments(batch)
    batch.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="score on a Ray cluster with Ray Data instead of in-process: a cluster address, 'auto' (the running "
        "cluster) or 'local' (start one here). Needs series_id and timestamp columns; not resumable",
    )
    batch.add_argument("--ray-workers", type=int, help="scoring actors with --ray (default: one per cluster CPU)")
    batch.set_defaults(func=cmd_batch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "serve":
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except grpc.RpcError as err:
        print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
        return EXIT_BAD_INPUT if err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND) else 1
    except (ArtifactError, TableError, ValueError, OSError) as err:  # OSError: FileNotFoundError, a port in use
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
