"""`ecoplat bench ingest`: MQTT ingest throughput and latency against baselines measured in the
same run, on this machine.

    ceiling          publishers → Mosquitto → a bare paho subscriber that only json-decodes
    platform/bridge  the same publishers → Mosquitto → `ecoplat serve` in bridge mode → stored
    amqtt ceiling    the same publishers → a bare amqtt broker whose hook only json-decodes
    embedded         the same publishers → `ecoplat serve`'s embedded amqtt broker → stored

each for single-point messages and for 100-point gateway batches (10 child devices × 10 keys),
all QoS 1. "Stored" means: for the embedded broker, every PUBACK is in (the platform acks only
after the batch is durable); for the bridge, the store's latest value of every device is the last
one published. Then p50/p99 publish→stored latency at half the measured peak rate: for the
bridge from the telemetry SSE feed (`/api/devices/{id}/live`, sent after the batch is durable),
for the embedded broker from publish to PUBACK.

The benchmark starts its own Mosquitto (Debian's /usr/sbin/mosquitto) with the configuration an
ingest deployment needs: `max_inflight_messages 0` and `max_queued_messages 0`. With Mosquitto's
defaults (20 messages in flight per subscriber, 1000 queued) a consumer that acknowledges only
after a durable write is held to 20 messages per write cycle, and bursts beyond the queue are
dropped by the broker.

Prints progress and a table on stderr and ONE JSON object as the last line of stdout."""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._common import (
    bare_broker_process,
    console,
    free_port,
    make_progress,
    percentile,
    print_final_json,
    wait_for_http,
)

ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-secret-" + "b" * 32
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
CHILDREN, KEYS_PER_CHILD = 10, 10  # 100 points per gateway message


# ---------------------------------------------------------------------------------------------
# Payloads (pure)
# ---------------------------------------------------------------------------------------------

def single_payload(ts: int, i: int) -> bytes:
    return b'{"ts":%d,"values":{"current_ka":%d.25}}' % (ts, i % 1000)


def gateway_payload(ts: int, i: int, prefix: str) -> bytes:
    parts = []
    for c in range(CHILDREN):
        values = ",".join(f'"k{k}":{(i + k) % 997}.5' for k in range(KEYS_PER_CHILD))
        parts.append(f'"{prefix}-{c}":[{{"ts":{ts},"values":{{{values}}}}}]')
    return ("{" + ",".join(parts) + "}").encode()


# ---------------------------------------------------------------------------------------------
# Processes: publishers, the bare subscriber, the bare amqtt broker
# ---------------------------------------------------------------------------------------------

@dataclass
class PubSpec:
    host: str
    port: int
    username: str | None
    topic: str
    kind: str  # "single" | "gateway"
    count: int
    base_ts: int
    prefix: str = ""
    rate: float | None = None  # messages/s; None = as fast as possible
    latency: bool = False  # payload carries the send time; PUBACK times recorded


def publisher(spec: PubSpec, ready: Any, go: Any, out: Any) -> None:
    import paho.mqtt.client as mqtt

    if spec.latency:
        payloads: list[bytes] = []
    elif spec.kind == "single":
        payloads = [single_payload(spec.base_ts + i, i) for i in range(spec.count)]
    else:
        payloads = [gateway_payload(spec.base_ts + i, i, spec.prefix) for i in range(spec.count)]
    acked = 0
    done = threading.Event()
    last_ack = [0.0]
    sent_at: dict[int, float] = {}
    latencies: list[float] = []

    def on_publish(_c: Any, _u: Any, mid: int, _rc: Any = None, _p: Any = None) -> None:
        nonlocal acked
        now = time.time()
        acked += 1
        last_ack[0] = now
        if spec.latency:
            t = sent_at.pop(mid, None)
            if t is not None:
                latencies.append(now - t)
        if acked >= spec.count:
            done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{secrets.token_hex(4)}")
    if spec.username:
        c.username_pw_set(spec.username)
    c.max_inflight_messages_set(1000)
    c.on_publish = on_publish
    c.connect(spec.host, spec.port, keepalive=60)
    c.loop_start()
    ready.set()
    go.wait()
    start = time.time()
    topic = spec.topic
    for i in range(spec.count):
        if spec.latency:
            now = time.time()
            payload = b'{"ts":%d,"values":{"sent_ms":%.3f}}' % (spec.base_ts + i, now * 1000)
            info = c.publish(topic, payload, qos=1)
            sent_at[info.mid] = now
        else:
            c.publish(topic, payloads[i], qos=1)
        if spec.rate:
            delay = start + (i + 1) / spec.rate - time.time()
            if delay > 0:
                time.sleep(delay)
    done.wait(300)
    out.put({"start": start, "last_ack": last_ack[0], "acked": acked, "latencies": latencies})
    c.disconnect()
    c.loop_stop()


