"""Settings: every one has an embedded default and can be set as ECOPLAT_<NAME>."""

from __future__ import annotations

import secrets
from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ECOPLAT_", env_file=None, extra="ignore")

    data_dir: Path = Field(default=Path("./var"), description="Where the embedded defaults keep their files.")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default sqlite:///<data_dir>/ecoplat.db. "
        "postgresql+psycopg://user@host/db switches to PostgreSQL.",
    )
    host: str = "127.0.0.1"
    port: int = 8000
    base_url: str | None = None

    # auth
    secret_key: str | None = Field(default=None, description="JWT signing key; default: generated once into <data_dir>/secret.key")
    access_token_minutes: int = 15
    refresh_token_days: int = 7
    login_free_attempts: int = 3
    login_max_delay_seconds: int = 60
    auth_cache_seconds: float = Field(
        default=5.0, description="How long the API reuses what a verified access token resolved to (user, roles, "
        "stewarded ecosystems) instead of reading it again; changes made through this process apply at once, "
        "changes made by another process within this time. 0 reads it on every request.")

    # http
    max_body_bytes: int = 1_048_576
    page_size_default: int = 50
    page_size_max: int = 500

    # mqtt / ingest
    mqtt_enabled: bool = True
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_bridge_url: str | None = Field(
        default=None,
        description="mqtt://host:port of an external broker to subscribe to (bridge mode); unset = embedded amqtt broker.",
    )
    # Bridge mode takes identity from the topic: v1/devices/<access token>/… and
    # v1/gateway/<gateway access token>/… (see connect/bridge.py).
    mqtt_bridge_topics: str = ("v1/devices/+/telemetry,v1/devices/+/attributes,v1/devices/+/attributes/request/+,"
                               "v1/devices/+/rpc/request/+,v1/gateway/+/telemetry,v1/gateway/+/attributes,"
                               "v1/gateway/+/connect,v1/gateway/+/disconnect")
    mqtt_bridge_share_group: str = "ecoplat"
    # A store batch costs a fixed part per touched series (B-tree pages, rollup rows) and per
    # commit: 20,000 points write ~40 % cheaper per point than 5,000 (bench/telemetry_store.py).
    # Under light load the 50 ms bound cuts batches long before this.
    ingest_batch_max_points: int = 20_000
    # Measured (bench ingest, SQLite): 10 ms cuts p99 publish→stored from 144 to 48 ms at half peak
    # with the same peak throughput; at peak the writer is busy anyway and batches fill by size.
    ingest_batch_max_ms: int = 10
    ingest_queue_max_points: int = 200_000
    # The telemetry store's writes in a child process (telemetry/writer.py): they then hold no
    # GIL the broker, the rule engine and the alarm writer wait for. False writes in-process.
    telemetry_write_process: bool = True
    # That child can lower its CPU priority by this much (os.nice; 0 keeps the platform's): the
    # scheduler then runs the broker and the alarm process first whenever they are ready, and
    # the historian's batched writes take the time left, as storage engines run their
    # compactions (RocksDB's lowered compaction priority). It pays only with CPU to spare.
    # Measured (bench alarms, 2 cores, interleaved runs): at a fixed 7,000 msgs/s, p99
    # publish→alarm 89-157 ms (median 109) at 0, 81-118 ms (median 93) at 10; at half the
    # measured peak, where the machine was at capacity, 10 and 5 starved the writer: its queue
    # filled, back-pressure slowed the broker's reads, and 8 of 10 runs fell behind the rate
    # with p99 0.28-3.4 s, against 3 of 5 only slightly behind with p99 0.11-0.33 s at 0. So 0
    # unless the platform has headroom. Lowering needs no privilege; raising it back would.
    telemetry_writer_nice: int = Field(default=0, ge=0, le=19)
    # The alarm writes likewise (alarms/writer.py); in-process regardless where the database is
    # in memory or the sessions are bound to one connection (tests).
    alarm_write_process: bool = True
    max_payload_bytes: int = 65_536

    # events
    events_url: str | None = Field(default=None, description="redis://… to share events across processes; unset = in-process.")

    # logging
    log_level: str = "INFO"
    log_json: bool | None = None

    # demo
    demo_simulate_devices: int = 6

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'ecoplat.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    def ensure_data_dir(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self.data_dir

    @cached_property
    def resolved_secret_key(self) -> str:
        if self.secret_key:
            return self.secret_key
        path = self.ensure_data_dir() / "secret.key"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
        return path.read_text().strip()


def get_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
