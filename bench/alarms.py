"""`ecoplat bench alarms`: the rule engine in the ingest path, measured on the real platform.

The platform runs in this process (app lifespan: SQLite telemetry store, ingest pipeline,
embedded amqtt broker, alarm runtime) on uvloop, as `ecoplat serve` runs it (uvicorn's default
where uvloop is installed, and uvicorn[standard] installs it); publishers run in other
processes and speak the ThingsBoard gateway API over MQTT (QoS 1, acknowledged once durable),
one message = one device's sample of 10 keys. 10,000 rules over 1,000 devices (10 per device: limits, rate of change,
deviations, an expression).

1. Throughput with rules off and on, alternated in the same run (off, on, on, off, off, on, …;
   four pairs by default): the rule listener is detached from / attached to the ingest pipeline
   between rounds. The store grows with every round and writes get slower; with the order of
   each pair reversed from the last, that drift weighs on both sides alike.
2. Latency at half the measured peak (rules on): some messages carry an excursion that raises
   or clears an alarm; the time from the publisher's send (the point's ts) to the alarm event on
   the platform's event bus is recorded.

Prints one JSON object last: p50_alarm_ms, p99_alarm_ms, msgs_s_rules_off, msgs_s_rules_on,
throughput_cost (= 1 − on/off), plus the run's details."""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import secrets
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench._common import bare_broker_process, console, free_port, latency_summary, print_final_json

KEYS = [f"k{i}" for i in range(10)]
# The publishers' step: a connection's messages made in one go out in one write (see publisher).
PACE_S = 0.005
NORMAL = {"k0": 50.0, "k1": 50.0, "k2": 50.0, "k3": 50.0, "k4": 50.0, "k5": 50.0, "k6": 50.0, "k7": 50.0,
          "k8": 50.0, "k9": 50.0}


def rule_rows(enterprise_id: int, device_id: int) -> list[dict[str, Any]]:
    """The 10 rules of one device: every kind the engine evaluates per point."""
    base = {"enterprise_id": enterprise_id, "device_id": device_id, "profile_id": None, "name": "",
            "priority": 3, "deadband": 1.0, "on_delay_s": 0.0, "off_delay_s": 0.0, "message_template": "",
            "enabled": True}
    specs = [
        ("k0", "high", {"limit": 90.0}),
        ("k1", "low", {"limit": 10.0}),
        ("k2", "high_high", {"limit": 95.0}),
        ("k3", "low_low", {"limit": 5.0}),
        ("k4", "rate_of_change", {"limit": 50.0, "per": "second", "window_s": 10}),
        ("k5", "deviation", {"setpoint": 50.0, "limit": 30.0}),
        ("k6", "deviation", {"reference_key": "k5", "limit": 30.0}),
        ("k7", "expression", {"expression": "k7 > 90 and k8 > 90"}),
        ("k8", "high", {"limit": 92.0}),
        ("k9", "low", {"limit": 8.0}),
    ]
    return [base | {"key": key, "kind": kind, "params": params} for key, kind, params in specs]


def seed(url: str, devices: int, gateways: int) -> dict[str, Any]:
    from sqlalchemy import insert, select

    from ecoplat.alarms.models import AlarmRule
    from ecoplat.connect.ingest import hash_token
    from ecoplat.connect.models import Device
    from ecoplat.db import Database
    from ecoplat.tenancy.models import Enterprise, SizeClass

    database = Database(url)
    with database.session() as db:
        ent = Enterprise(name="Bench Chlor-Alkali", country="CN", isic_class="2011", size_class=SizeClass.small,
                         limits={"maxInflightMessages": 10_000})
        db.add(ent)
        db.flush()
        gw_tokens = []
        for g in range(gateways):
            token = secrets.token_urlsafe(16)
            db.add(Device(enterprise_id=ent.id, name=f"gw-{g}", token_hash=hash_token(token), token_prefix=token[:6],
                          is_gateway=True))
            gw_tokens.append(token)
        db.flush()
        db.execute(insert(Device), [{"enterprise_id": ent.id, "name": f"dev-{i:04d}", "type": "electrolyzer"}
                                    for i in range(devices)])
        ids = dict(db.execute(select(Device.name, Device.id).where(Device.enterprise_id == ent.id)).all())
        rows = [r for i in range(devices) for r in rule_rows(ent.id, ids[f"dev-{i:04d}"])]
        db.execute(insert(AlarmRule), rows)
        enterprise_id = ent.id
    database.dispose()
    return {"enterprise_id": enterprise_id, "gateway_tokens": gw_tokens, "rules": len(rows)}


