"""Benchmark the Recommend service: load with batching on and off, KV cache against recompute, accuracy over gRPC.

Needs a recommender trained on full Beauty (a run folder from ``python -m recsys train``), for example

    .venv/bin/python -m recsys train --variant prorec --dataset beauty --sasrec-minutes 5 --minutes 10 \\
        --d-model 64 --d-ff 256 --encoder-unit item --lr 2e-3 --eval-users 1000 --out runs/beauty-prorec
    .venv/bin/python bench/serve_recommend.py --run runs/beauty-prorec    # writes bench/results/serve_recommend.json

The run is exported to a temporary store (with the usual onnxruntime-vs-torch parity check) and served by two
servers in their own processes, batching on and off. ``--artifact STORE/NAME/VERSION`` benchmarks an exported
recommender of any kind instead (SASRec and transitions too, exported by ``python -m recsys export``): load and
accuracy, no decoding comparison (that needs the generator's run). Everything is measured side by side in one run
and reported as ratios too, since the machine is shared and absolute numbers drift:

- load: 1, 8 and 64 closed-loop clients sending one-user Recommend requests (real test histories, k 10, the
  artifact's default beam width) for ``--seconds`` each: recommendations per second, p50/p99 latency, from arcast
  with batching on, off, and on with ``--workers 2``, beside bench/bare_server.py (the same method and messages, a
  canned reply of the same size, no work: the stack's floor) with 1 and 2 processes and on grpc.aio; each arcast
  figure as a fraction of the floor, and the cost of one request by stage from the servers' own histograms. The
  load comes from h2load (one history; the default when installed) or Python client processes (``--load python``);
- decoding: the served search (decoder step with a self-attention KV cache) against the same search recomputing
  the decoder over the whole prefix at every level (a prefix graph exported here from the same weights), in
  process, interleaved; the two must return the same items;
- accuracy: Recall/NDCG@5/10/20 of the served model on every Beauty test user, computed from RecommendBatch
  answers over gRPC, against the offline evaluation of the same artifact (``python -m recsys evaluate --store``)
  and the torch evaluation recorded in the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, cast

# The repository first on the import path: bench/recsys.py would otherwise shadow the recsys package (bench/ stays
# on the path for bench/serving_load.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
import numpy as np
import onnxruntime as ort
import torch
from serving_load import (  # bench/serving_load.py
    ARCAST_MODES,
    FLOOR_HEADER,
    RECOMMEND_METHOD,
    STAGE_HEADER,
    compare_cell,
    floor_row,
    load_row,
    make_loader,
    peak_rss_mib,
    raw_call,
    stage_row,
    start_arcast,
    start_bare,
)
from torch import nn
from tqdm import tqdm

from arcast_core.files import atomic_write_text
from recsys.export import evaluate_artifact, export_run
from recsys.generator import Generator
from recsys.metrics import metrics_from_ranks, target_ranks_from_ranked_lists
from recsys.prorec_training import EVAL_KS, load_run, load_sequences
from recsys.split import leave_one_out
from serving.artifact import read_artifact
from serving.proto.arcast.v1 import recommend_pb2, recommend_pb2_grpc
from serving.runners import load_runner
from serving.runners.constrained_beam import ConstrainedBeamModel
from serving.runners.recommender import ItemCatalogue
from serving.sessions import create_session

MODEL = "beauty-prorec"
MAX_WAIT_MS = 0.0  # greedy batching: under load, requests queue while the previous batch runs
ACCURACY_CHUNK = 256  # users per RecommendBatch call, the chunk size of the offline evaluation


class PrefixDecoderGraph(nn.Module):
    """The decoder without a cache: every beam's whole prefix (B, W, T) -> next-token logits (B, W, V)."""

    def __init__(self, model: Generator) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, memory_mask: torch.Tensor, *cross: torch.Tensor) -> torch.Tensor:
        m, length = self.model, tokens.shape[-1]
        x = m.token_embedding(tokens) + m.decoder_position.weight[:length]
        allowed = memory_mask[:, None, None, None, :]  # (B, 1 beam, 1 head, 1 query, M)
        for i, layer in enumerate(m.decoder_layers):
            x = layer(x, cross[2 * i][:, None], cross[2 * i + 1][:, None], allowed, m.causal[:length, :length])
        return m.decoder_norm(x[..., -1, :]) @ m.token_embedding.weight.T


