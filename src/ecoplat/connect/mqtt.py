"""The ThingsBoard device API over MQTT, independent of the transport.

`MqttDeviceApi` turns one publish of an authenticated device into platform actions; the embedded
amqtt broker (`connect/broker.py`) and the bridge to an external broker (`connect/bridge.py`) both
feed it. Topics, exactly as ThingsBoard clients use them:

    v1/devices/me/telemetry                     → payloads.parse_telemetry → ingest.submit
    v1/devices/me/attributes                    → client attributes stored
    v1/devices/me/attributes/request/{id}       → answer on v1/devices/me/attributes/response/{id}
    v1/devices/me/rpc/response/{id}             → the waiting server-side RPC call
    v1/devices/me/rpc/request/{id}              → client-side RPC (getSessionLimits, getCurrentTime)
    v1/gateway/connect|disconnect|telemetry|attributes|rpc   → the gateway API, children by name

Server → device traffic (server-side RPC requests, shared attribute updates) arrives on the event
bus (`rpc.<ent>.<dev>`, `attributes.<ent>.<dev>`) and is published to that one device's live
connection, or to its gateway's for a child device.

`on_publish` returns only when what the message carried is durable, so the transport may then
acknowledge a QoS 1 publish. Bad input never raises out of here: every reject is counted per device
and reason with `ingest.reject` and the connection keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from ecoplat.config import Settings
from ecoplat.connect import payloads
from ecoplat.connect.payloads import PayloadError, RejectReason
from ecoplat.events import Event, EventBus
from ecoplat.telemetry.points import Frame, Frames, Point

log = logging.getLogger(__name__)

ME = "v1/devices/me/"
GATEWAY = "v1/gateway/"

# Topic filters a device may subscribe to. Nothing is ever fanned out between devices (answers go
# to one session), so these only say what a device may listen for.
SUBSCRIBABLE_PREFIXES = ("v1/devices/me/attributes", "v1/devices/me/rpc/", "v1/gateway/")


class Connection(Protocol):
    """One live device connection: answers go to it alone."""

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None: ...


@dataclass(slots=True)
class _Child:
    ref: Any  # DeviceRef of the child
    gateway_id: int
    name: str


# A parsed gateway telemetry message: {child device name: [(ts, {key: value}), …]}.
GatewayFrames = dict[str, list[payloads.Frame]]


def classify(topic: str) -> tuple[str, str]:
    """A device-API topic → (kind, request id or ""). Kind "" means outside the API.

    Pure, so the transports and tests share one reading of the ThingsBoard topic space."""
    if topic.startswith(ME):
        rest = topic[len(ME):]
        if rest == "telemetry":
            return "telemetry", ""
        if rest == "attributes":
            return "attributes", ""
        for prefix, kind in (("attributes/request/", "attributes_request"),
                             ("rpc/response/", "rpc_response"),
                             ("rpc/request/", "rpc_request")):
            if rest.startswith(prefix):
                request_id = rest[len(prefix):]
                if request_id and "/" not in request_id:
                    return kind, request_id
        return "", ""
    if topic.startswith(GATEWAY):
        rest = topic[len(GATEWAY):]
        if rest in ("connect", "disconnect", "telemetry", "attributes", "rpc"):
            return "gateway_" + rest, ""
        if rest == "attributes/request":
            return "gateway_attributes_request", ""
    return "", ""


def session_limits(settings: Settings, enterprise_limits: dict[str, Any] | None) -> dict[str, Any]:
    """The answer to a gateway's `getSessionLimits` RPC: the tenant's own limits where it has
    them, the platform's otherwise. Rate limits are ThingsBoard's `count:seconds` pairs."""
    limits = dict(enterprise_limits or {})
    rate = dict(limits.get("rateLimits") or {})
    rate.setdefault("messages", limits.get("messages", "1000:1,60000:60"))
    rate.setdefault("telemetryMessages", limits.get("telemetryMessages", "1000:1,60000:60"))
    rate.setdefault("telemetryDataPoints", limits.get("telemetryDataPoints", "100000:1,6000000:60"))
    return {
        "maxPayloadSize": int(limits.get("maxPayloadSize", settings.max_payload_bytes)),
        "maxInflightMessages": int(limits.get("maxInflightMessages", 100)),
        "rateLimits": rate,
    }


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


class MqttDeviceApi:
    """The device API for all MQTT transports of one app (see the module docstring)."""

    def __init__(self, *, ingest: Any, settings: Settings, db: Any, events: EventBus) -> None:
        self.ingest = ingest
        self.settings = settings
        self.db = db
        self.events = events
        self.max_bytes = settings.max_payload_bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        # device id → {client id: connection}; a device may hold several connections.
        self._live: dict[int, dict[str, Connection]] = {}
        # (gateway device id, child name) → child, so gateway telemetry costs a dict lookup.
        self._children: dict[tuple[int, str], _Child] = {}
        self._child_by_id: dict[int, _Child] = {}
        self._unsubscribe: list[Callable[[], None]] = []

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._unsubscribe.append(self.events.add_listener("rpc.", self._on_rpc_event))
        self._unsubscribe.append(self.events.add_listener("attributes.", self._on_attributes_event))
        self._unsubscribe.append(self.events.add_listener("credentials.", self._on_credentials_event))

    def stop(self) -> None:
        for remove in self._unsubscribe:
            remove()
        self._unsubscribe.clear()

    # -- connections ----------------------------------------------------------------------------
    async def authenticate(self, username: str | None, password: str | bytes | None = None, *,
                           client_id: str | None = None) -> Any | None:
        """CONNECT: username = the device's access token (ThingsBoard's convention)."""
        token = (username or "").strip()
        if not token:
            self.ingest.reject(None, RejectReason.unknown_token.value,
                               f"MQTT CONNECT without a username (client id {client_id!r})")
            return None
        ref = await self.resolve(token)
        if ref is None:
            self.ingest.reject(None, RejectReason.unknown_token.value,
                               f"MQTT CONNECT with an unknown access token {token[:4]}… (client id {client_id!r})")
            return None
        if getattr(ref, "revoked", False):
            self.ingest.reject(ref.device_id, RejectReason.revoked_token.value,
                               f"MQTT CONNECT with a revoked access token (client id {client_id!r})")
            return None
        if ref.enterprise_id is None:
            self.ingest.reject(ref.device_id, "unclaimed_device",
                               "MQTT CONNECT from a device nobody has claimed yet; claim it first")
            return None
        return ref

    async def resolve(self, token: str) -> Any | None:
        # A cache miss is a database query: off the event loop, so one CONNECT never stalls the
        # publishes of every other device.
        return await _maybe_await(await asyncio.to_thread(self.ingest.resolve_token, token))

    def connection_opened(self, ref: Any, client_id: str, conn: Connection) -> None:
        self._live.setdefault(ref.device_id, {})[client_id] = conn

    def connection_closed(self, ref: Any, client_id: str, conn: Connection | None = None) -> None:
        conns = self._live.get(ref.device_id)
        if conns is not None:
            # After a session take-over the new connection is already registered under the same
            # client id: only the connection that closed is removed.
            if conn is None or conns.get(client_id) == conn:
                conns.pop(client_id, None)
            if not conns:
                self._live.pop(ref.device_id, None)

    def may_subscribe(self, ref: Any, topic_filter: str) -> bool:
        if topic_filter.startswith(SUBSCRIBABLE_PREFIXES):
            return True
        self.ingest.reject(ref.device_id, RejectReason.topic_not_allowed.value,
                           f"SUBSCRIBE to {topic_filter!r} is outside the device API")
        return False

    def reject_foreign_topic(self, ref: Any, topic: str) -> None:
        self.ingest.reject(ref.device_id, RejectReason.topic_not_allowed.value,
                           f"PUBLISH to {topic!r} is outside the device API")

    # -- device → platform ----------------------------------------------------------------------
    async def on_publish(self, ref: Any, topic: str, payload: bytes, conn: Connection) -> None:
        """One device publish; returns when what it carried is durable."""
        if topic == "v1/devices/me/telemetry":  # the hot path, before any other dispatch
            await self.telemetry(ref, payload)
            return
        kind, request_id = classify(topic)
        if not kind:
            self.reject_foreign_topic(ref, topic)
            return
        if kind.startswith("gateway_") and not getattr(ref, "is_gateway", False):
            self.ingest.reject(ref.device_id, RejectReason.topic_not_allowed.value,
                               f"{topic}: this device is not a gateway; mark it as one to use the gateway API")
            return
        handler = self._handlers[kind]
        await handler(self, ref, payload, conn, request_id)

    def publish_nowait(self, ref: Any, topic: str, payload: bytes, conn: Connection,
                       on_durable: Callable[[BaseException | None], None]) -> Coroutine[Any, Any, None] | None:
        """on_publish() without a task where it can (the broker's hot path). A device's or a
        gateway's telemetry is parsed here and its points queued; returns None then. Otherwise
        (another topic, a gateway child not seen before, a full ingest queue) returns the
        coroutine that finishes queuing or handling the message; the caller runs it.

        Either way `on_durable` is called once, on this loop: with None when the points are
        durable (at once when the message carried none to store, or once another topic's
        message is handled), or with the storage error."""
        if topic == "v1/devices/me/telemetry":
            points = self._parse_telemetry(ref, payload)
        elif topic == "v1/gateway/telemetry" and getattr(ref, "is_gateway", False):
            parsed = self._parse_gateway_telemetry(ref, payload)
            if parsed is None:
                points = None
            else:
                points = self.cached_children_frames(ref, parsed)
                if points is None:
                    return self._queue_gateway_frames(ref, parsed, on_durable)  # a child to look up first
        else:
            return self._handle_then(self.on_publish(ref, topic, payload, conn), on_durable)
        if not points:
            on_durable(None)
            return None
        if self.ingest.submit_nowait(points, enterprise_id=ref.enterprise_id, on_durable=on_durable):
            return None
        return self.ingest.submit_queued(points, enterprise_id=ref.enterprise_id, on_durable=on_durable)

    @staticmethod
    async def _handle_then(work: Coroutine[Any, Any, None],
                           on_durable: Callable[[BaseException | None], None]) -> None:
        await work
        on_durable(None)

    def _parse_telemetry(self, ref: Any, payload: bytes) -> Sequence[Point] | None:
        """The points of a device's telemetry message; what it got wrong is counted as rejects."""
        try:
            points, rejects = payloads.parse_telemetry(payload, device_id=ref.device_id,
                                                       now_ms=int(time.time() * 1000),
                                                       max_bytes=self.max_bytes)
        except PayloadError as e:
            self.ingest.reject(ref.device_id, e.reason.value, e.detail)
            return None
        for r in rejects:
            self.ingest.reject(ref.device_id, r.reason.value, r.detail)
        return points

    async def telemetry(self, ref: Any, payload: bytes) -> None:
        points = self._parse_telemetry(ref, payload)
        if points:
            await self.ingest.submit(points, enterprise_id=ref.enterprise_id)

    async def _attributes(self, ref: Any, payload: bytes, conn: Connection, _rid: str) -> None:
        try:
            values, rejects = payloads.parse_attributes(payload, max_bytes=self.max_bytes)
        except PayloadError as e:
            self.ingest.reject(ref.device_id, e.reason.value, e.detail)
            return
        for r in rejects:
            self.ingest.reject(ref.device_id, r.reason.value, r.detail)
        if values:
            await asyncio.to_thread(self.ingest.save_client_attributes, ref, values)

    async def _attributes_request(self, ref: Any, payload: bytes, conn: Connection, request_id: str) -> None:
        # {"clientKeys": "a,b", "sharedKeys": "c"}; either may be missing (= all of that scope).
        try:
            data = payloads.decode(payload, max_bytes=self.max_bytes) if payload.strip() else {}
        except PayloadError as e:
            self.ingest.reject(ref.device_id, e.reason.value, e.detail)
            return
        if type(data) is not dict:
            self.ingest.reject(ref.device_id, RejectReason.not_an_object.value,
                               "an attribute request must be an object with clientKeys/sharedKeys")
            return
        found = await asyncio.to_thread(self.ingest.read_attributes, ref,
                                        client_keys=_keys(data.get("clientKeys")),
                                        shared_keys=_keys(data.get("sharedKeys")))
        # ThingsBoard answers only the scopes asked for; a request naming neither gets both.
        answer = {scope: values for scope, values in found.items()
                  if f"{scope}Keys" in data or ("clientKeys" not in data and "sharedKeys" not in data)}
        await conn.publish(f"v1/devices/me/attributes/response/{request_id}", orjson.dumps(answer))

    async def _rpc_response(self, ref: Any, payload: bytes, conn: Connection, request_id: str) -> None:
        await self._deliver_rpc_response(ref.device_id, request_id, payload)

    async def _deliver_rpc_response(self, device_id: int, request_id: str, payload: bytes) -> None:
        if not request_id.isdigit():
            self.ingest.reject(device_id, RejectReason.wrong_type.value,
                               f"RPC response id {request_id[:20]!r} is not a request id the platform sent")
            return
        if len(payload) > self.max_bytes:
            self.ingest.reject(device_id, RejectReason.payload_too_large.value,
                               f"RPC response of {len(payload)} bytes is over the limit")
            return
        try:
            result: Any = orjson.loads(payload) if payload.strip() else None
        except orjson.JSONDecodeError:
            # ThingsBoard passes non-JSON RPC answers through as text.
            result = payload.decode("utf-8", "replace")
        if not self.ingest.rpc_response(device_id, int(request_id), result):
            log.info("RPC response %s from device %s came after its caller stopped waiting", request_id, device_id)

    async def _rpc_request(self, ref: Any, payload: bytes, conn: Connection, request_id: str) -> None:
        """Client-side RPC, device → platform. The ThingsBoard IoT Gateway sends nothing until
        its `getSessionLimits` is answered."""
        try:
            data = payloads.decode(payload, max_bytes=self.max_bytes)
        except PayloadError as e:
            self.ingest.reject(ref.device_id, e.reason.value, e.detail)
            return
        method = data.get("method") if type(data) is dict else None
        topic = f"v1/devices/me/rpc/response/{request_id}"
        if method == "getSessionLimits":
            limits = await asyncio.to_thread(enterprise_limits, self.db, ref.enterprise_id)
            answer: dict[str, Any] = session_limits(self.settings, limits)
        elif method == "getCurrentTime":
            answer = {"currentTime": int(time.time() * 1000)}
        else:
            self.ingest.reject(ref.device_id, RejectReason.wrong_type.value,
                               f"client-side RPC method {method!r} is not supported")
            answer = {"error": f"Unsupported RPC method: {method!r}"}
        await conn.publish(topic, orjson.dumps(answer))

    # -- gateway API ----------------------------------------------------------------------------
    async def child(self, gateway: Any, name: str, device_type: str = "default") -> Any:
        """The child device `name` of this gateway, created under its enterprise on first sight."""
        key = (gateway.device_id, name)
        known = self._children.get(key)
        if known is not None:
            return known.ref
        # Blocking on first sight only (a database lookup or insert); then a dict lookup.
        ref = await asyncio.to_thread(self.ingest.ensure_child_device, gateway, name, device_type)
        entry = _Child(ref=ref, gateway_id=gateway.device_id, name=name)
        self._children[key] = entry
        self._child_by_id[ref.device_id] = entry
        return ref

    async def _gateway_connect(self, ref: Any, payload: bytes, conn: Connection, _rid: str) -> None:
        try:
            name, device_type = payloads.parse_gateway_connect(payload, max_bytes=self.max_bytes)
        except PayloadError as e:
            self.ingest.reject(ref.device_id, e.reason.value, e.detail)
            return
        await self.child(ref, name, device_type)

    async def _gateway_disconnect(self, ref: Any, payload: bytes, conn: Connection, _rid: str) -> None:
        try:
            payloads.parse_gateway_connect(payload, max_bytes=self.max_bytes)
        except PayloadError as e:
            self.ingest.reject(ref.device_id, e.reason.value, e.detail)

    def _parse_gateway_telemetry(self, ref: Any, payload: bytes) -> GatewayFrames | None:
        """A gateway's telemetry message per child device name; rejects counted on the gateway."""
        try:
            per_device, rejects = payloads.parse_gateway_telemetry(
                payload, now_ms=int(time.time() * 1000), max_bytes=self.max_bytes)
        except PayloadError as e:
            self.ingest.reject(ref.device_id, e.reason.value, e.detail)
            return None
        for r in rejects:
            self.ingest.reject(ref.device_id, r.reason.value, r.detail)
        return per_device

    def cached_children_frames(self, ref: Any, per_device: GatewayFrames) -> Frames | None:
        """The frames of a parsed gateway message when every child is known already, else None
        (the hot paths of the embedded broker and of the bridge; children() creates the rest)."""
        out: list[Frame] = []
        children = self._children
        gateway_id = ref.device_id
        for name, frames in per_device.items():
            known = children.get((gateway_id, name))
            if known is None:
                return None
            device_id = known.ref.device_id
            out += [(device_id, ts, values) for ts, values in frames]
        return Frames(out)

    async def _children_frames(self, ref: Any, per_device: GatewayFrames) -> Frames:
        """The frames of a parsed gateway message, children created on first sight."""
        out: list[Frame] = []
        for name, frames in per_device.items():
            child = await self.child(ref, name)
            device_id = child.device_id
            out += [(device_id, ts, values) for ts, values in frames]
        return Frames(out)

    async def _queue_gateway_frames(self, ref: Any, per_device: GatewayFrames,
                                    on_durable: Callable[[BaseException | None], None]) -> None:
        points = await self._children_frames(ref, per_device)
        if points:
            await self.ingest.submit_queued(points, enterprise_id=ref.enterprise_id, on_durable=on_durable)
        else:
            on_durable(None)

    async def _gateway_telemetry(self, ref: Any, payload: bytes, conn: Connection, _rid: str) -> None:
        per_device = self._parse_gateway_telemetry(ref, payload)
        if per_device is not None:
            points = await self._children_frames(ref, per_device)
            if points:
                await self.ingest.submit(points, enterprise_id=ref.enterprise_id)

    async def _gateway_attributes(self, ref: Any, payload: bytes, conn: Connection, _rid: str) -> None:
        try:
            per_device, rejects = payloads.parse_gateway_attributes(payload, max_bytes=self.max_bytes)
        except PayloadError as e:
            self.ingest.reject(ref.device_id, e.reason.value, e.detail)
            return
        for r in rejects:
            self.ingest.reject(ref.device_id, r.reason.value, r.detail)
        for name, values in per_device.items():
            child = await self.child(ref, name)
            await asyncio.to_thread(self.ingest.save_client_attributes, child, values)

    async def _gateway_attributes_request(self, ref: Any, payload: bytes, conn: Connection, _rid: str) -> None:
        # {"id": 1, "device": "A", "client": true, "key": "k"} or "keys": [...]
        try:
            data = payloads.decode(payload, max_bytes=self.max_bytes)
            if type(data) is not dict or not isinstance(data.get("device"), str):
                raise PayloadError(RejectReason.not_an_object, "expected {\"id\", \"device\", \"key\" or \"keys\"}")
        except PayloadError as e:
            self.ingest.reject(ref.device_id, e.reason.value, e.detail)
            return
        child = await self.child(ref, data["device"])
        client = bool(data.get("client", False))
        keys = [data["key"]] if isinstance(data.get("key"), str) else [
            k for k in data.get("keys") or [] if isinstance(k, str)]
        found = await asyncio.to_thread(self.ingest.read_attributes, child,
                                        client_keys=keys if client else None,
                                        shared_keys=None if client else keys)
        values = found["client" if client else "shared"]
        answer: dict[str, Any] = {"id": data.get("id"), "device": data["device"]}
        if "key" in data:
            answer["value"] = values.get(data["key"])
        else:
            answer["values"] = values
        await conn.publish("v1/gateway/attributes/response", orjson.dumps(answer))

    async def _gateway_rpc(self, ref: Any, payload: bytes, conn: Connection, _rid: str) -> None:
        # The gateway answers a child's server-side RPC: {"device": "A", "id": 1, "data": {...}}
        try:
            data = payloads.decode(payload, max_bytes=self.max_bytes)
            if type(data) is not dict or not isinstance(data.get("device"), str) or "id" not in data:
                raise PayloadError(RejectReason.not_an_object, "expected {\"device\", \"id\", \"data\"}")
        except PayloadError as e:
            self.ingest.reject(ref.device_id, e.reason.value, e.detail)
            return
        child = await self.child(ref, data["device"])
        await self._deliver_rpc_response(child.device_id, str(data["id"]),
                                         orjson.dumps(data.get("data")))

    _handlers: dict[str, Callable[..., Awaitable[None]]] = {
        "attributes": _attributes,
        "attributes_request": _attributes_request,
        "rpc_response": _rpc_response,
        "rpc_request": _rpc_request,
        "gateway_connect": _gateway_connect,
        "gateway_disconnect": _gateway_disconnect,
        "gateway_telemetry": _gateway_telemetry,
        "gateway_attributes": _gateway_attributes,
        "gateway_attributes_request": _gateway_attributes_request,
        "gateway_rpc": _gateway_rpc,
    }

    # -- platform → device ----------------------------------------------------------------------
    def _on_rpc_event(self, event: Event) -> None:
        # Called in the publisher's thread (an API request): hop onto the broker's loop.
        self._schedule(self.send_rpc(_device_id_of(event.topic), event.data))

    def _on_attributes_event(self, event: Event) -> None:
        self._schedule(self.push_shared_attributes(_device_id_of(event.topic), event.data))

    def _on_credentials_event(self, event: Event) -> None:
        # Token rotated or revoked: as ThingsBoard does, the device's live sessions end now, and it
        # must reconnect with its current token (the old one is refused from here on).
        self._schedule(self.disconnect_device(_device_id_of(event.topic)))

    async def disconnect_device(self, device_id: int | None) -> int:
        conns = self._live.pop(device_id, None) if device_id is not None else None
        for conn in list((conns or {}).values()):
            close = getattr(conn, "close", None)
            if close is not None:
                await close()
        return len(conns or {})

    def _schedule(self, coro: Awaitable[None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            with contextlib.suppress(Exception):
                coro.close()  # type: ignore[attr-defined]
            return
        loop.call_soon_threadsafe(lambda: loop.create_task(coro))  # type: ignore[arg-type]

    async def send_rpc(self, device_id: int | None, data: dict[str, Any]) -> bool:
        """Server-side RPC: `{"id", "method", "params"}` to the device, or through its gateway."""
        if device_id is None:
            return False
        request = {"method": data.get("method"), "params": data.get("params", {})}
        request_id = str(data.get("id"))
        conns = self._live.get(device_id)
        if conns:
            body = orjson.dumps(request)
            for conn in list(conns.values()):
                await conn.publish(f"v1/devices/me/rpc/request/{request_id}", body)
            return True
        child = self._child_by_id.get(device_id)
        if child is not None and self._live.get(child.gateway_id):
            body = orjson.dumps({"device": child.name, "data": {"id": data.get("id"), **request}})
            for conn in list(self._live[child.gateway_id].values()):
                await conn.publish("v1/gateway/rpc", body)
            return True
        return False

    async def push_shared_attributes(self, device_id: int | None, data: dict[str, Any]) -> bool:
        """Shared attribute update → `v1/devices/me/attributes` (or `v1/gateway/attributes`)."""
        if device_id is None:
            return False
        scope = data.get("scope", "shared")
        if scope != "shared":
            return False
        values = data.get("values", data.get("attributes"))
        if not isinstance(values, dict) or not values:
            return False
        conns = self._live.get(device_id)
        if conns:
            body = orjson.dumps(values)
            for conn in list(conns.values()):
                await conn.publish("v1/devices/me/attributes", body)
            return True
        child = self._child_by_id.get(device_id)
        if child is not None and self._live.get(child.gateway_id):
            body = orjson.dumps({"device": child.name, "data": values})
            for conn in list(self._live[child.gateway_id].values()):
                await conn.publish("v1/gateway/attributes", body)
            return True
        return False


def _device_id_of(topic: str) -> int | None:
    # rpc.<ent>.<dev> / attributes.<ent>.<dev>
    last = topic.rsplit(".", 1)[-1]
    return int(last) if last.isdigit() else None


def _keys(value: Any) -> list[str]:
    if isinstance(value, str):
        return [k.strip() for k in value.split(",") if k.strip()]
    if isinstance(value, list):
        return [k for k in value if isinstance(k, str)]
    return []


# -- database helper (run in a worker thread) ---------------------------------------------------
def enterprise_limits(db: Any, enterprise_id: int) -> dict[str, Any]:
    from ecoplat.tenancy.models import Enterprise

    with db.session() as s:
        enterprise = s.get(Enterprise, enterprise_id)
        return dict(enterprise.limits or {}) if enterprise is not None else {}


# -- runtime: started by connect/runtime.py after the ingest pipeline ------------------------------
async def start_mqtt(app: Any) -> None:
    """Starts the MQTT transport the settings ask for: the embedded amqtt broker on
    settings.mqtt_port (default), or the bridge to an external broker when
    ECOPLAT_MQTT_BRIDGE_URL is set. Puts `app.state.mqtt` (the device API),
    `app.state.mqtt_broker` or `app.state.mqtt_bridge`."""
    settings: Settings = app.state.settings
    app.state.mqtt = app.state.mqtt_broker = app.state.mqtt_bridge = None
    if not settings.mqtt_enabled:
        return
    api = MqttDeviceApi(ingest=app.state.ingest, settings=settings, db=app.state.db,
                        events=app.state.events)
    api.start()
    app.state.mqtt = api
    if settings.mqtt_bridge_url:
        from ecoplat.connect.bridge import MqttBridge

        bridge = MqttBridge(api, url=settings.mqtt_bridge_url,
                            topics=settings.mqtt_bridge_topics.split(","),
                            group=settings.mqtt_bridge_share_group,
                            client_id=bridge_client_id(settings))
        await bridge.start()
        app.state.mqtt_bridge = bridge
        log.info("MQTT bridge consuming %s as %s", settings.mqtt_bridge_url, bridge_client_id(settings))
        return
    from ecoplat.connect.broker import EmbeddedBroker

    broker = EmbeddedBroker(api, host=settings.mqtt_host, port=settings.mqtt_port)
    try:
        await broker.start()
    except Exception as e:
        api.stop()
        raise RuntimeError(
            f"The embedded MQTT broker cannot listen on {settings.mqtt_host}:{settings.mqtt_port} ({e}). "
            "Another broker (Mosquitto?) may hold the port: choose another with --mqtt-port or "
            "ECOPLAT_MQTT_PORT, or consume that broker with ECOPLAT_MQTT_BRIDGE_URL=mqtt://host:port."
        ) from e
    app.state.mqtt_broker = broker
    log.info("embedded MQTT broker listening on %s:%s", settings.mqtt_host, settings.mqtt_port)


async def stop_mqtt(app: Any) -> None:
    api: MqttDeviceApi | None = getattr(app.state, "mqtt", None)
    if api is not None:
        api.stop()
    bridge = getattr(app.state, "mqtt_bridge", None)
    if bridge is not None:
        await bridge.stop()
    broker = getattr(app.state, "mqtt_broker", None)
    if broker is not None:
        await broker.stop()
    app.state.mqtt = app.state.mqtt_broker = app.state.mqtt_bridge = None


def bridge_client_id(settings: Settings) -> str:
    """Stable per ingest process (its HTTP port), so a restart resumes the persistent session and
    the broker redelivers what was not acknowledged; distinct per process, so shared
    subscriptions spread the load across them."""
    return f"ecoplat-ingest-{settings.port}"
