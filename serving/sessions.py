"""onnxruntime sessions: which execution providers load on this machine, and one session per graph (no torch)."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path

import onnxruntime as ort

PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
# Where export-time parity checks run: whether a graph equals its torch model is a property of the graph, checked
# where float32 is exact; what a GPU provider does to the numbers is bench/gpu.py's parity (its own tolerance).
REFERENCE_PROVIDERS = ("CPUExecutionProvider",)
# The CUDA provider multiplies float32 matrices in TF32 by default. On an H200 the export check saw the same graph
# answer 1e-3 to 3e-3 away from torch at batch 32 (4e-6 at batch 1), which TF32's 10-bit mantissa explains: a
# served forecast should not depend on which replica answered it, so sessions ask for full float32 (not yet seen
# on a GPU).
PROVIDER_OPTIONS: dict[str, dict[str, str]] = {"CUDAExecutionProvider": {"use_tf32": "0"}}
# Why each listed provider that did not load was refused (``usable_providers``): what a GPU machine's operator
# needs to see when CUDA is absent from the list (a missing library, a version mismatch).
PROBE_FAILURES: dict[str, str] = {}
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # onnxruntime colours its log lines
LIBRARY_FAILURE = re.compile(r"Failed to load library (\S+) with error: (.*)")
REQUIREMENT = re.compile(r"Require [^.]*\.\*[^.]*\.\*")  # e.g. "Require cuDNN 9.* and CUDA 13.*"


@cache
def usable_providers() -> tuple[str, ...]:
    """Providers that actually load here, best first.

    onnxruntime-gpu lists CUDA and TensorRT even on machines where their libraries cannot load, and then
    silently falls back, so each is tried on a one-node graph before it is trusted.
    """
    listed = set(ort.get_available_providers())
    usable = []
    for provider in PROVIDER_PREFERENCE:
        if provider not in listed:
            continue
        if provider == "CPUExecutionProvider" or _provider_loads(provider):
            usable.append(provider)
    return tuple(usable)


def _provider_loads(provider: str) -> bool:
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    with _captured_output() as printed:
        try:
            session = ort.InferenceSession(model.SerializeToString(), providers=[provider])
            loaded = provider in session.get_providers()
            failure = "" if loaded else f"the session fell back to {session.get_providers()}"
        except Exception as error:  # any failure means the provider is not usable
            loaded, failure = False, f"{type(error).__name__}: {error}"
    if not loaded:
        # onnxruntime's own log says which library is missing: the operator's first question
        PROBE_FAILURES[provider] = "; ".join([failure, *_causes(printed)])[:1000]
    return loaded


def _causes(printed: list[str]) -> list[str]:
    """The lines of onnxruntime's log that say why a provider did not load, each cut to its point."""
    causes = []
    for line in (ANSI.sub("", text) for text in printed):
        if found := LIBRARY_FAILURE.search(line):
            causes.append(f"cannot load {Path(found[1]).name}: {found[2].strip()}")
        elif found := REQUIREMENT.search(line):
            causes.append(found[0])
    return causes


@contextlib.contextmanager
def _captured_output() -> Iterator[list[str]]:
    """What onnxruntime prints while a provider is probed, kept instead of shown: its C++ log (file descriptor 2)
    and its Python fallback's "EP Error" (stdout) are expected noise on a machine without the GPU libraries. The
    probe runs once, when the first session is made (at start, before the server's threads): the process's
    stderr is redirected meanwhile."""
    printed: list[str] = []
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as sink, contextlib.redirect_stdout(sink):
        sys.stderr.flush()
        os.dup2(sink.fileno(), 2)
        try:
            yield printed
        finally:
            sink.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            printed.extend(sink.read().splitlines())


def default_threads() -> int:
    """Intra-op threads: the cores this process may use (affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def create_session(
    path: Path, providers: Sequence[str] | None = None, intra_op_threads: int | None = None
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads or default_threads()
    options.inter_op_num_threads = 1  # and the default sequential execution: one graph node at a time
    # Idle intra-op threads sleep instead of spinning: a server shares its cores with its gRPC threads and sibling
    # workers, and spinning took their CPU (bench/results/serve_forecast.json, "spinning"); no effect on results.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    chosen = list(providers) if providers else list(usable_providers())
    configured = [(p, PROVIDER_OPTIONS[p]) if p in PROVIDER_OPTIONS else p for p in chosen]
    return ort.InferenceSession(str(path), options, providers=configured)