def export_prefix_decoder(model: Generator, path: Path) -> None:
    model = model.cpu().eval()
    cfg, n = model.config, model.config.decoder_layers
    g = torch.Generator().manual_seed(0)
    b, w, t, mem = 2, 3, 2, 4  # examples above 1: torch.export specialises dimensions of size 0 or 1
    tokens = torch.randint(2, cfg.vocab_size, (b, w, t), generator=g)
    mask = torch.ones(b, mem, dtype=torch.bool)
    cross = [torch.randn(b, cfg.heads, mem, cfg.head_dim, generator=g) for _ in range(2 * n)]
    b_dim, w_dim = torch.export.Dim("B", min=1, max=1 << 16), torch.export.Dim("W", min=1, max=512)
    t_dim, m_dim = torch.export.Dim("T", min=1, max=cfg.levels), torch.export.Dim("M", min=1, max=4096)
    names = [f"cross_{kind}_{i}" for i in range(n) for kind in ("key", "value")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter
        torch.onnx.export(
            PrefixDecoderGraph(model).eval(),
            (tokens, mask, *cross),
            str(path),
            input_names=["tokens", "memory_mask", *names],
            output_names=["logits"],
            dynamic_shapes={
                "tokens": {0: b_dim, 1: w_dim, 2: t_dim},
                "memory_mask": {0: b_dim, 1: m_dim},
                "cross": tuple({0: b_dim, 2: m_dim} for _ in range(2 * n)),
            },
            opset_version=18,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


class RecomputeSteps:
    """Decoder steps without a cache (``serving.runners.constrained_beam.DecoderSteps``): each level reruns the whole
    prefix."""

    def __init__(self, session: ort.InferenceSession, encoded: dict[str, np.ndarray]) -> None:
        self._session, self._feeds = session, dict(encoded)
        self._prefix = np.zeros((len(encoded["memory_mask"]), 1, 0), dtype=np.int64)

    def logits(self, tokens: np.ndarray) -> np.ndarray:
        self._prefix = np.concatenate([self._prefix, tokens[..., None]], axis=-1)
        self._feeds["tokens"] = self._prefix
        return self._session.run(["logits"], self._feeds)[0]

    def survive(self, rows: np.ndarray, parent: np.ndarray) -> None:
        self._prefix = self._prefix[rows, parent]


def kv_cache_vs_recompute(
    served: ConstrainedBeamModel, prefix: ort.InferenceSession, histories: np.ndarray, repeats: int
) -> dict[str, Any]:
    """The served search with the KV cache against the recomputing one, at 1 and 64 users per search."""

    def recompute(model: ConstrainedBeamModel, encoded: dict[str, np.ndarray]) -> RecomputeSteps:
        return RecomputeSteps(prefix, encoded)

    width, k = served.default_beam_width, served.default_k
    out: dict[str, Any] = {}
    for users in (1, 64):
        chunks = [histories[i : i + users] for i in range(0, users * repeats, users)]
        same, gap, times = 0, 0.0, {"kv_cache": [], "recompute": []}
        served.search_dense(chunks[0], k, width), served.search_dense(chunks[0], k, width, steps=recompute)  # warm
        for r, chunk in enumerate(chunks):  # interleaved, alternating which goes first
            order = ("kv_cache", "recompute") if r % 2 == 0 else ("recompute", "kv_cache")
            results = {}
            for mode in order:
                t0 = time.perf_counter()
                results[mode] = served.search_dense(chunk, k, width, steps=recompute if mode == "recompute" else None)
                times[mode].append(time.perf_counter() - t0)
            same += int(np.array_equal(results["kv_cache"].items, results["recompute"].items))
            finite = np.isfinite(results["kv_cache"].scores)
            gap = max(gap, float(np.abs(results["kv_cache"].scores - results["recompute"].scores)[finite].max()))
        medians = {mode: statistics.median(t) * 1000 for mode, t in times.items()}
        out[f"{users}_users"] = {
            "median_ms": medians,
            "speedup_kv_cache": medians["recompute"] / medians["kv_cache"],
            "searches": len(chunks),
            "identical_items": f"{same}/{len(chunks)}",
            "max_score_gap": gap,
        }
        print(f"{users} users/search: kv cache {medians['kv_cache']:.2f} ms, recompute {medians['recompute']:.2f} ms")
    return out


def grpc_accuracy(target: str, name: str, served: ItemCatalogue, examples: Any, beam_width: int) -> dict[str, Any]:
    """Every test user through RecommendBatch (in the offline evaluation's chunks), ranked lists -> metrics."""
    histories, k = examples.histories, max(EVAL_KS)
    order = np.argsort((histories != 0).sum(axis=1), kind="stable")  # as evaluate_artifact: similar lengths together
    items = np.zeros((len(histories), k), dtype=np.int64)
    started = time.perf_counter()
    with grpc.insecure_channel(target) as channel:
        stub = recommend_pb2_grpc.RecommendServiceStub(channel)
        for start in tqdm(range(0, len(order), ACCURACY_CHUNK), desc="test users over gRPC", unit="chunk"):
            chunk = order[start : start + ACCURACY_CHUNK]
            request = recommend_pb2.RecommendBatchRequest(model=name, k=k, beam_width=beam_width, include_seen=True)
            for user in chunk:
                history = served.item_ids[histories[user][histories[user] != 0]]
                request.users.add(user_id=str(user), history=history.tolist())
            response = stub.RecommendBatch(request, timeout=600)
            for user, answer in zip(chunk, response.users, strict=True):
                dense = served.dense_ids([r.item_id for r in answer.items], strict=True, field="answer")
                items[user, : len(dense)] = dense
    seconds = time.perf_counter() - started
    ranks = target_ranks_from_ranked_lists(items, examples.targets, k, histories, False)
    return {"metrics": metrics_from_ranks(ranks, EVAL_KS), "seconds": seconds, "users_per_second": len(order) / seconds}


def _model_facts(run: Any, folder: str) -> dict[str, Any]:
    return {
        "run": folder,
        "variant": run.variant,
        "dataset": run.info["data"]["dataset"],
        "items": int(len(run.item_ids) - 1),
        "serving_parameters": run.model.serving_parameters(),
        "config": run.model.config.as_dict(),
        "timings": run.info.get("timings"),
    }


def _artifact_facts(artifact: Any, folder: Path) -> dict[str, Any]:
    manifest = artifact.manifest
    return {
        "artifact": str(folder),
        "model_kind": manifest.model_kind,
        "rollout_kind": manifest.rollout.kind,
        "dataset": manifest.data.dataset,
        "metrics": manifest.metrics,
        "export_parity": manifest.parity,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="run folder of a generative recommender trained on full Beauty")
    source.add_argument(
        "--artifact", type=Path, help="an exported recommender of any kind, its version folder (STORE/NAME/VERSION)"
    )
    parser.add_argument("--data-dir", help="benchmark data folder")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each load phase (default 6)")
    parser.add_argument("--repeats", type=int, default=40, help="searches per KV-cache/recompute comparison")
    parser.add_argument("--skip-accuracy", action="store_true", help="no full test-set pass (smoke runs)")
    parser.add_argument(
        "--load",
        choices=["h2load", "python"],
        default="h2load" if shutil.which("h2load") else "python",
        help="load generator: h2load (C; default when installed) or Python grpc.aio client processes",
    )
    parser.add_argument("--providers", help="the servers' onnxruntime providers (serve --providers; default: theirs)")
    source.add_argument("--chart", action="store_true", help="run nothing: redraw the chart (--out as .svg) from --out")
    parser.add_argument("--out", type=Path, default=Path("bench/results/serve_recommend.json"))
    args = parser.parse_args(argv)
    if args.chart:
        draw_chart(json.loads(args.out.read_text()), args.out.with_suffix(".svg"))
        return 0
    torch.set_num_threads(1)

    run = load_run(args.run) if args.run else None
    given = read_artifact(args.artifact) if args.artifact else None
    if run is not None:
        spec, max_history, name = run.info["data"], run.model.config.max_history, MODEL
    else:
        assert given is not None and given.manifest.data is not None
        spec = {"dataset": given.manifest.data.dataset, "slice": given.manifest.data.slice}
        # every recommender's rollout spec carries max_history (ConstrainedBeamRollout, ItemScoresRollout)
        max_history, name = int(given.manifest.rollout.max_history), given.manifest.name  # type: ignore[attr-defined]
    if spec.get("slice"):
        raise SystemExit(
            f"{args.run or args.artifact} was trained on a slice of {spec['dataset']}; the benchmark needs it all"
        )
    split = leave_one_out(load_sequences(spec, args.data_dir), max_history=max_history)
    results: dict[str, Any] = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)),
            "load_average_at_start": os.getloadavg(),
            "platform": platform.platform(),
            "onnxruntime": ort.__version__,
        },
        "model": _model_facts(run, args.run) if run is not None else _artifact_facts(given, args.artifact),
        "setup": {
            "server": f"max-batch 256, max-wait {MAX_WAIT_MS} ms, 256 workers; modes on, off, workers2 (--workers 2)",
            "floors": "bench/bare_server.py: floor (thread pool), floor_workers2 (2 processes), floor_aio (grpc.aio)",
            "request": "Recommend, one test user's history, k 10, default beam width",
            "load_seconds": args.seconds,
            "load_generator": args.load,
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        rng = np.random.default_rng(0)
        parity = split.test.histories[np.sort(rng.choice(len(split.test), 64, replace=False))]
        if run is not None:
            artifact = export_run(run, store, name, histories=parity)
            beam = ConstrainedBeamModel.load(read_artifact(artifact.path), intra_op_threads=1)
            results["model"]["export_parity"] = artifact.manifest.parity
            export_prefix_decoder(run.model, Path(tmp) / "prefix_decoder.onnx")
            prefix = create_session(Path(tmp) / "prefix_decoder.onnx", intra_op_threads=1)
            results["decoding"] = kv_cache_vs_recompute(beam, prefix, split.test.histories, args.repeats)
            copied = artifact.path
        else:  # served from a store of its own, as the run's export is
            assert given is not None
            copied = store / name / given.path.name
            shutil.copytree(given.path, copied)
        served = cast(ItemCatalogue, load_runner(read_artifact(copied), intra_op_threads=1))
        results["model"]["beam_width"], results["model"]["top_k"] = served.default_beam_width, served.default_k

        raw = [served.item_ids[h[h != 0]].tolist() for h in split.test.histories[:2000]]
        requests = [recommend_pb2.RecommendRequest(model=name, history=h, k=10).SerializeToString() for h in raw]
        arcast = {
            "on": start_arcast(store, True, 1, MAX_WAIT_MS, args.providers),
            "off": start_arcast(store, False, 1, MAX_WAIT_MS, args.providers),
            "workers2": start_arcast(store, True, 2, MAX_WAIT_MS, args.providers),
        }
        servers = {mode: (proc, target) for mode, (proc, target, _) in arcast.items()}
        bare: dict[str, Any] = {}
        try:
            replies = {name: raw_call(servers["on"][1], RECOMMEND_METHOD, requests[0])}
            bare = {
                "floor": start_bare(RECOMMEND_METHOD, replies, Path(tmp)),
                "floor_workers2": start_bare(RECOMMEND_METHOD, replies, Path(tmp), workers=2),
                "floor_aio": start_bare(RECOMMEND_METHOD, replies, Path(tmp), aio=True),
            }
            targets = {mode: target for mode, (_, target) in servers.items()} | {m: b[1] for m, b in bare.items()}
            for target in targets.values():  # every server answers OK before the load
                raw_call(target, RECOMMEND_METHOD, requests[0])
            metrics = {mode: endpoints for mode, (_, _, endpoints) in arcast.items()}
            results["load"] = {}
            loader = make_loader(args.load, RECOMMEND_METHOD, requests)
            try:
                for clients in (1, 8, 64):
                    row = compare_cell(loader, targets, metrics, clients, args.seconds, "recommend", "Recommend")
                    results["load"][str(clients)] = row
                    print(f"clients={clients}: " + ", ".join(f"{m} {row[m]['rps']:.0f}" for m in targets))
            finally:
                loader.close()
            results["workers_speedup"] = results["load"]["64"]["workers_speedup"]
            results["floor_fraction_1_client"] = results["load"]["1"]["on"]["floor_fraction"]
            results["server_peak_rss_mib"] = {
                f"batching_{m}": peak_rss_mib(p.pid) for m, (p, _) in servers.items() if m in ("on", "off")
            }
            if not args.skip_accuracy:
                width = max(EVAL_KS)
                offline = evaluate_artifact(store, name, data_dir=args.data_dir, beam_width=width)
                over_grpc = grpc_accuracy(servers["on"][1], name, served, split.test, width)
                gaps = {m: abs(over_grpc["metrics"][m] - offline["metrics"][m]) for m in offline["metrics"]}
                results["accuracy"] = {
                    "protocol": "Beauty leave-one-out test split, every user, full ranking by constrained beam search "
                    f"(beam {width}), history not masked, as the published tables",
                    "users": offline["users"],
                    "grpc": over_grpc,
                    "offline_artifact": offline["metrics"],
                    "max_abs_gap_grpc_vs_offline": max(gaps.values()),
                    "torch_run": run.info.get("metrics", {}).get("test") if run is not None else None,
                }
        finally:
            for proc, *_ in (*arcast.values(), *bare.values()):
                proc.terminate()
                proc.wait(timeout=60)
    results["load_average_at_end"] = os.getloadavg()
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write_text(args.out, json.dumps(results, indent=2, default=float))
    print_tables(results)
    draw_chart(results, args.out.with_suffix(".svg"))
    print(f"wrote {args.out} and its chart")
    return 0


def draw_chart(results: dict[str, Any], path: Path) -> None:
    from charts import serving_chart  # bench/charts.py; matplotlib only for the chart

    model = results["model"]
    title = f"{model.get('variant', 'recommender')} on {model.get('dataset', '?')}, one user a request"
    serving_chart({title: results["load"]}, "Recommend service", path)


def print_tables(results: dict[str, Any]) -> None:
    print("\n| clients | batching on rec/s | off rec/s | on/off | p50 on/off ms | p99 on/off ms |")
    print("|---|---|---|---|---|---|")
    for clients, row in results["load"].items():
        print(load_row([clients], row))
    print(f"\n| clients {FLOOR_HEADER}")
    print("|---" * 10 + "|")
    for clients, row in results["load"].items():
        print(floor_row([clients], row))
    print(f"\n| clients | server {STAGE_HEADER}")
    print("|---" * 10 + "|")
    for clients, row in results["load"].items():
        for mode in ARCAST_MODES:
            print(stage_row([clients, mode], row["stages_ms"][mode], row[mode]["mean_ms"]))
    decoding = results.get("decoding") or {}  # none for an --artifact run
    if decoding:
        print("\n| users per search | KV cache ms | recompute ms | speed-up | identical items |")
        print("|---|---|---|---|---|")
    for users, row in decoding.items():
        ms = row["median_ms"]
        print(
            f"| {users.split('_')[0]} | {ms['kv_cache']:.2f} | {ms['recompute']:.2f} | {row['speedup_kv_cache']:.2f}x"
            f" | {row['identical_items']} |"
        )
    if "accuracy" in results:
        acc = results["accuracy"]
        gap = acc["max_abs_gap_grpc_vs_offline"]
        print(f"\naccuracy on {acc['users']} test users (largest gap gRPC vs offline: {gap:.2g})")
        for metric in ("recall@5", "ndcg@5", "recall@10", "ndcg@10", "recall@20", "ndcg@20"):
            torch_value = f", torch {acc['torch_run'][metric]:.4f}" if acc["torch_run"] else ""  # --run only
            print(
                f"{metric}: grpc {acc['grpc']['metrics'][metric]:.4f}, offline {acc['offline_artifact'][metric]:.4f}"
                + torch_value
            )


if __name__ == "__main__":
    sys.exit(main())
