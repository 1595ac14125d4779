"""The wire twins (serving/wire.py): the same bytes as the public Forecast messages, and every encoding of a repeated
double that a protobuf parser accepts read alike by the server, over real gRPC."""

from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor

from serving import wire
from serving.client import ArcastClient
from serving.proto.arcast.v1 import forecast_pb2
from serving.server import ForecastServer
from tests.serving.test_forecast_service import MODEL

RNG = np.random.default_rng(7)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes([*out, n])


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, messages, packed repeated fields)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _request_with_series(series: bytes, horizon: int = 12) -> bytes:
    return _field(1, MODEL.encode()) + bytes([3 << 3]) + _varint(horizon) + _field(4, series)


def test_twins_write_and_read_the_public_messages_bytes() -> None:
    history, stamps = RNG.normal(size=(300, 2)), np.arange(300) * 3600
    public = forecast_pb2.ForecastRequest(model="m", version="3", horizon=24, levels=[0.8, 0.95], adaptive_gamma=0.01)
    public.interval_method = forecast_pb2.ADAPTIVE
    item = public.series.add(id="a", values=history.ravel().tolist())
    for s in stamps:
        item.timestamps.add(seconds=int(s))
    public.series.add(id="b", values=[1.5, -2.0])
    public.series.add(id="empty")
    twin = wire.ForecastRequest(model="m", version="3", horizon=24, levels=[0.8, 0.95], adaptive_gamma=0.01)
    twin.interval_method = forecast_pb2.ADAPTIVE
    item = twin.series.add(id="a", values=wire.packed(history))
    item.timestamps.extend(t for t in public.series[0].timestamps)  # the same Timestamp class
    twin.series.add(id="b", values=wire.packed(np.array([1.5, -2.0])))
    twin.series.add(id="empty", values=wire.packed(np.array([])))
    raw = public.SerializeToString()
    assert twin.SerializeToString() == raw
    read = wire.parse_request(raw)
    np.testing.assert_array_equal(wire.doubles(read.series[0].values, "v"), history.ravel())
    assert len(wire.doubles(read.series[2].values, "v")) == 0

    point, lower, adapted = RNG.normal(size=24), RNG.normal(size=(2, 24)), RNG.uniform(size=24)
    public_out = forecast_pb2.ForecastResponse(model="m", version="3")
    answer = public_out.forecasts.add(id="a", values=point.tolist())
    answer.timestamps.add(seconds=7)
    for j in range(2):
        band = answer.intervals.add(level=0.8 + j / 10, lower=lower[j].tolist(), upper=(lower[j] + 1).tolist())
        band.adapted_levels.extend(adapted.tolist())
        band.origins = 5
    twin_out = wire.ForecastResponse(model="m", version="3")
    answer = twin_out.forecasts.add(id="a", values=wire.packed(point.astype(np.float32).astype(np.float64)))
    answer.timestamps.add(seconds=7)
    for j in range(2):
        band = answer.intervals.add(level=0.8 + j / 10, lower=wire.packed(lower[j]), upper=wire.packed(lower[j] + 1))
        band.adapted_levels.extend(wire.packed(adapted))
        band.origins = 5
    public_out.forecasts[0].values[:] = point.astype(np.float32).astype(np.float64).tolist()
    assert twin_out.SerializeToString() == public_out.SerializeToString()
    back = wire.parse_response(public_out.SerializeToString())
    np.testing.assert_array_equal(wire.doubles(back.forecasts[0].intervals[1].adapted_levels, "v"), adapted)


@pytest.mark.parametrize(
    ("levels", "values", "series", "origins"),
    [((0.8, 0.9, 0.95), 24, 1, None), ((0.5,), 1, 3, None), ((0.8, 0.99), 200, 2, 336), ((0.1, 0.2), 2000, 2, 70000)],
)
def test_interval_layouts_write_the_public_messages_bytes(
    levels: tuple[float, ...], values: int, series: int, origins: int | None
) -> None:
    """Every series' intervals written through the layout's value view (split conformal and quantile: lower and
    upper; adaptive: adapted levels and origins too; one- to three-byte lengths) are the bytes of the public
    Interval messages added one by one, and the twin takes them as such."""
    adaptive = origins is not None
    encoded, view = wire.interval_layout(levels, values, adaptive, origins or 0).buffer(series)
    numbers = RNG.normal(size=view.shape)
    view[...] = numbers
    for i in range(series):
        public = forecast_pb2.SeriesForecast()
        for j, level in enumerate(levels):
            band = public.intervals.add(level=level, lower=numbers[i, j, 0].tolist(), upper=numbers[i, j, 1].tolist())
            if adaptive:
                band.adapted_levels.extend(numbers[i, j, 2].tolist())
                band.origins = origins
        assert bytes(encoded[i]) == public.SerializeToString()
        twin = wire.ForecastResponse().forecasts.add()
        twin.MergeFromString(encoded[i])
        assert twin.SerializeToString() == public.SerializeToString()
        np.testing.assert_array_equal(wire.doubles(twin.intervals[-1].upper, "upper"), numbers[i, -1, 1])


