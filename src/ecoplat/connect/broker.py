"""The embedded MQTT broker: amqtt 0.12 running in the app's event loop.

amqtt alone would queue every PUBLISH on the session, PUBACK it at once and then fan it out to
subscribers. For the ThingsBoard device API that is both wrong and slow: wrong because a QoS 1
PUBACK must mean "durable" (ISSUE 3), slow because the fan-out machinery costs more than the
ingest itself. So the connection handler is replaced by `_DeviceProtocolHandler`, which hands
every publish on an API topic straight to the `MqttDeviceApi` and sends the PUBACK only when that
returns (i.e. after `ingest.submit` returned = the batch is durable). Everything else (CONNECT,
SUBSCRIBE, keep-alive, outgoing QoS 1 to devices) stays amqtt's.

Authentication (username = device access token) and the topic ACL are the broker's
`_authenticate` / `_topic_filtering` hooks, which is where amqtt itself calls its auth and topic
plugins; doing it here keeps the device reference on the amqtt session without a global."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any

from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import MQTTError, NoDataError, ProtocolHandlerError
from amqtt.events import MQTTEvents
from amqtt.mqtt import packet_class
from amqtt.mqtt.constants import QOS_0, QOS_1
from amqtt.mqtt.packet import (
    CONNACK,
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    RESERVED_0,
    RESERVED_15,
    SUBACK,
    SUBSCRIBE,
    UNSUBACK,
    UNSUBSCRIBE,
    MQTTFixedHeader,
)
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.publish import PublishPacket
from amqtt.session import Session

from ecoplat.connect.mqtt5 import Mqtt5State, TranslatingReader, TranslatingWriter

if TYPE_CHECKING:
    from ecoplat.connect.mqtt import MqttDeviceApi

log = logging.getLogger(__name__)

# A client that sends nothing for this many times its keep-alive is disconnected (MQTT 3.1.1
# section 3.1.2.10, MQTT 5 section 3.1.2.11).
KEEP_ALIVE_GRACE = 1.5


class _DeviceProtocolHandler(BrokerProtocolHandler):
    """amqtt's per-connection handler, with API publishes processed before the PUBACK."""

    device_api: MqttDeviceApi
    # See _publish: this connection's publishes that wait in tasks, the lock that keeps their
    # order, and the packet ids of its QoS 1 publishes in arrival order (and those done).
    _waiting_publishes = 0
    _last_packet_at = 0.0  # loop.time() of the last packet read (keep-alive)
    _keep_alive_timer: asyncio.TimerHandle | None = None
    _order: asyncio.Lock | None = None
    _ack_order: collections.deque[int] | None = None
    _ack_ready: set[int] | None = None

    async def handle_publish(self, publish_packet: PublishPacket) -> None:
        session = self.session
        ref = getattr(session, "ecoplat_device", None) if session is not None else None
        topic = publish_packet.topic_name
        qos = publish_packet.qos
        if ref is None or topic is None or qos not in (QOS_0, QOS_1):
            # QoS 2 (not used by ThingsBoard clients) and anything unauthenticated keep amqtt's
            # own flow; the broker's topic filter then handles (or refuses) the message.
            await super().handle_publish(publish_packet)
            return
        packet_id = publish_packet.variable_header.packet_id if publish_packet.variable_header else None
        await self._api_publish(ref, topic, qos, packet_id, bytes(publish_packet.data or b""))

    async def _api_publish(self, ref: Any, topic: str, qos: int, packet_id: int | None, data: bytes) -> None:
        """A device's publish on the API: processed (durable), then acknowledged."""
        try:
            await self.device_api.on_publish(ref, topic, data, self._connection)
        except Exception:  # a bug in one message must never take the connection down
            log.exception("processing MQTT publish on %s failed", topic)
            self.device_api.ingest.reject(ref.device_id, "internal_error", f"{topic}: see server log")
        if qos == QOS_1 and packet_id is not None:
            self._ack(packet_id)

    def _publish(self, ref: Any, topic: str, qos: int, packet_id: int | None, data: bytes,
                 running: collections.deque[asyncio.Task[None]]) -> None:
        """A device's publish from the reader loop. Telemetry is parsed and queued right here,
        and acknowledged by a callback once durable (MqttDeviceApi.publish_nowait): no task, no
        coroutine and no future per message. What has to wait (another topic, a gateway child
        seen for the first time, a full ingest queue) runs in a task; while any such task of
        this connection is unfinished, the publishes behind it queue up behind it, so the
        points go in in the order they came. PUBACKs go out in the order the PUBLISHes came in
        (MQTT 3.1.1 section 4.6), whatever order their work finishes in."""
        if qos == QOS_1 and packet_id is not None:
            self._expect_ack(packet_id)
        on_durable = partial(self._acknowledge, ref, topic, packet_id if qos == QOS_1 else None)
        if self._waiting_publishes:
            self._in_order(ref, topic, data, on_durable, None, running)
            return
        try:
            rest = self.device_api.publish_nowait(ref, topic, data, self._connection, on_durable)
        except Exception as e:  # a bug in one message must never take the connection down
            log.exception("processing MQTT publish on %s failed", topic)
            on_durable(e)
            return
        if rest is not None:
            self._in_order(ref, topic, data, on_durable, rest, running)

    def _in_order(self, ref: Any, topic: str, data: bytes, on_durable: Callable[[BaseException | None], None],
                  rest: Coroutine[Any, Any, None] | None, running: collections.deque[asyncio.Task[None]]) -> None:
        self._waiting_publishes += 1  # counted from now: the next publish must not overtake this one
        if self._order is None:
            self._order = asyncio.Lock()
        running.append(asyncio.create_task(self._when_its_turn(ref, topic, data, on_durable, rest)))

    async def _when_its_turn(self, ref: Any, topic: str, data: bytes,
                             on_durable: Callable[[BaseException | None], None],
                             rest: Coroutine[Any, Any, None] | None) -> None:
        """Handles a publish once every earlier one that waited has queued its points (the
        lock goes to its waiters in the order they asked, which is the order they came in)."""
        assert self._order is not None
        try:
            async with self._order:
                if rest is None:
                    rest = self.device_api.publish_nowait(ref, topic, data, self._connection, on_durable)
                if rest is not None:
                    await rest
        except Exception as e:
            log.exception("processing MQTT publish on %s failed", topic)
            on_durable(e)
        finally:
            if rest is not None:
                rest.close()  # never started when the connection closed first: no warning
            self._waiting_publishes -= 1

    def _acknowledge(self, ref: Any, topic: str, packet_id: int | None, error: BaseException | None) -> None:
        """A publish is done: durable, or failed (counted as a reject and, as _api_publish does,
        acknowledged all the same)."""
        if error is not None:
            log.error("storing MQTT publish on %s failed: %r", topic, error)
            self.device_api.ingest.reject(ref.device_id, "internal_error", f"{topic}: see server log")
        if packet_id is not None:
            self._ack_in_order(packet_id)

    def _expect_ack(self, packet_id: int) -> None:
        if self._ack_order is None:
            self._ack_order, self._ack_ready = collections.deque(), set()
        self._ack_order.append(packet_id)

    def _ack_in_order(self, packet_id: int) -> None:
        """Acknowledges a publish once every publish that came before it is acknowledged."""
        order, ready = self._ack_order, self._ack_ready
        assert order is not None and ready is not None
        ready.add(packet_id)
        while order and order[0] in ready:
            first = order.popleft()
            ready.discard(first)
            self._ack(first)

    async def _reader_loop(self) -> None:
        """The connection's packet loop, in place of amqtt's: a device's QoS 0/1 PUBLISH is
        parsed here from one read of its body and goes straight to the device API.

        amqtt's loop costs, per packet, a task and a timer for its keep-alive wait_for, an
        await per field of the packet and a packet object; at thousands of messages a second
        that was a fifth of the platform process's CPU, and every alarm waits behind it.
        Every other packet (CONNECT, SUBSCRIBE, PINGREQ, PUBACK from devices, QoS 2) is read and
        handled by amqtt's own classes and handlers, as before."""
        session = self.session
        if session is None or self._reader_ready is None or self.reader is None:
            raise ProtocolHandlerError("the reader loop started before the session")
        reader = self.reader
        keep_alive = session.keep_alive if session.keep_alive and session.keep_alive > 0 else None
        loop = asyncio.get_running_loop()
        self._last_packet_at = loop.time()
        if keep_alive:
            self._watch_keep_alive(loop, keep_alive * KEEP_ALIVE_GRACE)
        running: collections.deque[asyncio.Task[None]] = collections.deque()
        # With no plugin listening for received packets (the embedded broker loads none),
        # a publish needs no packet object.
        callbacks = getattr(self.plugins_manager, "_event_plugin_callbacks", None)
        fast = isinstance(callbacks, dict) and MQTTEvents.PACKET_RECEIVED not in callbacks
        # An MQTT 3.1.1 connection's packets are read from the asyncio stream itself (two awaits
        # a packet, not four through two adapters each); a v5 one through its translation.
        plain: asyncio.StreamReader | None = None
        while True:
            try:
                self._reader_ready.set()
                while running and running[0].done():
                    running.popleft()
                if plain is None and isinstance(reader, TranslatingReader):
                    plain = reader.plain_stream
                source = plain if plain is not None else reader
                header = await (_read_plain_header(plain) if plain is not None else _read_fixed_header(reader))
                if header is None:
                    break  # the client closed the connection
                self._last_packet_at = loop.time()
                kind, flags, length = header
                if kind == PUBLISH and fast:
                    qos = (flags >> 1) & 0x03
                    ref = getattr(session, "ecoplat_device", None)
                    if ref is not None and qos in (QOS_0, QOS_1):
                        topic, packet_id, data = _parse_publish(await _read_exactly(source, length), qos)
                        self._publish(ref, topic, qos, packet_id, data, running)
                        continue
                if kind in (RESERVED_0, RESERVED_15):
                    log.warning("%s sent a reserved packet type %d: closing", session.client_id, kind)
                    await self.handle_connection_closed()
                    continue
                fixed = MQTTFixedHeader(kind, flags, length)
                packet = await packet_class(fixed).from_stream(reader, fixed_header=fixed)
                await self.plugins_manager.fire_event(MQTTEvents.PACKET_RECEIVED, packet=packet, session=session)
                handler = _PACKET_HANDLERS.get(kind)
                if handler is None:
                    log.warning("%s sent an unhandled packet type %d", session.client_id, kind)
                elif kind == CONNECT:
                    await getattr(self, handler)(packet)  # the session must exist before anything else runs
                else:
                    running.append(asyncio.create_task(getattr(self, handler)(packet)))
            except MalformedPacketError as e:
                log.warning("%s sent a malformed packet (%s): closing the connection", session.client_id, e)
                break
            except MQTTError:
                log.debug("%s: malformed packet discarded", session.client_id)
            except asyncio.CancelledError:
                break
            except NoDataError:
                break
            except Exception as e:
                log.warning("%s: reading from the connection failed: %r", session.client_id, e)
                break
        if self._keep_alive_timer is not None:
            self._keep_alive_timer.cancel()
        while running:
            running.popleft().cancel()
        await self.handle_connection_closed()
        self._reader_stopped.set()
        await self.stop()

    def _watch_keep_alive(self, loop: asyncio.AbstractEventLoop, grace_s: float) -> None:
        """Closes the connection when the client sends nothing for `grace_s` (MQTT 3.1.1 section
        3.1.2.10: one and a half times its keep-alive). One timer per connection, moved on only
        when it fires, rather than a timeout around every packet read."""

        def check() -> None:
            idle = loop.time() - self._last_packet_at
            if idle < grace_s:
                self._keep_alive_timer = loop.call_later(grace_s - idle, check)
                return
            client = self.session.client_id if self.session is not None else "?"
            log.info("%s sent nothing for %.1f s (keep-alive %.0f s): closing the connection", client, idle,
                     grace_s / KEEP_ALIVE_GRACE)
            if self._reader_task is not None and not self._reader_task.done():
                self._reader_task.cancel()

        self._keep_alive_timer = loop.call_later(grace_s, check)

    def _ack(self, packet_id: int) -> None:
        """Queues a PUBACK; the connection's PUBACKs of one event-loop pass go out in one write.

        A durable batch releases hundreds of publishes at once, and amqtt's own send path costs
        a lock, a drain, a keep-alive timer and a socket write per packet. PUBACKs keep the order
        their PUBLISHes arrived in (MQTT 3.1.1 section 4.6), as the batch releases them in order."""
        pending: list[int] | None = getattr(self, "_ecoplat_acks", None)
        if pending is None:
            pending = self._ecoplat_acks = []
            asyncio.get_running_loop().call_soon(self._flush_acks)
        pending.append(packet_id)

    def _flush_acks(self) -> None:
        ids: list[int] = self._ecoplat_acks
        self._ecoplat_acks = None
        writer = self.writer
        if writer is None or getattr(writer, "is_closed", False) or self.session is None:
            return  # gone: the client resends the unacknowledged messages on its next session
        try:
            # PUBACK: fixed header 0x40, remaining length 2, the packet id (MQTT 3.1.1 3.4).
            writer.write(b"".join(b"\x40\x02" + i.to_bytes(2, "big") for i in ids))
        except (ConnectionError, RuntimeError) as e:
            log.info("acknowledging %d publishes failed: %s", len(ids), e)

    @property
    def _connection(self) -> DeviceConnection:
        conn: DeviceConnection | None = getattr(self, "_ecoplat_connection", None)
        if conn is None:
            conn = self._ecoplat_connection = DeviceConnection(self)
        return conn


