"""Benchmark the served AutoTimes model (SmolLM2-135M backbone, kv_cache artifact) in process and over gRPC.

What it measures, side by side in one run (the machine is shared: compare ratios, not absolute times):

a. one 720-step forecast (ETTh1, 7 channels, lookback 672, one series per request): in process through
   ``KVCacheModel`` and over gRPC at 1 client, ``growing`` (KV cache) against ``sliding`` (the official loop);
b. ``growing`` against full recompute at horizon 720: the step graph run with an empty past over the whole grown
   token sequence at every segment (``onnx_recompute`` in bench/autotimes.py), interleaved with (a);
c. throughput over gRPC, batching on and off, at 1, 8 and 64 clients (bench/serving_load.py's load generator,
   in alternating slices of ``--seconds`` per server and cell);
d. the servers' peak RSS (VmHWM from /proc) after the load;
e. the artifact's size on disk against the backbone's weights (the fp32 decoder body the graph computes with,
   the full fp32 copy and the shipped GGUF), and the ONNX initialisers' bytes (one copy of the weights or two).

The segment maps are untrained (seeded random): latency does not depend on the weights. The artifacts (one
exported with ``growing`` as its default rollout, one with ``sliding``, since a request cannot choose) are written
once under ``--work-dir`` and reused on later runs; the export (about a minute of torch.onnx per artifact plus the
parity gate) is timed when it happens.

    PYTHONPATH=. .venv/bin/python bench/serve_autotimes.py            # writes bench/results/serve_autotimes.json
    PYTHONPATH=. .venv/bin/python bench/serve_autotimes.py --quick    # fewer repeats, 1-client load only
    PYTHONPATH=. .venv/bin/python bench/serve_autotimes.py --backbone /tmp/tiny --work-dir /tmp/w --quick
                                                                      # a smoke run on a tiny random backbone
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from arcast_core.files import atomic_write_text  # noqa: E402
from arcast_core.training import TrainConfig  # noqa: E402
from forecasting.data import DataConfig, PreparedData, data_facts, prepare_data  # noqa: E402
from forecasting.llm_backbone import DEFAULT_BACKBONE, converted_folder, resolve_backbone  # noqa: E402
from serving.artifact import Artifact, read_artifact, resolve  # noqa: E402
from serving.manifest import ArtifactError  # noqa: E402
from serving.runners.kv_cache import KVCacheModel  # noqa: E402

LOOKBACK, SEGMENT, HORIZON = 672, 96, 720
ROLLOUTS = ("growing", "sliding")
NAMES = {rollout: f"etth1-autotimes-{rollout}" for rollout in ROLLOUTS}  # one artifact per default rollout
DEFAULT_WORK = REPO_ROOT / "bench" / "work" / "serve_autotimes"
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "serve_autotimes.json"


def say(message: str) -> None:
    """Progress on stderr, stamped: the long steps take minutes."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the artifacts -------------------------------------------------------------------------------------------


def untrained_run(backbone: str, data: DataConfig, prepared: PreparedData) -> Any:
    """An AutoTimes run with seeded random segment maps on the real frozen backbone (no timestamp embeddings)."""
    import torch

    from forecasting.models import build_model
    from forecasting.runs import Run

    torch.manual_seed(0)
    params = {"backbone": backbone, "timestamps": False}
    model = build_model("autotimes", params, data_facts(data, prepared.n_channels)).eval()
    return Run(
        model=model,
        model_params=params,
        data=data,
        train=TrainConfig(),  # no training: the maps keep their seeded initialisation
        channels=prepared.channels,
        scaler=prepared.scaler,
        freq=prepared.freq,
        fingerprint=prepared.fingerprint,
        fit={"untrained": True},
        metrics={},
    )


def wait_for_other_export(folder: Path, poll_s: float = 15.0) -> float:
    """Wait while another process stages an export into ``folder`` (a ``.staging-*`` folder there): exporting the
    same model twice at once would cost another twenty minutes of this CPU. Returns the seconds waited."""
    started = time.perf_counter()
    while folder.is_dir() and any(folder.glob(".staging-*")):
        say(f"another process is exporting into {folder}: waiting")
        time.sleep(poll_s)
    return time.perf_counter() - started