@pytest.mark.parametrize("timestamps", [False, True])
def test_the_answers_bytes_are_the_public_messages(timestamps: bool) -> None:
    """``forecast_response`` writes exactly the public ForecastResponse's bytes: several series, an empty id and
    version (proto3 writes neither), a series with no values, timestamps, and intervals from a layout; the public
    parser reads it back field for field."""
    levels = (0.8, 0.95)
    encoded, view = wire.interval_layout(levels, 6).buffer(3)
    view[...] = RNG.normal(size=view.shape)
    public = forecast_pb2.ForecastResponse(model="etth1-linear é", version="")
    parts = []
    for i, (name, values) in enumerate((("a", RNG.normal(size=6)), ("", RNG.normal(size=6)), ("c", np.zeros(0)))):
        item = public.forecasts.add(id=name, values=values.tolist())
        stamps = b""
        if timestamps:
            item.timestamps.add(seconds=1_700_000_000 + i, nanos=5)
            item.timestamps.add(seconds=0, nanos=0)
            stamps = wire.SeriesForecast(timestamps=list(item.timestamps)).SerializeToString()
        band = b""
        if i < 2:
            for j, level in enumerate(levels):
                item.intervals.add(level=level, lower=view[i, j, 0].tolist(), upper=view[i, j, 1].tolist())
            band = encoded[i]
        parts.append(wire.series_forecast(name, values, stamps, band))
    raw = wire.forecast_response(public.model, public.version, parts)
    assert raw == public.SerializeToString()
    assert forecast_pb2.ForecastResponse.FromString(raw) == public


def test_only_small_interval_layouts_are_kept() -> None:
    """The usual layouts are cached (the hot path reads them); one beyond ``CACHED_LAYOUT_BYTES`` is built per
    request, so a caller varying levels, horizons or origins cannot grow the server's memory."""
    wire._cached_layout.cache_clear()
    small = wire.interval_layout((0.8, 0.9), 24)
    assert wire.interval_layout((0.8, 0.9), 24) is small
    values = wire.CACHED_LAYOUT_BYTES // (2 * wire.DOUBLE.itemsize) + 1
    large = wire.interval_layout((0.9,), values)
    assert wire.interval_layout((0.9,), values) == large and wire.interval_layout((0.9,), values) is not large
    assert wire._cached_layout.cache_info().currsize == 1
    for levels in ((), (0.0,), (0.9, -0.5)):  # proto3 writes no zero level: no fixed layout to fill
        with pytest.raises(ValueError, match="not one or more levels above 0"):
            wire.interval_layout(levels, 24)


def test_every_repeated_double_of_the_proto_is_raw_or_kept_on_purpose() -> None:
    doubles = {
        (message.name, field.name)
        for message in forecast_pb2.DESCRIPTOR.message_types_by_name.values()
        for field in message.fields
        if field.is_repeated
        and field.type in (descriptor.FieldDescriptor.TYPE_DOUBLE, descriptor.FieldDescriptor.TYPE_FLOAT)
    }
    listed = {(m, f) for table in (wire.RAW_FIELDS, wire.KEPT_DOUBLES) for m, fields in table.items() for f in fields}
    assert doubles == listed
    assert not {(m, f) for m, fields in wire.RAW_FIELDS.items() for f in fields} & {
        (m, f) for m, fields in wire.KEPT_DOUBLES.items() for f in fields
    }


