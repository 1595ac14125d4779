"""The floor of the serving stack: a bare Python gRPC server answering arcast's methods with a canned reply.

It decodes each request with the method's own message class (as arcast does) and answers the reply message built
once from ``--replies`` for the request's model (a pickled dict: model name -> the bytes of a real arcast answer,
so the reply has the same size) without any other work: no validation, no batching, no onnxruntime. Whatever
arcast costs beyond it is arcast's own. Used by ``bench/serve_forecast.py`` and ``bench/serve_recommend.py`` under
the same load, in the same run.

    python bench/bare_server.py --method /arcast.v1.ForecastService/Forecast --replies replies.pkl [--aio] [--workers N]

Prints ``listening on HOST:PORT`` once every process listens, like ``python -m serving serve``; SIGTERM stops it.
``--workers N`` starts N such processes on one port (SO_REUSEPORT), as ``serve --workers N`` does. ``--aio`` serves
with grpc.aio (one event loop, async handler) instead of the thread-pool server arcast uses.
"""

from __future__ import annotations

import argparse
import asyncio
import pickle
import signal
import socket
import subprocess
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving.proto.arcast.v1 import forecast_pb2, recommend_pb2

MESSAGES = {  # method -> (request class, response class)
    "/arcast.v1.ForecastService/Forecast": (forecast_pb2.ForecastRequest, forecast_pb2.ForecastResponse),
    "/arcast.v1.RecommendService/Recommend": (recommend_pb2.RecommendRequest, recommend_pb2.RecommendResponse),
}


def _handler(method: str, replies: dict[str, bytes], aio: bool) -> grpc.GenericRpcHandler:
    request_cls, response_cls = MESSAGES[method]
    canned = {model: response_cls.FromString(raw) for model, raw in replies.items()}
    service, name = method.lstrip("/").split("/")

    if aio:

        async def answer_async(request, context):
            return canned[request.model]

        behaviour = answer_async
    else:

        def answer(request, context):
            return canned[request.model]

        behaviour = answer
    handler = grpc.unary_unary_rpc_method_handler(
        behaviour, request_deserializer=request_cls.FromString, response_serializer=response_cls.SerializeToString
    )
    return grpc.method_handlers_generic_handler(service, {name: handler})


def _options(reuse_port: bool) -> list[tuple[str, int]]:
    return [("grpc.so_reuseport", int(reuse_port)), ("grpc.max_receive_message_length", 4 * 1024 * 1024)]


def serve_threads(args: argparse.Namespace, reply: dict[str, bytes]) -> None:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=256), options=_options(args.reuse_port), maximum_concurrent_rpcs=256
    )
    server.add_generic_rpc_handlers((_handler(args.method, reply, aio=False),))
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"listening on 127.0.0.1:{port}", flush=True)
    stop.wait()
    server.stop(0.5).wait()


async def serve_aio(args: argparse.Namespace, reply: dict[str, bytes]) -> None:
    server = grpc.aio.server(options=_options(args.reuse_port), maximum_concurrent_rpcs=256)
    server.add_generic_rpc_handlers((_handler(args.method, reply, aio=True),))
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    await server.stop(0.5)


def supervise(args: argparse.Namespace) -> None:
    """N copies on one port: a placeholder socket reserves the port until every copy listens on it."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", args.port))
    port = holder.getsockname()[1]
    argv = [sys.executable, __file__, "--method", args.method, "--replies", str(args.replies), "--port", str(port)]
    argv += ["--reuse-port", *(["--aio"] if args.aio else [])]
    children = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(args.workers)]
    for child in children:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line.startswith("listening on"):
            raise SystemExit(f"a bare worker did not start: {line!r}")
    holder.close()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"listening on 127.0.0.1:{port}", flush=True)
    stop.wait()
    for child in children:
        child.terminate()
    for child in children:
        child.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True, choices=sorted(MESSAGES))
    parser.add_argument("--replies", type=Path, required=True, help="pickled dict: model name -> serialized reply")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--aio", action="store_true", help="grpc.aio server instead of the thread-pool one")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.workers > 1:
        supervise(args)
        return
    reply = pickle.loads(args.replies.read_bytes())
    if args.aio:
        asyncio.run(serve_aio(args, reply))
    else:
        serve_threads(args, reply)


if __name__ == "__main__":
    main()
