"""ThingsBoard device-API payloads turned into Points. Pure functions: no I/O, no clock of their own.

Accepted shapes, as ThingsBoard accepts them:

- telemetry: `{"k": v, ...}`, `{"ts": ms, "values": {...}}`, or a JSON array of either;
- attributes: a flat object `{"k": v}` (values may be any JSON, nested objects included);
- gateway telemetry: `{"Device A": [{"ts": ms, "values": {...}}, {"k": v}], ...}`;
- gateway attributes: `{"Device A": {...}, ...}`;
- gateway connect / disconnect: `{"device": "Device A", "type": "thermometer"}`.

Whole-payload problems raise `PayloadError(reason, detail)`. A single bad value inside an otherwise
good object is dropped and reported as a `Reject` while the other values are kept: a sensor that
sends one NaN among twenty good readings should not lose the twenty, and the reject is still
counted per device and reason so the problem stays visible.

Telemetry values must be scalars (number, boolean, string): a `Point` carries one scalar, and a
nested object or a list among telemetry values is rejected with `wrong_type`. Attributes keep
nested JSON, as ThingsBoard does.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass
from typing import Any

import orjson

from ecoplat.telemetry.points import Point, Value, points_of


class RejectReason(enum.StrEnum):
    malformed_json = "malformed_json"
    not_an_object = "not_an_object"
    wrong_type = "wrong_type"
    non_finite = "non_finite"
    bad_ts = "bad_ts"
    payload_too_large = "payload_too_large"
    unknown_token = "unknown_token"
    revoked_token = "revoked_token"
    topic_not_allowed = "topic_not_allowed"
    empty = "empty"


@dataclass(slots=True, frozen=True)
class Reject:
    reason: RejectReason
    detail: str


class PayloadError(Exception):
    """The whole payload is unusable; nothing in it is kept."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


# Timestamps further ahead than this are a device clock gone wrong, not a forecast.
MAX_FUTURE_MS = 24 * 3600 * 1000
MAX_KEY_LENGTH = 200
MAX_STRING_VALUE = 4096
DEFAULT_MAX_PAYLOAD_BYTES = 65_536

_SCALAR_TYPES = (int, str, bool)
_isfinite = math.isfinite
_fsum = math.fsum

Frame = tuple[int, dict[str, Value]]  # (ts ms, {key: value}): one device's values at one instant


def _snippet(raw: bytes | str, n: int = 80) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return text if len(text) <= n else text[:n] + "…"


