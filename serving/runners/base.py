"""What every runner is: the ``Runner`` protocol the server, the batch jobs and the exporters' parity checks use."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, Self

import onnxruntime as ort

from serving.artifact import Artifact
from serving.batching import BatchKind
from serving.manifest import RolloutSpec

# What a runner answers: ForecastService calls forecasters, RecommendService recommenders.
Task = Literal["forecast", "recommend"]


class NonFiniteOutput(ArithmeticError):
    """A graph answered NaN or infinity: never served as a number."""


@dataclass(frozen=True)
class RunnerInfo:
    """What ListModels reports of a loaded runner (0 or empty where a fact does not apply to its kind)."""

    rollout_kind: str
    providers: tuple[str, ...]
    context_length: int = 0
    step: int = 0
    max_horizon: int = 0
    channels: tuple[str, ...] = ()
    freq: str = ""


class Runner(Protocol):
    """A loaded artifact of one rollout kind, run on onnxruntime."""

    rollout_kind: ClassVar[str]  # the manifest's rollout kind this runner serves (its registry key)
    rollout_spec: ClassVar[type[RolloutSpec]]  # that kind's manifest dataclass
    task: ClassVar[Task]
    artifact: Artifact

    @property
    def session(self) -> ort.InferenceSession:
        """The session whose providers are reported (a runner's sessions share them)."""
        ...

    @classmethod
    def load(
        cls, artifact: Artifact, providers: Sequence[str] | None = None, intra_op_threads: int | None = None
    ) -> Self: ...

    def describe(self) -> RunnerInfo: ...

    def batches(self, slots: AbstractContextManager[object] | None = None) -> BatchKind[Any, Any]:
        """How the dynamic batcher merges this runner's jobs; runs are chunked, each inside one of ``slots``."""
        ...

    def smoke_check(self) -> None:
        """One small run at load time; NonFiniteOutput when it answers NaN, so a broken graph is never served."""
        ...

    def check_reach(self, reach: int) -> None:
        """ValueError when a batch job's horizon (a recommender's k) is beyond what this model can answer."""
        ...
