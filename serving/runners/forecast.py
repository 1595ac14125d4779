"""What the two forecasting runners share: the rollout facts, the load-time smoke check, and how jobs merge."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnxruntime as ort

from serving.artifact import Artifact
from serving.batching import BatchKind, Piece, run_in_chunks
from serving.manifest import RolloutSpec
from serving.runners.base import NonFiniteOutput, RunnerInfo, Task

FLOAT32_MAX = float(np.finfo(np.float32).max)  # the models compute in float32: larger inputs become inf
# Why a series gets no forecast when the model answers NaN or infinity (OUT_OF_RANGE online, the errors file in batch).
NON_FINITE_FORECAST = "the model's forecast is not finite (NaN or infinity); the history may be beyond what it handles"


@dataclass(frozen=True)
class ForecastRollout(RolloutSpec):
    """A forecaster's rollout: ``context_length`` values in, ``step`` values per block, at most ``max_horizon``."""

    context_length: int
    step: int
    max_horizon: int


@dataclass(frozen=True)
class ForecastJob:
    """One request's series: the unit the dynamic batcher merges."""

    context: np.ndarray  # (rows, L, C)
    horizon: int
    timestamps: np.ndarray | None  # (rows, L) for models with calendar features
    deadline: float | None = None  # time.monotonic() after which the rest of its work is dropped


class ForecastRunner:
    """The facts every forecasting runner reads from its manifest, its smoke check and its batching."""

    task: ClassVar[Task] = "forecast"
    artifact: Artifact
    session: ort.InferenceSession

    def forecast(self, context: np.ndarray, horizon: int, timestamps: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    @property
    def calendar(self) -> object | None:
        """What the model reads from the context's timestamps (None: values only, requests need no timestamps)."""
        raise NotImplementedError

    def smoke_timestamps(self) -> np.ndarray | None:
        """Timestamps of a plausible context (None when the model takes none)."""
        raise NotImplementedError

    @property
    def spec(self) -> ForecastRollout:
        rollout = self.artifact.manifest.rollout
        assert isinstance(rollout, ForecastRollout)  # the registry loads a runner for its own kind only
        return rollout

    @property
    def rows_per_run(self) -> int:
        raise NotImplementedError

    @property
    def context_length(self) -> int:
        return self.spec.context_length

    @property
    def step(self) -> int:
        return self.spec.step

    @property
    def max_horizon(self) -> int:
        return self.spec.max_horizon

    @property
    def channels(self) -> tuple[str, ...]:
        return self.artifact.manifest.channels

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    def describe(self) -> RunnerInfo:
        return RunnerInfo(
            rollout_kind=self.spec.kind,
            providers=tuple(self.session.get_providers()),
            context_length=self.context_length,
            step=self.step,
            max_horizon=self.max_horizon,
            channels=self.channels,
            freq=self.artifact.manifest.freq or "",
        )

    def check_reach(self, reach: int) -> None:
        if not 0 < reach <= self.max_horizon:
            raise ValueError(f"horizon: {reach} is outside 1..{self.max_horizon}")

    def smoke_check(self) -> None:
        """Forecast one plausible series (the training mean plus a wave of one standard deviation) two blocks
        ahead; raise NonFiniteOutput when the answer is not finite, so that a broken graph is never served."""
        norm = self.artifact.manifest.normalization
        mean = np.asarray(norm.mean if norm else np.zeros(self.n_channels), np.float32)
        std = np.asarray(norm.std if norm else np.ones(self.n_channels), np.float32)
        steps = np.arange(self.context_length, dtype=np.float32)[:, None]
        context = (mean + std * np.sin(2 * np.pi * steps / 24))[None]
        out = self.forecast(context, min(self.max_horizon, 2 * self.step), self.smoke_timestamps())
        if not np.isfinite(out).all():
            raise NonFiniteOutput(f"{self.artifact.path}: the smoke forecast is not finite (NaN or infinity)")

    def batches(self, slots: AbstractContextManager[object] | None = None) -> BatchKind[ForecastJob, np.ndarray]:
        """How the dynamic batcher merges forecast requests: rows stacked, one rollout at the longest horizon.

        Rows are independent and a shorter horizon is a prefix of a longer rollout, so merging is exact. Long
        batches run in chunks of rows (memory), each inside one of the server's ``slots`` (concurrent runs), with
        deadlines checked between chunks.
        """
        chunk_rows = self.rows_per_run
        slots = slots or nullcontext()

        def rows_of(pieces: list[Piece[ForecastJob]], field: str) -> np.ndarray:
            parts = [getattr(p.job, field)[p.rows] for p in pieces]
            return parts[0] if len(parts) == 1 else np.concatenate(parts)

        def run_chunk(pieces: list[Piece[ForecastJob]]) -> list[np.ndarray]:
            context = rows_of(pieces, "context")
            stamps = None if pieces[0].job.timestamps is None else rows_of(pieces, "timestamps")
            with slots:
                out = self.forecast(context, max(p.job.horizon for p in pieces), stamps)
            parts, start = [], 0
            for p in pieces:
                rows = p.rows.stop - p.rows.start
                parts.append(out[start : start + rows, : p.job.horizon])
                start += rows
            return parts

        def run(jobs: list[ForecastJob]) -> list[np.ndarray | BaseException]:
            if len(jobs) == 1 and len(jobs[0].context) <= chunk_rows and not _expired(jobs[0]):
                job = jobs[0]  # a lone request (the inline path): one run, nothing to split or join
                with slots:
                    return [self.forecast(job.context, job.horizon, job.timestamps)]
            return run_in_chunks(
                jobs, lambda job: len(job.context), chunk_rows, lambda job: job.deadline, run_chunk, _join_rows
            )

        return BatchKind(run, rows=lambda job: len(job.context), key=lambda job: job.timestamps is None)


def _expired(job: ForecastJob) -> bool:
    return job.deadline is not None and time.monotonic() > job.deadline


def _join_rows(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
