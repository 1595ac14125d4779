"""The Forecast messages as the server and the Python client read and write them: values as raw bytes.

A packed ``repeated double`` on the wire is its tag, a length and the IEEE 754 doubles themselves, which is exactly
what a ``bytes`` field of the same number carries. The "wire twins" below are the public messages of
``protos/arcast/v1/forecast.proto`` with the per-value fields (``RAW_FIELDS``) declared ``repeated bytes``, so numpy
reads and writes each of them in one call (``np.frombuffer``, ``tobytes``) instead of one Python float per value,
and the bytes on the wire stay the same (tests/serving/test_wire.py). They are built at import from the public
descriptors, so they cannot drift from the proto, and nothing outside this process sees them: reflection, other
clients and the published API keep the public messages. The server writes its answer's bytes itself
(``forecast_response``), the same bytes the twin would.

Two encodings that the public parser accepts and a ``bytes`` field does not read alike are handled here: a packed
field split into several chunks (each chunk is one ``bytes`` entry; ``doubles`` joins them) and doubles written
unpacked, one tagged value each (they land in the twin's unknown fields; the message is then read by the public
parser and re-encoded packed).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.unknown_fields import UnknownFieldSet

from serving.proto.arcast.v1 import forecast_pb2

# Per message of forecast.proto: its repeated double fields that carry one value per step (read and written as
# bytes). Every other repeated double field is listed in KEPT_DOUBLES: a new one must be put in one or the other
# (a test checks), since a field missing from both would silently keep the slow path.
RAW_FIELDS: dict[str, tuple[str, ...]] = {
    "Series": ("values",),
    "SeriesForecast": ("values",),
    "Interval": ("lower", "upper", "adapted_levels"),
}
KEPT_DOUBLES: dict[str, tuple[str, ...]] = {"ForecastRequest": ("levels",)}  # a few numbers, checked one by one
FORECAST_METHOD = "/arcast.v1.ForecastService/Forecast"
DOUBLE = np.dtype("<f8")  # protobuf doubles are little-endian on every platform


def _twin_file() -> Any:
    """forecast.proto with RAW_FIELDS as ``repeated bytes``, under the package ``<package>.wire``, no services."""
    proto = descriptor_pb2.FileDescriptorProto()
    forecast_pb2.DESCRIPTOR.CopyToProto(proto)
    public = f".{proto.package}."
    proto.name = proto.name.replace(".proto", "_wire.proto")
    proto.package = f"{proto.package}.wire"
    del proto.service[:]
    for message in proto.message_type:
        for field in message.field:
            if field.name in RAW_FIELDS.get(message.name, ()):
                field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
            if field.type_name.startswith(public):  # its own messages and enums: the twins
                field.type_name = f".{proto.package}.{field.type_name[len(public) :]}"
    # The default pool, so that google.protobuf.Timestamp is the class every other module uses.
    return descriptor_pool.Default().AddSerializedFile(proto.SerializeToString())


_FILE = _twin_file()
ForecastRequest: Any = message_factory.GetMessageClass(_FILE.message_types_by_name["ForecastRequest"])
ForecastResponse: Any = message_factory.GetMessageClass(_FILE.message_types_by_name["ForecastResponse"])
SeriesForecast: Any = message_factory.GetMessageClass(_FILE.message_types_by_name["SeriesForecast"])
# What the twins' instances are, for type hints (dynamic classes have no stubs): the public messages' fields, with
# RAW_FIELDS as lists of bytes.
Request = Series = Any


def doubles(chunks: Sequence[bytes], field: str) -> np.ndarray:
    """A raw field's values (read-only float64 array); ValueError naming ``field`` when its bytes are not whole
    doubles (a packed field of another length is malformed: the public parser refuses the whole message)."""
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if len(data) % DOUBLE.itemsize:
        raise ValueError(f"{field}: {len(data)} bytes are not a whole number of 8-byte doubles (malformed message)")
    return np.frombuffer(data, DOUBLE)


def packed(values: np.ndarray) -> list[bytes]:
    """``values`` as a raw field's entries: the packed encoding's payload; none for no values (proto3 writes no
    empty packed field, so the bytes match the public message's)."""
    if values.size == 0:
        return []
    return [np.ascontiguousarray(values, DOUBLE).tobytes()]


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(message: Any, name: str, wire_type: int) -> bytes:
    """A field's key from the public descriptor (its number cannot drift from the proto)."""
    return _varint(message.DESCRIPTOR.fields_by_name[name].number << 3 | wire_type)


_MODEL, _VERSION, _FORECASTS = (_tag(forecast_pb2.ForecastResponse, n, 2) for n in ("model", "version", "forecasts"))
_ID, _VALUES, _INTERVALS = (_tag(forecast_pb2.SeriesForecast, n, 2) for n in ("id", "values", "intervals"))
_LEVEL, _ORIGINS = _tag(forecast_pb2.Interval, "level", 1), _tag(forecast_pb2.Interval, "origins", 0)
_LOWER, _UPPER, _ADAPTED = (_tag(forecast_pb2.Interval, name, 2) for name in ("lower", "upper", "adapted_levels"))


@dataclass(frozen=True)
class IntervalLayout:
    """One series' ``SeriesForecast.intervals`` encoded with every byte but the values in place: an Interval per
    level (its level, then ``bands`` runs of ``values`` doubles: lower, upper and, adaptive, adapted_levels; then the
    origins), the same bytes as the messages added one by one (tests/serving/test_wire.py). Every Interval has the
    same length, so the values of all series, levels and bands sit at a regular stride: ``buffer`` gives them as one
    strided array that numpy fills in a call (a split-conformal request's bands cost about what its forecast's do)."""

    template: bytes
    offset: int  # of the first value
    level_stride: int  # bytes from one Interval to the next
    band_stride: int  # bytes from one run of values to the next within an Interval
    shape: tuple[int, int, int]  # (levels, bands, values)

    def buffer(self, series: int) -> tuple[list[memoryview], np.ndarray]:
        """``series`` copies of the template (each series' bytes, for ``MergeFromString``) and the float64 view
        of their values, (series, levels, bands, values), to write the bounds into."""
        size = len(self.template)
        data = bytearray(self.template * series)
        strides = (size, self.level_stride, self.band_stride, DOUBLE.itemsize)
        values = np.ndarray((series, *self.shape), DOUBLE, data, self.offset, strides)
        whole = memoryview(data)
        if series == 1:  # the usual request
            return [whole], values
        return [whole[i * size : (i + 1) * size] for i in range(series)], values


# Layouts up to this size are kept (the usual request's is about 1 kB): the cache stays within 256 of them, whatever
# levels, horizons and origins callers send; a larger one is built per request, next to the work its values cost.
CACHED_LAYOUT_BYTES = 64 * 1024


def interval_layout(levels: tuple[float, ...], values: int, adapted: bool = False, origins: int = 0) -> IntervalLayout:
    """The layout of ``levels`` (each in (0, 1]) with bands of ``values`` doubles, adaptive ones with their
    adapted levels and ``origins``."""
    if len(levels) * (3 if adapted else 2) * values * DOUBLE.itemsize <= CACHED_LAYOUT_BYTES:
        return _cached_layout(levels, values, adapted, origins)
    return _layout(levels, values, adapted, origins)


@functools.lru_cache(maxsize=256)
def _cached_layout(levels: tuple[float, ...], values: int, adapted: bool, origins: int) -> IntervalLayout:
    return _layout(levels, values, adapted, origins)


def _layout(levels: tuple[float, ...], values: int, adapted: bool, origins: int) -> IntervalLayout:
    if not levels or any(not level > 0 for level in levels):  # proto3 writes no zero double: no fixed layout
        raise ValueError(f"levels: {levels} are not one or more levels above 0")
    size = _varint(values * DOUBLE.itemsize)
    keys = (_LOWER, _UPPER, _ADAPTED) if adapted else (_LOWER, _UPPER)
    if len({len(key) for key in keys}) != 1:
        raise AssertionError("Interval's value fields need keys of one length for a regular stride")
    blank = bytes(values * DOUBLE.itemsize)
    tail = _ORIGINS + _varint(origins) if origins else b""
    body = [b"".join(key + size + blank for key in keys) + tail for _ in levels]
    intervals = [
        _INTERVALS + _varint(len(_LEVEL) + DOUBLE.itemsize + len(b)) + _LEVEL + np.array(level, DOUBLE).tobytes() + b
        for level, b in zip(levels, body, strict=True)
    ]
    head = len(_INTERVALS) + len(_varint(len(_LEVEL) + DOUBLE.itemsize + len(body[0]))) + len(_LEVEL)
    band_stride = len(_LOWER) + len(size) + len(blank)
    return IntervalLayout(
        template=b"".join(intervals),
        offset=head + DOUBLE.itemsize + len(_LOWER) + len(size),
        level_stride=len(intervals[0]) if intervals else 0,
        band_stride=band_stride,
        shape=(len(levels), len(keys), values),
    )


def _field(key: bytes, data: bytes) -> bytes:
    """A length-delimited field; none for empty data (proto3 writes no empty string, bytes or packed field)."""
    return key + _varint(len(data)) + data if data else b""


def series_forecast(
    series_id: str, values: np.ndarray, timestamps: bytes = b"", intervals: bytes | memoryview = b""
) -> list[bytes | memoryview]:
    """A SeriesForecast's bytes, in parts (``forecast_response`` joins them): its id, ``values`` as float64, then
    the already encoded ``timestamps`` (``SeriesForecast.timestamps`` alone, e.g. a twin holding only them) and
    ``intervals`` (``IntervalLayout.buffer``'s bytes of one series), in field order."""
    values_bytes = np.ascontiguousarray(values, DOUBLE).tobytes()
    body = _field(_ID, series_id.encode()) + _field(_VALUES, values_bytes) + timestamps
    return [_FORECASTS + _varint(len(body) + len(intervals)), body, intervals]


def forecast_response(model: str, version: str, forecasts: Sequence[list[bytes | memoryview]]) -> bytes:
    """A ForecastResponse's bytes, the public message's exactly (tests/serving/test_wire.py), built without one:
    its fields are few and known, and its intervals are bytes already (``IntervalLayout``), which a message would
    parse again only to write them out as they were."""
    head = _field(_MODEL, model.encode()) + _field(_VERSION, version.encode())
    return b"".join([head, *itertools.chain.from_iterable(forecasts)])


def parse_request(raw: bytes) -> Any:
    """A ForecastRequest's bytes as its twin (what the server's Forecast handler reads)."""
    request = ForecastRequest.FromString(raw)
    if any(len(UnknownFieldSet(series)) for series in request.series):
        return ForecastRequest.FromString(forecast_pb2.ForecastRequest.FromString(raw).SerializeToString())
    return request


def parse_response(raw: bytes) -> Any:
    """A ForecastResponse's bytes as its twin (what the Python client reads)."""
    response = ForecastResponse.FromString(raw)
    if any(
        len(UnknownFieldSet(item)) or any(len(UnknownFieldSet(band)) for band in item.intervals)
        for item in response.forecasts
    ):
        return ForecastResponse.FromString(forecast_pb2.ForecastResponse.FromString(raw).SerializeToString())
    return response


def _as_built(response: bytes) -> bytes:
    """The Forecast answer is its bytes already (``forecast_response``): nothing left to serialize."""
    return response


def forecast_handlers(forecast: Any) -> dict[str, grpc.RpcMethodHandler]:
    """The ForecastService's method handlers, as the generated ``add_ForecastServiceServicer_to_server`` builds
    them: the request read as its twin, the answer sent as the bytes the handler built."""
    return {
        "Forecast": grpc.unary_unary_rpc_method_handler(
            forecast, request_deserializer=parse_request, response_serializer=_as_built
        )
    }


def forecast_callable(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    """The client side of Forecast on ``channel``: send a twin request, get a twin response."""
    return channel.unary_unary(  # _registered_method: as the generated stubs call it (grpcio's stubs omit it)
        FORECAST_METHOD,
        request_serializer=ForecastRequest.SerializeToString,
        response_deserializer=parse_response,
        _registered_method=True,
    )
