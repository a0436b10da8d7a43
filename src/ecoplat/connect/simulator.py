"""Virtual chlor-alkali devices publishing over the ThingsBoard MQTT device API (paho-mqtt,
username = access token): membrane electrolyzers, chlorine gas detectors and liquid chlorine
tanks, with Gaussian noise, slow drift and injected faults (step, spike, stuck sensor, dropout).

Everything random comes from one seeded generator per device, so a run is reproducible. The
signal model (`VirtualDevice.step`) is pure; `Simulator` adds the MQTT clients and the clock."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import math
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

TELEMETRY_TOPIC = "v1/devices/me/telemetry"
# How long stopping waits for the QoS 1 messages still unacknowledged.
DRAIN_TIMEOUT_S = 15.0


@dataclass(frozen=True, kw_only=True)
class SignalSpec:
    """One measured quantity: its normal value, noise (1 σ), slow drift (a sine with a period of
    hours, as plant conditions move through a shift), physical bounds and display precision."""

    key: str
    unit: str  # UCUM
    normal: float
    noise_sd: float
    drift_amplitude: float
    drift_period_s: float = 4 * 3600
    low: float = -math.inf
    high: float = math.inf
    decimals: int = 3
    # How far a step or spike fault moves the value (a spike is this × 3 … 6).
    fault_step: float = 0.0


# Typical operating values of a membrane cell room and chlorine storage (chlor-alkali practice:
# anolyte 85–90 °C, cell voltage ~3 V at 4–6 kA/m², catholyte ~32 % NaOH, H₂ in Cl₂ kept
# well under 0.4 % for the explosion limit, detector alarm levels around 1 ppm).
DEVICE_KINDS: dict[str, tuple[SignalSpec, ...]] = {
    "electrolyzer": (
        SignalSpec(key="current_ka", unit="kA", normal=15.0, noise_sd=0.05, drift_amplitude=0.3,
                   low=0, high=25, decimals=3, fault_step=3.0),
        SignalSpec(key="cell_voltage_v", unit="V", normal=3.05, noise_sd=0.008, drift_amplitude=0.03,
                   low=0, high=5, decimals=4, fault_step=0.45),
        SignalSpec(key="anolyte_temp_c", unit="Cel", normal=87.5, noise_sd=0.15, drift_amplitude=1.2,
                   low=20, high=110, decimals=2, fault_step=4.0),
        # Catholyte outlet temperature and anolyte pH: the keys of the demo's electrolyzer profile.
        SignalSpec(key="temperature", unit="Cel", normal=87.0, noise_sd=0.15, drift_amplitude=1.0,
                   low=20, high=110, decimals=2, fault_step=4.5),
        SignalSpec(key="anolyte_ph", unit="[pH]", normal=3.2, noise_sd=0.03, drift_amplitude=0.2,
                   low=0, high=14, decimals=3, fault_step=1.2),
        SignalSpec(key="pressure_diff_kpa", unit="kPa", normal=2.0, noise_sd=0.03, drift_amplitude=0.2,
                   low=-5, high=10, decimals=3, fault_step=1.5),
        SignalSpec(key="naoh_pct", unit="%", normal=32.0, noise_sd=0.04, drift_amplitude=0.3,
                   low=0, high=50, decimals=3, fault_step=1.5),
        SignalSpec(key="h2_in_cl2_pct", unit="%", normal=0.10, noise_sd=0.008, drift_amplitude=0.02,
                   low=0, high=4, decimals=4, fault_step=0.3),
    ),
    "chlorine_detector": (
        SignalSpec(key="cl2_ppm", unit="[ppm]", normal=0.05, noise_sd=0.01, drift_amplitude=0.02,
                   low=0, high=20, decimals=3, fault_step=1.5),
    ),
    "chlorine_tank": (
        SignalSpec(key="level_pct", unit="%", normal=62.0, noise_sd=0.1, drift_amplitude=8.0,
                   drift_period_s=8 * 3600, low=0, high=100, decimals=2, fault_step=20.0),
        SignalSpec(key="pressure_kpa", unit="kPa", normal=520.0, noise_sd=1.5, drift_amplitude=25.0,
                   low=0, high=1600, decimals=1, fault_step=500.0),
        SignalSpec(key="temperature", unit="Cel", normal=18.0, noise_sd=0.1, drift_amplitude=2.0,
                   low=-40, high=60, decimals=2, fault_step=8.0),
    ),
}
KIND_ORDER = ("electrolyzer", "chlorine_detector", "chlorine_tank")


class FaultKind(enum.StrEnum):
    step = "step"  # an offset that stays for the fault's duration (a process upset)
    spike = "spike"  # one sample far off (a transient, e.g. a chlorine leak puff)
    stuck = "stuck"  # the sensor repeats its last value
    dropout = "dropout"  # the device sends nothing


@dataclass(slots=True)
class Fault:
    kind: FaultKind
    key: str | None  # None for dropout (the whole device)
    start_s: float
    end_s: float
    magnitude: float = 0.0
    stuck_value: float | None = None

    def active(self, t_s: float) -> bool:
        return self.start_s <= t_s < self.end_s


# Device types (Device.type) that name a simulated kind.
TYPE_KINDS = {"membrane_electrolyzer": "electrolyzer", "electrolyzer": "electrolyzer",
              "chlorine_detector": "chlorine_detector", "liquid_chlorine_tank": "chlorine_tank",
              "chlorine_tank": "chlorine_tank"}


def kind_for(name: str, index: int, device_type: str | None = None) -> str:
    """A device's kind from its type or name (as demo devices are named), else round robin."""
    if device_type in TYPE_KINDS:
        return TYPE_KINDS[device_type]
    lowered = name.lower()
    if "detector" in lowered or "gas" in lowered or "cl2" in lowered:
        return "chlorine_detector"
    if "tank" in lowered or "storage" in lowered:
        return "chlorine_tank"
    if "electroly" in lowered or "cell" in lowered:
        return "electrolyzer"
    return KIND_ORDER[index % len(KIND_ORDER)]