def ensure_artifacts(
    stores: dict[str, Path], backbone: str, data: DataConfig, prepared: PreparedData
) -> dict[str, dict[str, Any]]:
    """Each rollout's artifact in its store, exported now unless present; how long each export took (or reused)."""
    exported: dict[str, dict[str, Any]] = {}
    run = None
    for rollout, store in stores.items():
        name = NAMES[rollout]
        waited = wait_for_other_export(store / name)
        try:
            resolve(store, name)
            exported[rollout] = {"reused": True, "waited_for_another_export_s": waited}
            continue
        except ArtifactError:
            pass
        from forecasting.export import export_run

        if run is None:
            say(f"loading {backbone} and building the untrained model")
            run = untrained_run(backbone, data, prepared)
        say(f"exporting {name} (torch.onnx + parity gate: minutes on the real backbone)")
        started = time.perf_counter()
        export_run(run, store, name, max_horizon=HORIZON, rollout=rollout, calibration=None)
        exported[rollout] = {"reused": False, "export_seconds": time.perf_counter() - started}
        say(f"exported {name} in {exported[rollout]['export_seconds']:.0f} s")
    return exported


def artifact_stores(work: Path) -> dict[str, Path]:
    """One store per rollout, so each server holds one model (its RSS is that model's)."""
    return {rollout: work / rollout for rollout in ROLLOUTS}


# --- inputs --------------------------------------------------------------------------------------------------


def test_contexts(prepared: PreparedData, count: int) -> np.ndarray:
    """``count`` raw (LOOKBACK, C) contexts spread over the ETTh1 test split."""
    start, end = prepared.borders.test
    starts = np.linspace(start, end - LOOKBACK - HORIZON, count).astype(int)
    return np.stack([prepared.table.values[s : s + LOOKBACK] for s in starts]).astype(np.float32)


# --- a, b: one forecast in process and over gRPC -------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def interleave(runs: dict[str, Callable[[int], object]], repeats: int) -> dict[str, list[float]]:
    """One untimed warm-up of each, then ``repeats`` rounds, each running every entry once in an order that
    alternates (a, b, c, c, b, a, ...), so that all see the same drift of a shared machine."""
    for fn in runs.values():
        fn(0)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            seconds[name].append(timed(lambda name=name, r=r: runs[name](r)))
        say(f"  round {r + 1}/{repeats}: " + ", ".join(f"{n} {seconds[n][-1] * 1000:.0f} ms" for n in names))
    return seconds


def summary_ms(seconds: list[float]) -> dict[str, Any]:
    ms = np.array(seconds) * 1000
    return {
        "n": len(ms),
        "median_ms": float(np.median(ms)),
        "p10_ms": float(np.percentile(ms, 10)),
        "p90_ms": float(np.percentile(ms, 90)),
        "samples_ms": [round(float(v), 2) for v in ms],
    }


def in_process(artifact: Artifact, contexts: np.ndarray, repeats: int) -> dict[str, Any]:
    """Growing, sliding and recompute at horizon 720 through the runner, one series (7 channels) per forecast."""
    from autotimes import onnx_recompute  # bench/autotimes.py

    served = KVCacheModel.load(artifact)

    def one(i: int) -> np.ndarray:
        return contexts[i % len(contexts)][None]

    runs: dict[str, Callable[[int], object]] = {
        "growing": lambda i: served.forecast(one(i), HORIZON, rollout="growing"),
        "sliding": lambda i: served.forecast(one(i), HORIZON, rollout="sliding"),
        "recompute": lambda i: onnx_recompute(served, one(i), HORIZON),
    }
    seconds = interleave(runs, repeats)
    out: dict[str, Any] = {name: summary_ms(s) for name, s in seconds.items()}
    growing = out["growing"]["median_ms"]
    out["recompute_over_growing"] = out["recompute"]["median_ms"] / growing
    out["sliding_over_growing"] = out["sliding"]["median_ms"] / growing
    # The ratio of medians can hide a drift; the median of per-round ratios pairs runs that were side by side.
    out["recompute_over_growing_paired"] = statistics.median(
        r / g for r, g in zip(seconds["recompute"], seconds["growing"], strict=True)
    )
    batch = contexts[:4]
    gap = np.abs(served.forecast(batch, HORIZON, rollout="growing") - onnx_recompute(served, batch, HORIZON))
    out["max_abs_diff_recompute_vs_growing_raw"] = float(gap.max())
    out["threads"] = served.session.get_session_options().intra_op_num_threads
    return out


