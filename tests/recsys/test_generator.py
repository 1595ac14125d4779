"""The generator: the KV-cache step is the teacher-forced decoder, padding is inert, scores are log-probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arcast_core.trie import PrefixTrie
from recsys.alignment import info_nce
from recsys.generator import (
    DistillationTargets,
    Generator,
    GeneratorConfig,
    beam_search,
    history_tokens,
    token_table,
)
from recsys.quantizer import append_dedup_code

CODES = append_dedup_code(np.random.default_rng(0).integers(0, (6, 5, 4), size=(120, 3)))


def make_model(unit: str = "token", semantic_dim: int = 0, collaborative_dim: int = 0) -> Generator:
    torch.manual_seed(0)
    sizes = tuple(int(s) for s in CODES.max(0) + 1)
    config = GeneratorConfig(
        level_sizes=sizes,
        max_history=6,
        d_model=32,
        heads=4,
        d_ff=64,
        encoder_unit=unit,  # type: ignore[arg-type]
        semantic_dim=semantic_dim,
        collaborative_dim=collaborative_dim,
    )
    return Generator(config).eval()


HISTORIES = np.array([[0, 0, 0, 5, 9, 17], [3, 4, 5, 6, 7, 8], [0, 0, 0, 0, 0, 42]])


@pytest.mark.parametrize("unit", ["token", "item"])
def test_cached_steps_equal_the_teacher_forced_decoder(unit: str) -> None:
    model = make_model(unit)
    tokens = torch.from_numpy(history_tokens(HISTORIES, token_table(CODES, model.config)))
    codes = torch.from_numpy(CODES[[10, 20, 30]])
    with torch.no_grad():
        memory, keep = model.encode(tokens)
        cross = model.cross_keys_values(memory)
        full = model.decode(cross, keep, codes) @ model.token_embedding.weight.T
        past = model.empty_cache(3, 1)
        inputs = model.decoder_inputs(codes)
        for level in range(model.config.levels):
            logits, past = model.decode_step(inputs[:, level : level + 1], keep, cross, past)
            torch.testing.assert_close(logits[:, 0], full[:, level], atol=1e-5, rtol=1e-5)
        assert past[0][0].shape == (3, 1, 4, model.config.levels, 8)


@pytest.mark.parametrize("unit", ["token", "item"])
def test_left_padding_does_not_change_the_encoding(unit: str) -> None:
    model = make_model(unit)
    table = token_table(CODES, model.config)
    short = history_tokens(HISTORIES[:1, 3:], table)  # no padding at all
    padded = table[HISTORIES[:1]].reshape(1, -1)  # three padding items in front
    with torch.no_grad():
        a, _ = model.encode(torch.from_numpy(short))
        b, keep_b = model.encode(torch.from_numpy(padded))
    torch.testing.assert_close(a, b[:, keep_b[0]], atol=1e-5, rtol=1e-5)


def test_beam_scores_are_summed_level_log_probabilities() -> None:
    model = make_model()
    table = token_table(CODES, model.config)
    tokens = torch.from_numpy(history_tokens(HISTORIES, table))
    result = beam_search(model, tokens, PrefixTrie.from_codes(CODES), beam_width=12, k=12)
    with torch.no_grad():
        memory, keep = model.encode(tokens)
        cross = model.cross_keys_values(memory)
        for rank in range(12):
            codes = torch.from_numpy(CODES[result.items[:, rank] - 1])
            hidden = model.decode(cross, keep, codes)
            logp = sum(
                torch.log_softmax(model.level_logits(hidden[:, lvl], lvl), -1).gather(1, codes[:, lvl : lvl + 1])[:, 0]
                for lvl in range(model.config.levels)
            )
            np.testing.assert_allclose(result.scores[:, rank], logp.numpy(), atol=1e-4)
    assert np.all(np.diff(result.scores, axis=1) <= 0)


def test_distillation_loss_pulls_heads_and_backpropagates() -> None:
    model = make_model("token", semantic_dim=12, collaborative_dim=8).train()
    rng = np.random.default_rng(1)
    semantic = torch.from_numpy(rng.normal(size=(121, 12)).astype(np.float32))
    collaborative = torch.from_numpy(rng.normal(size=(121, 8)).astype(np.float32))
    targets = DistillationTargets(semantic, collaborative, temperature=0.1)
    history = torch.from_numpy(HISTORIES)
    target = torch.tensor([11, 21, 31])
    codes = torch.from_numpy(np.vstack([np.zeros((1, 4), np.int64), CODES]))
    memory, keep = model.encode(torch.from_numpy(token_table(CODES, model.config))[history].flatten(1))
    hidden = model.decode(model.cross_keys_values(memory), keep, codes[target])
    parts = model.distillation_loss(memory, hidden, history, target, targets)
    assert set(parts) == {f"{s}_{k}" for s in ("decoder", "encoder") for k in ("semantic", "collaborative")}
    total = torch.stack(list(parts.values())).sum() + model.code_loss(hidden, codes[target])
    total.backward()
    assert all(torch.isfinite(v) for v in parts.values())
    assert model.distill_heads["encoder_semantic"].weight.grad is not None
    assert model.token_embedding.weight.grad.abs().sum() > 0  # type: ignore[union-attr]


def test_info_nce_ignores_duplicate_items_as_negatives() -> None:
    keys = torch.eye(3)
    queries = torch.eye(3)[[0, 0, 1]]  # rows 0 and 1 are the same item
    ids = torch.tensor([7, 7, 8])
    perfect = info_nce(queries, keys[[0, 0, 1]], 0.1, ids)
    assert perfect < 1e-3  # the duplicate is not counted as a wrong answer
    assert info_nce(queries, keys[[1, 2, 0]], 0.1, torch.tensor([1, 2, 3])) > 1.0
