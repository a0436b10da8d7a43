"""A small asyncio MQTT 5 client for the bridge's consumer side: subscribe (shared subscriptions,
QoS 1), acknowledge each message when the caller says so, publish answers, keep the session.

Why not paho-mqtt here: paho reads every packet with three or four `recv` calls (the command
byte, each byte of the remaining length, then the body) and builds a message object with locks
around each callback, in a thread of its own whose work then hops to the event loop. For the
bridge that was close to half the process's Python time at 3,000 gateway messages a second
(py-spy, GIL samples). Here one `data_received` takes whatever the kernel has (many packets),
parses them with slicing on the event loop, and hands each PUBLISH to the callback in order.

What it speaks (MQTT 5.0, OASIS standard): CONNECT with clean start, session expiry, receive
maximum, user name and password; SUBSCRIBE; PUBLISH in both directions at QoS 0 and 1; PUBACK;
PINGREQ keep-alive; DISCONNECT. Not spoken: QoS 2 (the subscriptions ask for at most 1, so the
broker never sends it), topic aliases (not enabled, so the broker sends none), AUTH, TLS.
It reconnects with back-off and subscribes again after each CONNACK."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 0x82, 0x90, 0xC0, 0xD0, 0xE0

_PROP_SESSION_EXPIRY = 0x11
_PROP_RECEIVE_MAXIMUM = 0x21
# Property identifier → its value's width in bytes (0: UTF-8 string or binary data with a 2-byte
# length, -1: string pair, -2: variable byte integer). Only needed to skip properties.
_PROP_WIDTH = {0x01: 1, 0x02: 4, 0x03: 0, 0x08: 0, 0x09: 0, 0x0B: -2, 0x11: 4, 0x12: 0, 0x13: 2,
               0x15: 0, 0x16: 0, 0x17: 1, 0x18: 4, 0x19: 1, 0x1A: 0, 0x1C: 0, 0x1F: 0, 0x21: 2,
               0x22: 2, 0x23: 2, 0x24: 1, 0x25: 1, 0x26: -1, 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1}


class ProtocolError(Exception):
    """The broker sent something this client cannot read; the connection is dropped."""


@dataclass(slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    mid: int  # 0 for QoS 0
    connection: int  # which connection it came on: an ack is only valid on that one


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    value, mult = 0, 1
    for i in range(4):
        if pos + i >= len(buf):
            raise IndexError
        byte = buf[pos + i]
        value += (byte & 127) * mult
        if not byte & 128:
            return value, pos + i + 1
        mult *= 128
    raise ProtocolError("a variable byte integer longer than 4 bytes")


def _string(s: str | bytes) -> bytes:
    data = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(data)) + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _varint(len(body)) + body


def connect_packet(client_id: str, *, keepalive: int, clean_start: bool, session_expiry: int,
                   receive_maximum: int, username: str | None, password: str | None) -> bytes:
    flags = (0x02 if clean_start else 0) | (0x80 if username else 0) | (0x40 if password else 0)
    props = (bytes((_PROP_SESSION_EXPIRY,)) + struct.pack("!I", session_expiry)
             + bytes((_PROP_RECEIVE_MAXIMUM,)) + struct.pack("!H", receive_maximum))
    body = _string("MQTT") + bytes((5, flags)) + struct.pack("!H", keepalive) + _varint(len(props)) + props
    body += _string(client_id)
    if username:
        body += _string(username)
    if password:
        body += _string(password)
    return _packet(CONNECT, body)


def subscribe_packet(mid: int, filters: list[str], qos: int) -> bytes:
    body = struct.pack("!H", mid) + b"\x00"  # no properties
    for f in filters:
        body += _string(f) + bytes((qos,))  # no-local must stay 0 on a shared subscription
    return _packet(SUBSCRIBE, body)


def publish_packet(topic: str, payload: bytes, qos: int, mid: int) -> bytes:
    body = _string(topic) + (struct.pack("!H", mid) if qos else b"") + b"\x00" + payload
    return _packet(PUBLISH | (qos << 1), body)


def puback_packet(mid: int) -> bytes:
    return b"\x40\x02" + mid.to_bytes(2, "big")


def _skip_properties(body: bytes, pos: int) -> int:
    length, pos = _read_varint(body, pos)
    return pos + length


def read_properties(body: bytes, pos: int) -> tuple[dict[int, object], int]:
    """The properties at pos (for CONNACK and DISCONNECT, where their values are logged)."""
    length, pos = _read_varint(body, pos)
    end, out = pos + length, {}
    while pos < end:
        pid = body[pos]
        pos += 1
        width = _PROP_WIDTH.get(pid)
        if width is None:
            raise ProtocolError(f"unknown property 0x{pid:02x}")
        if width > 0:
            out[pid] = int.from_bytes(body[pos:pos + width], "big")
            pos += width
        elif width == 0:
            n = int.from_bytes(body[pos:pos + 2], "big")
            out[pid] = bytes(body[pos + 2:pos + 2 + n])
            pos += 2 + n
        elif width == -1:
            for _ in range(2):
                n = int.from_bytes(body[pos:pos + 2], "big")
                pos += 2 + n
        else:
            out[pid], pos = _read_varint(body, pos)
    return out, end


class PacketReader:
    """Bytes in, whole packets out: (first byte, body) in arrival order. Pure, no I/O."""

    def __init__(self, max_packet: int) -> None:
        self._buf = bytearray()
        self.max_packet = max_packet

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[int, bytes]] = []
        pos, end = 0, len(buf)
        while end - pos >= 2:
            try:
                length, start = _read_varint(buf, pos + 1)
            except IndexError:
                break
            if length > self.max_packet:
                raise ProtocolError(f"a packet of {length} bytes is over the limit of {self.max_packet}")
            if start + length > end:
                break
            out.append((buf[pos], bytes(buf[start:start + length])))
            pos = start + length
        if pos:
            del buf[:pos]
        return out


def parse_publish(first: int, body: bytes) -> tuple[str, bytes, int, int]:
    """(topic, payload, qos, packet id) of a PUBLISH body."""
    qos = (first >> 1) & 3
    n = int.from_bytes(body[:2], "big")
    topic = body[2:2 + n].decode()
    pos = 2 + n
    mid = 0
    if qos:
        mid = int.from_bytes(body[pos:pos + 2], "big")
        pos += 2
    pos = _skip_properties(body, pos)
    return topic, body[pos:], qos, mid


class MqttClient(asyncio.Protocol):
    """One connection at a time to one broker, kept up until close()."""

    def __init__(self, *, host: str, port: int, client_id: str, on_message: Callable[[Message], None],
                 on_connect: Callable[[bool], None] | None = None, on_disconnect: Callable[[str], None] | None = None,
                 subscriptions: list[str], qos: int = 1, username: str | None = None,
                 password: str | None = None, keepalive: int = 30, clean_start: bool = False,
                 session_expiry: int = 3600, receive_maximum: int = 65535,
                 max_packet: int = 16 * 1024 * 1024) -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self.on_message, self.on_connect, self.on_disconnect = on_message, on_connect, on_disconnect
        self.subscriptions, self.qos = subscriptions, qos
        self.username, self.password = username, password
        self.keepalive, self.clean_start = keepalive, clean_start
        self.session_expiry, self.receive_maximum, self.max_packet = session_expiry, receive_maximum, max_packet
        self.connected = asyncio.Event()
        self.connection = 0  # increases with every connection
        self._transport: asyncio.Transport | None = None
        self._reader = PacketReader(max_packet)
        self._mids = itertools.cycle(range(1, 65536))
        self._lost: asyncio.Future[str] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._last_received = 0.0

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run(), name=f"mqtt-client-{self.client_id}")

    async def close(self) -> None:
        self._closing = True
        if self._transport is not None and self.connected.is_set():
            self._transport.write(b"\xe0\x00")  # DISCONNECT, normal
            self._transport.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.5
        while not self._closing:
            self._lost = loop.create_future()
            try:
                await loop.create_connection(lambda: self, self.host, self.port)
                reason = await self._session()
                delay = 0.5
            except (OSError, ProtocolError, TimeoutError) as e:
                reason = str(e) or type(e).__name__
            except Exception as e:  # keep the connection alive whatever went wrong
                log.exception("mqtt %s:%s: unexpected error", self.host, self.port)
                reason = repr(e)
            self._drop(reason)
            if self._closing:
                return
            log.warning("mqtt %s:%s: %s; reconnecting in %.1f s", self.host, self.port, reason, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _session(self) -> str:
        """CONNECT, then keep-alive until the connection is lost; returns why it ended."""
        if self._transport is None or self._lost is None:
            raise OSError("the connection closed as it opened")
        loop = asyncio.get_running_loop()
        self._transport.write(connect_packet(
            self.client_id, keepalive=self.keepalive, clean_start=self.clean_start,
            session_expiry=self.session_expiry, receive_maximum=self.receive_maximum,
            username=self.username, password=self.password))
        waiter = loop.create_task(self.connected.wait())
        try:
            async with asyncio.timeout(15):
                await asyncio.wait([self._lost, waiter], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if self._lost.done():
            return self._lost.result()
        if not self.connected.is_set():
            raise TimeoutError("no CONNACK within 15 s")
        interval = max(1.0, self.keepalive / 2)
        while True:
            done, _ = await asyncio.wait([self._lost], timeout=interval)
            if done:
                return self._lost.result()
            if loop.time() - self._last_received > self.keepalive * 1.5:
                return f"nothing from the broker for {self.keepalive * 1.5:.0f} s"
            self._write(b"\xc0\x00")  # PINGREQ

    def _drop(self, reason: str) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        if self._transport is not None:
            self._transport.abort()
            self._transport = None
        self._reader = PacketReader(self.max_packet)
        if was_connected and self.on_disconnect is not None:
            self.on_disconnect(reason)

    # -- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not asyncio's class
        self._last_received = asyncio.get_running_loop().time()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(f"connection lost ({exc})" if exc else "the broker closed the connection")

    def data_received(self, data: bytes) -> None:
        self._last_received = asyncio.get_running_loop().time()
        try:
            packets = self._reader.feed(data)
            for first, body in packets:
                kind = first & 0xF0
                if kind == PUBLISH:
                    topic, payload, qos, mid = parse_publish(first, body)
                    try:
                        self.on_message(Message(topic, payload, qos, mid, self.connection))
                    except Exception:
                        log.exception("mqtt: handling a message on %s failed", topic)
                elif kind == CONNACK:
                    self._on_connack(body)
                elif kind == DISCONNECT:
                    code = body[0] if body else 0
                    raise ProtocolError(f"the broker disconnected us (reason code 0x{code:02x})")
                # SUBACK failures are logged; PUBACK (for our answers) and PINGRESP need nothing.
                elif kind == SUBACK:
                    self._on_suback(body)
        except (ProtocolError, IndexError, UnicodeDecodeError) as e:
            if self._lost is not None and not self._lost.done():
                self._lost.set_result(f"protocol error: {e}")

    def _on_connack(self, body: bytes) -> None:
        session_present, code = bool(body[0] & 1), body[1]
        if code >= 0x80:
            props, _ = read_properties(body, 2) if len(body) > 2 else ({}, 2)
            reason = props.get(0x1F, b"").decode("utf-8", "replace")  # type: ignore[union-attr]
            raise ProtocolError(f"connection refused (reason code 0x{code:02x}{': ' + reason if reason else ''})")
        self.connection += 1
        self._write(subscribe_packet(next(self._mids), self.subscriptions, self.qos))
        self.connected.set()
        if self.on_connect is not None:
            self.on_connect(session_present)

    def _on_suback(self, body: bytes) -> None:
        pos = _skip_properties(body, 2)
        for f, code in zip(self.subscriptions, body[pos:], strict=False):
            if code >= 0x80:
                log.error("mqtt %s:%s refused the subscription %r (reason code 0x%02x)",
                          self.host, self.port, f, code)

    # -- sending --------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def ack(self, message: Message) -> None:
        """Acknowledges a QoS 1 message; nothing if it came on an earlier connection (the broker
        sends it again on this one, and that copy is acknowledged instead)."""
        if message.qos and message.connection == self.connection and self.connected.is_set():
            self._write(puback_packet(message.mid))

    def ack_many(self, messages: list[Message]) -> None:
        current = self.connection
        data = b"".join(puback_packet(m.mid) for m in messages if m.qos and m.connection == current)
        if data and self.connected.is_set():
            self._write(data)

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        """Sends (at most QoS 1) if connected; answers are not queued across reconnects."""
        qos = min(qos, 1)
        self._write(publish_packet(topic, payload, qos, next(self._mids) if qos else 0))
