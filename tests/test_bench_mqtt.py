"""The benchmarks' MQTT publisher (bench/_mqtt.py) against a real TCP server speaking the broker's
side: buffered publishes leave in one write, and PUBACKs are counted however the stream splits
them, so `wait_acked` returns exactly when every message is acknowledged."""

from __future__ import annotations

import asyncio

import pytest
from bench._mqtt import MqttProtocolError, Publisher, remaining_length, topic_field


def _publishes(data: bytes) -> list[tuple[int, bytes]]:
    """(packet id, payload) of each QoS 1 PUBLISH in the stream."""
    out, pos = [], 0
    while pos < len(data):
        assert data[pos] == 0x32
        found = remaining_length(data, pos)
        assert found is not None
        length, pos = found
        body = data[pos:pos + length]
        topic_len = int.from_bytes(body[:2], "big")
        out.append((int.from_bytes(body[2 + topic_len:4 + topic_len], "big"), body[4 + topic_len:]))
        pos += length
    return out


async def _broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, got: asyncio.Queue,
                  replies: asyncio.Queue) -> None:
    await reader.read(1024)  # CONNECT
    writer.write(b"\x20\x02\x00\x00")
    while True:
        await got.put(await reader.read(1 << 16))
        for chunk in await replies.get():
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.01)  # each chunk its own segment


def test_buffered_publishes_go_out_together_and_split_pubacks_are_all_counted() -> None:
    async def run() -> None:
        got: asyncio.Queue = asyncio.Queue()
        replies: asyncio.Queue = asyncio.Queue()
        server = await asyncio.start_server(lambda r, w: _broker(r, w, got, replies), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = Publisher()
        await client.connect("127.0.0.1", port, "c1", "token")
        topic = topic_field("v1/gateway/telemetry")
        big = b"x" * 300  # a remaining length of two bytes
        await client.publish(topic, b"a", flush=False)
        await client.publish(topic, big, flush=False)
        await client.publish(topic, b"c", flush=False)
        assert client.inflight == 3 and got.empty()  # nothing written before the flush
        client.flush()
        data = await asyncio.wait_for(got.get(), 5)
        assert _publishes(data) == [(1, b"a"), (2, big), (3, b"c")]
        # The three PUBACKs split across segments mid-packet: one ack, then the second's first
        # byte, then the rest.
        await replies.put([b"\x40\x02\x00\x01\x40", b"\x02\x00", b"\x02\x40\x02\x00\x03"])
        await client.wait_acked(5)
        assert (client.acked, client.inflight) == (3, 0)
        # Anything but a PUBACK ends the connection with a clear error.
        await client.publish(topic, b"d")
        await asyncio.wait_for(got.get(), 5)
        await replies.put([b"\x30\x02\x00\x00"])
        with pytest.raises(MqttProtocolError, match="unexpected packet type 3"):
            await client.wait_acked(5)
        server.close()

    asyncio.run(run())