class MalformedPacketError(Exception):
    """A packet that breaks MQTT 3.1.1; the connection is closed (section 4.8)."""


_PACKET_HANDLERS = {CONNACK: "handle_connack", SUBSCRIBE: "handle_subscribe", UNSUBSCRIBE: "handle_unsubscribe",
                    SUBACK: "handle_suback", UNSUBACK: "handle_unsuback", PUBACK: "handle_puback",
                    PUBREC: "handle_pubrec", PUBREL: "handle_pubrel", PUBCOMP: "handle_pubcomp",
                    PINGREQ: "handle_pingreq", PINGRESP: "handle_pingresp", PUBLISH: "handle_publish",
                    DISCONNECT: "handle_disconnect", CONNECT: "handle_connect"}


async def _read_exactly(reader: Any, n: int) -> bytes:
    """n bytes from an adapter (read) or an asyncio stream (readexactly)."""
    try:
        if type(reader) is asyncio.StreamReader:
            return await reader.readexactly(n) if n else b""
        data = await reader.read(n)
    except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as e:
        raise NoDataError("the connection closed mid-packet") from e
    if len(data) < n:
        raise NoDataError("the connection closed mid-packet")
    return bytes(data)


async def _read_plain_header(stream: asyncio.StreamReader) -> tuple[int, int, int] | None:
    """_read_fixed_header from the asyncio stream itself: the type byte and the first length
    byte in one read (every packet has both), further length bytes one by one."""
    try:
        head = await stream.readexactly(2)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None  # the client closed the connection between packets
        raise NoDataError("the connection closed mid-packet") from e
    except (ConnectionResetError, BrokenPipeError):
        return None
    first, byte = head[0], head[1]
    length, multiplier = byte & 0x7F, 128
    while byte & 0x80:
        if multiplier > 128**3:
            raise MalformedPacketError("malformed remaining length")
        byte = (await _read_exactly(stream, 1))[0]
        length += (byte & 0x7F) * multiplier
        multiplier *= 128
    return first >> 4, first & 0x0F, length


