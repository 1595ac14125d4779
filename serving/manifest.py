"""The typed manifest: the common envelope every artifact carries, and its rollout's own dataclass.

``parse_manifest`` turns the JSON of ``manifest.json`` (format version 1, unchanged on disk) into a ``Manifest`` once,
when an artifact is read: a missing field, a field of the wrong type, an unknown format version, model kind or
rollout kind is an ``ArtifactError`` naming the file and the field. Each rollout kind's dataclass lives beside its
runner (``serving/runners/``) and is found through the runner registry, so a new kind declares its fields once.
Dataclasses are read field by field from their type hints (``parse_fields``): str, int, float, bool, Any, optionals,
``tuple[X, ...]``, ``dict[str, X]`` and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, TypeVar

FORMAT_VERSION = 1
MODEL_KINDS = (
    "arnet",
    "informer",
    "autotimes",
    "naive",
    "seasonal_naive",
    "linear",
    "prorec",
    "sasrec",
    "transitions",
)
REEXPORT = "re-export the model with this version of arcast (forecasting/recsys `export`)"
T = TypeVar("T")


class ArtifactError(ValueError):
    """An artifact that is missing, malformed, or does not match its checksums."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of the artifact: its file, opset and named inputs and outputs."""

    file: str
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Normalization:
    """The training data's per-channel scaler: raw = scaled * std + mean (``applied``: in the graph or the runner)."""

    kind: str
    applied: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class DataSpec:
    """The data a model was trained on: its fingerprint and what rebuilds it (forecasting: ``config``; the
    recommender: ``dataset`` and ``slice``)."""

    fingerprint: str | None
    config: dict[str, Any] | None = None
    dataset: str | None = None
    slice: dict[str, Any] | None = None


@dataclass(frozen=True)
class RolloutSpec:
    """A rollout kind's facts (``manifest.json``'s ``rollout`` object); each runner module subclasses it."""

    kind: str
    # Top-level manifest keys this kind also reads into its dataclass (kept where format version 1 put them).
    top_level: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def parse(cls, raw: dict[str, Any], where: str) -> Self:
        rollout = raw["rollout"]
        if not isinstance(rollout, dict):
            raise ArtifactError(f"{where}: field 'rollout' is not an object")
        merged = {**rollout, **{key: raw[key] for key in cls.top_level if key in raw}}
        return parse_fields(cls, merged, where, "rollout", {key: key for key in cls.top_level})


@dataclass(frozen=True)
class Manifest:
    """The common envelope, typed; ``facts`` keeps the model-specific entries (configs, training record) as written."""

    format_version: int
    name: str
    version: str
    model_kind: str
    created_at: str
    rollout: RolloutSpec
    graphs: dict[str, GraphSpec]
    files: dict[str, FileEntry]
    data: DataSpec
    metrics: dict[str, Any]
    versions: dict[str, str]
    parity: dict[str, Any]
    channels: tuple[str, ...] = ()
    freq: str | None = None
    target: str | None = None
    normalization: Normalization | None = None
    parity_details: dict[str, Any] | None = None
    facts: dict[str, Any] = field(default_factory=dict)


def rollout_kinds() -> dict[str, type[RolloutSpec]]:
    """Rollout kind -> its dataclass, from the runner registry (imported here: runners import this module)."""
    from serving.runners import RUNNERS

    return {kind: runner.rollout_spec for kind, runner in RUNNERS.items()}


def check_kinds(model_kind: object, rollout_kind: object, where: str) -> type[RolloutSpec]:
    """The dataclass of ``rollout_kind``; ArtifactError when the model or rollout kind is not one arcast knows."""
    if model_kind not in MODEL_KINDS:
        raise ArtifactError(f"{where}: unknown model_kind {model_kind!r} (known: {', '.join(MODEL_KINDS)})")
    kinds = rollout_kinds()
    if rollout_kind not in kinds:
        raise ArtifactError(f"{where}: unknown rollout kind {rollout_kind!r} (known: {', '.join(kinds)})")
    return kinds[str(rollout_kind)]


def parse_manifest(raw: object, where: str) -> Manifest:
    """Validate and type a manifest's JSON; ``where`` (the file) starts every error message."""
    if not isinstance(raw, dict):
        raise ArtifactError(f"{where}: manifest is not a JSON object")
    if "format_version" not in raw:
        raise ArtifactError(f"{where}: missing field 'format_version'")
    if raw["format_version"] != FORMAT_VERSION:
        raise ArtifactError(
            f"{where}: format_version {raw['format_version']} is not supported (want {FORMAT_VERSION}): {REEXPORT}"
        )
    for key in ("model_kind", "rollout"):
        if key not in raw:
            raise ArtifactError(f"{where}: missing field {key!r}")
    rollout = raw["rollout"]
    spec = check_kinds(raw["model_kind"], rollout.get("kind") if isinstance(rollout, dict) else None, where)
    envelope = {f.name for f in dataclasses.fields(Manifest)}
    facts = {k: v for k, v in raw.items() if k not in envelope and k not in spec.top_level}
    manifest = parse_fields(Manifest, {**raw, "facts": facts}, where, "")  # rollout read as its base class here,
    return dataclasses.replace(manifest, rollout=spec.parse(raw, where))  # then as its kind's dataclass


def parse_fields(cls: type[T], raw: object, where: str, path: str, field_paths: dict[str, str] | None = None) -> T:
    """Build dataclass ``cls`` from a JSON object, checking each field against its type hint.

    ``field_paths``: how a field is named in messages when not ``path.field`` (a top-level key read into a rollout).
    """
    if not isinstance(raw, dict):
        raise ArtifactError(f"{where}: field {path!r} is not an object")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = (field_paths or {}).get(f.name) or (f"{path}.{f.name}" if path else f.name)
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ArtifactError(f"{where}: missing field {name!r}")
            continue
        values[f.name] = _convert(hints[f.name], raw[f.name], where, name)
    return cls(**values)


def _convert(hint: Any, value: Any, where: str, path: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # an optional field: the inner type's own message
            return _convert(options[0], value, where, path)
        for arg in options:
            try:
                return _convert(arg, value, where, path)
            except ArtifactError:
                continue
        raise ArtifactError(f"{where}: field {path!r} is {_show(value)}, not {_describe(hint)}")
    if dataclasses.is_dataclass(hint):
        return parse_fields(hint, value, where, path)  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(value, list):
            raise ArtifactError(f"{where}: field {path!r} is not a list")
        return tuple(_convert(args[0], item, where, f"{path}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ArtifactError(f"{where}: field {path!r} is not an object")
        return {key: _convert(args[1], item, where, f"{path}.{key}") for key, item in value.items()}
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ArtifactError(f"{where}: field {path!r} is {_show(value)}, not {_describe(hint)}")


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint)