def bare_subscriber(host: str, port: int, topics: list[str], expected: int, ready: Any, out: Any) -> None:
    """The ceiling's consumer: a paho subscriber (QoS 1, MQTT 5 shared subscription, as the
    platform) that only json-decodes."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.subscribeoptions import SubscribeOptions

    count = 0
    done = threading.Event()
    last = [0.0]

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        nonlocal count
        json.loads(msg.payload)
        count += 1
        if count >= expected:
            last[0] = time.time()
            done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{secrets.token_hex(4)}",
                    protocol=mqtt.MQTTv5)
    c.on_message = on_message
    c.on_connect = lambda cl, *_a: cl.subscribe([(f"$share/ceiling/{t}", SubscribeOptions(qos=1)) for t in topics])
    c.on_subscribe = lambda *_a: ready.set()
    c.connect(host, port, keepalive=60)
    c.loop_start()
    done.wait(300)
    out.put({"last": last[0], "count": count})
    c.disconnect()
    c.loop_stop()


class _DecodeOnly:
    """Counts json-decoded messages of the bare amqtt broker (class state: one per process)."""

    count = 0
    last = 0.0
    expected = 0


def _decode_only_plugin() -> type:
    from amqtt.plugins.base import BasePlugin

    class DecodeOnlyPlugin(BasePlugin):  # type: ignore[type-arg]
        async def on_broker_message_received(self, *, client_id: str, message: Any) -> None:
            json.loads(message.data)
            _DecodeOnly.count += 1
            if _DecodeOnly.count == _DecodeOnly.expected:
                _DecodeOnly.last = time.time()

    return DecodeOnlyPlugin


def bare_amqtt_broker(port: int, expected_q: Any, out: Any, ready: Any) -> None:
    import asyncio
    import logging

    from amqtt.broker import Broker

    # amqtt warns at shutdown about the fan-out queue it never drained (no subscribers): noise here.
    logging.getLogger("amqtt").setLevel(logging.ERROR)

    globals()["DecodeOnlyPlugin"] = _decode_only_plugin()

    async def run() -> None:
        broker = Broker({"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
                         "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
                                     "bench.ingest.DecodeOnlyPlugin": {}}})
        await broker.start()
        ready.set()
        while True:
            expected = await asyncio.to_thread(expected_q.get)
            if expected is None:
                break
            _DecodeOnly.count, _DecodeOnly.last, _DecodeOnly.expected = 0, 0.0, expected
            while _DecodeOnly.last == 0.0:
                await asyncio.sleep(0.01)
            out.put({"last": _DecodeOnly.last, "count": _DecodeOnly.count})
        await broker.shutdown()

    asyncio.run(run())


def __getattr__(name: str) -> Any:
    # amqtt loads plugins by dotted path; the class is built lazily so importing this module
    # does not import amqtt.
    if name == "DecodeOnlyPlugin":
        return _decode_only_plugin()
    raise AttributeError(name)


# ---------------------------------------------------------------------------------------------
# The platform under test
# ---------------------------------------------------------------------------------------------

@dataclass
class Seeded:
    enterprise_id: int
    access_token: str
    devices: list[tuple[int, str]]  # single-point devices (id, token), one per publisher
    gateways: list[tuple[int, str]]


def seed(url: str, publishers: int) -> Seeded:
    from ecoplat.connect.ingest import hash_token
    from ecoplat.connect.models import Device
    from ecoplat.db import Database
    from ecoplat.migrations_runner import upgrade
    from ecoplat.tenancy.auth import hash_password, issue_tokens
    from ecoplat.tenancy.models import Enterprise, Role, SizeClass, User

    upgrade(url)
    database = Database(url)
    try:
        with database.session() as s:
            ent = Enterprise(name=f"Bench Chlor-Alkali {secrets.token_hex(3)}", country="CN", isic_class="2011",
                             size_class=SizeClass.large, limits={})
            s.add(ent)
            s.flush()
            user = User(enterprise_id=ent.id, email=f"bench-{secrets.token_hex(4)}@example.com",
                        password_hash=hash_password("x"), roles=[Role.enterprise_admin.value])
            s.add(user)
            s.flush()
            access = issue_tokens(user, secret=SECRET, access_minutes=120, refresh_days=1)["access_token"]

            def add(name: str, gateway: bool) -> tuple[int, str]:
                token = secrets.token_urlsafe(16)
                d = Device(enterprise_id=ent.id, name=name, token_hash=hash_token(token), token_prefix=token[:6],
                           is_gateway=gateway)
                s.add(d)
                s.flush()
                return d.id, token

            devices = [add(f"cell-{p}", False) for p in range(publishers)]
            gateways = [add(f"gw-{p}", True) for p in range(publishers)]
            return Seeded(ent.id, access, devices, gateways)
    finally:
        database.dispose()


class Platform:
    """`ecoplat serve` as its own process, on a fresh database."""

    def __init__(self, url: str, data_dir: Path, *, bridge_url: str | None) -> None:
        self.url = url
        self.port = free_port()
        self.mqtt_port = free_port()
        env = dict(os.environ)
        env.update({"ECOPLAT_DATA_DIR": str(data_dir), "ECOPLAT_DATABASE_URL": url, "ECOPLAT_SECRET_KEY": SECRET,
                    "ECOPLAT_PORT": str(self.port), "ECOPLAT_MQTT_PORT": str(self.mqtt_port),
                    "ECOPLAT_LOG_LEVEL": "WARNING", "ECOPLAT_LOG_JSON": "true",
                    "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])})
        if bridge_url:
            env["ECOPLAT_MQTT_BRIDGE_URL"] = bridge_url
            env["ECOPLAT_MQTT_BRIDGE_SHARE_GROUP"] = f"bench{secrets.token_hex(3)}"
        self.log = (data_dir / "serve.log").open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "ecoplat.cli", "serve"], env=env, cwd=ROOT,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.base = f"http://127.0.0.1:{self.port}"
        wait_for_http(self.base + "/openapi.json", timeout_s=120, proc=self.proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


def start_mosquitto(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_inflight_messages 0\nmax_queued_messages 0\nmax_packet_size 1048576\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    import socket

    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return proc, port
        time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------

CTX = mp.get_context("spawn")


def run_publishers(specs: list[PubSpec]) -> tuple[float, list[dict[str, Any]]]:
    """Starts the publishers, releases them together; returns (go time, their results)."""
    out = CTX.Queue()
    go = CTX.Event()
    readies = [CTX.Event() for _ in specs]
    procs = [CTX.Process(target=publisher, args=(spec, r, go, out), daemon=True) for spec, r in zip(specs, readies, strict=True)]
    for p in procs:
        p.start()
    for r in readies:
        if not r.wait(60):
            raise RuntimeError("a publisher did not connect")
    t0 = time.time()
    go.set()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(10)
    return t0, results


def wait_stored(url: str, targets: dict[int, tuple[str, int]], timeout: float = 300) -> float:
    """Polls the store until every device's latest ts for its key is the expected last ts;
    returns the time it was seen."""
    from ecoplat.telemetry.store import open_store

    store = open_store(url)
    try:
        pending = dict(targets)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for device_id, (key, last_ts) in list(pending.items()):
                sample = store.latest(device_id, [key]).get(key)
                if sample is not None and sample.ts >= last_ts:
                    del pending[device_id]
            if pending:
                time.sleep(0.01)
        if pending:
            raise TimeoutError(f"{len(pending)} devices did not get their last point within {timeout} s")
        return time.time()
    finally:
        store.close()


def children_of(url: str, gateway_ids: list[int]) -> dict[str, int]:
    from sqlalchemy import select

    from ecoplat.connect.models import Device
    from ecoplat.db import Database

    database = Database(url)
    try:
        with database.session() as s:
            return {name: id_ for id_, name in s.execute(select(Device.id, Device.name)
                                                         .where(Device.gateway_id.in_(gateway_ids)))}
    finally:
        database.dispose()


def ceiling(host: str, port: int, specs: list[PubSpec], topics: list[str]) -> float:
    total = sum(s.count for s in specs)
    out, ready = CTX.Queue(), CTX.Event()
    sub = CTX.Process(target=bare_subscriber, args=(host, port, topics, total, ready, out), daemon=True)
    sub.start()
    if not ready.wait(30):
        raise RuntimeError("the bare subscriber did not subscribe")
    t0, _ = run_publishers(specs)
    result = out.get(timeout=600)
    sub.join(10)
    return total / (result["last"] - t0)


def amqtt_ceiling(specs_for: Any, count: int) -> float:
    port = free_port()
    expected_q, out = CTX.Queue(), CTX.Queue()
    with bare_broker_process(bare_amqtt_broker, (port, expected_q, out), stop=lambda: expected_q.put(None)):
        specs = specs_for(port)
        expected_q.put(sum(s.count for s in specs))
        t0, _ = run_publishers(specs)
        result = out.get(timeout=600)
        return sum(s.count for s in specs) / (result["last"] - t0)


def sse_latencies(base: str, token: str, device_id: int, stop: threading.Event, out: list[float]) -> None:
    import httpx

    with contextlib.suppress(httpx.HTTPError), httpx.Client(timeout=None) as http, http.stream(
            "GET", f"{base}/api/devices/{device_id}/live", headers={"Authorization": f"Bearer {token}"}) as r:
        event = ""
        for line in r.iter_lines():
            if stop.is_set():
                return
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "telemetry":
                now = time.time() * 1000
                data = json.loads(line[5:])
                sent = data.get("values", {}).get("sent_ms")
                if sent is not None:
                    out.append(now - sent)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ecoplat bench ingest", description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=30_000, help="single-point messages per throughput run")
    ap.add_argument("--gateway-messages", type=int, default=10_000,
                    help="100-point gateway messages per run (1 M points: a few seconds at the target rate)")
    ap.add_argument("--publishers", type=int, default=2, help="publisher processes")
    ap.add_argument("--latency-seconds", type=float, default=6.0)
    ap.add_argument("--repeat", type=int, default=2, help="single-point runs per path (best kept)")
    ap.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="ecoplat-bench-ingest-"))
    results: dict[str, Any] = {}
    mosq, mport = start_mosquitto(tmp)
    platforms: list[Platform] = []
    P = args.publishers
    per_pub = args.messages // P
    per_pub_gw = args.gateway_messages // P
    base_ts = int(time.time() * 1000) - 86_400_000
    single_topics = ["v1/devices/+/telemetry"]
    gw_topics = ["v1/gateway/+/telemetry"]
    steps = 10
    try:
        with make_progress() as progress:
            task = progress.add_task("ingest benchmark", total=steps)

            def step(name: str) -> None:
                progress.update(task, advance=1, description=name)

            url_b = args.database_url or f"sqlite:///{tmp / 'bridge.db'}"
            seeded_b = seed(url_b, P)
            # 1. Mosquitto ceiling, single points and gateway batches
            # Single-point runs are repeated and the best kept on both sides: on a shared 2-core
            # machine one run can lose the CPU to something else.
            results["ceiling_msgs_s"] = max(ceiling("127.0.0.1", mport, [
                PubSpec("127.0.0.1", mport, None, f"v1/devices/{tok}/telemetry", "single", per_pub, base_ts)
                for _id, tok in seeded_b.devices], single_topics) for _ in range(args.repeat))
            step("mosquitto ceiling (single)")
            results["ceiling_gateway_msgs_s"] = ceiling("127.0.0.1", mport, [
                PubSpec("127.0.0.1", mport, None, f"v1/gateway/{tok}/telemetry", "gateway", per_pub_gw, base_ts,
                        prefix=f"g{p}") for p, (_id, tok) in enumerate(seeded_b.gateways)], gw_topics)
            step("mosquitto ceiling (gateway)")

            # 2. The platform in bridge mode
            (tmp / "bridge").mkdir()
            plat = Platform(url_b, tmp / "bridge", bridge_url=f"mqtt://127.0.0.1:{mport}")
            platforms.append(plat)
            time.sleep(1.0)  # subscribed
            runs = []
            for r in range(args.repeat):
                r_ts = base_ts + r * per_pub
                t0, _ = run_publishers([PubSpec("127.0.0.1", mport, None, f"v1/devices/{tok}/telemetry", "single",
                                                per_pub, r_ts) for _id, tok in seeded_b.devices])
                t_done = wait_stored(url_b, {id_: ("current_ka", r_ts + per_pub - 1) for id_, _t in seeded_b.devices})
                runs.append(P * per_pub / (t_done - t0))
            results["platform_msgs_s"] = max(runs)
            step("bridge platform (single)")
            # warm-up: children are created on first sight
            run_publishers([PubSpec("127.0.0.1", mport, None, f"v1/gateway/{tok}/telemetry", "gateway", 1,
                                    base_ts - 10, prefix=f"g{p}") for p, (_id, tok) in enumerate(seeded_b.gateways)])
            kids = {}
            deadline = time.monotonic() + 30
            while len(kids) < CHILDREN * P and time.monotonic() < deadline:
                kids = children_of(url_b, [g for g, _t in seeded_b.gateways])
                time.sleep(0.1)
            t0, _ = run_publishers([PubSpec("127.0.0.1", mport, None, f"v1/gateway/{tok}/telemetry", "gateway",
                                            per_pub_gw, base_ts, prefix=f"g{p}")
                                    for p, (_id, tok) in enumerate(seeded_b.gateways)])
            t_done = wait_stored(url_b, {kid: ("k0", base_ts + per_pub_gw - 1) for kid in kids.values()})
            results["platform_gateway_msgs_s"] = P * per_pub_gw / (t_done - t0)
            step("bridge platform (gateway)")

            # 3. Latency at half the bridge's peak single-point rate, via the live feed
            rate = results["platform_msgs_s"] / 2 / P
            n_lat = int(rate * args.latency_seconds)
            lat: list[float] = []
            stop = threading.Event()
            watched = seeded_b.devices[0][0]
            sse = threading.Thread(target=sse_latencies, args=(plat.base, seeded_b.access_token, watched, stop, lat),
                                   daemon=True)
            sse.start()
            time.sleep(0.5)
            lat_ts = base_ts + 10 * args.messages
            run_publishers([PubSpec("127.0.0.1", mport, None, f"v1/devices/{tok}/telemetry", "single", n_lat,
                                    lat_ts, rate=rate, latency=True) for _id, tok in seeded_b.devices])
            time.sleep(1.0)
            stop.set()
            lat.sort()
            results["p50_store_ms"] = percentile(lat, 50)
            results["p99_store_ms"] = percentile(lat, 99)
            results["latency_samples"] = len(lat)
            results["latency_rate_msgs_s"] = rate * P
            plat.stop()
            step("bridge latency at half peak")

            # 4. amqtt's own ceiling (a bare broker, decode-only hook)
            results["amqtt_ceiling_msgs_s"] = max(amqtt_ceiling(lambda port: [
                PubSpec("127.0.0.1", port, None, "v1/devices/me/telemetry", "single", per_pub, base_ts)
                for _ in range(P)], P * per_pub) for _ in range(args.repeat))
            step("amqtt ceiling (single)")
            results["amqtt_ceiling_gateway_msgs_s"] = amqtt_ceiling(lambda port: [
                PubSpec("127.0.0.1", port, None, "v1/gateway/telemetry", "gateway", per_pub_gw, base_ts,
                        prefix=f"g{p}") for p in range(P)], P * per_pub_gw)
            step("amqtt ceiling (gateway)")

            # 5. The platform's embedded broker
            url_e = f"sqlite:///{tmp / 'embedded.db'}" if not args.database_url else args.database_url
            seeded_e = seed(url_e, P) if not args.database_url else seeded_b
            (tmp / "embedded").mkdir()
            plat = Platform(url_e, tmp / "embedded", bridge_url=None)
            platforms.append(plat)
            _wait_mqtt(plat.mqtt_port)
            e_ts = base_ts + 20 * args.messages
            runs = []
            for r in range(args.repeat):
                t0, res = run_publishers([PubSpec("127.0.0.1", plat.mqtt_port, tok, "v1/devices/me/telemetry",
                                                  "single", per_pub, e_ts + r * per_pub) for _id, tok in seeded_e.devices])
                runs.append(P * per_pub / (max(x["last_ack"] for x in res) - t0))
            results["embedded_msgs_s"] = max(runs)
            step("embedded platform (single)")
            run_publishers([PubSpec("127.0.0.1", plat.mqtt_port, tok, "v1/gateway/telemetry", "gateway", 1, e_ts - 10,
                                    prefix=f"e{p}") for p, (_id, tok) in enumerate(seeded_e.gateways)])
            t0, res = run_publishers([PubSpec("127.0.0.1", plat.mqtt_port, tok, "v1/gateway/telemetry", "gateway",
                                              per_pub_gw, e_ts, prefix=f"e{p}")
                                      for p, (_id, tok) in enumerate(seeded_e.gateways)])
            results["embedded_gateway_msgs_s"] = P * per_pub_gw / (max(r["last_ack"] for r in res) - t0)
            rate_e = results["embedded_msgs_s"] / 2 / P
            _t0, res = run_publishers([PubSpec("127.0.0.1", plat.mqtt_port, tok, "v1/devices/me/telemetry", "single",
                                               int(rate_e * args.latency_seconds), e_ts + 10 * args.messages, rate=rate_e,
                                               latency=True) for _id, tok in seeded_e.devices])
            elat = sorted(x * 1000 for r in res for x in r["latencies"])
            results["embedded_p50_store_ms"] = percentile(elat, 50)
            results["embedded_p99_store_ms"] = percentile(elat, 99)
            plat.stop()
            step("embedded platform (gateway, latency)")
    finally:
        for p in platforms:
            with contextlib.suppress(Exception):
                p.stop()
        mosq.terminate()
        with contextlib.suppress(Exception):
            mosq.wait(5)

    pts = CHILDREN * KEYS_PER_CHILD
    final = {
        "ceiling_msgs_s": round(results["ceiling_msgs_s"]),
        "platform_msgs_s": round(results["platform_msgs_s"]),
        "ratio_msgs": round(results["platform_msgs_s"] / results["ceiling_msgs_s"], 3),
        "ceiling_points_s": round(results["ceiling_gateway_msgs_s"] * pts),
        "platform_points_s": round(results["platform_gateway_msgs_s"] * pts),
        "ratio_points": round(results["platform_gateway_msgs_s"] / results["ceiling_gateway_msgs_s"], 3),
        "p50_store_ms": round(results["p50_store_ms"], 2),
        "p99_store_ms": round(results["p99_store_ms"], 2),
        "amqtt_ceiling_msgs_s": round(results["amqtt_ceiling_msgs_s"]),
        "embedded_msgs_s": round(results["embedded_msgs_s"]),
        "ratio_embedded": round(results["embedded_msgs_s"] / results["amqtt_ceiling_msgs_s"], 3),
        "amqtt_ceiling_points_s": round(results["amqtt_ceiling_gateway_msgs_s"] * pts),
        "embedded_points_s": round(results["embedded_gateway_msgs_s"] * pts),
        "embedded_p50_store_ms": round(results["embedded_p50_store_ms"], 2),
        "embedded_p99_store_ms": round(results["embedded_p99_store_ms"], 2),
        "latency_rate_msgs_s": round(results["latency_rate_msgs_s"]),
        "latency_samples": results["latency_samples"],
        "database": "postgresql" if args.database_url and "postgres" in args.database_url else "sqlite",
        "publishers": P,
    }
    for k, v in final.items():
        console.print(f"  {k:28} {v}")
    shutil.rmtree(tmp, ignore_errors=True)
    print_final_json(final)
    return 0


def _wait_mqtt(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"MQTT port {port} did not open")


if __name__ == "__main__":
    # Run through the importable module, so the spawned publishers and amqtt's plugin loader all
    # see one `bench.ingest` (not a separate `__main__` copy).
    from bench.ingest import main as _main

    sys.exit(_main())
