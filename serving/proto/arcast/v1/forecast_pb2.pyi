import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IntervalMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPLIT_CONFORMAL: _ClassVar[IntervalMethod]
    ADAPTIVE: _ClassVar[IntervalMethod]
    QUANTILE: _ClassVar[IntervalMethod]
SPLIT_CONFORMAL: IntervalMethod
ADAPTIVE: IntervalMethod
QUANTILE: IntervalMethod

class ForecastRequest(_message.Message):
    __slots__ = ("model", "version", "horizon", "series", "levels", "interval_method", "adaptive_origins", "adaptive_gamma")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HORIZON_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_METHOD_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_ORIGINS_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_GAMMA_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    horizon: int
    series: _containers.RepeatedCompositeFieldContainer[Series]
    levels: _containers.RepeatedScalarFieldContainer[float]
    interval_method: IntervalMethod
    adaptive_origins: int
    adaptive_gamma: float
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., horizon: _Optional[int] = ..., series: _Optional[_Iterable[_Union[Series, _Mapping]]] = ..., levels: _Optional[_Iterable[float]] = ..., interval_method: _Optional[_Union[IntervalMethod, str]] = ..., adaptive_origins: _Optional[int] = ..., adaptive_gamma: _Optional[float] = ...) -> None: ...

class Series(_message.Message):
    __slots__ = ("id", "values", "timestamps")
    ID_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    id: str
    values: _containers.RepeatedScalarFieldContainer[float]
    timestamps: _containers.RepeatedCompositeFieldContainer[_timestamp_pb2.Timestamp]
    def __init__(self, id: _Optional[str] = ..., values: _Optional[_Iterable[float]] = ..., timestamps: _Optional[_Iterable[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]]] = ...) -> None: ...

class ForecastResponse(_message.Message):
    __slots__ = ("model", "version", "forecasts")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORECASTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    forecasts: _containers.RepeatedCompositeFieldContainer[SeriesForecast]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., forecasts: _Optional[_Iterable[_Union[SeriesForecast, _Mapping]]] = ...) -> None: ...

class SeriesForecast(_message.Message):
    __slots__ = ("id", "values", "timestamps", "intervals")
    ID_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    INTERVALS_FIELD_NUMBER: _ClassVar[int]
    id: str
    values: _containers.RepeatedScalarFieldContainer[float]
    timestamps: _containers.RepeatedCompositeFieldContainer[_timestamp_pb2.Timestamp]
    intervals: _containers.RepeatedCompositeFieldContainer[Interval]
    def __init__(self, id: _Optional[str] = ..., values: _Optional[_Iterable[float]] = ..., timestamps: _Optional[_Iterable[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]]] = ..., intervals: _Optional[_Iterable[_Union[Interval, _Mapping]]] = ...) -> None: ...

class Interval(_message.Message):
    __slots__ = ("level", "lower", "upper", "adapted_levels", "origins")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    ADAPTED_LEVELS_FIELD_NUMBER: _ClassVar[int]
    ORIGINS_FIELD_NUMBER: _ClassVar[int]
    level: float
    lower: _containers.RepeatedScalarFieldContainer[float]
    upper: _containers.RepeatedScalarFieldContainer[float]
    adapted_levels: _containers.RepeatedScalarFieldContainer[float]
    origins: int
    def __init__(self, level: _Optional[float] = ..., lower: _Optional[_Iterable[float]] = ..., upper: _Optional[_Iterable[float]] = ..., adapted_levels: _Optional[_Iterable[float]] = ..., origins: _Optional[int] = ...) -> None: ...
