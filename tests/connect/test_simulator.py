"""The device simulator: its signal model (ranges, noise, drift, faults, determinism) and its
publishing over the ThingsBoard MQTT device API to a running platform."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest
import typer
from rich.console import Console
from tests.conftest import free_port
from tests.connect.mqtt_support import (
    platform_settings,
    running_platform,
    seed_tenant,
    wait_mqtt,
    wait_until,
)

from ecoplat.connect.simulator import (
    DEVICE_KINDS,
    FaultKind,
    SimulatedDevice,
    Simulator,
    VirtualDevice,
    kind_for,
    load_devices,
    run_simulator_cli,
)


def _series(device: VirtualDevice, n: int, dt: float = 1.0) -> list[dict[str, float] | None]:
    return [device.step(i * dt) for i in range(n)]


def test_same_seed_gives_the_same_run_and_another_seed_does_not() -> None:
    a = _series(VirtualDevice(name="E-101", kind="electrolyzer", seed=7), 600)
    b = _series(VirtualDevice(name="E-101", kind="electrolyzer", seed=7), 600)
    c = _series(VirtualDevice(name="E-101", kind="electrolyzer", seed=8), 600)
    assert a == b
    assert a != c


def test_electrolyzer_stays_in_its_operating_window_without_faults() -> None:
    dev = VirtualDevice(name="E-101", kind="electrolyzer", seed=3, faults_enabled=False)
    series = [v for v in _series(dev, 3600, dt=10) if v is not None]
    assert len(series) == 3600  # no dropouts without faults
    temps = [v["anolyte_temp_c"] for v in series]
    assert min(temps) >= 85 and max(temps) <= 90
    volts = [v["cell_voltage_v"] for v in series]
    assert min(volts) > 2.9 and max(volts) < 3.2
    assert {"current_ka", "cell_voltage_v", "anolyte_temp_c", "temperature", "anolyte_ph", "pressure_diff_kpa",
            "naoh_pct", "h2_in_cl2_pct"} == set(series[0])
    # Noise: consecutive samples differ; drift: the hourly means move.
    assert len({round(t, 2) for t in temps[:50]}) > 10
    hour_means = [sum(temps[i:i + 360]) / 360 for i in range(0, 3600, 360)]
    assert max(hour_means) - min(hour_means) > 0.5


def test_chlorine_detector_reads_about_0_05_ppm_and_a_spike_goes_above_1_ppm() -> None:
    dev = VirtualDevice(name="AT-201 detector", kind="chlorine_detector", seed=1, faults_enabled=False)
    dev.inject(FaultKind.spike, key="cl2_ppm", start_s=30, duration_s=0.5)
    series = _series(dev, 60)
    normal = [v["cl2_ppm"] for i, v in enumerate(series) if i != 30 and v is not None]
    assert max(normal) < 0.2 and 0.02 < sum(normal) / len(normal) < 0.08
    assert series[30] is not None and series[30]["cl2_ppm"] > 1.0
    assert series[31] is not None and series[31]["cl2_ppm"] < 0.2  # a spike is one sample


def test_step_stuck_and_dropout_faults() -> None:
    dev = VirtualDevice(name="V-301 tank", kind="chlorine_tank", seed=5, faults_enabled=False)
    dev.inject(FaultKind.step, key="pressure_kpa", start_s=10, duration_s=10, magnitude=200)
    dev.inject(FaultKind.stuck, key="level_pct", start_s=5, duration_s=20)
    dev.inject(FaultKind.dropout, start_s=40, duration_s=5)
    s = _series(dev, 50)
    assert all(s[i]["pressure_kpa"] > 650 for i in range(10, 20))  # type: ignore[index]
    assert all(s[i]["pressure_kpa"] < 600 for i in (0, 9, 20, 30))  # type: ignore[index]
    stuck = {s[i]["level_pct"] for i in range(5, 25)}  # type: ignore[index]
    assert len(stuck) == 1 and stuck == {s[4]["level_pct"]}  # type: ignore[index]
    assert s[25]["level_pct"] != s[24]["level_pct"]  # type: ignore[index]
    assert [i for i, v in enumerate(s) if v is None] == [40, 41, 42, 43, 44]


def test_random_faults_happen_at_the_configured_rate_deterministically() -> None:
    def count(seed: int) -> int:
        dev = VirtualDevice(name="E", kind="electrolyzer", seed=seed, mean_s_between_faults=60)
        _series(dev, 3600)
        return dev.faults_started

    assert count(11) == count(11)
    assert 30 <= count(11) <= 100  # about one a minute over an hour


def test_device_kinds_follow_names_and_tokens_file(tmp_path: Path) -> None:
    assert kind_for("Chlorine detector AT-201", 0) == "chlorine_detector"
    assert kind_for("Liquid chlorine tank V-301", 0) == "chlorine_tank"
    assert kind_for("Electrolyzer E-101", 2) == "electrolyzer"
    assert [kind_for("x", i) for i in range(3)] == ["electrolyzer", "chlorine_detector", "chlorine_tank"]
    assert kind_for("A-301 Cl2 detector", 0) == "chlorine_detector"
    assert kind_for("anything", 0, "liquid_chlorine_tank") == "chlorine_tank"
    path = tmp_path / "devices.json"
    path.write_text(json.dumps([{"id": 1, "name": "Tank 1", "token": "t1", "enterprise": "A"},
                                {"id": 2, "name": "X", "token": "t2", "enterprise": "A", "kind": "electrolyzer"}]))
    assert load_devices(path) == [SimulatedDevice(name="Tank 1", token="t1", kind="chlorine_tank"),
                                  SimulatedDevice(name="X", token="t2", kind="electrolyzer")]
    path.write_text(json.dumps([{"name": "no token"}]))
    with pytest.raises(ValueError, match="no token"):
        load_devices(path)


def test_a_simulator_that_falls_behind_never_stamps_two_samples_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ticks that catch up after the loop fell behind (a busy machine) come a millisecond
    apart at least: the store keeps one value per device, key and instant, so two samples
    stamped alike would count as one."""
    sim = Simulator([], port=1, rate=20_000)  # a tick every 50 us: several within a millisecond
    stamps: list[int] = []
    monkeypatch.setattr(sim, "tick", lambda t_s, ts_ms: stamps.append(ts_ms))
    asyncio.run(sim.run(duration=0.05))
    assert len(stamps) > 50
    assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False))