def decode(raw: bytes | str, *, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> Any:
    """JSON text → Python value, with orjson. NaN/Infinity tokens (which orjson refuses but many
    device SDKs emit) are decoded by the standard parser into non-finite floats so that only the
    value carrying them is rejected later, not the whole message."""
    size = len(raw)
    if size > max_bytes:
        raise PayloadError(RejectReason.payload_too_large,
                           f"{size} bytes is over the limit of {max_bytes} bytes")
    if size == 0 or (isinstance(raw, bytes | str) and not raw.strip()):
        raise PayloadError(RejectReason.empty, "the payload is empty")
    # One search per message: text with NUL cannot be stored (PostgreSQL refuses it), and letting it
    # through would fail the whole batch it lands in, other devices' points included.
    if (b"\\u0000" if isinstance(raw, bytes) else "\\u0000") in raw:
        raise PayloadError(RejectReason.wrong_type, "text must not contain NUL (\\u0000) characters")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as first_error:
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            return json.loads(text, parse_constant=float, parse_float=float)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise PayloadError(RejectReason.malformed_json,
                               f"not valid JSON ({first_error}): {_snippet(raw)}") from None


def _check_ts(ts: Any, now_ms: int) -> int | Reject:
    if type(ts) is not int:
        return Reject(RejectReason.bad_ts, f"ts must be an integer of milliseconds, got {_snippet(repr(ts), 40)}")
    if ts < 0:
        return Reject(RejectReason.bad_ts, f"ts {ts} is negative")
    if ts > now_ms + MAX_FUTURE_MS:
        return Reject(RejectReason.bad_ts, f"ts {ts} is more than a day in the future")
    return ts


def _good_values(values: dict[str, Any], rejects: list[Reject]) -> dict[str, Value]:
    """The telemetry values worth keeping: the dict itself when every value is good (the usual
    case, checked without a Python-level loop), else a copy without the bad ones, each reported."""
    try:
        # fsum converts every value to float in C: it raises for text, null, objects, lists and
        # integers beyond a double, and a non-finite value makes the sum non-finite.
        total = _fsum(values.values())
    except (TypeError, OverflowError, ValueError):
        pass
    else:
        if total - total == 0 and "" not in values and max(map(len, values)) <= MAX_KEY_LENGTH:
            return values
    good: dict[str, Value] = {}
    for key, value in values.items():
        t = type(value)
        if t is float:
            if not _isfinite(value):
                rejects.append(Reject(RejectReason.non_finite, f"{key}: {value} is not a finite number"))
                continue
        elif t not in _SCALAR_TYPES:
            rejects.append(Reject(RejectReason.wrong_type,
                                  f"{key}: telemetry values must be numbers, booleans or strings, got {_type_name(value)}"))
            continue
        elif t is str and len(value) > MAX_STRING_VALUE:
            rejects.append(Reject(RejectReason.wrong_type, f"{key}: string longer than {MAX_STRING_VALUE} characters"))
            continue
        elif t is int and not _fits_double(value):
            rejects.append(Reject(RejectReason.wrong_type, f"{key}: integer {_snippet(str(value), 30)} is out of range"))
            continue
        if not key or len(key) > MAX_KEY_LENGTH:
            rejects.append(Reject(RejectReason.wrong_type, f"key {_snippet(key, 40)!r} must be 1..{MAX_KEY_LENGTH} characters"))
            continue
        good[key] = value
    return good


def _fits_double(value: int) -> bool:
    # Integers beyond a double's range cannot be stored as numbers (and would fail their batch).
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _type_name(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return type(value).__name__


def _entry_frame(entry: Any, now_ms: int, out: list[Frame], rejects: list[Reject]) -> None:
    """One telemetry entry ({"ts","values"} or a flat object) appended as a (ts, values) frame."""
    if type(entry) is not dict:
        rejects.append(Reject(RejectReason.not_an_object,
                              f"telemetry entries must be objects, got {_type_name(entry)}"))
        return
    if "ts" in entry and "values" in entry:
        ts = _check_ts(entry["ts"], now_ms)
        if isinstance(ts, Reject):
            rejects.append(ts)
            return
        values = entry["values"]
        if type(values) is not dict:
            rejects.append(Reject(RejectReason.not_an_object, f"values must be an object, got {_type_name(values)}"))
            return
    else:
        ts, values = now_ms, entry
    if not values:
        rejects.append(Reject(RejectReason.empty, "an entry without values"))
        return
    good = _good_values(values, rejects)
    if good:
        out.append((ts, good))


def telemetry_frames(data: Any, *, now_ms: int) -> tuple[list[Frame], list[Reject]]:
    """Decoded telemetry (object or array) → (ts, {key: value}) frames and per-value rejects."""
    frames: list[Frame] = []
    rejects: list[Reject] = []
    if type(data) is list:
        if not data:
            raise PayloadError(RejectReason.empty, "an empty array")
        for entry in data:
            _entry_frame(entry, now_ms, frames, rejects)
    elif type(data) is dict:
        if not data:
            raise PayloadError(RejectReason.empty, "an empty object")
        _entry_frame(data, now_ms, frames, rejects)
    else:
        raise PayloadError(RejectReason.not_an_object,
                           f"telemetry must be an object or an array of objects, got {_type_name(data)}")
    if not frames and len(rejects) == 1:
        # Nothing usable: report the single cause as the payload's failure.
        raise PayloadError(rejects[0].reason, rejects[0].detail)
    return frames, rejects


def frames_to_points(device_id: int, frames: list[Frame]) -> list[Point]:
    if len(frames) == 1:
        ts, values = frames[0]
        return points_of(device_id, ts, values)
    return [p for ts, values in frames for p in points_of(device_id, ts, values)]


def parse_telemetry(raw: bytes | str, *, device_id: int, now_ms: int,
                    max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> tuple[list[Point], list[Reject]]:
    """A device's telemetry message → Points (ts defaults to now_ms) and per-value rejects."""
    frames, rejects = telemetry_frames(decode(raw, max_bytes=max_bytes), now_ms=now_ms)
    return frames_to_points(device_id, frames), rejects


def parse_attributes(raw: bytes | str, *, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
                     ) -> tuple[dict[str, Any], list[Reject]]:
    """A device's client-attribute message → {key: JSON value} and per-value rejects."""
    return attributes_from(decode(raw, max_bytes=max_bytes))


def attributes_from(data: Any) -> tuple[dict[str, Any], list[Reject]]:
    if type(data) is not dict:
        raise PayloadError(RejectReason.not_an_object, f"attributes must be an object, got {_type_name(data)}")
    if not data:
        raise PayloadError(RejectReason.empty, "an empty object")
    out: dict[str, Any] = {}
    rejects: list[Reject] = []
    for key, value in data.items():
        if not key or len(key) > MAX_KEY_LENGTH:
            rejects.append(Reject(RejectReason.wrong_type, f"key {_snippet(key, 40)!r} must be 1..{MAX_KEY_LENGTH} characters"))
        elif not _all_finite(value):
            rejects.append(Reject(RejectReason.non_finite, f"{key}: contains a value that is not a finite number"))
        else:
            out[key] = value
    if not out and len(rejects) == 1:
        raise PayloadError(rejects[0].reason, rejects[0].detail)
    return out, rejects


def _all_finite(value: Any) -> bool:
    t = type(value)
    if t is float:
        return _isfinite(value)
    if t is dict:
        return all(_all_finite(v) for v in value.values())
    if t is list:
        return all(_all_finite(v) for v in value)
    return True


def _device_name(name: Any) -> str | Reject:
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        return Reject(RejectReason.wrong_type, f"device name {_snippet(repr(name), 40)} must be a string of 1..200 characters")
    return name


def parse_gateway_telemetry(raw: bytes | str, *, now_ms: int, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
                            ) -> tuple[dict[str, list[Frame]], list[Reject]]:
    """`{"Device A": [entries...]}` → {device name: (ts, {key: value}) frames} and rejects."""
    data = decode(raw, max_bytes=max_bytes)
    if type(data) is not dict:
        raise PayloadError(RejectReason.not_an_object,
                           f"gateway telemetry must be an object keyed by device name, got {_type_name(data)}")
    if not data:
        raise PayloadError(RejectReason.empty, "an empty object")
    out: dict[str, list[Frame]] = {}
    rejects: list[Reject] = []
    for name, entries in data.items():
        checked = _device_name(name)
        if isinstance(checked, Reject):
            rejects.append(checked)
            continue
        if type(entries) is not list:
            rejects.append(Reject(RejectReason.wrong_type,
                                  f"{name}: gateway telemetry per device must be an array, got {_type_name(entries)}"))
            continue
        frames: list[Frame] = []
        for entry in entries:
            _entry_frame(entry, now_ms, frames, rejects)
        if frames:
            out[name] = frames
    if not out and len(rejects) == 1:
        raise PayloadError(rejects[0].reason, rejects[0].detail)
    return out, rejects


def parse_gateway_attributes(raw: bytes | str, *, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
                             ) -> tuple[dict[str, dict[str, Any]], list[Reject]]:
    """`{"Device A": {...}}` → {device name: attributes} and rejects."""
    data = decode(raw, max_bytes=max_bytes)
    if type(data) is not dict:
        raise PayloadError(RejectReason.not_an_object,
                           f"gateway attributes must be an object keyed by device name, got {_type_name(data)}")
    if not data:
        raise PayloadError(RejectReason.empty, "an empty object")
    out: dict[str, dict[str, Any]] = {}
    rejects: list[Reject] = []
    for name, attrs in data.items():
        checked = _device_name(name)
        if isinstance(checked, Reject):
            rejects.append(checked)
            continue
        try:
            values, bad = attributes_from(attrs)
        except PayloadError as e:
            rejects.append(Reject(e.reason, f"{name}: {e.detail}"))
            continue
        rejects.extend(bad)
        if values:
            out[name] = values
    if not out and len(rejects) == 1:
        raise PayloadError(rejects[0].reason, rejects[0].detail)
    return out, rejects


def parse_gateway_connect(raw: bytes | str, *, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> tuple[str, str]:
    """`{"device": "Device A", "type": "thermometer"}` → (name, type); type defaults to "default"."""
    data = decode(raw, max_bytes=max_bytes)
    if type(data) is not dict:
        raise PayloadError(RejectReason.not_an_object, f"expected {{\"device\": name}}, got {_type_name(data)}")
    if "device" not in data:
        raise PayloadError(RejectReason.wrong_type, "missing the \"device\" name")
    name = _device_name(data["device"])
    if isinstance(name, Reject):
        raise PayloadError(name.reason, name.detail)
    device_type = data.get("type", "default")
    if not isinstance(device_type, str) or len(device_type) > 100:
        raise PayloadError(RejectReason.wrong_type, "\"type\" must be a string of at most 100 characters")
    return name, device_type or "default"