def test_unpacked_and_split_encodings_forecast_like_the_packed_one(
    server: ForecastServer, histories: np.ndarray
) -> None:
    """Doubles written one tagged value each, and a packed field in two chunks (both legal protobuf, both read by
    the public parser) get the same answer, byte for byte, as the usual packed request."""
    history = histories[0]
    packed = _field(2, history.astype("<f8").tobytes())
    unpacked = b"".join(bytes([2 << 3 | 1]) + struct.pack("<d", v) for v in history)
    split = _field(2, history[:25].astype("<f8").tobytes()) + _field(2, history[25:].astype("<f8").tobytes())
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = channel.unary_unary(wire.FORECAST_METHOD, request_serializer=None, response_deserializer=None)
        usual = call(ArcastClient.forecast_request(MODEL, [history], 12).SerializeToString(), timeout=30)
        answers = [call(_request_with_series(_field(1, b"0") + body), timeout=30) for body in (packed, unpacked, split)]
    assert answers == [usual] * 3
    values = forecast_pb2.ForecastResponse.FromString(usual).forecasts[0].values
    assert len(values) == 12 and np.isfinite(values).all()


def test_a_packed_field_of_broken_length_is_refused_naming_it(server: ForecastServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = channel.unary_unary(wire.FORECAST_METHOD, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            call(_request_with_series(_field(1, b"0") + _field(2, bytes(8 * 60 + 4))), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "series[0].values: 484 bytes are not a whole number of 8-byte doubles" in (info.value.details() or "")


def test_the_client_reads_unpacked_answers_like_packed_ones() -> None:
    """A server or proxy that writes the answer's doubles unpacked: the Python client reads the same values."""
    values, lower = RNG.normal(size=12), RNG.normal(size=12)
    band = _field(2, lower.astype("<f8").tobytes())
    series = _field(1, b"a") + b"".join(bytes([2 << 3 | 1]) + struct.pack("<d", v) for v in values)
    raw = _field(1, b"m") + _field(3, series + _field(4, band))
    read = wire.parse_response(raw)
    np.testing.assert_array_equal(wire.doubles(read.forecasts[0].values, "v"), values)
    np.testing.assert_array_equal(wire.doubles(read.forecasts[0].intervals[0].lower, "v"), lower)


def test_the_client_reads_intervals_however_they_are_written() -> None:
    """Bounds in one chunk each (arcast's server), in chunks, written unpacked, or beside adapted levels: the Python
    client reads the same arrays every way (horizon 3, 2 channels, 2 levels)."""
    point, bounds, adapted = RNG.normal(size=6), RNG.normal(size=(2, 2, 6)), RNG.uniform(size=6)

    def doubles(values: np.ndarray) -> bytes:
        return values.astype("<f8").tobytes()

    def band(k: int, how: str) -> bytes:
        level = bytes([1 << 3 | 1]) + struct.pack("<d", 0.8 + k / 10)
        lower, upper = doubles(bounds[k, 0]), doubles(bounds[k, 1])
        if how == "chunks":
            return level + _field(2, lower[:16]) + _field(2, lower[16:]) + _field(3, upper)
        if how == "unpacked":
            return level + b"".join(bytes([2 << 3 | 1]) + struct.pack("<d", v) for v in bounds[k, 0]) + _field(3, upper)
        extra = _field(4, doubles(adapted)) + bytes([5 << 3]) + _varint(9) if how == "adaptive" else b""
        return level + _field(2, lower) + _field(3, upper) + extra

    client = ArcastClient("127.0.0.1:1")
    for how in ("one chunk", "chunks", "unpacked", "adaptive"):
        series = _field(1, b"a") + _field(2, doubles(point)) + b"".join(_field(4, band(k, how)) for k in range(2))
        raw = _field(1, b"m") + _field(3, series)
        client._forecast = lambda request, timeout, raw=raw: wire.parse_response(raw)  # type: ignore[method-assign]
        (forecast,) = client.forecast("m", [np.zeros(4)], horizon=3).forecasts
        np.testing.assert_array_equal(forecast.values, point.reshape(3, 2))
        assert [b.level for b in forecast.intervals] == [0.8, 0.9]
        for k, interval in enumerate(forecast.intervals):
            np.testing.assert_array_equal(interval.lower, bounds[k, 0].reshape(3, 2))
            np.testing.assert_array_equal(interval.upper, bounds[k, 1].reshape(3, 2))
            if how == "adaptive":
                assert interval.origins == 9
                np.testing.assert_array_equal(interval.adapted_levels, adapted.reshape(3, 2))
            else:
                assert interval.adapted_levels is None and interval.origins == 0
    client.close()
