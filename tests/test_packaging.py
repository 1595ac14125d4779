"""A serving host's install: the base package alone, in a fresh virtualenv, serves a model over gRPC without torch.

pip installs from a copy of the project's sources (a normal, non-editable install, held to constraints.txt as
`make` is), reusing pip's cache that `make` filled, so no wheel is downloaded twice. The server runs from a
folder outside the repository, so what answers is the installed package, not the checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement

from serving.client import ArcastClient
from tests.scripts import load_script

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "arcast_core", "forecasting", "recsys", "serving")
HEAVY = ("torch", "transformers", "sentence_transformers", "optuna", "sklearn", "ray")
MODEL = "etth1-arnet"


def _env() -> dict[str, str]:
    # nothing of the test's own environment may leak into the fresh one (the checkout on PYTHONPATH, this venv)
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


@pytest.fixture(scope="module")
def serving_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serving-install")
    src = root / "src"  # a copy, so that the build's egg-info and build/ never land in the checkout
    for name in SOURCES:
        path = REPO_ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif path.is_file():
            src.mkdir(exist_ok=True)
            shutil.copy2(path, src / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # --no-compile: the server imports a small part of what is installed (~6 s less than compiling it all)
    install = [str(python), "-m", "pip", "install", "--quiet", "--no-compile", "-c", str(REPO_ROOT / "constraints.txt")]
    subprocess.run([*install, str(src)], check=True, timeout=600, env=_env(), cwd=root)
    return python


@pytest.mark.slow
def test_base_install_has_no_torch_and_serves(serving_venv: Path, model_store: Path, tmp_path: Path) -> None:
    probe = (
        "import importlib.util, serving;"
        f"print(serving.__file__); print([m for m in {HEAVY!r} if importlib.util.find_spec(m) is not None])"
    )
    out = subprocess.run(
        [str(serving_venv), "-c", probe], cwd=tmp_path, env=_env(), capture_output=True, text=True, check=True
    )
    location, present = out.stdout.splitlines()
    assert Path(location).is_relative_to(serving_venv.parents[1]), location  # the installed copy, not the checkout
    assert present == "[]"
    assert subprocess.run([str(serving_venv), "-c", "import torch"], cwd=tmp_path, capture_output=True).returncode

    serve = [str(serving_venv), "-m", "serving", "serve", "--store", str(model_store), "--port", "0"]
    proc = subprocess.Popen(
        [*serve, "--log-format", "text"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on"), line + proc.stderr.read()
        history = (np.sin(np.arange(200) / 24 * 2 * np.pi) + 0.01 * np.arange(200)).astype(np.float64)
        with ArcastClient(line.split()[-1]) as client:
            assert [m.name for m in client.list_models()] == [MODEL]
            result = client.forecast(MODEL, [history], 12)
        assert result.version == "1" and np.isfinite(np.asarray(result.forecasts[0].values)).all()
        assert len(result.forecasts[0].values) == 12
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
        assert time.monotonic() - started < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def test_constraints_pin_every_dependency() -> None:
    """A dependency added to pyproject.toml without `make constraints` would install unpinned: caught here."""
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        wanted |= {_name(r) for r in extra}
    lines = [ln for ln in (REPO_ROOT / "constraints.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    pins = {_name(ln): Requirement(ln) for ln in lines}
    assert wanted - {"arcast"} <= set(pins), sorted(wanted - {"arcast"} - set(pins))
    assert all(str(r.specifier).startswith("==") for r in pins.values())
    assert str(pins["torch"].specifier) == "==2.13.0"  # the Makefile's pin, without this machine's +cpu label


def test_freeze_rewrites_torch_label_and_pins_onnxruntime_for_every_platform() -> None:
    module = load_script("scripts/freeze_constraints.py", "freeze_constraints")
    frozen = ["torch==2.13.0+cpu", "onnxruntime-gpu==1.31.1", "numpy==2.4.6", "arcast @ file:///somewhere"]
    assert module.constraint_lines(frozen) == [
        "torch==2.13.0",
        "onnxruntime-gpu==1.31.1 ; platform_system == 'Linux' and platform_machine == 'x86_64'",
        "onnxruntime==1.31.1 ; platform_system != 'Linux' or platform_machine != 'x86_64'",
        "numpy==2.4.6",
    ]