async def _read_fixed_header(reader: Any) -> tuple[int, int, int] | None:
    """(packet type, flags, remaining length) of the next packet; None at the end of the stream."""
    try:
        first = (await _read_exactly(reader, 1))[0]
    except NoDataError:
        return None
    length, multiplier = 0, 1
    while True:
        byte = (await _read_exactly(reader, 1))[0]
        length += (byte & 0x7F) * multiplier
        if not byte & 0x80:
            return first >> 4, first & 0x0F, length
        multiplier *= 128
        if multiplier > 128**3:
            raise MalformedPacketError("malformed remaining length")


def _parse_publish(body: bytes, qos: int) -> tuple[str, int | None, bytes]:
    """(topic, packet id or None, payload) of a PUBLISH packet's body (MQTT 3.1.1 section 3.3)."""
    if len(body) < 2:
        raise MalformedPacketError("PUBLISH without a topic")
    end = 2 + int.from_bytes(body[:2], "big")
    if len(body) < end + (2 if qos else 0):
        raise MalformedPacketError("PUBLISH shorter than its topic")
    try:
        topic = body[2:end].decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedPacketError("PUBLISH topic is not UTF-8") from e
    if qos:
        return topic, int.from_bytes(body[end:end + 2], "big"), body[end + 2:]
    return topic, None, body[end:]


