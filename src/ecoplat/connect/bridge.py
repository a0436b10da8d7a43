"""Bridge mode: ingest from an external broker (Mosquitto, EMQX) instead of the embedded one.

Enabled by `ECOPLAT_MQTT_BRIDGE_URL=mqtt://host:port`. Each ingest process subscribes (MQTT 5,
with the small asyncio client in `connect/mqtt_client.py`) to the configured topics as
`$share/<group>/<topic>`, so several processes split the load and the broker hands each message
to exactly one of them. Messages are parsed on the event loop as they arrive; everything parsed
from one read of the socket goes to the ingest queue as one submission.

Device identity. A subscriber behind a broker never learns who published, and a non-gateway
payload is never trusted to name its device. The identity therefore comes from the topic, whose
second level is the device's access token:

    v1/devices/<access token>/telemetry | attributes | attributes/request/<id> | rpc/request/<id> | rpc/response/<id>
    v1/gateway/<gateway access token>/telemetry | attributes | connect | disconnect | rpc

Knowing the token is what proves identity, as with the username of the embedded broker. On
Mosquitto, give each device its token as username and a per-user pattern ACL
(`pattern write v1/devices/%u/#`, `pattern read v1/devices/%u/#`, the same for `v1/gateway/%u/#`),
so a device can neither publish as another nor read another's topics. Children behind a gateway
are named in the gateway payload, which the gateway API defines. Answers (attribute responses,
client-side RPC answers such as the gateway's `getSessionLimits`) go back on the same topic family
with `me` replaced by the token. Server-side RPC and shared-attribute pushes are not routed through
the bridge: they need the device's live connection, which only the embedded broker has.

Broker settings. Mosquitto's defaults hold each subscriber to 20 unacknowledged messages in
flight (`max_inflight_messages 20`) and drop what queues beyond 1000 (`max_queued_messages`). A
consumer that acknowledges only after a durable write needs both lifted, or throughput is capped at
20 messages per write cycle and bursts (or the seconds an ingest process takes to restart) are
dropped by the broker:

    max_inflight_messages 0
    max_queued_messages 0        # or a bound that covers a restart at the peak rate

Durability and crashes: QoS 1 with manual acknowledgement: a message is acknowledged to the
broker only after the points it carried are durable. The session is persistent
(clean_start False, a session expiry interval) under a client id stable for this process
(`ecoplat-ingest-<port>` by default), so after a kill -9 and a restart the broker redelivers every
message that had not been acknowledged. Replays are harmless because the store keeps one row per
(device, key, ts): devices that send their own `ts` are never doubled."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

from prometheus_client import Counter

from ecoplat.connect import payloads
from ecoplat.connect.mqtt import MqttDeviceApi
from ecoplat.connect.mqtt_client import Message, MqttClient
from ecoplat.connect.payloads import PayloadError, RejectReason
from ecoplat.telemetry.points import Point, join_points

log = logging.getLogger(__name__)

# Per process: with shared subscriptions the sum over all ingest processes is what the broker
# delivered, so it shows both the split and that no message was handled twice.
BRIDGE_MESSAGES = Counter("ecoplat_mqtt_bridge_messages_total",
                          "Messages this process received from the external broker (bridge mode)")

SESSION_EXPIRY_S = 3600
# Messages the broker may have in flight to us unacknowledged (MQTT 5 Receive Maximum). Acks wait
# for a durable batch, so this must cover a whole batch interval at full rate.
RECEIVE_MAXIMUM = 65535


class BridgeConnection:
    """Answers to one device through the external broker, on its token topic family."""

    def __init__(self, bridge: MqttBridge, token: str, *, gateway: bool) -> None:
        self._bridge = bridge
        self._token = token
        self._gateway = gateway
        self.client_id = f"bridge:{token[:6]}"

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        if topic.startswith("v1/devices/me/"):
            topic = f"v1/devices/{self._token}/" + topic[len("v1/devices/me/"):]
        elif topic.startswith("v1/gateway/"):
            topic = f"v1/gateway/{self._token}/" + topic[len("v1/gateway/"):]
        self._bridge.client.publish(topic, payload, qos=qos)


class MqttBridge:
    """One shared-subscription consumer of the external broker for this process."""

    def __init__(self, device_api: MqttDeviceApi, *, url: str, topics: list[str], group: str,
                 client_id: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("mqtt", "tcp", ""):
            raise ValueError(f"ECOPLAT_MQTT_BRIDGE_URL must be mqtt://host:port, got {url!r}")
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 1883
        self.username = parsed.username
        self.password = parsed.password
        self.topics = [t.strip() for t in topics if t.strip()]
        self.group = group
        self.device_api = device_api
        self.ingest = device_api.ingest
        self.max_bytes = device_api.max_bytes
        self.client = MqttClient(host=self.host, port=self.port, client_id=client_id,
                                 subscriptions=[f"$share/{group}/{t}" for t in self.topics], qos=1,
                                 username=self.username, password=self.password, keepalive=30,
                                 clean_start=False, session_expiry=SESSION_EXPIRY_S,
                                 receive_maximum=RECEIVE_MAXIMUM, on_message=self._on_message,
                                 on_connect=self._on_connect, on_disconnect=self._on_disconnect)
        self.connected = threading.Event()
        # Parsed telemetry waiting for its submission: (enterprise id, points, message). Every
        # message parsed from one read of the socket goes into one submit per enterprise, and
        # those messages are acknowledged once that submit returned (durable).
        self._pending: list[tuple[int, Sequence[Point], Message | None]] = []
        self._drain_scheduled = False
        # Messages of a token not in the cache yet wait here, in order, while it is looked up.
        self._unresolved: dict[str, list[Message]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.messages = 0

    # -- life cycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.client.start()
        try:
            await asyncio.wait_for(self.client.connected.wait(), 15)
        except TimeoutError:
            log.warning("bridge: no CONNACK from %s:%s yet; retrying in the background", self.host, self.port)

    async def stop(self) -> None:
        # Wait briefly for in-flight submissions so their acks go out before disconnecting.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        await self.client.close()

    # -- client callbacks (on the event loop) ---------------------------------------------------
    def _on_connect(self, session_present: bool) -> None:
        log.info("bridge: connected to %s:%s (session %s), shared group %r, %d topic filters",
                 self.host, self.port, "resumed" if session_present else "new", self.group, len(self.topics))
        self.connected.set()

    def _on_disconnect(self, reason: str) -> None:
        self.connected.clear()
        log.info("bridge: disconnected (%s); reconnecting", reason)

    def _on_message(self, msg: Message) -> None:
        self.messages += 1
        BRIDGE_MESSAGES.inc()
        topic = msg.topic
        parts = topic.split("/", 3)
        try:
            if len(parts) == 4 and parts[0] == "v1" and parts[1] in ("devices", "gateway"):
                token = parts[2]
                waiting = self._unresolved.get(token)
                if waiting is not None:
                    waiting.append(msg)
                    return
                ref = self.ingest.cached_token(token)
                if ref is None:
                    self._unresolved[token] = [msg]
                    self._create_task(self._resolve_then_handle(token))
                    return
                self._handle(ref, parts[1], token, parts[3], msg)
                return
            self.ingest.reject(None, RejectReason.topic_not_allowed.value,
                               f"bridge: {topic!r} is not v1/devices/<token>/… or v1/gateway/<token>/…")
        except Exception:
            log.exception("bridge: processing %s failed", topic)
        self.client.ack(msg)

    async def _resolve_then_handle(self, token: str) -> None:
        """First sight of a token: look it up off the loop, then handle what queued meanwhile, in order."""
        try:
            ref = await self.device_api.resolve(token)
        except Exception:
            log.exception("bridge: looking up a token failed; its messages stay unacknowledged")
            self._unresolved.pop(token, None)
            return
        for msg in self._unresolved.pop(token, []):
            family, _token, rest = msg.topic.split("/", 3)[1:]
            try:
                self._handle(ref, family, token, rest, msg)
            except Exception:
                log.exception("bridge: processing %s failed", msg.topic)
                self.client.ack(msg)

    def _handle(self, ref: Any, family: str, token: str, rest: str, msg: Message) -> None:
        if ref is None:
            self.ingest.reject(None, RejectReason.unknown_token.value,
                               f"bridge: unknown access token {token[:4]}… on {family}/{rest}")
            self.client.ack(msg)
            return
        if getattr(ref, "revoked", False):
            self.ingest.reject(ref.device_id, RejectReason.revoked_token.value,
                               f"bridge: revoked access token on {family}/{rest}")
            self.client.ack(msg)
            return
        payload = msg.payload
        if family == "devices" and rest == "telemetry":
            # The hot path: parse here and queue; acked once durable.
            try:
                points, rejects = payloads.parse_telemetry(payload, device_id=ref.device_id,
                                                           now_ms=int(time.time() * 1000),
                                                           max_bytes=self.max_bytes)
            except PayloadError as e:
                self.ingest.reject(ref.device_id, e.reason.value, e.detail)
                self.client.ack(msg)
                return
            for r in rejects:
                self.ingest.reject(ref.device_id, r.reason.value, r.detail)
            if not points:
                self.client.ack(msg)
                return
            self._enqueue(ref.enterprise_id, points, msg)
            return
        if (family == "gateway" and rest == "telemetry" and getattr(ref, "is_gateway", False)
                and self._gateway_telemetry(ref, payload, msg)):
            return
        # Everything else (gateway API, attributes, RPC) goes through the shared device API,
        # with answers routed back on this token's topics; acked when it has been processed.
        me_topic = ("v1/devices/me/" if family == "devices" else "v1/gateway/") + rest
        conn = BridgeConnection(self, token, gateway=family == "gateway")
        self._create_task(self._process(ref, me_topic, payload, conn, msg))

    def _gateway_telemetry(self, ref: Any, payload: bytes, msg: Message) -> bool:
        """Gateway telemetry on the hot path, when every child it names is known already; False
        (nothing done) sends it the slow way, which creates the children."""
        gateway_id = ref.device_id
        try:
            per_device, rejects = payloads.parse_gateway_telemetry(payload, now_ms=int(time.time() * 1000),
                                                                   max_bytes=self.max_bytes)
        except PayloadError as e:
            self.ingest.reject(gateway_id, e.reason.value, e.detail)
            self.client.ack(msg)
            return True
        points = self.device_api.cached_children_frames(ref, per_device)
        if points is None:
            return False
        for r in rejects:
            self.ingest.reject(gateway_id, r.reason.value, r.detail)
        if points:
            self._enqueue(ref.enterprise_id, points, msg)
        else:
            self.client.ack(msg)
        return True

    def _enqueue(self, enterprise_id: int, points: Sequence[Point], msg: Message) -> None:
        self._pending.append((enterprise_id, points, msg))
        if not self._drain_scheduled:
            self._drain_scheduled = True
            assert self._loop is not None
            # After the rest of this read's messages: they join the same submission.
            self._loop.call_soon(self._start_drain)

    def _create_task(self, coro: Any) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_drain(self) -> None:
        items, self._pending = self._pending, []
        self._drain_scheduled = False
        if items:
            self._create_task(self._submit(items))

    async def _submit(self, items: list[tuple[int, Sequence[Point], Message | None]]) -> None:
        parts: dict[int, list[Sequence[Point]]] = {}
        for enterprise_id, points, _msg in items:
            parts.setdefault(enterprise_id, []).append(points)
        by_enterprise = {enterprise_id: join_points(seqs) for enterprise_id, seqs in parts.items()}
        try:
            for enterprise_id, points in by_enterprise.items():
                await self.ingest.submit(points, enterprise_id=enterprise_id)
        except Exception:
            # Not durable: no ack, so the broker redelivers these messages after a reconnect.
            log.exception("bridge: submitting %d messages failed; they stay unacknowledged", len(items))
            return
        self.client.ack_many([msg for _e, _p, msg in items if msg is not None])

    async def _process(self, ref: Any, topic: str, payload: bytes, conn: BridgeConnection, msg: Message) -> None:
        try:
            await self.device_api.on_publish(ref, topic, payload, conn)
        except Exception:
            log.exception("bridge: processing %s failed", topic)
        self.client.ack(msg)
