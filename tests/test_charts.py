"""bench/charts.py: the README's coverage, recommender and serving charts show what their rows hold, and the same
rows give the same file (the leaderboard's chart is checked in tests/test_leaderboard.py)."""

from __future__ import annotations

from pathlib import Path

from tests.scripts import load_script


def test_the_coverage_chart_draws_each_panel_and_repeats(tmp_path: Path) -> None:
    charts = load_script("bench/charts.py", "charts")
    rows = [
        {"model": model, "features": features, "horizon": horizon, "method": method, "level": level, "coverage": c}
        for model, features, c in (("naive", "S", 0.91), ("linear", "S", 0.88), ("linear", "M", 0.9))
        for horizon in (24, 48)
        for method in ("split_conformal", "adaptive")
        for level in (0.8, 0.9, 0.95)
    ]
    path = tmp_path / "intervals.svg"
    charts.coverage_chart(rows, ("naive", "seasonal_naive", "linear"), (0.8, 0.9, 0.95), (24, 48), path)
    svg = path.read_text()
    for title in ("ETTh1 M, horizon 24", "ETTh1 M, horizon 48", "ETTh1 S, horizon 24", "ETTh1 S, horizon 48"):
        assert title in svg
    assert "split conformal, 80%" in svg and "adaptive, 95%" in svg
    assert "seasonal_naive" not in svg  # a kind without rows gets no column
    first = path.read_bytes()
    charts.coverage_chart(rows, ("naive", "seasonal_naive", "linear"), (0.8, 0.9, 0.95), (24, 48), path)
    assert path.read_bytes() == first


def test_the_recommender_chart_shows_each_dataset_and_the_long_runs_curves(tmp_path: Path) -> None:
    bench_recsys = load_script("bench/recsys.py", "bench_recsys_charts")
    metrics = {"recall@5": 0.01, "ndcg@5": 0.01, "recall@10": 0.05, "ndcg@10": 0.02}
    history = [{"validation": {"recall@10": 0.04 + i / 100}} for i in range(4)]
    results = {
        "prorec (long)": {"test": metrics, "steps": 12_000, "history": history},  # 3,000 steps a round
        "collab (short)": {"test": metrics, "steps": 4_000, "history": history},  # too short for a curve
        "sasrec-ce": {"test": metrics, "steps": 20_000, "history": history},  # not a generator
    }
    bench_recsys.merge(tmp_path / "recsys_sports.json", results, {"dataset": "sports"}, index=tmp_path / "recsys.json")
    path = tmp_path / "recsys.svg"
    bench_recsys.draw_chart(tmp_path, path)
    svg = path.read_text()
    assert "Sports: test Recall@10" in svg and "Beauty" not in svg and "TIGER (paper) 0.0400" in svg
    assert "sports: prorec (long)" in svg and "sports: collab (short)" not in svg and "sports: sasrec-ce" not in svg
    first = path.read_bytes()
    bench_recsys.draw_chart(tmp_path, path)
    assert path.read_bytes() == first


def test_the_serving_chart_draws_every_server_and_the_floor_fraction(tmp_path: Path) -> None:
    charts = load_script("bench/charts.py", "charts_serving")
    load = {
        c: {"on": {"rps": 100.0 * int(c), "floor_fraction": 0.5}, "off": {"rps": 90.0}, "floor": {"rps": 200.0}}
        for c in ("1", "8", "64")
    }
    path = tmp_path / "serve.svg"
    charts.serving_chart({"linear, horizon 24": load}, "Forecast service", path)
    svg = path.read_text()
    assert "linear, horizon 24" in svg and "arcast, batching on" in svg and "bare gRPC floor" in svg
    assert "2 workers" not in svg  # a server without figures gets no bars
    assert svg.count(">0.50</text>") == 3  # arcast's fraction of the floor over each of its bars
    assert all(f">{label}</text>" in svg for label in ("1 client", "8 clients", "64 clients"))
