"""A lean MQTT 3.1.1 publisher for load generation: asyncio streams, QoS 1, no threads.

paho runs a network thread per connection and hands every publish to it through a socket pair,
so forty connections in a process are forty threads contending for one GIL: at a few thousand
messages a second the publishers themselves then add tens of milliseconds of p99 (measured by
`bench alarms`' floor) and take CPU the platform under test needs. Here one event loop writes each
PUBLISH straight to its socket the moment it is stamped, and a reader task per connection counts
the PUBACKs. Only what a publishing device needs: CONNECT with a username (the device's access
token), PUBLISH at QoS 1 with at most `max_inflight` unacknowledged, DISCONNECT."""

from __future__ import annotations

import asyncio
import contextlib
import struct


class MqttProtocolError(RuntimeError):
    """The broker refused the connection or sent something a publisher does not expect."""


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _string(s: str) -> bytes:
    data = s.encode()
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, username: str | None, keepalive: int = 60) -> bytes:
    flags = 0x02 | (0x80 if username is not None else 0)  # clean session, username
    body = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + _string(client_id)
    if username is not None:
        body += _string(username)
    return b"\x10" + _remaining_length(len(body)) + body


def publish_packet(topic: bytes, packet_id: int, payload: bytes) -> bytes:
    """PUBLISH at QoS 1 (topic already length-prefixed by `topic_field`)."""
    return b"\x32" + _remaining_length(len(topic) + 2 + len(payload)) + topic + struct.pack("!H", packet_id) + payload


def remaining_length(buf: bytes, pos: int) -> tuple[int, int] | None:
    """(remaining length, where the body starts) of the packet whose fixed header starts at pos
    (MQTT 3.1.1 section 2.2.3); None while the length's bytes are not all in buf."""
    length, shift, i, end = 0, 0, pos + 1, len(buf)
    while i < end:
        b = buf[i]
        i += 1
        length |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return length, i
    return None


def topic_field(topic: str) -> bytes:
    return _string(topic)


class Publisher:
    """One MQTT connection publishing at QoS 1."""

    def __init__(self, max_inflight: int = 1000) -> None:
        self.max_inflight = max_inflight
        self.inflight = 0
        self.acked = 0
        self._next_id = 0
        self._out: list[bytes] = []
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def connect(self, host: str, port: int, client_id: str, username: str | None) -> None:
        self._reader, self._writer = await asyncio.open_connection(host, port)
        self._writer.write(connect_packet(client_id, username))
        head = await self._reader.readexactly(4)
        if head[0] != 0x20 or head[3] != 0:
            raise MqttProtocolError(f"CONNACK refused the connection (return code {head[3]})")
        self._task = asyncio.create_task(self._read_acks())

    async def _read_acks(self) -> None:
        assert self._reader is not None
        try:
            await self._read_loop(self._reader)
        finally:
            # Whoever waits for room or for the last ack wakes up and finds the connection gone.
            self._room.set()
            self._idle.set()

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        """Counts the PUBACKs in whatever has arrived: one read (one wake-up) for every packet
        in it, where three awaits a packet (type, length, body) cost the load generator more
        CPU than the publishes themselves."""
        buf = b""
        while True:
            data = await reader.read(1 << 16)
            if not data:
                raise MqttProtocolError("the broker closed the connection")
            buf += data
            acked, pos, end = 0, 0, len(buf)
            while end - pos >= 2:
                first = buf[pos]
                if first >> 4 != 4:  # only PUBACKs are expected
                    raise MqttProtocolError(f"unexpected packet type {first >> 4} from the broker")
                found = remaining_length(buf, pos)
                if found is None:
                    break  # the length is not all here yet
                length, i = found
                if end - i < length:
                    break
                pos = i + length
                acked += 1
            buf = buf[pos:]
            if acked:
                self.acked += acked
                self.inflight -= acked
                if self.inflight < self.max_inflight:
                    self._room.set()
                if self.inflight == 0:
                    self._idle.set()

    async def publish(self, topic: bytes, payload: bytes, *, flush: bool = True) -> None:
        """Sends one QoS 1 PUBLISH (topic from `topic_field`), waiting first while `max_inflight`
        are unacknowledged. With flush=False it waits in the connection's buffer for the next
        flush (or publish), so that several go out in one write."""
        assert self._writer is not None and self._task is not None
        while self.inflight >= self.max_inflight:
            self.flush()
            self._room.clear()
            await self._room.wait()
            if self._task.done():
                self._closed()
        self._next_id = self._next_id % 65535 + 1
        self.inflight += 1
        self._idle.clear()
        self._out.append(publish_packet(topic, self._next_id, payload))
        if flush:
            self.flush()
            if self._writer.transport.get_write_buffer_size() > 1 << 20:
                await self._writer.drain()

    def flush(self) -> None:
        """Writes what publish(flush=False) buffered, in one write."""
        if self._out:
            assert self._writer is not None
            self._writer.write(b"".join(self._out) if len(self._out) > 1 else self._out[0])
            self._out.clear()

    async def wait_acked(self, timeout: float) -> None:
        """Until every PUBLISH sent is acknowledged."""
        await asyncio.wait_for(self._idle.wait(), timeout)
        if self.inflight:
            self._closed()

    def _closed(self) -> None:
        assert self._task is not None
        if not self._task.cancelled() and self._task.exception() is not None:
            raise MqttProtocolError(f"the connection to the broker ended: {self._task.exception()!r}")
        raise MqttProtocolError("the connection to the broker ended")

    async def disconnect(self) -> None:
        if self._writer is None:
            return
        self._writer.write(b"\xe0\x00")
        if self._task is not None:
            self._task.cancel()
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()