def test_cli_without_tokens_creates_nothing_and_says_what_to_pass() -> None:
    console = Console(record=True, width=200)
    with pytest.raises(typer.Exit) as e:
        run_simulator_cli(devices=3, rate=1, host="127.0.0.1", port=1, tokens_file=None, duration=1,
                          faults=True, console=console)
    assert e.value.exit_code == 2
    assert "--tokens var/demo-devices.json" in console.export_text()


def test_simulator_publishes_to_the_platform_and_values_arrive_in_the_store(
        fresh_database_url: str, tmp_path: Path) -> None:
    tenant = seed_tenant(fresh_database_url, devices=("Electrolyzer E-101", "Chlorine detector AT-201",
                                                      "Chlorine tank V-301"))
    port = free_port()
    settings = platform_settings(fresh_database_url, tmp_path / "var", mqtt_port=port)
    devices = [SimulatedDevice(name=name, token=tenant.device(name)[1], kind=kind_for(name, i))
               for i, name in enumerate(tenant.devices)]
    with running_platform(settings) as client:
        wait_mqtt(port, devices[0].token)
        sim = Simulator(devices, port=port, rate=10, seed=42, faults=False)
        # Deterministic faults: the detector reads a leak for the whole run, the tank drops out.
        sim.models[1].inject(FaultKind.step, key="cl2_ppm", start_s=0, duration_s=3600, magnitude=2.0)
        sim.models[2].inject(FaultKind.dropout, start_s=0, duration_s=3600)
        runner = threading.Thread(target=lambda: asyncio.run(sim.run(duration=2.0)))
        runner.start()
        runner.join(30)
        assert not runner.is_alive()
        assert sim.stats.sent >= 20 and sim.stats.publish_errors == 0

        def latest(name: str) -> dict[str, dict[str, object]]:
            r = client.get(f"/api/devices/{tenant.device(name)[0]}/telemetry/latest", headers=tenant.headers)
            assert r.status_code == 200, r.text
            return r.json()

        electrolyzer = wait_until(lambda: (lambda v: v if len(v) == 8 else None)(latest("Electrolyzer E-101")),
                                  message="electrolyzer values")
        assert set(electrolyzer) == {s.key for s in DEVICE_KINDS["electrolyzer"]}
        assert 85 <= electrolyzer["anolyte_temp_c"]["value"] <= 90  # type: ignore[operator]
        detector = wait_until(lambda: latest("Chlorine detector AT-201"), message="detector values")
        assert detector["cl2_ppm"]["value"] > 1.0  # type: ignore[operator]
        assert latest("Chlorine tank V-301") == {}
        # Every message the simulator sent was stored, once (10/s for 2 s).
        sent = sim.stats.sent_by_device["Electrolyzer E-101"]
        assert sent >= 10 and "Chlorine tank V-301" not in sim.stats.sent_by_device

        def stored() -> int:
            r = client.get(f"/api/devices/{tenant.device('Electrolyzer E-101')[0]}/telemetry",
                           params={"keys": "current_ka", "start": 0}, headers=tenant.headers)
            return len(r.json()["current_ka"])

        wait_until(lambda: stored() >= sent, message="every message stored")
        assert stored() == sent