@dataclass(eq=False)
class VirtualDevice:
    """The signal model of one device; `step(t_s)` gives its values at time t (or None while
    it drops out). Only the device's own seeded generator is used, so runs repeat exactly."""

    name: str
    kind: str
    seed: int
    faults_enabled: bool = True
    mean_s_between_faults: float = 120.0
    token: str = ""
    rng: random.Random = field(init=False)
    faults: list[Fault] = field(default_factory=list)
    faults_started: int = 0
    _last: dict[str, float] = field(default_factory=dict)
    _last_t: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in DEVICE_KINDS:
            raise ValueError(f"unknown device kind '{self.kind}'; one of {', '.join(DEVICE_KINDS)}")
        self.rng = random.Random(self.seed)
        # Each device's drift starts somewhere else in its cycle.
        self._phase = {s.key: self.rng.uniform(0, 2 * math.pi) for s in self.signals}

    @property
    def signals(self) -> tuple[SignalSpec, ...]:
        return DEVICE_KINDS[self.kind]

    def inject(self, kind: FaultKind | str, *, key: str | None = None, start_s: float, duration_s: float,
               magnitude: float | None = None) -> Fault:
        """Schedules a fault (the random injector uses this too)."""
        kind = FaultKind(kind)
        spec = None
        if kind is not FaultKind.dropout:
            key = key or self.signals[0].key
            spec = next((s for s in self.signals if s.key == key), None)
            if spec is None:
                raise ValueError(f"{self.kind} has no signal '{key}'")
        if magnitude is None and spec is not None:
            if kind is FaultKind.spike:
                magnitude = spec.fault_step * self.rng.uniform(3, 6) / 3
            else:
                magnitude = spec.fault_step * self.rng.choice((-1, 1))
            if self.kind == "chlorine_detector" and kind in (FaultKind.spike, FaultKind.step):
                magnitude = abs(magnitude)  # a detector fault is a leak: the reading goes up
        fault = Fault(kind=kind, key=None if kind is FaultKind.dropout else key, start_s=start_s,
                      end_s=start_s + duration_s, magnitude=magnitude or 0.0)
        self.faults.append(fault)
        self.faults_started += 1
        return fault

    def _maybe_start_fault(self, t_s: float, dt_s: float) -> None:
        if not self.faults_enabled or dt_s <= 0:
            return
        if self.rng.random() >= dt_s / self.mean_s_between_faults:
            return
        kind = self.rng.choice(list(FaultKind))
        # A spike lasts one sample; the others long enough to be seen on a chart.
        duration = self.rng.uniform(5, 30) if kind is not FaultKind.spike else dt_s / 2
        key = None if kind is FaultKind.dropout else self.rng.choice(self.signals).key
        self.inject(kind, key=key, start_s=t_s, duration_s=duration)

    def step(self, t_s: float) -> dict[str, float] | None:
        dt = 0.0 if self._last_t is None else t_s - self._last_t
        self._last_t = t_s
        self._maybe_start_fault(t_s, dt)
        self.faults = [f for f in self.faults if f.end_s > t_s]
        active = [f for f in self.faults if f.active(t_s)]
        values: dict[str, float] = {}
        for s in self.signals:
            drift = s.drift_amplitude * math.sin(2 * math.pi * t_s / s.drift_period_s + self._phase[s.key])
            v = s.normal + drift + self.rng.gauss(0, s.noise_sd)
            for f in active:
                if f.key != s.key:
                    continue
                if f.kind in (FaultKind.step, FaultKind.spike):
                    v += f.magnitude
                elif f.kind is FaultKind.stuck:
                    if f.stuck_value is None:
                        f.stuck_value = self._last.get(s.key, v)
                    v = f.stuck_value
            v = round(min(s.high, max(s.low, v)), s.decimals)
            values[s.key] = v
        self._last.update(values)
        if any(f.kind is FaultKind.dropout for f in active):
            return None
        return values