# ------------------------------------------------------------------------------ publishers


def publisher(port: int, tokens: list[str], names: list[str], messages: int, rate: float, excursion: float,
              go: Any, report: Any, seed_value: int) -> None:
    """Gateway connections (one per token) publishing `messages` samples round-robin over their
    devices, at `rate` messages per second in all (0 = as fast as the broker takes them).

    The platform acknowledges a QoS 1 message only once it is durable and reads a connection's
    packets in order, so one connection carries about one message per ingest batch in flight;
    many connections (as many devices and gateways would open) give the parallelism. One event
    loop drives them all (bench._mqtt), with no thread between a message's stamp and its write."""
    import asyncio

    import orjson
    import uvloop

    from bench._mqtt import Publisher, topic_field

    rnd = random.Random(seed_value)
    topic = topic_field("v1/gateway/telemetry")

    async def run() -> None:
        clients = []
        for token in tokens:
            client = Publisher(max_inflight=1000)
            await client.connect("127.0.0.1", port, f"bench-{token[:8]}", token)
            clients.append(client)
        # Each device is published through one gateway connection.
        routes = [(clients[i % len(clients)], name) for i, name in enumerate(names)]
        high: set[str] = set()
        await asyncio.to_thread(go.wait)
        loop = asyncio.get_running_loop()
        start, cpu_start = loop.time(), time.process_time()
        # A connection's messages made in the same step of PACE_S go out in one write, as a
        # gateway's buffered writes would. A write per message (on loopback TCP the sender's
        # send also delivers to the receiver) and a timer per message at a set rate made the
        # load generator take 0.018 ms of CPU a message from the two cores the platform under
        # test has; paced and written so, 0.010 (bench alarms at 18,000 msgs/s). At a set rate
        # the messages due by now are made together, then the publisher sleeps until the next
        # is due (at least PACE_S). Each message is stamped as it is made, so its latency
        # includes the wait for its write.
        due, next_flush = 0, start + PACE_S
        for n in range(messages):
            if n >= due:
                if rate > 0:
                    for client in clients:
                        client.flush()
                    while True:
                        due = min(messages, int((loop.time() - start) * rate) + 1)
                        if n < due:
                            break
                        await asyncio.sleep(max(PACE_S, start + n / rate - loop.time()))
                else:  # as fast as the broker takes them: the clock is read every 32 messages
                    now = loop.time()
                    if now >= next_flush:
                        for client in clients:
                            client.flush()
                        next_flush = now + PACE_S
                    due = n + 32
            client, name = routes[n % len(routes)]
            values = {k: 50.0 + rnd.uniform(-5, 5) for k in KEYS}
            if excursion and rnd.random() < excursion:
                # Toggle this device's k0 across its limit: every excursion raises or clears an alarm.
                if name in high:
                    high.discard(name)
                else:
                    high.add(name)
            if name in high:
                values["k0"] = 95.0
            await client.publish(topic, orjson.dumps({name: [{"ts": int(time.time() * 1000), "values": values}]}),
                                 flush=False)
        for client in clients:
            client.flush()
        sent = loop.time()
        for client in clients:
            await client.wait_acked(120)
        report.put({"messages": messages, "send_s": sent - start, "cpu_s": time.process_time() - cpu_start})
        for client in clients:
            await client.disconnect()

    uvloop.run(run())


@dataclass
class Publishers:
    """Publisher processes at work; join() waits for them and sums up what they report."""

    procs: list[Any]
    go: Any
    reports: Any

    def join(self) -> dict[str, float]:
        """{"msgs_s": the rate they sent at (all messages over the slowest one's sending time),
        "cpu_ms_per_msg": their CPU per message}."""
        got = [self.reports.get(timeout=300) for _ in self.procs]
        for p in self.procs:
            p.join(60)
        messages = sum(r["messages"] for r in got)
        return {"msgs_s": round(messages / max(max(r["send_s"] for r in got), 1e-9), 1),
                "cpu_ms_per_msg": round(sum(r["cpu_s"] for r in got) * 1000 / max(messages, 1), 4)}


