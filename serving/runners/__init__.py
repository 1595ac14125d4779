"""The one registry from rollout kind to runner: the artifact reader, the model registry, the batch jobs and both
services derive what they need from it (see README, "Extending arcast").

A runner module defines its rollout's manifest dataclass and a runner class satisfying ``Runner``; listing the
class here is all that serves the new kind.
"""

from __future__ import annotations

from collections.abc import Sequence

from serving.artifact import Artifact
from serving.runners.base import Runner
from serving.runners.constrained_beam import ConstrainedBeamModel
from serving.runners.item_scores import ItemScoresModel
from serving.runners.kv_cache import KVCacheModel
from serving.runners.window_shift import WindowShiftModel

RUNNERS: dict[str, type[Runner]] = {
    runner.rollout_kind: runner for runner in (WindowShiftModel, KVCacheModel, ConstrainedBeamModel, ItemScoresModel)
}


def load_runner(
    artifact: Artifact, providers: Sequence[str] | None = None, intra_op_threads: int | None = None
) -> Runner:
    """The runner of the artifact's rollout kind (the manifest's kind was checked when the artifact was read)."""
    return RUNNERS[artifact.manifest.rollout.kind].load(artifact, providers, intra_op_threads)
