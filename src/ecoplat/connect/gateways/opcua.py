"""OPC UA connector (asyncua): browses a server's address space, and subscribes to mapped nodes
(data change notifications at a publishing interval) turning each notification into a Point."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from asyncua import Client, ua
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ecoplat.connect.gateways.base import (
    KEY_PATTERN,
    Connector,
    ConnectorSession,
    ConnectorSettings,
    now_ms,
    plain_value,
)
from ecoplat.telemetry.points import Point

log = logging.getLogger(__name__)

OBJECTS_FOLDER = "i=85"  # the standard Objects folder (OPC UA Part 5 §8.2.4)
MAX_BROWSE_RESULTS = 1000


def parse_node_id(text: str) -> ua.NodeId:
    """A node id in the standard string form (`ns=2;s=E101.Current`, `i=85`), or ValueError."""
    try:
        return ua.NodeId.from_string(text.strip())
    except Exception as e:  # asyncua raises several types for malformed ids
        raise ValueError(f"'{text}' is not an OPC UA node id such as 'ns=2;s=Tank1.Level' or 'i=85'") from e


def _check_endpoint(v: str) -> str:
    if not v.startswith("opc.tcp://") or len(v) <= len("opc.tcp://"):
        raise ValueError("must be an opc.tcp:// URL, e.g. opc.tcp://192.168.0.10:4840")
    return v


class NodeMapping(BaseModel):
    """One node subscribed to and the telemetry key its values are stored under."""

    model_config = ConfigDict(extra="forbid")

    node_id: str = Field(min_length=1, max_length=500, description="e.g. ns=2;s=E101.CellVoltage")
    key: str = Field(pattern=KEY_PATTERN)
    scale: float = Field(default=1.0, allow_inf_nan=False)
    offset: float = Field(default=0.0, allow_inf_nan=False)

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, v: str) -> str:
        parse_node_id(v)
        return v.strip()


class OpcUaConfig(ConnectorSettings):
    endpoint: str = Field(max_length=500, description="opc.tcp://host:port/path of the server.")
    username: str | None = Field(default=None, max_length=200)
    password: str | None = Field(default=None, max_length=200)
    publishing_interval_ms: int = Field(default=1000, ge=10, le=3_600_000)
    sampling_interval_ms: int = Field(default=100, ge=0, le=3_600_000,
                                      description="How often the server samples each node (0: as fast as it can).")
    timeout_s: float = Field(default=4.0, gt=0, le=120)
    watchdog_interval_s: float = Field(default=2.0, gt=0, le=600,
                                       description="How often the connection is checked when no values arrive.")
    nodes: list[NodeMapping] = Field(min_length=1, max_length=5000)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        return _check_endpoint(v.strip())

    @field_validator("nodes")
    @classmethod
    def _unique(cls, v: list[NodeMapping]) -> list[NodeMapping]:
        keys: set[str] = set()
        ids: set[str] = set()
        for n in v:
            if n.key in keys:
                raise ValueError(f"key '{n.key}' is mapped twice")
            canonical = parse_node_id(n.node_id).to_string()
            if canonical in ids:
                raise ValueError(f"node '{n.node_id}' is mapped twice")
            keys.add(n.key)
            ids.add(canonical)
        return v


def _ts_ms(value: Any) -> int:
    """Source time when the server gives one (when the value changed in the field), else server time."""
    for attr in ("SourceTimestamp", "ServerTimestamp"):
        t = getattr(value, attr, None)
        if isinstance(t, datetime):
            return int(t.timestamp() * 1000)
    return now_ms()


class _Handler:
    """asyncua calls this from the client's event loop on every data change notification."""

    def __init__(self, mapping: dict[str, NodeMapping], queue: asyncio.Queue[tuple[NodeMapping, int, Any]]) -> None:
        self._mapping = mapping
        self._queue = queue

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        m = self._mapping.get(node.nodeid.to_string())
        if m is None:
            return
        dv = getattr(getattr(data, "monitored_item", None), "Value", None)
        self._queue.put_nowait((m, _ts_ms(dv), val))

    def status_change_notification(self, status: Any) -> None:
        log.info("OPC UA subscription status changed: %s", status)