def run_publishers(port: int, tokens: list[str], device_names: list[str], messages: int, rate: float,
                   excursion: float, seed_value: int, processes: int) -> Publishers:
    """Starts the publisher processes, waits until their connections are up and lets them go."""
    ctx = mp.get_context("spawn")
    go, reports = ctx.Event(), ctx.Queue()
    procs = []
    for i in range(processes):
        p = ctx.Process(target=publisher, args=(port, tokens[i::processes], device_names[i::processes],
                                                messages // processes, rate / processes, excursion, go, reports,
                                                seed_value + i), daemon=True)
        p.start()
        procs.append(p)
    time.sleep(2.0)  # connections up
    go.set()
    return Publishers(procs, go, reports)


# ------------------------------------------------------------------------------ the floor


class _FloorDeviceApi:
    """The device API of the floor's broker: every token is a device, and a publish only has its
    payload decoded and its latency (ms from the sample's ts to now) noted."""

    def __init__(self) -> None:
        self.latencies: list[float] = []

    async def authenticate(self, username: str | None, password: Any = None, *, client_id: str | None = None) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(device_id=0, enterprise_id=1, username=username)

    def may_subscribe(self, ref: Any, topic_filter: str) -> bool:
        return False

    def reject_foreign_topic(self, ref: Any, topic: str) -> None:
        pass

    def connection_opened(self, ref: Any, client_id: str, conn: Any) -> None:
        pass

    def connection_closed(self, ref: Any, client_id: str, conn: Any = None) -> None:
        pass

    async def on_publish(self, ref: Any, topic: str, payload: bytes, conn: Any) -> None:
        self._note(payload)

    def publish_nowait(self, ref: Any, topic: str, payload: bytes, conn: Any, on_durable: Any) -> None:
        """The broker's hot path, as the platform's device API takes it: done at once."""
        self._note(payload)
        on_durable(None)

    def _note(self, payload: bytes) -> None:
        import orjson

        now = time.time() * 1000
        for samples in orjson.loads(payload).values():
            self.latencies.append(now - samples[0]["ts"])


def bare_broker(port: int, stop: Any, out: Any, ready: Any) -> None:
    """The platform's own MQTT broker (ecoplat.connect.broker: the same packet loop, QoS 1
    acknowledged once the device API says the message is done) with a device API that only
    decodes each message and notes its latency: publisher + broker, the floor under the
    platform's publish → alarm latency."""
    import asyncio
    import logging

    import uvloop

    from ecoplat.connect.broker import EmbeddedBroker

    logging.getLogger("amqtt").setLevel(logging.ERROR)
    api = _FloorDeviceApi()

    async def run() -> None:
        broker = EmbeddedBroker(api, host="127.0.0.1", port=port)  # type: ignore[arg-type]
        await broker.start()
        ready.set()
        await asyncio.to_thread(stop.wait)
        out.put(list(api.latencies))
        await broker.shutdown()

    uvloop.run(run())


def floor(tokens: list[str], names: list[str], messages: int, rate: float, excursion: float,
          processes: int) -> list[float]:
    """The latency phase's publishers, at its rate, against a bare broker."""
    ctx = mp.get_context("spawn")
    port = free_port()
    stop, out = ctx.Event(), ctx.Queue()
    with bare_broker_process(bare_broker, (port, stop, out), stop=stop.set):
        run_publishers(port, tokens, names, messages, rate, excursion, 300, processes).join()
        time.sleep(0.5)
        stop.set()
        return [ms / 1000 for ms in out.get(timeout=60)]


# ------------------------------------------------------------------------------ phases


def wait_points(app: Any, target: int, timeout: float) -> float:
    """Waits until ingest has stored `target` points in all; returns when (perf_counter), as
    noted by ingest's writer thread right after the batch that got there. No polling: a thread
    waking every few milliseconds for the GIL would be the benchmark's own load on the
    platform process."""
    ingest = app.state.ingest
    stats = ingest.stats
    reached = threading.Event()
    at: list[float] = []

    def check(_points: Any) -> None:
        if stats.points_written >= target and not reached.is_set():
            at.append(time.perf_counter())
            reached.set()

    remove = ingest.add_listener(check)
    try:
        if stats.points_written < target and not reached.wait(timeout):
            raise TimeoutError(f"only {stats.points_written} of {target} points stored")
    finally:
        remove()
    console.print(f"  {target} points stored", style="dim")
    return at[0] if at else time.perf_counter()


