"""Export a trained generative recommender as a ``prorec`` artifact served by constrained beam search.

The artifact (see ``serving/runners/constrained_beam.py`` for how it is run) holds two ONNX graphs, the encoder and one
decoder step with a self-attention KV cache, and side tables: the code table (dense id -> codes), the raw item
ids, the prefix trie and the titles when known. Before publishing, the onnxruntime beam search is run on a sample
of users and must return the torch beam search's top-k for each of them (with and without excluding seen items).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import torch
from torch import nn

from arcast_core.files import atomic_write_text
from arcast_core.runtime import library_versions
from recsys.generator import BOS_TOKEN, PAD_TOKEN, Generator, beam_search, history_tokens
from recsys.metrics import metrics_from_ranks, target_ranks_from_ranked_lists
from recsys.prorec_training import PRORecRun
from serving.artifact import Artifact
from serving.publish import Export, Parity, publish
from serving.runners.constrained_beam import MAX_BEAM_WIDTH, ConstrainedBeamModel
from serving.sessions import REFERENCE_PROVIDERS

log = logging.getLogger(__name__)
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder_step.onnx"
CODES_FILE = "codes.npy"
ITEM_IDS_FILE = "item_ids.npy"
TRIE_FILE = "trie.npz"
TITLES_FILE = "titles.json"
PARITY_USERS = 64
SCORE_TOLERANCE = 1e-4  # a differing top-k is an export error unless the scores agree this closely (a tie flip)


class EncoderGraph(nn.Module):
    """history (B, S) -> memory_mask (B, M), cross_key_i / cross_value_i (B, H, M, hd) per decoder layer."""

    def __init__(self, model: Generator) -> None:
        super().__init__()
        self.model = model

    def forward(self, history: torch.Tensor) -> tuple[torch.Tensor, ...]:
        memory, keep = self.model.encode(history)
        return (keep, *(t for pair in self.model.cross_keys_values(memory) for t in pair))


class DecoderStepGraph(nn.Module):
    """tokens (B, W), memory_mask, cross keys/values, past_key_i / past_value_i -> logits (B, W, V), present_*."""

    def __init__(self, model: Generator) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, tokens: torch.Tensor, memory_mask: torch.Tensor, *caches: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        n = len(self.model.decoder_layers)
        cross = [(caches[2 * i], caches[2 * i + 1]) for i in range(n)]
        past = [(caches[2 * n + 2 * i], caches[2 * n + 2 * i + 1]) for i in range(n)]
        logits, present = self.model.decode_step(tokens, memory_mask, cross, past)
        return (logits, *(t for pair in present for t in pair))


def _names(prefix: str, layers: int) -> list[str]:
    return [f"{prefix}_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]


def graph_specs(model: Generator) -> dict[str, dict[str, Any]]:
    """Input/output names, dtypes and shapes of both graphs, as the manifest records them."""
    cfg = model.config
    n = cfg.decoder_layers
    mem = "M"  # memory positions: S for a token-level encoder, S / levels for an item-level one
    cross = {name: ["B", cfg.heads, mem, cfg.head_dim] for name in _names("cross", n)}
    past = {name: ["B", "W", cfg.heads, "P", cfg.head_dim] for name in _names("past", n)}
    present = {name: ["B", "W", cfg.heads, "P + 1", cfg.head_dim] for name in _names("present", n)}

    def spec(entries: dict[str, list], dtypes: dict[str, str]) -> list[dict[str, Any]]:
        return [{"name": k, "dtype": dtypes.get(k, "float32"), "shape": v} for k, v in entries.items()]

    encoder_out = {"memory_mask": ["B", mem], **cross}
    decoder_in = {"tokens": ["B", "W"], "memory_mask": ["B", mem], **cross, **past}
    decoder_out = {"logits": ["B", "W", cfg.vocab_size], **present}
    return {
        "encoder": {
            "file": ENCODER_FILE,
            "inputs": spec({"history": ["B", "S"]}, {"history": "int64"}),
            "outputs": spec(encoder_out, {"memory_mask": "bool"}),
            "dynamic_axes": {"B": "users", "S": "history tokens (items x levels)", "M": "memory positions"},
        },
        "decoder": {
            "file": DECODER_FILE,
            "inputs": spec(decoder_in, {"tokens": "int64", "memory_mask": "bool"}),
            "outputs": spec(decoder_out, {}),
            "dynamic_axes": {"B": "users", "W": "beams per user", "P": "decoded positions (0 at BOS)"},
        },
    }


def export_graphs(model: Generator, folder: Path, opset: int = 18) -> None:
    """Write the encoder and decoder-step graphs with dynamic batch, history, beam and cache lengths."""
    model = model.cpu().eval()
    cfg = model.config
    n = cfg.decoder_layers
    g = torch.Generator().manual_seed(0)
    # Example sizes above 1 everywhere: torch.export specialises a dimension whose example is 0 or 1.
    b, items, w, p = 2, 3, 2, 2
    history = torch.randint(2, cfg.vocab_size, (b, items * cfg.levels), generator=g)
    b_dim = torch.export.Dim("B", min=1, max=1 << 16)
    s_dim = torch.export.Dim("S_items", min=1, max=cfg.max_history)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints.*", category=UserWarning)
        torch.onnx.export(
            EncoderGraph(model).eval(),
            (history,),
            str(folder / ENCODER_FILE),
            input_names=["history"],
            output_names=["memory_mask", *_names("cross", n)],
            dynamic_shapes={"history": {0: b_dim, 1: cfg.levels * s_dim}},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        with torch.no_grad():
            keep_and_cross = EncoderGraph(model)(history)
        shape = (b, w, cfg.heads, p, cfg.head_dim)
        past = [torch.randn(shape, generator=g) for _ in range(2 * n)]
        tokens = torch.randint(2, cfg.vocab_size, (b, w), generator=g)
        m_dim = torch.export.Dim("M", min=1, max=cfg.encoder_positions)
        w_dim = torch.export.Dim("W", min=1, max=MAX_BEAM_WIDTH)
        p_dim = torch.export.Dim("P", min=0, max=cfg.levels)
        cache_shapes = [{0: b_dim, 2: m_dim}] * (2 * n) + [{0: b_dim, 1: w_dim, 3: p_dim}] * (2 * n)
        torch.onnx.export(
            DecoderStepGraph(model).eval(),
            (tokens, keep_and_cross[0], *keep_and_cross[1:], *past),
            str(folder / DECODER_FILE),
            input_names=["tokens", "memory_mask", *_names("cross", n), *_names("past", n)],
            output_names=["logits", *_names("present", n)],
            dynamic_shapes={
                "tokens": {0: b_dim, 1: w_dim},
                "memory_mask": {0: b_dim, 1: m_dim},
                "caches": tuple(cache_shapes),
            },
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    for file in (ENCODER_FILE, DECODER_FILE):
        onnx.checker.check_model(str(folder / file))


def sample_histories(n_items: int, max_history: int, users: int, seed: int = 0) -> np.ndarray:
    """Random left-padded histories of every length 1..max_history, for the parity check without data."""
    rng = np.random.default_rng(seed)
    out = np.zeros((users, max_history), dtype=np.int64)
    for row in range(users):
        length = 1 + row % max_history
        out[row, max_history - length :] = rng.integers(1, n_items + 1, length)
    return out


def parity_report(
    run: PRORecRun, served: ConstrainedBeamModel, histories: np.ndarray, k: int, beam_width: int
) -> dict[str, Any]:
    """onnxruntime beam search against the torch one on ``histories`` (dense ids), excluding seen items or not."""
    model = run.model.cpu().eval()
    index = run.code_index()
    report: dict[str, Any] = {"users": len(histories), "k": k, "beam_width": beam_width}
    for exclude_seen in (False, True):
        same = tie_flips = 0
        worst = 0.0
        for start in range(0, len(histories), 32):
            chunk = histories[start : start + 32]
            excluded = [row[row != 0] for row in chunk] if exclude_seen else None
            tokens = torch.from_numpy(history_tokens(chunk, index.tokens))
            expected = beam_search(model, tokens, index.trie, beam_width, k, excluded)
            actual = served.search_dense(chunk, k, beam_width, excluded)
            finite = np.isfinite(expected.scores)
            if not np.array_equal(np.isfinite(actual.scores), finite):
                raise RuntimeError("onnxruntime and torch found different numbers of items")
            gap = np.abs(actual.scores - expected.scores)[finite]
            worst = max(worst, float(gap.max()) if gap.size else 0.0)
            for a, e, ga in zip(actual.items, expected.items, np.abs(actual.scores - expected.scores), strict=True):
                if np.array_equal(a, e):
                    same += 1
                elif np.nanmax(np.where(np.isfinite(ga), ga, 0)) <= SCORE_TOLERANCE:
                    tie_flips += 1  # same scores, near-tied items in another order
                else:
                    raise RuntimeError(f"onnxruntime top-{k} {a.tolist()} differs from torch's {e.tolist()}")
        key = "exclude_seen" if exclude_seen else "all_items"
        report[key] = {"identical_top_k": same, "tie_flips": tie_flips, "max_abs_score_diff": worst}
    return report


def data_facts(info: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``data``: what rebuilds a run's training data (dataset, slice) and its fingerprint."""
    spec = info.get("data") or {"dataset": info.get("dataset"), "slice": None}
    return {**spec, "fingerprint": info.get("data_fingerprint")}


