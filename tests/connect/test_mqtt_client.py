"""The bridge's own MQTT 5 client: packet framing (pure), and against a real Mosquitto: shared
subscriptions, acknowledgement only when told, redelivery of what was not acknowledged after a
reconnect, and recovery when the broker restarts."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from ecoplat.connect.mqtt_client import (
    PUBLISH,
    Message,
    MqttClient,
    PacketReader,
    ProtocolError,
    parse_publish,
    puback_packet,
    publish_packet,
)

sys.path.insert(0, str(Path(__file__).parent))
import tests.conftest as _root  # noqa: E402
from mqtt_support import INGEST_MOSQUITTO_CONF, MOSQUITTO_BIN, free_port, wait_until  # noqa: E402


def test_packets_split_anywhere_across_reads_come_out_whole_and_in_order() -> None:
    stream = b"".join(publish_packet(f"v1/t/{i}", b"x" * (i * 37), i % 2, i + 1) for i in range(60))
    stream += puback_packet(7) + b"\xd0\x00"  # and a PINGRESP
    whole = PacketReader(1 << 20).feed(stream)
    for step in (1, 2, 3, 127, 4096):
        reader = PacketReader(1 << 20)
        got = []
        for i in range(0, len(stream), step):
            got += reader.feed(stream[i:i + step])
        assert got == whole
    assert len(whole) == 62
    first, body = whole[5]
    assert first & 0xF0 == PUBLISH and parse_publish(first, body) == ("v1/t/5", b"x" * 185, 1, 6)


def test_a_packet_over_the_limit_is_refused() -> None:
    with pytest.raises(ProtocolError):
        PacketReader(1000).feed(publish_packet("t", b"x" * 2000, 0, 0))


def test_publish_properties_are_skipped_to_reach_the_payload() -> None:
    # topic "a/b", packet id 9, properties: payload format indicator (0x01=1) + content type "json"
    body = b"\x00\x03a/b" + b"\x00\x09" + b"\x09" + b"\x01\x01" + b"\x03\x00\x04json" + b'{"x":1}'
    assert parse_publish(PUBLISH | 0x02, body) == ("a/b", b'{"x":1}', 1, 9)


class Broker:
    """A Mosquitto of the test's own on a free port, which the test may stop and start again."""

    def __init__(self, conf: Path, port: int) -> None:
        self.host, self.port, self.conf = "127.0.0.1", port, conf
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO_BIN, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_until(lambda: _root._port_open(self.host, self.port, 0.2), timeout=10, message="mosquitto up")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)
            self.proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if not Path(MOSQUITTO_BIN).exists():
        _root._unavailable(f"Debian's mosquitto binary at {MOSQUITTO_BIN}")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(INGEST_MOSQUITTO_CONF.format(port=port))
    b = Broker(conf, port)
    b.start()
    try:
        yield b
    finally:
        b.stop()


def _publish(port: int, topic: str, payloads: list[bytes]) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{secrets.token_hex(4)}")
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        for info in [c.publish(topic, p, qos=1) for p in payloads]:
            info.wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


async def _until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


def test_unacknowledged_messages_come_again_after_a_reconnect_and_acknowledged_ones_do_not(broker: Broker) -> None:
    host, port = broker.host, broker.port
    client_id, group = f"c-{secrets.token_hex(3)}", f"g{secrets.token_hex(3)}"

    async def run() -> None:
        got: list[Message] = []
        client = MqttClient(host=host, port=port, client_id=client_id, on_message=got.append,
                            subscriptions=[f"$share/{group}/t/#"], clean_start=True)
        client.start()
        await asyncio.wait_for(client.connected.wait(), 10)
        await asyncio.sleep(0.2)  # SUBACK
        await asyncio.to_thread(_publish, port, "t/x", [b"%d" % i for i in range(10)])
        await _until(lambda: len(got) == 10)
        assert [m.payload for m in got] == [b"%d" % i for i in range(10)] and {m.qos for m in got} == {1}
        client.ack_many(got[:6])  # the last four stay unacknowledged
        await asyncio.sleep(0.3)
        await client.close()

        again: list[Message] = []
        client = MqttClient(host=host, port=port, client_id=client_id, on_message=again.append,
                            subscriptions=[f"$share/{group}/t/#"], clean_start=False)
        client.start()
        await _until(lambda: len(again) >= 4)
        await asyncio.sleep(0.3)
        assert sorted(m.payload for m in again) == [b"6", b"7", b"8", b"9"]
        client.ack_many(again)
        await client.close()

    asyncio.run(run())


def test_the_client_reconnects_when_the_broker_restarts(broker: Broker) -> None:
    host, port = broker.host, broker.port

    async def run() -> None:
        got: list[bytes] = []
        events: list[str] = []
        client = MqttClient(host=host, port=port, client_id=f"c-{secrets.token_hex(3)}",
                            on_message=lambda m: (got.append(m.payload), client.ack(m)),
                            on_connect=lambda present: events.append("up"),
                            on_disconnect=lambda reason: events.append("down"),
                            subscriptions=["r/#"], clean_start=True, keepalive=5)
        client.start()
        await asyncio.wait_for(client.connected.wait(), 10)
        await asyncio.sleep(0.2)
        await asyncio.to_thread(_publish, port, "r/1", [b"before"])
        await _until(lambda: got == [b"before"])
        broker.stop()
        await _until(lambda: "down" in events)
        broker.start()
        await _until(lambda: events.count("up") == 2, timeout=20)
        await asyncio.sleep(0.2)
        await asyncio.to_thread(_publish, port, "r/1", [b"after"])
        await _until(lambda: got == [b"before", b"after"])
        await client.close()

    asyncio.run(run())