@dataclass(frozen=True, kw_only=True)
class SimulatedDevice:
    name: str
    token: str
    kind: str


def load_devices(path: Path, limit: int | None = None) -> list[SimulatedDevice]:
    """Devices from a tokens file `[{"id", "name", "token", "enterprise", "type"?, "kind"?}]`."""
    raw = json.loads(Path(path).read_text())
    if not isinstance(raw, list):
        raise ValueError(f"{path}: expected a JSON list of devices")
    out = []
    for i, d in enumerate(raw):
        if not isinstance(d, dict) or not d.get("token"):
            raise ValueError(f"{path}: entry {i} has no token")
        name = str(d.get("name") or f"device-{i + 1}")
        kind = d.get("kind") if d.get("kind") in DEVICE_KINDS else kind_for(name, i, d.get("type"))
        out.append(SimulatedDevice(name=name, token=str(d["token"]), kind=kind))
    return out[:limit] if limit is not None else out


@dataclass
class SimulatorStats:
    sent: int = 0
    dropped_out: int = 0
    publish_errors: int = 0
    connected: int = 0
    faults: int = 0
    sent_by_device: dict[str, int] = field(default_factory=dict)


class Simulator:
    """Runs virtual devices against a platform's MQTT port: one paho client per device, values
    every 1/rate seconds (timestamps in ms), QoS 1."""

    def __init__(self, devices: Sequence[SimulatedDevice], *, host: str = "127.0.0.1", port: int = 1883,
                 rate: float = 1.0, seed: int = 0, faults: bool = True,
                 mean_s_between_faults: float = 120.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.host, self.port, self.rate = host, port, rate
        self.models = [VirtualDevice(name=d.name, kind=d.kind, token=d.token, seed=seed * 1000 + i,
                                     faults_enabled=faults, mean_s_between_faults=mean_s_between_faults)
                       for i, d in enumerate(devices)]
        self.stats = SimulatorStats()
        self._clients: list[mqtt.Client] = []
        self._last_publish: dict[int, mqtt.MQTTMessageInfo] = {}
        self._connected: set[int] = set()
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._t0: float | None = None

    # ---- MQTT --------------------------------------------------------------------------------

    def _connect_all(self) -> None:
        for i, model in enumerate(self.models):
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ecoplat-sim-{i}-{model.seed}",
                                 protocol=mqtt.MQTTv311)
            client.username_pw_set(model.token)
            client.reconnect_delay_set(0.2, 5)
            client.on_connect = self._on_connect(i)
            client.on_disconnect = self._on_disconnect(i)
            client.connect_async(self.host, self.port, keepalive=30)
            client.loop_start()
            self._clients.append(client)

    def _on_connect(self, i: int) -> Any:
        def cb(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
            if not reason.is_failure:
                with self._lock:
                    self._connected.add(i)
                    self.stats.connected = len(self._connected)
            else:
                log.warning("simulated device %s refused: %s", self.models[i].name, reason)
        return cb

    def _on_disconnect(self, i: int) -> Any:
        def cb(*_args: Any) -> None:
            with self._lock:
                self._connected.discard(i)
                self.stats.connected = len(self._connected)
        return cb

    def _disconnect_all(self) -> None:
        # QoS 1 messages still in flight (or still queued in paho behind its in-flight window)
        # would be lost by an immediate disconnect: wait for each device's last one. A platform
        # under load may take seconds to make them durable.
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        for info in self._last_publish.values():
            with contextlib.suppress(Exception):
                info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
        self._last_publish.clear()
        for c in self._clients:
            try:
                c.disconnect()
                c.loop_stop()
            except Exception:
                log.debug("closing a simulator client failed", exc_info=True)
        self._clients.clear()

    # ---- the clock ---------------------------------------------------------------------------

    def tick(self, t_s: float, ts_ms: int) -> None:
        """Computes every device's values at t and publishes those of connected devices."""
        for i, model in enumerate(self.models):
            values = model.step(t_s)
            self.stats.faults = sum(m.faults_started for m in self.models)
            if values is None:
                self.stats.dropped_out += 1
                continue
            if i not in self._connected:
                continue
            info = self._clients[i].publish(TELEMETRY_TOPIC, orjson.dumps({"ts": ts_ms, "values": values}), qos=1)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                self.stats.sent += 1
                self.stats.sent_by_device[model.name] = self.stats.sent_by_device.get(model.name, 0) + 1
                self._last_publish[i] = info
            else:
                self.stats.publish_errors += 1

    async def run(self, duration: float | None = None) -> None:
        self._connect_all()
        try:
            interval = 1.0 / self.rate
            start = time.monotonic()
            self._t0 = time.time()
            n = 0
            last_ms = 0
            while duration is None or time.monotonic() - start < duration:
                now = time.time()
                # Each sample a millisecond after the last at least: ticks that catch up after
                # the loop fell behind would otherwise share a timestamp, and the store keeps
                # one value per device, key and instant (a replay, not a second sample).
                last_ms = max(int(now * 1000), last_ms + 1)
                self.tick(now - self._t0, last_ms)
                n += 1
                await asyncio.sleep(max(0.0, start + n * interval - time.monotonic()))
        finally:
            await asyncio.to_thread(self._disconnect_all)

    def start(self, duration: float | None = None) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self.run(duration), name="ecoplat-simulator")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def status_line(self) -> str:
        s = self.stats
        return (f"{s.connected}/{len(self.models)} devices connected · {s.sent} messages sent · "
                f"{s.faults} faults injected · {s.dropped_out} samples dropped out · {s.publish_errors} errors")