class DeviceConnection:
    """What the device API needs from one live connection: publish back to that device only.

    ThingsBoard devices all subscribe to the same `v1/devices/me/...` topics, so answers (RPC
    requests, attribute responses, shared-attribute pushes) must go to one session, never through
    the broker's topic fan-out."""

    def __init__(self, handler: BrokerProtocolHandler) -> None:
        self._handler = handler

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DeviceConnection) and other._handler is self._handler

    def __hash__(self) -> int:
        return id(self._handler)

    @property
    def client_id(self) -> str:
        session = self._handler.session
        return session.client_id if session is not None and session.client_id else ""

    async def close(self) -> None:
        """Ends the connection (the broker then cleans the session up as for any disconnect)."""
        writer = self._handler.writer
        if writer is not None:
            with contextlib.suppress(Exception):
                await writer.close()

    async def publish(self, topic: str, payload: bytes, qos: int = QOS_1) -> None:
        if self._handler.session is None:
            return
        # QoS 1 waits for the device's PUBACK (amqtt times out after 5 s); a device that went away
        # must not hold the caller, so errors are logged, not raised.
        try:
            await self._handler.mqtt_publish(topic, payload, qos, False)
        except (TimeoutError, ConnectionError) as e:
            log.info("publish to %s on %s failed: %s", self.client_id, topic, e)
        except Exception:
            log.exception("publish to %s on %s failed", self.client_id, topic)


