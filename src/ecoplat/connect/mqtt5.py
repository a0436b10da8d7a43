"""MQTT 5 clients on the embedded broker, by translating packets to and from MQTT 3.1.1.

amqtt 0.12 speaks MQTT 3.1.1 only, but the ThingsBoard device SDK (`tb-mqtt-client`) and the
ThingsBoard IoT Gateway connect with MQTT 5 and nothing else. This module sits between the socket
and amqtt: it reads the CONNECT, and when its protocol level is 5 it rewrites every packet of that
connection — v5 → 3.1.1 towards amqtt (properties dropped, subscription options reduced to the
QoS, reason codes after acks trimmed, topic aliases resolved) and 3.1.1 → v5 towards the client
(empty property sections added, CONNACK return codes mapped to v5 reason codes, one reason code
per topic in UNSUBACK). MQTT 3.1.1 connections pass through untouched.

What is lost in translation: v5 properties (user properties, message expiry, response topic…).
The ThingsBoard device API does not use them."""

from __future__ import annotations

import asyncio
import ssl

from amqtt.adapters import ReaderAdapter, WriterAdapter

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14
TOPIC_ALIAS = 0x23

# MQTT 3.1.1 CONNACK return code → MQTT 5 reason code (MQTT 5.0 section 3.2.2.2).
_CONNACK_V5 = {0: 0x00, 1: 0x84, 2: 0x85, 3: 0x88, 4: 0x86, 5: 0x87}


class ProtocolMismatch(Exception):
    """A v5 packet this translator cannot express in 3.1.1; the connection is closed."""


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value % 128
        value //= 128
        if value:
            byte |= 0x80
        out.append(byte)
        if not value:
            return bytes(out)