def export_run(
    run: PRORecRun,
    store: Path | str,
    name: str,
    version: str | None = None,
    histories: np.ndarray | None = None,
    top_k: int = 10,
    beam_width: int | None = None,
    opset: int = 18,
) -> Artifact:
    """Publish ``run`` as ``store/name/<version>``; refuses when onnxruntime's top-k differ from torch's.

    ``histories``: (n, H) left-padded dense ids for the parity check (real users are best; default: random ones).
    """
    model = run.model.cpu().eval()
    cfg = model.config
    if cfg.user_buckets:
        raise NotImplementedError(
            "this generator has a user token (--user-buckets): the served graphs take no user input yet; "
            "train without it to export"
        )
    beam_width = beam_width or int(run.info.get("config", {}).get("train", {}).get("beam_width", 20))
    beam_width = max(beam_width, top_k)
    if histories is None:
        histories = sample_histories(len(run.ids.codes), cfg.max_history, PARITY_USERS)
    histories = np.asarray(histories, dtype=np.int64)[:, -cfg.max_history :]
    index = run.code_index()
    tables: dict[str, Any] = {
        "codes": {"file": CODES_FILE, "dtype": "int64", "shape": list(index.trie.codes.shape), "row_0": "padding"},
        "item_ids": {"file": ITEM_IDS_FILE, "dtype": "int64", "shape": [len(run.item_ids)], "meaning": "raw id"},
        "trie": {"file": TRIE_FILE, "format": 1, "layout": "arcast_core/trie.py"},
    }
    if run.titles is not None:
        tables["titles"] = {"file": TITLES_FILE, "meaning": "title of each dense id, [0] empty"}

    def write(folder: Path) -> None:
        export_graphs(model, folder, opset)
        np.save(folder / CODES_FILE, index.trie.codes, allow_pickle=False)
        np.save(folder / ITEM_IDS_FILE, np.asarray(run.item_ids, dtype=np.int64), allow_pickle=False)
        index.trie.save(folder / TRIE_FILE)
        if run.titles is not None:
            atomic_write_text(folder / TITLES_FILE, json.dumps(run.titles))

    def parity(staged: Artifact) -> Parity:
        served = ConstrainedBeamModel.load(staged, REFERENCE_PROVIDERS, intra_op_threads=1)
        return Parity(parity_report(run, served, histories, top_k, beam_width))

    graphs = graph_specs(model)
    for graph in graphs.values():
        graph["opset"] = opset
    rollout = {
        "kind": ConstrainedBeamModel.rollout_kind,
        "levels": cfg.levels,
        "level_sizes": list(cfg.level_sizes),
        "token_offsets": list(cfg.offsets),
        "pad_token": PAD_TOKEN,
        "bos_token": BOS_TOKEN,
        "vocab_size": cfg.vocab_size,
        "max_history": cfg.max_history,
        "encoder_unit": cfg.encoder_unit,
        "decoder_layers": cfg.decoder_layers,
        "heads": cfg.heads,
        "head_dim": cfg.head_dim,
        "beam_width": beam_width,
        "top_k": top_k,
        "max_beam_width": MAX_BEAM_WIDTH,
        "exclude_seen": True,
        "score": "sum over levels of the log-softmax over that level's codes",
    }
    export = Export(
        model_kind="prorec",
        rollout=rollout,
        graphs=graphs,
        write=write,
        parity=parity,
        data=data_facts(run.info),
        metrics=run.info.get("metrics", {}),
        versions=library_versions(),
        facts={
            "side_tables": tables,
            "n_items": len(run.ids.codes),
            "variant": run.variant,
            "code_stats": run.ids.stats.as_dict(),
            "model_config": cfg.as_dict(),
            "model_size": run.info.get("model_size"),
        },
    )
    artifact = publish(store, name, export, version)
    log.info("exported %s version %s (constrained beam)", name, artifact.version)
    return artifact