class EmbeddedBroker(Broker):
    """amqtt's Broker with the device token auth, the device API topic ACL and the ingest handler."""

    def __init__(self, device_api: MqttDeviceApi, *, host: str, port: int,
                 max_connections: int = -1) -> None:
        config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}",
                                      "max_connections": max_connections}},
            # No amqtt plugins at all: no anonymous login, no $SYS tree; our hooks below decide.
            "plugins": {},
            # The session keeps the client's own keep-alive: the reader loop allows it one and
            # a half times over (KEEP_ALIVE_GRACE), as MQTT says, with no further slack.
            "timeout_disconnect_delay": 0,
            "session_expiry_interval": 3600,
        }
        super().__init__(config)
        self.device_api = device_api

    async def stream_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                               listener_name: str) -> None:
        # ThingsBoard's SDK and gateway speak MQTT 5 only; amqtt speaks 3.1.1 (see mqtt5.py).
        state = Mqtt5State()
        await self._client_connected(listener_name,
                                     TranslatingReader(StreamReaderAdapter(reader), state, stream=reader),
                                     TranslatingWriter(StreamWriterAdapter(writer), state))

    async def _initialize_client_session(self, reader: Any, writer: Any, remote_address: str,
                                         remote_port: int) -> tuple[BrokerProtocolHandler, Session]:
        handler, session = await super()._initialize_client_session(reader, writer, remote_address,
                                                                    remote_port)
        # amqtt builds its own handler class from the CONNECT packet; we take it over here,
        # before it is attached or started, so every PUBLISH goes through handle_publish above.
        handler.__class__ = _DeviceProtocolHandler
        handler.device_api = self.device_api  # type: ignore[attr-defined]
        return handler, session

    async def _authenticate(self, session: Session, _listener: Any) -> bool:
        ref = await self.device_api.authenticate(session.username, session.password,
                                                 client_id=session.client_id)
        session.ecoplat_device = ref  # type: ignore[attr-defined]
        return ref is not None

    async def _topic_filtering(self, session: Session, topic: str, action: Action) -> bool:
        ref = getattr(session, "ecoplat_device", None)
        if ref is None:
            return False
        if action == Action.SUBSCRIBE:
            return self.device_api.may_subscribe(ref, topic)
        # A publish reaches the broker's own delivery only when the handler let it through
        # (QoS 2): API topics are processed there; everything else is outside the API.
        self.device_api.reject_foreign_topic(ref, topic)
        return False

    async def _handle_message_delivery(self, client_session: Session, handler: BrokerProtocolHandler,
                                       wait_deliver: asyncio.Future[Any]) -> bool:
        app_message = wait_deliver.result()
        ref = getattr(client_session, "ecoplat_device", None)
        if app_message is not None and ref is not None and app_message.topic:
            conn = DeviceConnection(handler)
            try:
                await self.device_api.on_publish(ref, app_message.topic, bytes(app_message.data or b""),
                                                 conn)
            except Exception:
                log.exception("processing MQTT publish on %s failed", app_message.topic)
            return True
        return await super()._handle_message_delivery(client_session, handler, wait_deliver)

    async def _client_message_loop(self, client_session: Session, handler: BrokerProtocolHandler) -> None:
        # Runs once CONNACK is sent and the handler started: the device is reachable from now on.
        ref = getattr(client_session, "ecoplat_device", None)
        conn = DeviceConnection(handler)
        if ref is not None:
            self.device_api.connection_opened(ref, client_session.client_id or "", conn)
        try:
            await super()._client_message_loop(client_session, handler)
        finally:
            if ref is not None:
                self.device_api.connection_closed(ref, client_session.client_id or "", conn)

    def connection_for(self, client_id: str) -> DeviceConnection | None:
        entry = self._sessions.get(client_id)
        if entry is None:
            return None
        session, handler = entry
        if not session.transitions.is_connected():
            return None
        return DeviceConnection(handler)

    def is_subscribed(self, client_id: str, topic: str) -> bool:
        """Whether the client holds a subscription whose filter matches topic (MQTT 4.7 rules)."""
        for topic_filter, subscribers in self._subscriptions.items():
            if any(s.client_id == client_id for s, _ in subscribers) and topic_matches(topic_filter, topic):
                return True
        return False

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.shutdown()


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching with '+' and '#' (MQTT 3.1.1 section 4.7)."""
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)