def decode_varint(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    """(value, position after it) of the variable byte integer at pos."""
    value, multiplier = 0, 1
    while True:
        byte = buf[pos]
        pos += 1
        value += (byte & 0x7F) * multiplier
        if not byte & 0x80:
            return value, pos
        multiplier *= 128
        if multiplier > 128**3:
            raise ProtocolMismatch("malformed variable byte integer")


def _packet(first_byte: int, body: bytes | bytearray) -> bytes:
    return bytes((first_byte,)) + encode_varint(len(body)) + bytes(body)


def _string_end(buf: bytes | bytearray, pos: int) -> int:
    return pos + 2 + int.from_bytes(buf[pos:pos + 2], "big")


class Mqtt5State:
    """Per connection: whether it speaks v5, its topic aliases, pending UNSUBSCRIBE sizes."""

    __slots__ = ("v5", "aliases", "unsubscribe_counts", "decided")

    def __init__(self) -> None:
        self.v5 = False
        self.decided = False
        self.aliases: dict[int, str] = {}
        self.unsubscribe_counts: dict[int, int] = {}


def v5_to_v311(first: int, body: bytes, state: Mqtt5State) -> bytes:
    """One client packet (fixed header byte + body) → its MQTT 3.1.1 form."""
    kind = first >> 4
    if kind == PUBLISH:
        qos = (first >> 1) & 0x03
        topic_end = _string_end(body, 0)
        pid_end = topic_end + (2 if qos else 0)
        props_len, props_start = decode_varint(body, pid_end)
        props_end = props_start + props_len
        topic = body[:topic_end]
        if props_len:
            alias = _topic_alias(body, props_start, props_end)
            if alias is not None:
                if topic_end > 2:
                    state.aliases[alias] = body[2:topic_end].decode("utf-8")
                elif alias in state.aliases:
                    name = state.aliases[alias].encode("utf-8")
                    topic = len(name).to_bytes(2, "big") + name
                else:
                    raise ProtocolMismatch(f"unknown topic alias {alias}")
        return _packet(first, topic + body[topic_end:pid_end] + body[props_end:])
    if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        return _packet(first, body[:2])
    if kind == SUBSCRIBE:
        props_len, pos = decode_varint(body, 2)
        pos += props_len
        out = bytearray(body[:2])
        while pos < len(body):
            end = _string_end(body, pos)
            out += body[pos:end]
            out.append(body[end] & 0x03)  # v5 options → the requested QoS only
            pos = end + 1
        return _packet(first, out)
    if kind == UNSUBSCRIBE:
        props_len, pos = decode_varint(body, 2)
        pos += props_len
        count, scan = 0, pos
        while scan < len(body):
            scan = _string_end(body, scan)
            count += 1
        state.unsubscribe_counts[int.from_bytes(body[:2], "big")] = count
        return _packet(first, body[:2] + body[pos:])
    if kind == DISCONNECT:
        return _packet(first, b"")
    if kind == PINGREQ:
        return _packet(first, body)
    raise ProtocolMismatch(f"MQTT 5 packet type {kind} is not supported by the embedded broker")


def _topic_alias(body: bytes, pos: int, end: int) -> int | None:
    while pos < end:
        ident = body[pos]
        pos += 1
        if ident == TOPIC_ALIAS:
            return int.from_bytes(body[pos:pos + 2], "big")
        pos = _skip_property(ident, body, pos)
    return None


def _skip_property(ident: int, buf: bytes | bytearray, pos: int) -> int:
    # Property types of MQTT 5.0 section 2.2.2.2, by identifier.
    if ident in (0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A):
        return pos + 1
    if ident in (0x13, 0x21, 0x22, 0x23):
        return pos + 2
    if ident in (0x02, 0x11, 0x18, 0x27):
        return pos + 4
    if ident == 0x0B:
        return decode_varint(buf, pos)[1]
    if ident == 0x26:  # user property: a string pair
        return _string_end(buf, _string_end(buf, pos))
    if ident in (0x03, 0x08, 0x09, 0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F):
        return _string_end(buf, pos)
    raise ProtocolMismatch(f"unknown MQTT 5 property 0x{ident:02x}")


def connect_v5_to_v311(first: int, body: bytes) -> bytes:
    """CONNECT v5 → 3.1.1: protocol level 4, connect and will properties removed."""
    pos = _string_end(body, 0)  # protocol name
    flags = body[pos + 1]
    header_end = pos + 4  # level, flags, keep-alive
    props_len, props_start = decode_varint(body, header_end)
    payload = props_start + props_len
    client_end = _string_end(body, payload)
    out = bytearray(body[:pos]) + b"\x04" + body[pos + 1:header_end] + body[payload:client_end]
    rest = client_end
    if flags & 0x04:  # will flag: will properties, will topic, will payload
        will_props_len, will_start = decode_varint(body, rest)
        rest = will_start + will_props_len
    out += body[rest:]
    return _packet(first, out)


def v311_to_v5(packet: bytes, state: Mqtt5State) -> bytes:
    """One broker packet in 3.1.1 → its MQTT 5 form."""
    first = packet[0]
    kind = first >> 4
    length, start = decode_varint(packet, 1)
    body = packet[start:start + length]
    if kind == PUBLISH:
        qos = (first >> 1) & 0x03
        head_end = _string_end(body, 0) + (2 if qos else 0)
        return _packet(first, body[:head_end] + b"\x00" + body[head_end:])
    if kind == CONNACK:
        return _packet(first, bytes((body[0], _CONNACK_V5.get(body[1], 0x80))) + b"\x00")
    if kind == SUBACK:
        return _packet(first, body[:2] + b"\x00" + body[2:])
    if kind == UNSUBACK:
        count = state.unsubscribe_counts.pop(int.from_bytes(body[:2], "big"), 1)
        return _packet(first, body[:2] + b"\x00" + b"\x00" * count)
    return packet


class TranslatingReader(ReaderAdapter):
    """Reads whole packets from the client, rewriting v5 ones to 3.1.1 for amqtt."""

    def __init__(self, inner: ReaderAdapter, state: Mqtt5State, stream: asyncio.StreamReader | None = None) -> None:
        """stream: the asyncio stream `inner` reads from, if any (see plain_stream)."""
        self._inner = inner
        self._state = state
        self._buffer = bytearray()
        self._stream = stream

    @property
    def plain_stream(self) -> asyncio.StreamReader | None:
        """The asyncio stream itself once the connection is known to speak 3.1.1 and nothing is
        buffered here: what read() would pass through untouched, read without the two adapter
        layers (the broker's packet loop reads every PUBLISH that way)."""
        state = self._state
        if state.decided and not state.v5 and not self._buffer:
            return self._stream
        return None

    async def read(self, n: int = -1) -> bytes:
        state = self._state
        if state.decided and not state.v5 and not self._buffer:
            return await self._inner.read(n)  # 3.1.1: no cost after the CONNECT
        if n < 0:
            data = bytes(self._buffer) + await self._inner.read(n)
            self._buffer.clear()
            return data
        while len(self._buffer) < n:
            self._buffer += await self._next_packet()
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    async def _next_packet(self) -> bytes:
        first = (await self._inner.read(1))[0]
        length, multiplier = 0, 1
        while True:
            byte = (await self._inner.read(1))[0]
            length += (byte & 0x7F) * multiplier
            if not byte & 0x80:
                break
            multiplier *= 128
            if multiplier > 128**3:
                raise ProtocolMismatch("malformed remaining length")
        body = await self._inner.read(length) if length else b""
        state = self._state
        if not state.decided:
            state.decided = True
            if first >> 4 == CONNECT and len(body) > 6 and body[_string_end(body, 0)] == 5:
                state.v5 = True
                return connect_v5_to_v311(first, body)
            return _packet(first, body)
        if state.v5:
            return v5_to_v311(first, body, state)
        return _packet(first, body)

    def feed_eof(self) -> None:
        self._inner.feed_eof()


class TranslatingWriter(WriterAdapter):
    """Writes amqtt's 3.1.1 packets to the client, as v5 when the client spoke v5."""

    def __init__(self, inner: WriterAdapter, state: Mqtt5State) -> None:
        self._inner = inner
        self._state = state
        self._pending = bytearray()

    def write(self, data: bytes) -> None:
        if not self._state.v5:
            self._inner.write(data)
            return
        # amqtt writes one whole packet per call, the broker's PUBACKs come several to a call;
        # the buffer only guards against a split write. One call, one write to the socket.
        self._pending += data
        out: list[bytes] = []
        while len(self._pending) >= 2:
            try:
                length, start = decode_varint(self._pending, 1)
            except IndexError:
                break
            end = start + length
            if len(self._pending) < end:
                break
            packet = bytes(self._pending[:end])
            del self._pending[:end]
            out.append(v311_to_v5(packet, self._state))
        if out:
            self._inner.write(out[0] if len(out) == 1 else b"".join(out))

    async def drain(self) -> None:
        await self._inner.drain()

    def get_peer_info(self) -> tuple[str, int] | None:
        return self._inner.get_peer_info()

    def get_ssl_info(self) -> ssl.SSLObject | None:
        return self._inner.get_ssl_info()

    async def close(self) -> None:
        await self._inner.close()

    @property
    def is_closed(self) -> bool:
        return bool(getattr(self._inner, "is_closed", False))