def evaluate_artifact(
    store: Path | str,
    name: str,
    version: str | None = None,
    split: str = "test",
    data_dir: str | None = None,
    limit: int | None = None,
    exclude_seen: bool = False,
    beam_width: int = 20,
    batch_size: int = 256,
    intra_op_threads: int = 1,
) -> dict[str, Any]:
    """Metrics of the artifact exactly as served (onnxruntime beam search) on the data its manifest names."""
    from recsys.prorec_training import EVAL_KS, load_sequences, sequences_fingerprint
    from recsys.split import leave_one_out
    from serving.artifact import read_published, resolve
    from serving.runners import load_runner
    from serving.runners.item_scores import ItemScoresModel
    from serving.runners.recommender import ItemCatalogue

    artifact = read_published(store, resolve(store, name, version))
    runner = load_runner(artifact, intra_op_threads=intra_op_threads)
    if not isinstance(runner, ItemCatalogue):
        raise ValueError(f"{artifact.path}: a {artifact.manifest.model_kind} model does not recommend")
    served = cast(ConstrainedBeamModel | ItemScoresModel, runner)  # both rank by search_dense
    data = artifact.manifest.data
    sequences = load_sequences({"dataset": data.dataset, "slice": data.slice}, data_dir)
    data_split = leave_one_out(sequences, max_history=served.max_history)
    if not np.array_equal(data_split.item_map.raw_ids, served.item_ids):
        raise ValueError("the data's items differ from the artifact's: it was trained on other data")
    examples = data_split.validation if split == "val" else data_split.test
    rows = np.arange(len(examples) if limit is None else min(limit, len(examples)))
    histories = examples.histories[rows]
    ks = [k for k in EVAL_KS if k <= beam_width]
    order = np.argsort((histories != 0).sum(axis=1), kind="stable")  # similar lengths together: less padding
    items = np.zeros((len(rows), max(ks)), dtype=np.int64)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        excluded = [h[h != 0] for h in histories[chunk]] if exclude_seen else None
        items[chunk] = served.search_dense(histories[chunk], max(ks), beam_width, excluded).items
    ranks = target_ranks_from_ranked_lists(items, examples.targets[rows], max(ks), histories, exclude_seen)
    return {
        "model": f"{artifact.name} v{artifact.version}",
        "engine": "onnxruntime",
        "dataset": data.dataset,
        "split": split,
        "users": len(rows),
        "beam_width": beam_width,
        "exclude_seen": exclude_seen,
        "data_matches_training": sequences_fingerprint(sequences) == data.fingerprint,
        "metrics": metrics_from_ranks(ranks, ks),
    }