def make_client(endpoint: str, *, timeout_s: float, username: str | None = None,
                password: str | None = None) -> Client:
    client = Client(endpoint, timeout=timeout_s)
    if username:
        client.set_user(username)
        client.set_password(password or "")
    return client


class OpcUaConnector(Connector[OpcUaConfig]):
    type_name = "opcua"
    title = "OPC UA"
    config_model = OpcUaConfig

    async def run(self, session: ConnectorSession) -> None:
        config = self.config
        mapping = {parse_node_id(n.node_id).to_string(): n for n in config.nodes}
        queue: asyncio.Queue[tuple[NodeMapping, int, Any]] = asyncio.Queue()
        client = make_client(config.endpoint, timeout_s=config.timeout_s, username=config.username,
                             password=config.password)
        await client.connect()
        try:
            subscription = await client.create_subscription(config.publishing_interval_ms, _Handler(mapping, queue))
            nodes = [client.get_node(n) for n in mapping]
            results = await subscription.subscribe_data_change(
                nodes, sampling_interval=float(config.sampling_interval_ms))
            for node, result in zip(nodes, results, strict=True):
                if isinstance(result, ua.StatusCode) and not result.is_good():
                    session.reject("bad_node", f"{node.nodeid.to_string()}: {result.name}")
            session.connected()
            await self._deliver(client, session, queue)
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(config.timeout_s):
                    await client.disconnect()

    async def _deliver(self, client: Client, session: ConnectorSession,
                       queue: asyncio.Queue[tuple[NodeMapping, int, Any]]) -> None:
        while True:
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can lose a cancellation
                # that arrives together with a value, leaving a connector that cannot be stopped.
                async with asyncio.timeout(self.config.watchdog_interval_s):
                    first = await queue.get()
            except TimeoutError:
                # Quiet servers are normal; a dead one raises here and the coordinator reconnects.
                await client.check_connection()
                continue
            items = [first]
            while not queue.empty():  # one publish response carries many notifications
                items.append(queue.get_nowait())
            points = []
            for m, ts, raw in items:
                v = plain_value(raw)
                if v is None:
                    session.reject("bad_value", f"{m.node_id}: {type(raw).__name__} {raw!r:.80} is not a telemetry value")
                    continue
                if not isinstance(v, bool | str) and (m.scale != 1 or m.offset != 0):
                    v = v * m.scale + m.offset
                points.append(Point(self.device_id, m.key, ts, v))
            await session.publish(points)
            await client.check_connection()


@dataclass(frozen=True, kw_only=True)
class BrowseEntry:
    node_id: str
    browse_name: str
    display_name: str
    node_class: str
    data_type: str | None
    value: Any = None


async def browse(endpoint: str, node_id: str | None = None, *, timeout_s: float = 4.0,
                 username: str | None = None, password: str | None = None) -> list[BrowseEntry]:
    """The children of a node (the Objects folder by default) with what a mapping form needs:
    node id, browse name, node class and, for variables, data type and current value."""
    _check_endpoint(endpoint)
    parent = parse_node_id(node_id or OBJECTS_FOLDER)
    client = make_client(endpoint, timeout_s=timeout_s, username=username, password=password)
    await client.connect()
    try:
        parent_node = client.get_node(parent)
        # Browsing an unknown node answers an empty list; reading its class raises BadNodeIdUnknown.
        await parent_node.read_node_class()
        refs = await parent_node.get_children_descriptions()
        out: list[BrowseEntry] = []
        type_names: dict[str, str] = {}
        for ref in refs[:MAX_BROWSE_RESULTS]:
            data_type = None
            value = None
            if ref.NodeClass == ua.NodeClass.Variable:
                node = client.get_node(ref.NodeId)
                try:
                    dt = await node.read_data_type()
                    key = dt.to_string()
                    if key not in type_names:
                        type_names[key] = (await client.get_node(dt).read_browse_name()).Name
                    data_type = type_names[key]
                    value = plain_value(await node.read_value())
                except ua.UaError:
                    pass  # not readable by this user; still listed so it can be mapped
            out.append(BrowseEntry(node_id=ref.NodeId.to_string(), browse_name=ref.BrowseName.to_string(),
                                   display_name=ref.DisplayName.Text or "", node_class=ref.NodeClass.name,
                                   data_type=data_type, value=value))
        return out
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout_s):
                await client.disconnect()
