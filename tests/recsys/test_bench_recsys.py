"""bench/recsys.py's kept semantic side: a run reads back the very bytes its stage 1 and semantic IDs were made from."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests.scripts import load_script


@pytest.fixture(scope="module")
def bench_recsys() -> ModuleType:
    return load_script("bench/recsys.py", "bench_recsys")


def test_the_semantic_side_is_kept_and_read_back(bench_recsys: ModuleType, data_dir: Path, tmp_path: Path) -> None:
    """Another machine's SVD gives other float bits (seen: an H200 host rebuilt Beauty's semantic IDs for that), so
    the first computation is kept in the work folder and every later run reads it, bit for bit."""
    from recsys.data import load_dataset
    from recsys.split import leave_one_out

    args = bench_recsys.parse_args(
        ["--dataset", "beauty", "--text-fields", "attributes", "--work-dir", str(tmp_path), "--data-dir", str(data_dir)]
    )
    split = leave_one_out(load_dataset("beauty", data_dir).sequences)
    first = bench_recsys.semantic_side(args, None, split)
    kept = tmp_path / "semantic-attributes-seed0.npy"
    assert first is not None and kept.is_file() and np.array_equal(np.load(kept), first)
    np.save(kept, first * 2)  # a stand-in for another machine's bits: what is kept wins
    np.testing.assert_array_equal(bench_recsys.semantic_side(args, None, split), first * 2)
    np.save(kept, first[:10])  # kept for another item set: recomputed
    np.testing.assert_allclose(bench_recsys.semantic_side(args, None, split), first, rtol=0, atol=1e-6)


def test_each_dataset_is_compared_with_its_own_published_figures(bench_recsys: ModuleType) -> None:
    """Sports' and Toys' results files once carried Beauty's published TIGER (.0648) and Beauty's colleague SASRec."""
    tiger = {
        d: bench_recsys.published_figures(d)["published"]["TIGER (paper)"]["recall@10"]
        for d in ("beauty", "sports", "toys")
    }
    assert tiger == {"beauty": 0.0648, "sports": 0.0400, "toys": 0.0712}  # shared/ANCHORS.md
    assert "colleague_sasrec" in bench_recsys.published_figures("beauty")
    assert "colleague_sasrec" not in bench_recsys.published_figures("sports")


def test_collect_merges_a_runs_rows_but_not_its_header(bench_recsys: ModuleType, tmp_path: Path) -> None:
    """A background run writes its own file (--out in runs/); --collect brings its rows and machine facts into the
    dataset's results file and recsys.json, and keeps the dataset's own header (published figures)."""
    metrics = {k: 0.01 for k in ("recall@5", "ndcg@5", "recall@10", "ndcg@10", "recall@20", "ndcg@20")}
    run, out, index = tmp_path / "run.json", tmp_path / "recsys_sports.json", tmp_path / "recsys.json"
    beauty = bench_recsys.published_figures("beauty")  # what older code wrote into every dataset's file
    bench_recsys.merge(run, {"prorec (long)": {"test": metrics}}, {"dataset": "sports", **beauty, "machine_prorec": 1})
    sports = bench_recsys.published_figures("sports")
    bench_recsys.merge(out, {"popularity": {"test": metrics}}, {"dataset": "sports", **sports}, index=index)
    # the results file may hold a row the gathered rows have in another version: collecting leaves that alone
    gathered = json.loads(index.read_text())
    gathered["rows"][0]["recall@10"] = 0.5
    index.write_text(json.dumps(gathered))
    args = bench_recsys.parse_args(["--dataset", "sports", "--collect", str(run), "--out", str(out)])
    assert args.index is not None  # collecting always updates the gathered rows
    bench_recsys.collect(args.collect, "sports", out, index)
    merged = json.loads(out.read_text())
    assert list(merged["results"]) == ["popularity", "prorec (long)"] and merged["machine_prorec"] == 1
    assert merged["published"] == sports["published"] and "colleague_sasrec" not in merged
    after = {(r["dataset"], r["model"]): r["recall@10"] for r in json.loads(index.read_text())["rows"]}
    assert after == {("sports", "popularity"): 0.5, ("sports", "prorec (long)"): 0.01}
    with pytest.raises(SystemExit, match="'sports''s, not --dataset toys"):
        bench_recsys.collect([run], "toys", tmp_path / "recsys_toys.json", index)
