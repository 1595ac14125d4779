"""bench/recsys.py's kept semantic side: a run reads back the very bytes its stage 1 and semantic IDs were made from."""

from __future__ import annotations

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