def kv_vs_recompute_batched(artifact: Artifact, contexts: np.ndarray, rows: int, repeats: int) -> dict[str, Any]:
    """Growing against recompute with ``rows`` series (x 7 channels) per forecast, as a batched server runs them.

    At one series every step reads the whole LLM for a handful of tokens, so a prefill of 7-14 tokens costs little
    more than a decode step of 1; the cache's saving in arithmetic shows when a run carries many sequences.
    """
    from autotimes import onnx_recompute  # bench/autotimes.py

    served = KVCacheModel.load(artifact)
    batch = np.concatenate([contexts] * -(-rows // len(contexts)))[:rows]
    runs: dict[str, Callable[[int], object]] = {
        "growing": lambda i: served.forecast(batch, HORIZON, rollout="growing"),
        "recompute": lambda i: onnx_recompute(served, batch, HORIZON),
    }
    seconds = interleave(runs, repeats)
    out: dict[str, Any] = {"rows": rows, "sequences": rows * served.n_channels}
    out |= {name: summary_ms(s) for name, s in seconds.items()}
    out["recompute_over_growing"] = out["recompute"]["median_ms"] / out["growing"]["median_ms"]
    out["recompute_over_growing_paired"] = statistics.median(
        r / g for r, g in zip(seconds["recompute"], seconds["growing"], strict=True)
    )
    return out


def grpc_one_client(targets: dict[str, str], requests: dict[str, list[bytes]], repeats: int) -> dict[str, Any]:
    """One 720-step forecast per call, one client, the growing and the sliding server called alternately."""
    import grpc
    from serving_load import FORECAST_METHOD

    channels = {rollout: grpc.insecure_channel(target) for rollout, target in targets.items()}
    try:
        calls = {
            rollout: ch.unary_unary(FORECAST_METHOD, request_serializer=None, response_deserializer=None)
            for rollout, ch in channels.items()
        }
        runs: dict[str, Callable[[int], object]] = {
            rollout: (lambda i, rollout=rollout: calls[rollout](requests[rollout][i % len(requests[rollout])]))
            for rollout in targets
        }
        seconds = interleave(runs, repeats)
    finally:
        for ch in channels.values():
            ch.close()
    out: dict[str, Any] = {rollout: summary_ms(s) for rollout, s in seconds.items()}
    out["sliding_over_growing"] = out["sliding"]["median_ms"] / out["growing"]["median_ms"]
    return out


# --- c, d: throughput and memory -----------------------------------------------------------------------------


def throughput(
    loader: Any, targets: dict[str, str], metrics: dict[str, list[str]], clients: int, seconds: float, rounds: int
) -> dict[str, Any]:
    """Batching on against off at ``clients`` closed-loop clients, alternating slices, with the servers' stages."""
    from serving_load import scrape, side_by_side, stage_costs

    before = {mode: scrape(endpoints) for mode, endpoints in metrics.items()}
    row: dict[str, Any] = side_by_side(
        lambda mode, target, secs, phase: loader.measure(target, clients, secs, phase), targets, seconds, rounds
    )
    row["stages_ms"] = {
        mode: stage_costs(before[mode], scrape(endpoints), "forecast", "Forecast")
        for mode, endpoints in metrics.items()
    }
    row["throughput_ratio_on_vs_off"] = row["on"]["rps"] / row["off"]["rps"]
    return row


def memory_mib(pid: int) -> dict[str, float]:
    """Peak (VmHWM) and current (VmRSS) resident memory of a process, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = int(value.split()[0]) / 1024
    return {"peak_rss_mib": fields.get("VmHWM", float("nan")), "rss_mib": fields.get("VmRSS", float("nan"))}


# --- e: sizes ------------------------------------------------------------------------------------------------


def safetensors_bytes(folder: Path) -> dict[str, int]:
    """Bytes of every tensor in a folder's safetensors files, read from their headers (no weights loaded)."""
    sizes: dict[str, int] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with open(file, "rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        for name, meta in header.items():
            if name != "__metadata__":
                start, end = meta["data_offsets"]
                sizes[name] = end - start
    return sizes


def onnx_initialisers(path: Path) -> dict[str, Any]:
    """The graph's initialisers: how many, their bytes, and whether any two hold the same large tensor."""
    import hashlib

    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=True)
    total, digests = 0, {}
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        total += array.nbytes
        if array.nbytes >= 1 << 20:  # duplicates of a weight matrix would show here
            digests.setdefault(hashlib.sha1(array.tobytes()).hexdigest(), []).append(init.name)
    duplicated = [names for names in digests.values() if len(names) > 1]
    return {"count": len(model.graph.initializer), "bytes": total, "large_duplicated": duplicated}


def sizes(artifact: Artifact, backbone: str) -> dict[str, Any]:
    """The artifact on disk against the backbone's weights (the body the graph computes with, fp32 and GGUF)."""
    source = resolve_backbone(backbone)
    tensors = safetensors_bytes(converted_folder(source))
    body = sum(v for k, v in tensors.items() if "embed_tokens" not in k and not k.startswith("lm_head"))
    files = {p.name: p.stat().st_size for p in sorted(artifact.path.iterdir()) if p.is_file()}
    on_disk = sum(files.values())
    graphs = [artifact.graph_path(role) for role in artifact.manifest.graphs]
    out: dict[str, Any] = {
        "artifact_files_bytes": files,
        "artifact_bytes": on_disk,
        "graphs": len(graphs),
        "onnx_initialisers": onnx_initialisers(graphs[0]) if len(graphs) == 1 else None,
        "backbone_fp32_body_bytes": body,  # every LLM tensor but the token embeddings (the graph takes embeddings)
        "backbone_fp32_all_bytes": sum(tensors.values()),
        "artifact_over_fp32_body": on_disk / body,
        "artifact_over_fp32_all": on_disk / sum(tensors.values()),
    }
    if source.is_gguf:
        out["backbone_gguf_bytes"] = source.path.stat().st_size
        out["artifact_over_gguf"] = on_disk / source.path.stat().st_size
    return out


# --- the run -------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from serving_load import ROUNDS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE, help="backbone spec (llm_backbone.load_backbone)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK, help="artifact stores, reused when present")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (written atomically)")
    parser.add_argument("--windows", type=int, default=8, help="distinct ETTh1 test contexts, cycled through")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds of (a, b) in process and over gRPC")
    parser.add_argument(
        "--batched",
        type=int,
        nargs="*",
        default=[8],
        help="also time growing against recompute with this many series per forecast (as a batched run)",
    )
    parser.add_argument("--batched-repeats", type=int, default=3, help="timed rounds of each --batched size")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64], help="closed-loop clients per cell")
    parser.add_argument("--seconds", type=float, default=16.0, help="load per server and cell, split into slices")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="alternating load slices per cell")
    parser.add_argument(
        "--load",
        choices=["h2load", "python"],
        default="python",
        help="load generator (bench/serving_load.py): Python grpc.aio client processes, or h2load (C)",
    )
    parser.add_argument("--providers", help="the servers' onnxruntime providers (serve --providers)")
    parser.add_argument("--quick", action="store_true", help="3 repeats, 1 client, 4 s of load: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.clients, args.seconds, args.rounds, args.batched_repeats = 3, [1], 4.0, 2, 1
    return args


def save(results: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(results, indent=2) + "\n")


def start_servers(stores: dict[str, Path], providers: str | None) -> dict[str, tuple[Any, str, list[str]]]:
    """growing with batching on and off (the load), sliding with batching on (its one-client latency)."""
    from serving_load import start_arcast

    plan = {"growing_on": ("growing", True), "growing_off": ("growing", False), "sliding_on": ("sliding", True)}
    servers = {}
    for key, (rollout, batching) in plan.items():
        say(f"starting server {key} (each loads the LLM-sized graph: tens of seconds)")
        servers[key] = start_arcast(stores[rollout], batching, 1, 0.0, providers)
    return servers


def over_grpc(args: argparse.Namespace, stores: dict[str, Path], contexts: np.ndarray, results: dict) -> None:
    """(a) over gRPC, (c) the load cells and (d) the servers' memory; servers started and stopped here."""
    from serving_load import FORECAST_METHOD, make_loader, raw_call

    from serving.client import ArcastClient

    requests = {
        rollout: [ArcastClient.forecast_request(NAMES[rollout], [c], HORIZON).SerializeToString() for c in contexts]
        for rollout in ROLLOUTS
    }
    servers = start_servers(stores, args.providers)
    try:
        for key, (_, target, _) in servers.items():  # every server answers OK before anything is timed
            raw_call(target, FORECAST_METHOD, requests[key.split("_")[0]][0])
        results["server_rss_mib_after_start"] = {key: memory_mib(s[0].pid) for key, s in servers.items()}
        say("(a) one 720-step forecast over gRPC, 1 client, growing and sliding alternately")
        targets = {"growing": servers["growing_on"][1], "sliding": servers["sliding_on"][1]}
        results["grpc_one_forecast"] = grpc_one_client(targets, requests, args.repeats)
        save(results, args.out)
        loader = make_loader(args.load, FORECAST_METHOD, requests["growing"])
        try:
            load_targets = {"on": servers["growing_on"][1], "off": servers["growing_off"][1]}
            metrics = {"on": servers["growing_on"][2], "off": servers["growing_off"][2]}
            results["throughput"] = {}
            for clients in args.clients:
                say(f"(c) load, growing, {clients} clients, batching on vs off, {args.seconds:g} s each")
                row = throughput(loader, load_targets, metrics, clients, args.seconds, args.rounds)
                results["throughput"][str(clients)] = row
                say(f"  on {row['on']['rps']:.2f} rps, off {row['off']['rps']:.2f} rps")
                save(results, args.out)
        finally:
            loader.close()
        results["server_rss_mib_after_load"] = {key: memory_mib(s[0].pid) for key, s in servers.items()}
    finally:
        for proc, *_ in servers.values():
            proc.terminate()
        for proc, *_ in servers.values():
            proc.wait(timeout=60)


def goals(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "in_process" in results:
        ratio = results["in_process"]["recompute_over_growing"]
        out["kv_cache_vs_recompute_at_720 >= 3x"] = {"series_per_forecast": 1, "measured": ratio, "met": ratio >= 3}
    for rows, row in results.get("in_process_batched", {}).items():
        ratio = row["recompute_over_growing"]
        out[f"kv_cache_vs_recompute_at_720 >= 3x, {rows} series"] = {"measured": ratio, "met": ratio >= 3}
    if "size" in results:
        ratio = results["size"]["artifact_over_fp32_body"]
        out["artifact_over_backbone_fp32_weights <= 1.1"] = {"measured": ratio, "met": ratio <= 1.1}
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = ["| one 720-step forecast (1 series, 7 channels) | growing (KV cache) ms | sliding ms | recompute ms |"]
    lines.append("|---|---|---|---|")
    ip = results.get("in_process")
    if ip:
        cells = [f"{ip[k]['median_ms']:.0f}" for k in ("growing", "sliding", "recompute")]
        lines.append("| in process, median | " + " | ".join(cells) + " |")
    for rows, row in results.get("in_process_batched", {}).items():
        lines.append(
            f"| in process, {rows} series per forecast, median | {row['growing']['median_ms']:.0f} | - | "
            f"{row['recompute']['median_ms']:.0f} |"
        )
    grpc_one = results.get("grpc_one_forecast")
    if grpc_one:
        lines.append(
            f"| over gRPC, 1 client, median | {grpc_one['growing']['median_ms']:.0f} | "
            f"{grpc_one['sliding']['median_ms']:.0f} | - |"
        )
    if results.get("throughput"):
        lines += ["", "| clients | batching on rps | off rps | on/off | p50 on / off ms | p99 on / off ms |"]
        lines.append("|---|---|---|---|---|---|")
        for clients, row in results["throughput"].items():
            on, off = row["on"], row["off"]
            lines.append(
                f"| {clients} | {on['rps']:.2f} | {off['rps']:.2f} | {row['throughput_ratio_on_vs_off']:.2f}x | "
                f"{on['p50_ms']:.0f} / {off['p50_ms']:.0f} | {on['p99_ms']:.0f} / {off['p99_ms']:.0f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results: dict[str, Any] = {
        "command": shlex.join(["python", *sys.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)),
            "load_average_at_start": list(os.getloadavg()),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "setup": {
            "model": "AutoTimes, features M (7 channels, channel-independent), lookback 672, segment 96, "
            "no timestamp embeddings",
            "backbone": args.backbone,
            "weights": "segment maps untrained (seeded random, torch.manual_seed(0)); the LLM is the real frozen "
            "backbone: latency does not depend on the maps' values",
            "horizon": HORIZON,
            "request": "one series (672 x 7 raw ETTh1 test values) per request, no intervals",
            "contexts": f"{args.windows} ETTh1 test windows, cycled through",
            "repeats": args.repeats,
            "recompute": "the step graph with an empty past over the whole grown token sequence at every "
            "segment (bench/autotimes.py onnx_recompute), the context normalised once as growing does",
            "load": {
                "generator": args.load,
                "clients": args.clients,
                "seconds_per_server_and_cell": args.seconds,
                "rounds": args.rounds,
                "servers": "python -m serving serve, one process, max-batch 256, max-wait 0 ms, 256 workers, "
                "batching on or --no-batching; each server holds one artifact",
                "artifact_under_load": NAMES["growing"],
            },
        },
    }
    data = DataConfig(dataset="ETTh1", features="M", lookback=LOOKBACK, horizon=SEGMENT)
    prepared = prepare_data(data)
    stores = artifact_stores(args.work_dir)
    results["artifacts"] = ensure_artifacts({"growing": stores["growing"]}, args.backbone, data, prepared)
    artifact = read_artifact(resolve(stores["growing"], NAMES["growing"]))
    results["artifacts"]["path"] = str(artifact.path)
    results["size"] = sizes(artifact, args.backbone)
    save(results, args.out)
    contexts = test_contexts(prepared, args.windows)
    say(f"(a, b) in process: growing, sliding, recompute interleaved, {args.repeats} rounds")
    results["in_process"] = in_process(artifact, contexts, args.repeats)
    save(results, args.out)
    for rows in args.batched:
        say(f"(b) in process: growing against recompute, {rows} series per forecast, {args.batched_repeats} rounds")
        batched = results.setdefault("in_process_batched", {})
        batched[str(rows)] = kv_vs_recompute_batched(artifact, contexts, rows, args.batched_repeats)
        save(results, args.out)
    results["artifacts"] |= ensure_artifacts({"sliding": stores["sliding"]}, args.backbone, data, prepared)
    over_grpc(args, stores, contexts, results)
    results["goals"] = goals(results)
    results["markdown"] = markdown(results)
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    save(results, args.out)
    print(results["markdown"])
    print(json.dumps({"size": {k: v for k, v in results["size"].items() if k != "onnx_initialisers"}}, indent=1))
    print(json.dumps(results["goals"], indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
