"""Shared set-up for the MQTT transport tests (embedded broker, bridge, crash): a tenant with
devices and tokens seeded straight into a migrated database, a platform running in-process (the
app's real lifespan: telemetry store, ingest pipeline, MQTT) or as real `ecoplat serve`
subprocesses, and small readers over the REST API."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from sqlalchemy.orm import Session

from ecoplat.config import Settings
from ecoplat.connect.ingest import hash_token
from ecoplat.connect.models import Device
from ecoplat.db import Database
from ecoplat.tenancy.auth import hash_password, issue_tokens
from ecoplat.tenancy.models import Enterprise, Role, SizeClass, User

SECRET = "test-secret-" + "m" * 32
ROOT = Path(__file__).resolve().parents[2]


def _root_conftest() -> Any:
    # tests/connect/conftest.py shadows the name "conftest"; load the root one by its path.
    spec = importlib.util.spec_from_file_location("ecoplat_tests_root_conftest", ROOT / "tests" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


_root = _root_conftest()
free_port: Callable[[], int] = _root.free_port
new_database_url: Callable[[str, Path], str] = _root.new_database_url
drop_postgres_database: Callable[[str], None] = _root.drop_postgres_database
# The scaled-out deployment's database: PostgreSQL when the run has it, SQLite otherwise. The
# multi-process bridge tests run once, on this one, to keep the suite's time in bounds.
SCALED_OUT_BACKEND: str = _root.BACKENDS[-1]


@dataclass
class Tenant:
    enterprise_id: int
    user_id: int
    access_token: str
    devices: dict[str, tuple[int, str]] = field(default_factory=dict)  # name → (id, token)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}

    def device(self, name: str) -> tuple[int, str]:
        return self.devices[name]


def seed_tenant(database_url: str, *, name: str = "Bohai Chlor-Alkali", devices: tuple[str, ...] = ("cell-1",),
                gateways: tuple[str, ...] = (), limits: dict[str, Any] | None = None) -> Tenant:
    """An enterprise, its admin (with an access JWT) and devices with fresh access tokens."""
    database = Database(database_url)
    try:
        with database.session() as s:
            ent = Enterprise(name=f"{name} {secrets.token_hex(3)}", country="CN", isic_class="2011",
                             size_class=SizeClass.small, limits=limits or {})
            s.add(ent)
            s.flush()
            user = User(enterprise_id=ent.id, email=f"admin-{secrets.token_hex(4)}@example.com",
                        password_hash=hash_password("x"), roles=[Role.enterprise_admin.value])
            s.add(user)
            s.flush()
            tenant = Tenant(ent.id, user.id, issue_tokens(user, secret=SECRET, access_minutes=120,
                                                          refresh_days=1)["access_token"])
            for dev_name in devices + gateways:
                tenant.devices[dev_name] = _add_device(s, ent.id, dev_name, is_gateway=dev_name in gateways)
    finally:
        database.dispose()
    return tenant


def _add_device(s: Session, enterprise_id: int, name: str, *, is_gateway: bool) -> tuple[int, str]:
    token = secrets.token_urlsafe(16)
    dev = Device(enterprise_id=enterprise_id, name=name, token_hash=hash_token(token), token_prefix=token[:6],
                 is_gateway=is_gateway)
    s.add(dev)
    s.flush()
    return dev.id, token


def set_revoked(database_url: str, device_id: int) -> None:
    database = Database(database_url)
    try:
        with database.session() as s:
            s.get(Device, device_id).token_revoked = True  # type: ignore[union-attr]
    finally:
        database.dispose()


def platform_settings(database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"data_dir": data_dir, "database_url": database_url, "secret_key": SECRET,
                              "log_json": False, "mqtt_enabled": True, "mqtt_host": "127.0.0.1"}
    values.update(overrides)
    return Settings(**values)


@contextlib.contextmanager
def running_platform(settings: Settings) -> Iterator[Any]:
    """The whole app with its runtime (store, ingest, MQTT) in this process; yields a TestClient."""
    from fastapi.testclient import TestClient

    from ecoplat.app import create_app

    app = create_app(settings)
    with TestClient(app) as client:
        yield client


def serve_env(database_url: str, data_dir: Path, *, port: int, mqtt_port: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"ECOPLAT_DATA_DIR": str(data_dir), "ECOPLAT_DATABASE_URL": database_url,
                "ECOPLAT_SECRET_KEY": SECRET, "ECOPLAT_PORT": str(port), "ECOPLAT_MQTT_PORT": str(mqtt_port),
                "ECOPLAT_LOG_JSON": "true", "ECOPLAT_DEMO_SIMULATE": "0"})
    env.update(extra)
    return env


def start_serve(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`ecoplat serve` as a real process (its own interpreter, so kill -9 means kill -9)."""
    log = log_path.open("ab")
    return subprocess.Popen([sys.executable, "-m", "ecoplat.cli", "serve"], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_http(base_url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"ecoplat serve exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(base_url + "/openapi.json", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{base_url} did not come up in {timeout} s")


def wait_mqtt(port: int, token: str, timeout: float = 30.0) -> None:
    """Until the broker on port accepts this token (the app starts MQTT after HTTP is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{secrets.token_hex(3)}")
        c.username_pw_set(token)
        try:
            c.connect("127.0.0.1", port, keepalive=5)
            c.disconnect()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"MQTT on port {port} did not come up")


def stop_process(proc: subprocess.Popen[bytes], *, hard: bool = False) -> None:
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGKILL if hard else signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


def wait_until(predicate: Callable[[], Any], *, timeout: float = 15.0, interval: float = 0.05,
               message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {message}; last value: {last!r}")


def paho_client(port: int, token: str, *, client_id: str | None = None, clean: bool = True,
                protocol: int = mqtt.MQTTv311) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{secrets.token_hex(4)}",
                    clean_session=clean if protocol != mqtt.MQTTv5 else None, protocol=protocol)
    c.username_pw_set(token)
    return c


def latest(http: Any, tenant: Tenant, device_id: int) -> dict[str, Any]:
    r = http.get(f"/api/devices/{device_id}/telemetry/latest", headers=tenant.headers)
    assert r.status_code == 200, r.text
    return r.json()


def raw_series(http: Any, tenant: Tenant, device_id: int, key: str, start: int, end: int) -> list[dict[str, Any]]:
    r = http.get(f"/api/devices/{device_id}/telemetry", headers=tenant.headers,
                 params={"keys": key, "start": start, "end": end, "limit": 100000})
    assert r.status_code == 200, r.text
    return r.json().get(key, [])


def errors_by_reason(http: Any, tenant: Tenant, device_id: int) -> dict[str, int]:
    r = http.get(f"/api/devices/{device_id}/errors", headers=tenant.headers)
    assert r.status_code == 200, r.text
    return {item["reason"]: item["count"] for item in r.json()["by_reason"]}


MOSQUITTO_BIN = "/usr/sbin/mosquitto"
# What an ingest deployment's Mosquitto needs (see connect/bridge.py): Mosquitto's defaults hold a
# subscriber to 20 messages in flight and drop beyond 1000 queued, which a consumer that acks only
# after a durable write (and a restart after kill -9) exceeds.
INGEST_MOSQUITTO_CONF = """listener {port} 127.0.0.1
allow_anonymous true
persistence false
max_inflight_messages 0
max_queued_messages 0
"""


@contextlib.contextmanager
def ingest_mosquitto(tmp_dir: Path) -> Iterator[tuple[str, int]]:
    """A Mosquitto of our own, configured for ingest, on a free port."""
    if not Path(MOSQUITTO_BIN).exists():
        _root._unavailable(f"Debian's mosquitto binary at {MOSQUITTO_BIN}")
    port = free_port()
    conf = tmp_dir / "mosquitto-ingest.conf"
    conf.write_text(INGEST_MOSQUITTO_CONF.format(port=port))
    proc = subprocess.Popen([MOSQUITTO_BIN, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _root._port_open("127.0.0.1", port, 0.2), timeout=10, message="mosquitto up")
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(5)
