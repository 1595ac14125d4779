from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListModelsRequest(_message.Message):
    __slots__ = ("name_prefix",)
    NAME_PREFIX_FIELD_NUMBER: _ClassVar[int]
    name_prefix: str
    def __init__(self, name_prefix: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "model_kind", "rollout_kind", "context_length", "step", "max_horizon", "channels", "freq", "created_at", "metrics", "providers", "latest", "intervals")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_KIND_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_KIND_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    MAX_HORIZON_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    FREQ_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    INTERVALS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    model_kind: str
    rollout_kind: str
    context_length: int
    step: int
    max_horizon: int
    channels: _containers.RepeatedScalarFieldContainer[str]
    freq: str
    created_at: str
    metrics: _containers.ScalarMap[str, float]
    providers: _containers.RepeatedScalarFieldContainer[str]
    latest: bool
    intervals: IntervalSupport
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., model_kind: _Optional[str] = ..., rollout_kind: _Optional[str] = ..., context_length: _Optional[int] = ..., step: _Optional[int] = ..., max_horizon: _Optional[int] = ..., channels: _Optional[_Iterable[str]] = ..., freq: _Optional[str] = ..., created_at: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., providers: _Optional[_Iterable[str]] = ..., latest: _Optional[bool] = ..., intervals: _Optional[_Union[IntervalSupport, _Mapping]] = ...) -> None: ...

class IntervalSupport(_message.Message):
    __slots__ = ("methods", "max_level", "max_horizon", "calibration_windows", "quantile_levels", "quantile_max_horizon")
    METHODS_FIELD_NUMBER: _ClassVar[int]
    MAX_LEVEL_FIELD_NUMBER: _ClassVar[int]
    MAX_HORIZON_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    QUANTILE_LEVELS_FIELD_NUMBER: _ClassVar[int]
    QUANTILE_MAX_HORIZON_FIELD_NUMBER: _ClassVar[int]
    methods: _containers.RepeatedScalarFieldContainer[str]
    max_level: float
    max_horizon: int
    calibration_windows: int
    quantile_levels: _containers.RepeatedScalarFieldContainer[float]
    quantile_max_horizon: int
    def __init__(self, methods: _Optional[_Iterable[str]] = ..., max_level: _Optional[float] = ..., max_horizon: _Optional[int] = ..., calibration_windows: _Optional[int] = ..., quantile_levels: _Optional[_Iterable[float]] = ..., quantile_max_horizon: _Optional[int] = ...) -> None: ...