def throughput_round(app: Any, port: int, tokens: list[str], names: list[str], messages: int,
                     seed_value: int, processes: int, cpu: list[dict[str, float | None]] | None = None) -> float:
    """Messages per second through the platform, publishers sending as fast as it takes them;
    `cpu` (if given) gets each platform process's CPU per message in the round."""
    from ecoplat.childproc import cpu_seconds

    messages -= messages % processes
    target = app.state.ingest.stats.points_written + messages * len(KEYS)
    store, writer = app.state.telemetry, app.state.alarms.writer
    publishers = run_publishers(port, tokens, names, messages, 0.0, 0.0, seed_value, processes)
    # The same window as the rate: from the publishers' go to the last point stored.
    before = (cpu_seconds(), _writer_cpu(store), _alarm_writer_cpu(writer))
    start = time.perf_counter()
    end = wait_points(app, target, timeout=600)
    after = (cpu_seconds(), _writer_cpu(store), _alarm_writer_cpu(writer))
    publishers.join()
    if cpu is not None:
        cpu.append({name: _per_msg_ms(a, b, messages)
                    for name, a, b in zip(("platform", "telemetry_writer", "alarm_process"), before, after, strict=True)})
    return messages / (end - start)


def _mean_cpu(rounds: list[dict[str, float | None]]) -> dict[str, float | None]:
    return {k: round(statistics.mean(r[k] for r in rounds), 3) if all(r[k] is not None for r in rounds) else None  # type: ignore[misc]
            for k in (rounds[0] if rounds else {})}


def _writer_cpu(store: Any) -> float | None:
    """CPU seconds of the store's writer process (None when it writes in this process)."""
    fn = getattr(store, "writer_cpu_seconds", None)
    return fn() if fn is not None else None


def _alarm_writer_cpu(writer: Any) -> float | None:
    """CPU seconds of the alarm writer process (None when it writes in this process)."""
    fn = getattr(writer, "cpu_seconds", None)
    return fn() if fn is not None else None


def _collector_s(store: Any, writer: Any) -> dict[str, float | None]:
    """Seconds each platform process has spent in the cycle collector since it settled (heap.py):
    this one, the telemetry writer and the alarm process (None when that runs in this one)."""
    from ecoplat import heap

    def total(fn: Any) -> float | None:
        return sum(fn()["seconds"]) if fn is not None else None

    return {"platform": total(heap.stats), "telemetry_writer": total(getattr(store, "writer_heap_stats", None)),
            "alarm_process": total(getattr(writer, "heap_stats", None))}


def _collector_ms(start: dict[str, float | None], end: dict[str, float | None]) -> dict[str, float | None]:
    return {k: round((end[k] - v) * 1000, 1) if v is not None and end[k] is not None else None  # type: ignore[operator]
            for k, v in start.items()}


def _per_msg_ms(start: float | None, end: float | None, messages: int) -> float | None:
    return round((end - start) * 1000 / messages, 3) if start is not None and end is not None else None


