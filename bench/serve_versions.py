"""Two versions of the forecast server side by side against the bare gRPC floor: what a change did to the cost of
one request, measured in one run on this shared machine (ratios, not absolute numbers).

The ``--before`` commit's ``serving`` package (``git archive``) and this checkout's are each served by
``python -m serving serve`` in a process of its own (each with its own ``PYTHONPATH``), beside
``bench/bare_server.py``, under the same h2load closed loop in alternating slices; the linear AR-Net of
``bench/serve_forecast.py`` one series per request. Both versions must answer byte for byte the same.

    .venv/bin/python bench/serve_versions.py --before e41c9fe        # -> bench/results/serve_versions.json
    .venv/bin/python bench/serve_versions.py --before e41c9fe --series 64 --steps 672 --out ...  # a larger request
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from serve_forecast import SCENARIOS, build_store  # bench/serve_forecast.py
from serving_load import (  # bench/serving_load.py
    FORECAST_METHOD,
    H2Load,
    raw_call,
    scrape,
    side_by_side,
    spawn_with_metrics,
    stage_costs,
    start_bare,
)

from arcast_core.files import atomic_write_text
from serving.client import ArcastClient

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = "linear_h24"


def export_tree(commit: str, into: Path) -> Path:
    """The ``serving`` and ``arcast_core`` packages as they were at ``commit``."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", commit, "serving", "arcast_core"], cwd=ROOT, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def start_version(tree: Path, store: Path) -> tuple[subprocess.Popen[str], str, list[str]]:
    """``serve`` as in bench/serve_forecast.py's ``on`` mode, running the code in ``tree``."""
    argv = [sys.executable, "-m", "serving", "serve", "--store", str(store), "--port", "0", "--metrics-port", "0"]
    argv += ["--log-level", "warning", "--max-batch", "256", "--max-wait-ms", "0", "--max-workers", "256"]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return spawn_with_metrics(argv, env=env, cwd=tree)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the commit to compare this checkout with")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=16.0, help="load per server, in --rounds slices")
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--series", type=int, default=1, help="series per request")
    parser.add_argument("--steps", type=int, default=200, help="history values per series")
    parser.add_argument("--out", default="bench/results/serve_versions.json")
    args = parser.parse_args()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "serving"], cwd=ROOT, capture_output=True, text=True)
    results: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_at_start": os.getloadavg(),
        "versions": {"before": args.before, "after": head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")},
        "setup": {
            "scenario": SCENARIO,
            "request": f"{args.series} series of {args.steps} values, horizon {SCENARIOS[SCENARIO]['horizon']}",
            "clients": args.clients,
            "load": f"h2load, {args.seconds} s per server in {args.rounds} alternating slices",
            "server": "serve --max-batch 256 --max-wait-ms 0 --max-workers 256 (batching on, default threads)",
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        build_store(store, {SCENARIO: SCENARIOS[SCENARIO]})
        trees = {"before": export_tree(args.before, Path(tmp) / "before"), "after": ROOT}
        servers = {version: start_version(tree, store) for version, tree in trees.items()}
        waves = [10 + 3 * np.sin(np.arange(args.steps) / 5.0 + i) for i in range(args.series)]
        request = ArcastClient.forecast_request(
            f"etth1-{SCENARIO}", waves, SCENARIOS[SCENARIO]["horizon"]
        ).SerializeToString()
        loader = H2Load(FORECAST_METHOD, request)
        floor = None
        try:
            answers = {
                version: raw_call(target, FORECAST_METHOD, request) for version, (_, target, _) in servers.items()
            }
            if answers["before"] != answers["after"]:
                raise SystemExit("the two versions answer differently")
            floor = start_bare(FORECAST_METHOD, {f"etth1-{SCENARIO}": answers["after"]}, Path(tmp))
            targets = {version: target for version, (_, target, _) in servers.items()} | {"floor": floor[1]}
            before = {version: scrape(endpoints) for version, (_, _, endpoints) in servers.items()}
            rows = side_by_side(
                lambda mode, target, secs, phase: loader.measure(target, args.clients, secs, phase),
                targets,
                args.seconds,
                args.rounds,
            )
            for version, (_, _, endpoints) in servers.items():
                rows[version]["floor_fraction"] = rows[version]["rps"] / rows["floor"]["rps"]
                rows[version]["stages_ms"] = stage_costs(before[version], scrape(endpoints), "forecast", "Forecast")
        finally:
            loader.close()
            for proc, *_ in (*servers.values(), *([floor] if floor else [])):
                proc.terminate()
                proc.wait(timeout=60)
    results["load"] = rows
    results["after_vs_before"] = rows["after"]["rps"] / rows["before"]["rps"]
    results["load_average_at_end"] = os.getloadavg()
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write_text(Path(args.out), json.dumps(results, indent=2))
    for version in ("before", "after", "floor"):
        row = rows[version]
        fraction = f", {row['floor_fraction']:.3f} of the floor" if "floor_fraction" in row else ""
        print(f"{version}: {row['rps']:.0f} req/s, p50 {row['p50_ms']:.3f} ms{fraction}")
    print(f"after / before: {results['after_vs_before']:.2f}x; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
