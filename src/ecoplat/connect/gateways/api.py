"""Thin routes over connect.gateways.service: connector configurations (CRUD, start/stop,
status), OPC UA browsing and a Modbus test read. Mounted by connect/api.py under /api/connectors."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from asyncua import ua
from fastapi import APIRouter, Query, Request, Response

from ecoplat.api_common import ObjectId, client_ip
from ecoplat.connect.gateways import service
from ecoplat.connect.gateways.base import connector_types, describe_error
from ecoplat.connect.gateways.modbus import ModbusConnector, read_once
from ecoplat.connect.gateways.models import ConnectorConfig
from ecoplat.connect.gateways.opcua import OBJECTS_FOLDER, browse
from ecoplat.connect.gateways.schemas import (
    BrowseIn,
    BrowseNodeOut,
    BrowseOut,
    ConnectorIn,
    ConnectorOut,
    ConnectorTypeOut,
    ConnectorUpdate,
    LiveStatus,
    ReadOut,
    ReadRow,
)
from ecoplat.db import DbSession
from ecoplat.errors import ProblemError, Unprocessable
from ecoplat.pagination import Page, PageQuery
from ecoplat.tenancy.auth import Principal, require

router = APIRouter(prefix="/api/connectors", tags=["connectors"])
log = logging.getLogger(__name__)

# A request must not hang on equipment that does not answer.
TEST_READ_MAX_S = 30.0

CanRead = Annotated[Principal, require("devices:read")]
CanWrite = Annotated[Principal, require("devices:write")]


class EquipmentUnreachable(ProblemError):
    """The request was understood but the equipment it names did not answer. 422 rather than
    502: the caller can act on it (fix the address, start the server), and it names the field."""

    status, type_slug = 422, "equipment-unreachable"


def to_out(row: ConnectorConfig) -> ConnectorOut:
    return ConnectorOut(id=row.id, enterprise_id=row.enterprise_id, device_id=row.device_id, name=row.name,
                        type=row.type, config=service.masked_config(row.config or {}), enabled=row.enabled,
                        status=row.status, last_error=row.last_error, last_error_at=row.last_error_at,
                        last_success_at=row.last_success_at, created_at=row.created_at, updated_at=row.updated_at)


def _manager(request: Request) -> Any:
    return getattr(request.app.state, "connectors", None)


def _applied(request: Request, row: ConnectorConfig) -> None:
    """Tells this process's runtime to pick the change up now rather than at its next round
    (the runtime that holds the connector's lease, here or elsewhere, restarts it)."""
    manager = _manager(request)
    if manager is not None:
        manager.changed_soon()


@router.get("/types", response_model=list[ConnectorTypeOut])
def list_types(actor: CanRead) -> list[ConnectorTypeOut]:
    return [ConnectorTypeOut(type=name, title=cls.title, config_schema=cls.config_model.model_json_schema())
            for name, cls in sorted(connector_types().items())]


@router.post("/opcua/browse", response_model=BrowseOut)
async def opcua_browse(actor: CanWrite, data: BrowseIn) -> BrowseOut:
    """Lists the children of a node of an OPC UA server, for choosing the nodes to map."""
    node_id = data.node_id or OBJECTS_FOLDER
    try:
        async with asyncio.timeout(data.timeout_s * 2):
            entries = await browse(data.endpoint, node_id, timeout_s=data.timeout_s, username=data.username,
                                   password=data.password)
    except ValueError as e:
        field = "node_id" if "node id" in str(e) else "endpoint"
        raise Unprocessable(f"{field}: {e}", errors=[{"field": field, "message": str(e), "type": "value_error"}]) from e
    except ua.UaStatusCodeError as e:
        raise Unprocessable(f"node_id: the server refused to browse {node_id}: {e}",
                            errors=[{"field": "node_id", "message": str(e), "type": "opcua_status"}]) from e
    except Exception as e:  # whatever the client library raises, the answer is "could not reach it"
        log.info("browsing %s failed", data.endpoint, exc_info=True)
        detail = (f"Could not browse {data.endpoint}: {describe_error(e)}. Check the address, "
                  "that the server runs, and that this platform can reach it.")
        raise EquipmentUnreachable(detail, errors=[{"field": "endpoint", "message": detail,
                                                    "type": "unreachable"}]) from e
    return BrowseOut(endpoint=data.endpoint, node_id=node_id,
                     children=[BrowseNodeOut(**e.__dict__) for e in entries])


@router.post("/modbus/test-read", response_model=ReadOut)
async def modbus_test_read(actor: CanWrite, config: dict[str, Any]) -> ReadOut:
    """Reads every register of a Modbus configuration once (before saving it)."""
    cfg = ModbusConnector.validate_config(config)
    try:
        async with asyncio.timeout(min(TEST_READ_MAX_S, cfg.timeout_s * (len(cfg.registers) + 2))):
            rows = await read_once(cfg)
    except Exception as e:  # whatever the client library raises, the answer is "could not read"
        log.info("test read from %s:%s failed", cfg.host, cfg.port, exc_info=True)
        detail = f"Could not read from {cfg.host}:{cfg.port}: {describe_error(e)}."
        raise EquipmentUnreachable(detail, errors=[{"field": "host", "message": detail, "type": "unreachable"}]) from e
    return ReadOut(rows=[ReadRow(**r) for r in rows])


@router.get("", response_model=Page[ConnectorOut])
def list_connectors(
    db: DbSession, actor: CanRead, page: PageQuery,
    device_id: Annotated[int | None, Query(ge=1, le=2_147_483_647)] = None,
    type: Annotated[str | None, Query(max_length=64)] = None,
) -> Page[ConnectorOut]:
    rows, cursor = service.list_connectors(db, actor=actor, page=page, device_id=device_id, type=type)
    return Page(items=[to_out(r) for r in rows], next_cursor=cursor)


@router.post("", response_model=ConnectorOut, status_code=201)
def create_connector(db: DbSession, actor: CanWrite, data: ConnectorIn, request: Request) -> ConnectorOut:
    row = service.create_connector(db, actor=actor, data=data, ip=client_ip(request))
    _applied(request, row)
    return to_out(row)


@router.get("/{connector_id}", response_model=ConnectorOut)
def get_connector(db: DbSession, actor: CanRead, connector_id: ObjectId) -> ConnectorOut:
    return to_out(service.get_connector(db, actor=actor, connector_id=connector_id))


@router.patch("/{connector_id}", response_model=ConnectorOut)
def update_connector(db: DbSession, actor: CanWrite, connector_id: ObjectId, data: ConnectorUpdate,
                     request: Request) -> ConnectorOut:
    row = service.update_connector(db, actor=actor, connector_id=connector_id, data=data, ip=client_ip(request))
    _applied(request, row)
    return to_out(row)


@router.delete("/{connector_id}", status_code=204)
def delete_connector(db: DbSession, actor: CanWrite, connector_id: ObjectId, request: Request) -> Response:
    service.delete_connector(db, actor=actor, connector_id=connector_id, ip=client_ip(request))
    manager = _manager(request)
    if manager is not None:
        manager.changed_soon()
    return Response(status_code=204)


@router.post("/{connector_id}/start", response_model=ConnectorOut)
def start_connector(db: DbSession, actor: CanWrite, connector_id: ObjectId, request: Request) -> ConnectorOut:
    row = service.set_enabled(db, actor=actor, connector_id=connector_id, enabled=True, ip=client_ip(request))
    _applied(request, row)
    return to_out(row)


@router.post("/{connector_id}/stop", response_model=ConnectorOut)
def stop_connector(db: DbSession, actor: CanWrite, connector_id: ObjectId, request: Request) -> ConnectorOut:
    row = service.set_enabled(db, actor=actor, connector_id=connector_id, enabled=False, ip=client_ip(request))
    _applied(request, row)
    return to_out(row)


@router.get("/{connector_id}/status", response_model=LiveStatus)
def connector_status(db: DbSession, actor: CanRead, connector_id: ObjectId, request: Request) -> LiveStatus:
    """The live state when this process runs the connector, else the last state stored."""
    row = service.get_connector(db, actor=actor, connector_id=connector_id)
    manager = _manager(request)
    live = manager.status(row.id) if manager is not None else None
    if live is not None:
        return LiveStatus(**live.as_dict(), running=True)
    return LiveStatus(**service.stored_status(row), running=False)