def _machine_stat() -> list[int] | None:
    """The machine's CPU counters (Linux /proc/stat: user nice system idle iowait irq softirq steal)."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None


def _steal_share(start: list[int] | None, end: list[int] | None) -> float | None:
    """Of the CPU time that passed, the share a hypervisor gave to other guests (steal): on a
    shared virtual machine, the time the platform waited for a CPU it had asked for."""
    if start is None or end is None:
        return None
    delta = [b - a for a, b in zip(start, end, strict=True)]
    return round(delta[7] / sum(delta), 3) if sum(delta) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--gateways", type=int, default=40, help="gateway connections publishing")
    parser.add_argument("--processes", type=int, default=2, help="publisher processes")
    parser.add_argument("--messages", type=int, default=24_000, help="messages per throughput round")
    parser.add_argument("--rounds", type=int, default=4,
                        help="off/on pairs, in alternating order (an even number cancels the drift as the store grows)")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="msgs/s of the latency phase (default: half the measured rules-off peak); a fixed "
                             "rate compares runs on a machine whose speed varies")
    parser.add_argument("--excursion", type=float, default=0.05, help="share of messages that raise/clear an alarm")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from ecoplat.app import create_app
    from ecoplat.childproc import cpu_seconds
    from ecoplat.config import Settings
    from ecoplat.events import Event
    from ecoplat.logs import setup_logging
    from ecoplat.migrations_runner import upgrade

    setup_logging("WARNING", json=False)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ecoplat-bench-alarms-"))
    workdir.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{workdir / 'bench.db'}"
    upgrade(url)
    console.print(f"seeding {args.devices} devices and {args.devices * 10} rules …")
    seeded = seed(url, args.devices, args.gateways)
    port = free_port()
    settings = Settings(data_dir=workdir / "var", database_url=url, secret_key="bench-" + "x" * 40,
                        log_json=False, mqtt_enabled=True, mqtt_port=port, demo_simulate_devices=0)
    app = create_app(settings)
    names = [f"dev-{i:04d}" for i in range(args.devices)]
    latencies: list[float] = []
    received = 0

    def on_alarm(event: Event) -> None:
        nonlocal received
        now_ms = time.time() * 1000
        data = event.data
        stamp = data.get("last_triggered_at") if data.get("transition") == "alarm" else data.get("cleared_at")
        if stamp and data.get("transition") in ("alarm", "return_to_normal"):
            latencies.append((now_ms - datetime.fromisoformat(stamp).timestamp() * 1000) / 1000)
            received += 1

    with TestClient(app, backend_options={"use_uvloop": True}):
        runtime = app.state.alarms
        ingest = app.state.ingest
        console.print(f"engine: {runtime.counts()[0]} rules compiled")
        # Warm-up: children created, rules bound to every device, caches filled.
        throughput_round(app, port, seeded["gateway_tokens"], names, max(args.devices, 2000), 1, args.processes)
        console.print(f"engine: {runtime.counts()[1]} bindings")
        off: list[float] = []
        on: list[float] = []
        cpu_off: list[dict[str, float | None]] = []
        cpu_on: list[dict[str, float | None]] = []

        def rules_off(r: int) -> None:
            app.state.alarms_unsubscribe()
            off.append(throughput_round(app, port, seeded["gateway_tokens"], names, args.messages, 100 + r,
                                        args.processes, cpu_off))
            app.state.alarms_unsubscribe = ingest.add_receiver(runtime.on_points)

        def rules_on(r: int) -> None:
            on.append(throughput_round(app, port, seeded["gateway_tokens"], names, args.messages, 200 + r,
                                       args.processes, cpu_on))

        for r in range(args.rounds):
            # Every round adds to the store and later rounds run slower: pairs alternate their
            # order (off-on, on-off, …), so that drift falls on both sides alike.
            for measure in ((rules_off, rules_on) if r % 2 == 0 else (rules_on, rules_off)):
                measure(r)
            console.print(f"round {r + 1}: rules off {off[-1]:.0f} msgs/s, rules on {on[-1]:.0f} msgs/s")
        msgs_off, msgs_on = statistics.mean(off), statistics.mean(on)

        rate = args.rate or msgs_off / 2
        messages = int(rate * args.latency_seconds)
        messages -= messages % args.processes
        source = "as asked" if args.rate else "half the rules-off peak"
        console.print(f"latency at {rate:.0f} msgs/s ({source}) for {args.latency_seconds:.0f} s …")
        load_at_start = round(os.getloadavg()[0], 2)
        remove = app.state.events.add_listener("alarm.", on_alarm)
        runtime.accepted_to_event_s.clear()
        store = app.state.telemetry
        cpu_start, writer_cpu_start, stat_start = cpu_seconds(), _writer_cpu(store), _machine_stat()
        alarm_cpu_start = _alarm_writer_cpu(runtime.writer)
        collector_start = _collector_s(store, runtime.writer)
        target = ingest.stats.points_written + messages * len(KEYS)
        write_busy_start, alarm_busy_start = ingest.stats.write_seconds, runtime.busy_seconds
        publishers = run_publishers(port, seeded["gateway_tokens"], names, messages, rate, args.excursion, 300,
                               args.processes)
        start = time.perf_counter()
        end = wait_points(app, target, timeout=600)
        write_busy = (ingest.stats.write_seconds - write_busy_start) / (end - start)
        alarm_busy = (runtime.busy_seconds - alarm_busy_start) / (end - start)
        cpu_end, writer_cpu_end, stat_end = cpu_seconds(), _writer_cpu(store), _machine_stat()
        alarm_cpu_end = _alarm_writer_cpu(runtime.writer)
        collector = _collector_ms(collector_start, _collector_s(store, runtime.writer))
        sent = publishers.join()
        runtime.drain(30)
        time.sleep(0.2)
        remove()
        achieved = messages / (end - start)
        alarm_failures = runtime.write_failures
        platform_part = latency_summary(list(runtime.accepted_to_event_s))

    console.print(f"floor: the same publishers at {rate:.0f} msgs/s against the bare broker …")
    floor_lat = latency_summary(floor(seeded["gateway_tokens"], names, messages, rate, args.excursion,
                                      args.processes))
    lat = latency_summary(latencies)
    result = {
        "benchmark": "alarms",
        "p50_alarm_ms": lat["p50_ms"],
        "p99_alarm_ms": lat["p99_ms"],
        "msgs_s_rules_off": round(msgs_off, 1),
        "msgs_s_rules_on": round(msgs_on, 1),
        "throughput_cost": round(1 - msgs_on / msgs_off, 4),
        "rules": seeded["rules"],
        "devices": args.devices,
        "points_per_msg": len(KEYS),
        "rounds_off": [round(x, 1) for x in off],
        "rounds_on": [round(x, 1) for x in on],
        "latency_rate_msgs_s": round(rate, 1),
        "latency_rate_source": source,
        "latency_achieved_msgs_s": round(achieved, 1),
        # False when the platform fell behind the offered rate (on a shared machine, usually other
        # load): the queue then grows for the whole phase and the latencies measure the backlog.
        "latency_kept_up": achieved >= 0.97 * rate,
        # What the publishers managed: below the rate asked, the load generator (not the platform)
        # fell behind; and the CPU they took from the same two cores.
        "publishers_msgs_s": sent["msgs_s"],
        "publishers_cpu_ms_per_msg": sent["cpu_ms_per_msg"],
        "load_average_1m_at_latency_start": load_at_start,
        "alarm_events": received,
        # The alarm path's own share: points accepted by ingest → alarm event on the bus (the
        # rest of publish → event is the publisher, the broker and the payload parsing).
        "p50_accepted_to_alarm_ms": platform_part["p50_ms"],
        "p99_accepted_to_alarm_ms": platform_part["p99_ms"],
        # Baseline in the same run: publish → arrival at the platform's broker with nothing behind it
        # (it stores nothing and acknowledges at once): the publishers' and the broker's own share.
        "floor_p50_ms": floor_lat["p50_ms"],
        "floor_p99_ms": floor_lat["p99_ms"],
        "load_average_1m": round(os.getloadavg()[0], 2),
        # CPU per message in the latency phase: the platform process (one GIL: what the alarm
        # path queues behind), the telemetry writer process and the alarm writer process. Unlike latencies, these hold on
        # a machine whose CPU is shared with others (steal time).
        "steal_share": _steal_share(stat_start, stat_end),
        "platform_cpu_ms_per_msg": round((cpu_end - cpu_start) * 1000 / messages, 3),
        "writer_cpu_ms_per_msg": _per_msg_ms(writer_cpu_start, writer_cpu_end, messages),
        "alarm_writer_cpu_ms_per_msg": _per_msg_ms(alarm_cpu_start, alarm_cpu_end, messages),
        # Wall-time shares of the two serial stages in the latency phase: the telemetry write
        # (ingest's writer thread waiting on its child) and the alarm process (evaluations and
        # writes). Near 1.0, that stage is the bottleneck and queues build in front of it.
        "telemetry_write_busy_share": round(write_busy, 3),
        "alarm_busy_share": round(alarm_busy, 3),
        # Milliseconds each process spent in Python's cycle collector in the latency phase (every
        # thread of that process stops meanwhile; heap.py keeps start-up objects out of its walks).
        "collector_ms": collector,
        # CPU per message in the throughput rounds (the queues deep, batches large), beside the
        # latency phase's above: what a message costs each process at the peak.
        "cpu_ms_per_msg_rules_off": _mean_cpu(cpu_off),
        "cpu_ms_per_msg_rules_on": _mean_cpu(cpu_on),
        "max_alarm_ms": lat["max_ms"],
        "alarm_write_failures": alarm_failures,
        "backend": "sqlite",
        "broker": "embedded amqtt",
        # How much lower the telemetry writer's CPU priority is than the platform's (Settings).
        "telemetry_writer_nice": settings.telemetry_writer_nice,
        # Only at the rate asked: a run that fell behind measured a lower rate than half the peak.
        "meets_target": bool(not args.rate and achieved >= 0.97 * rate and lat["p99_ms"] is not None
                             and lat["p99_ms"] < 100 and 1 - msgs_on / msgs_off <= 0.20),
    }
    print_final_json(result)


if __name__ == "__main__":
    main()
