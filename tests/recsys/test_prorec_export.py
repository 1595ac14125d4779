"""Export: the onnxruntime beam search over the artifact returns the torch beam search's top-10 for every user."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recsys.cli import main as cli_main
from recsys.generator import recommend
from recsys.prorec_training import (
    PRORecRun,
    evaluate_generator,
)
from recsys.smoke_run import SMOKE_SLICE
from recsys.split import LeaveOneOutSplit
from serving.artifact import Artifact, read_artifact
from serving.runners.constrained_beam import ConstrainedBeamModel, ConstrainedBeamRollout


def test_manifest_describes_graphs_tables_and_parity(beauty_slice_artifact: Artifact) -> None:
    again = read_artifact(beauty_slice_artifact.path)  # checksums and schema verified
    manifest = again.manifest
    assert manifest.model_kind == "prorec" and isinstance(manifest.rollout, ConstrainedBeamRollout)
    assert manifest.rollout.n_items == 500 and len(manifest.rollout.level_sizes) == 4
    decoder_inputs = manifest.graphs["decoder"].input_names
    assert decoder_inputs[:2] == ("tokens", "memory_mask") and "past_key_1" in decoder_inputs
    assert manifest.rollout.side_tables.titles is not None
    assert manifest.parity["all_items"]["identical_top_k"] + manifest.parity["all_items"]["tie_flips"] == 48
    assert manifest.data.slice == SMOKE_SLICE and manifest.data.fingerprint is not None
    assert len(manifest.data.fingerprint) == 64


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_onnxruntime_top10_equals_torch_for_every_user(
    beauty_slice_run: tuple[LeaveOneOutSplit, PRORecRun], beauty_slice_artifact: Artifact, exclude_seen: bool
) -> None:
    split, run = beauty_slice_run
    served = ConstrainedBeamModel.load(beauty_slice_artifact, intra_op_threads=1)
    histories = split.test.histories[:120]
    index = run.code_index()
    expected = recommend(
        run.model, histories, index.tokens, index.trie, k=10, beam_width=20, exclude_history=exclude_seen
    )
    raw = [split.item_map.to_raw(h[h != 0]).tolist() for h in histories]
    got = served.recommend(raw, k=10, beam_width=20, exclude_seen=exclude_seen)
    for user, (items, dense) in enumerate(zip(got, expected.items, strict=True)):
        assert [item for item, _ in items] == split.item_map.to_raw(dense).tolist(), user
        np.testing.assert_allclose([s for _, s in items], expected.scores[user], atol=1e-4)
        if exclude_seen:
            assert not {item for item, _ in items} & set(raw[user])


def test_recommend_api_rejects_bad_requests_and_honours_exclusions(beauty_slice_artifact: Artifact) -> None:
    served = ConstrainedBeamModel.load(beauty_slice_artifact, intra_op_threads=1)
    known = served.item_ids[1:6].tolist()
    first = served.recommend([known], k=5, exclude_seen=False)[0]
    banned = {first[0][0], first[1][0], 123456789}  # an unknown id in exclude is ignored
    again = served.recommend([known], k=5, exclude=[banned], exclude_seen=False)[0]
    assert not {item for item, _ in again} & banned and again[0] == first[2]
    assert len(served.recommend([known, known[:1]])[1]) == served.default_k
    with pytest.raises(ValueError, match=r"histories\[1\]\[0\]: unknown item id 999999999"):
        served.recommend([known, [999_999_999]])
    with pytest.raises(ValueError, match=r"histories\[0\]: empty"):
        served.recommend([[]])
    with pytest.raises(ValueError, match="k: 30"):
        served.recommend([known], k=30, beam_width=20)
    with pytest.raises(ValueError, match="exclude: 2 sets for 1"):
        served.recommend([known], exclude=[set(), set()])


def test_cli_evaluates_the_artifact_as_torch_does(
    beauty_slice_run: tuple[LeaveOneOutSplit, PRORecRun], beauty_slice_artifact: Artifact, tmp_path: Path
) -> None:
    split, run = beauty_slice_run
    store, name = beauty_slice_artifact.path.parents[1], beauty_slice_artifact.name
    argv = ["evaluate", "--store", str(store), "--name", name, "--split", "val", "--limit", "200"]
    assert cli_main([*argv, "--json", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["data_matches_training"] and report["users"] == 200 and report["engine"] == "onnxruntime"
    expected = evaluate_generator(run.model, run.code_index(), split.validation, 20, users=np.arange(200))
    assert report["metrics"] == pytest.approx(expected)