def test_demo_runtime_starts_the_simulator_from_demo_devices_json(
        fresh_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tenant = seed_tenant(fresh_database_url, devices=("Chlorine detector AT-202",))
    device_id, token = tenant.device("Chlorine detector AT-202")
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    (data_dir / "demo-devices.json").write_text(json.dumps(
        [{"id": device_id, "name": "Chlorine detector AT-202", "token": token, "enterprise": "x"}]))
    monkeypatch.setenv("ECOPLAT_DEMO_SIMULATE", "1")
    port = free_port()
    settings = platform_settings(fresh_database_url, data_dir, mqtt_port=port, demo_simulate_devices=2)
    with running_platform(settings) as client:
        assert client.app.state.demo_simulator is not None
        values = wait_until(lambda: client.get(f"/api/devices/{device_id}/telemetry/latest",
                                               headers=tenant.headers).json(), message="demo values")
        assert set(values) == {"cl2_ppm"}


def test_cli_with_a_tokens_file_publishes_for_the_duration(fresh_database_url: str, tmp_path: Path) -> None:
    tenant = seed_tenant(fresh_database_url, devices=("T-309 chlorine tank",))
    device_id, token = tenant.device("T-309 chlorine tank")
    tokens = tmp_path / "devices.json"
    tokens.write_text(json.dumps([{"id": device_id, "name": "T-309 chlorine tank", "token": token,
                                   "enterprise": "x", "type": "liquid_chlorine_tank"}]))
    port = free_port()
    settings = platform_settings(fresh_database_url, tmp_path / "var", mqtt_port=port)
    with running_platform(settings) as client:
        wait_mqtt(port, token)
        console = Console(record=True, width=200)
        run_simulator_cli(devices=5, rate=5, host="127.0.0.1", port=port, tokens_file=tokens, duration=1.5,
                          faults=False, console=console)
        text = console.export_text()
        assert "T-309 chlorine tank (chlorine_tank)" in text and "lists 1 device(s)" in text
        sent = int(text.rsplit(" messages sent", 1)[0].rsplit("· ", 1)[1])
        assert sent >= 5

        def stored() -> int:
            r = client.get(f"/api/devices/{device_id}/telemetry", params={"keys": "level_pct", "start": 0},
                           headers=tenant.headers)
            return len(r.json().get("level_pct", []))

        wait_until(lambda: stored() >= sent, message="every message stored")
