"""Serving never loads torch, transformers or the domain packages: every module of it, imported in a fresh interpreter.

The package is walked, so a module added later is covered without a change here. A serving host installs no torch
(tests/test_packaging.py), and one stray import would fail there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("torch", "transformers", "sentence_transformers", "forecasting", "recsys")

CODE = f"""
import importlib, json, pkgutil, sys
import serving
# __main__ runs the CLI when imported; it imports serving.cli, which the walk imports anyway
names = sorted(m.name for m in pkgutil.walk_packages(serving.__path__, "serving."))
names = [n for n in names if not n.endswith(".__main__")]
for name in names:
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {FORBIDDEN!r})
print(json.dumps({{"modules": names, "forbidden": loaded}}))
"""


def test_every_serving_module_imports_without_torch() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CODE], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=300
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    # the walk found the package, its subpackages and the optional Ray job (each imported, not just listed)
    assert {
        "serving.server",
        "serving.runners.window_shift",
        "serving.ray_batch",
        "serving.proto.arcast.v1.forecast_pb2",
    } <= set(report["modules"])
    assert report["forbidden"] == []