def run_simulator_cli(devices: int, rate: float, host: str, port: int, tokens_file: Path | None,
                      duration: float | None, faults: bool, console: Any, seed: int = 0) -> None:
    """`ecoplat simulate`: runs the devices of a tokens file with a live status line."""
    import typer
    from rich.live import Live

    if tokens_file is None:
        console.print("[yellow]No devices to simulate.[/yellow] Pass the access tokens of existing devices: "
                      "[bold]ecoplat simulate --tokens var/demo-devices.json[/bold] (written by `ecoplat demo`), "
                      "or a JSON file of the form [{\"name\": …, \"token\": …}]. Nothing was created.")
        raise typer.Exit(2)
    try:
        found = load_devices(tokens_file, limit=devices)
    except (OSError, ValueError) as e:
        console.print(f"[red]Cannot read the devices:[/red] {e}")
        raise typer.Exit(2) from e
    if not found:
        console.print(f"[yellow]{tokens_file} lists no devices.[/yellow]")
        raise typer.Exit(2)
    if len(found) < devices:
        console.print(f"{tokens_file} lists {len(found)} device(s); simulating those.")
    sim = Simulator(found, host=host, port=port, rate=rate, seed=seed, faults=faults)
    kinds = ", ".join(f"{m.name} ({m.kind})" for m in sim.models)
    console.print(f"Simulating {kinds} → mqtt://{host}:{port} at {rate:g} msg/s each. Ctrl-C stops.")

    async def main() -> None:
        task = sim.start(duration)
        with Live(sim.status_line(), console=console, refresh_per_second=4, transient=False) as live:
            while not task.done():
                live.update(sim.status_line())
                await asyncio.sleep(0.25)
            live.update(sim.status_line())
        await task

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        console.print(f"Stopped. {sim.status_line()}")
