"""ThingsBoard's HTTP device API, unchanged, so existing devices and SDKs work:

    POST /api/v1/{token}/telemetry     200 (empty body) once the points are durable
    POST /api/v1/{token}/attributes    200 (empty body) once the client attributes are stored
    GET  /api/v1/{token}/attributes?clientKeys=a,b&sharedKeys=c   {"client": {...}, "shared": {...}}
    GET  /api/v1/{token}/attributes/updates?timeout=ms   long poll for shared attribute updates
    GET  /api/v1/{token}/rpc?timeout=ms    long poll for a server-side RPC ({"id","method","params"}, or 408)
    POST /api/v1/{token}/rpc/{id}          the device's answer to it

Unknown or revoked tokens answer 401, malformed payloads 400 (problem+json with the reason);
every reject is counted for the device (or for "unknown sender") and logged."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from ecoplat.connect.ingest import DeviceRef, IngestPipeline, IngestStopped, now_ms
from ecoplat.connect.payloads import (
    PayloadError,
    RejectReason,
    decode,
    parse_attributes,
    parse_telemetry,
)
from ecoplat.errors import BadRequest, NotAuthenticated, ProblemError
from ecoplat.events import Event

router = APIRouter(prefix="/api/v1", tags=["device API (ThingsBoard)"])

Token = Annotated[str, Path(min_length=1, max_length=128, description="The device's access token.")]


class PayloadTooLarge(ProblemError):
    status, type_slug = 413, "payload-too-large"


class IngestUnavailable(ProblemError):
    status, type_slug = 503, "ingest-unavailable"


def _pipeline(request: Request) -> IngestPipeline:
    pipeline = getattr(request.app.state, "ingest", None)
    if pipeline is None:
        raise IngestUnavailable("Ingest is not running on this server; try again shortly.",
                                headers={"Retry-After": "5"})
    return pipeline


async def _device(pipeline: IngestPipeline, token: str) -> DeviceRef:
    # The cache answers without a thread hop; only a miss goes to the database (in a thread).
    ref = pipeline.cached_token(token) or await run_in_threadpool(pipeline.resolve_token, token)
    if ref is None:
        pipeline.reject(None, RejectReason.unknown_token, f"HTTP request with unknown token {token[:4]}…")
        raise NotAuthenticated("No device has this access token.")
    if ref.revoked or ref.enterprise_id is None:
        pipeline.reject(ref.device_id, RejectReason.revoked_token, "HTTP request with a revoked token")
        raise NotAuthenticated("This access token has been revoked; ask for the device's new token.")
    return ref


def _bad_payload(pipeline: IngestPipeline, ref: DeviceRef, e: PayloadError) -> ProblemError:
    pipeline.reject(ref.device_id, e.reason, e.detail)
    if e.reason == RejectReason.payload_too_large:
        return PayloadTooLarge(e.detail, reason=e.reason.value)
    return BadRequest(e.detail, reason=e.reason.value)


@router.post("/{token}/telemetry", status_code=200)
async def post_telemetry(token: Token, request: Request) -> Response:
    pipeline = _pipeline(request)
    ref = await _device(pipeline, token)
    body = await request.body()
    try:
        points, rejects = parse_telemetry(body, device_id=ref.device_id, now_ms=now_ms(),
                                          max_bytes=request.app.state.settings.max_payload_bytes)
    except PayloadError as e:
        raise _bad_payload(pipeline, ref, e) from None
    for r in rejects:
        pipeline.reject(ref.device_id, r.reason, r.detail)
    if not points:
        first = rejects[0] if rejects else None
        raise BadRequest(f"No usable value in the payload: {first.detail if first else 'empty'}",
                         reason=(first.reason.value if first else RejectReason.empty.value))
    assert ref.enterprise_id is not None
    try:
        await pipeline.submit(points, enterprise_id=ref.enterprise_id)
    except IngestStopped:
        raise IngestUnavailable("Ingest is shutting down; send again shortly.", headers={"Retry-After": "5"}) from None
    return Response(status_code=200)


@router.post("/{token}/attributes", status_code=200)
async def post_attributes(token: Token, request: Request) -> Response:
    pipeline = _pipeline(request)
    ref = await _device(pipeline, token)
    body = await request.body()
    try:
        values, rejects = parse_attributes(body, max_bytes=request.app.state.settings.max_payload_bytes)
    except PayloadError as e:
        raise _bad_payload(pipeline, ref, e) from None
    for r in rejects:
        pipeline.reject(ref.device_id, r.reason, r.detail)
    if not values:
        raise BadRequest("No usable attribute in the payload.", reason=rejects[0].reason.value if rejects else "empty")
    await run_in_threadpool(pipeline.save_client_attributes, ref, values)
    return Response(status_code=200)


def _keys(raw: str | None) -> list[str] | None:
    if not raw:
        return None
    return [k.strip() for k in raw.split(",") if k.strip()] or None


@router.get("/{token}/attributes", response_model=dict[str, dict[str, Any]])
async def get_attributes(
    token: Token, request: Request,
    client_keys: Annotated[str | None, Query(alias="clientKeys", max_length=4000)] = None,
    shared_keys: Annotated[str | None, Query(alias="sharedKeys", max_length=4000)] = None,
) -> dict[str, dict[str, Any]]:
    pipeline = _pipeline(request)
    ref = await _device(pipeline, token)
    answer = await run_in_threadpool(pipeline.read_attributes, ref, client_keys=_keys(client_keys),
                                     shared_keys=_keys(shared_keys))
    pipeline.note_activity(ref.device_id, "attributes_request")
    return answer


async def _next_event(request: Request, topic: str, timeout_ms: int) -> dict[str, Any] | None:
    """Waits for the next event on exactly this topic; None after timeout_ms."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=100)

    def on_event(event: Event) -> None:  # in the publisher's thread
        if event.topic == topic:  # the prefix would also match device 12 for device 1
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_offer, queue, event.data)

    remove = request.app.state.events.add_listener(topic, on_event)
    try:
        return await asyncio.wait_for(queue.get(), timeout_ms / 1000)
    except TimeoutError:
        return None
    finally:
        remove()


@router.get("/{token}/attributes/updates")
async def poll_attributes(token: Token, request: Request,
                          timeout: Annotated[int, Query(ge=100, le=60_000, description="Milliseconds to wait.")] = 10_000,
                          ) -> Any:
    """ThingsBoard's HTTP long poll for shared attribute updates: {key: value} of the next update,
    or 408 when none comes within `timeout` ms."""
    pipeline = _pipeline(request)
    ref = await _device(pipeline, token)
    data = await _next_event(request, f"attributes.{ref.enterprise_id}.{ref.device_id}", timeout)
    if data is None:
        return Response(status_code=408)
    pipeline.note_activity(ref.device_id, "attributes_request")
    return data.get("values", {})


@router.get("/{token}/rpc")
async def poll_rpc(token: Token, request: Request,
                   timeout: Annotated[int, Query(ge=100, le=60_000, description="Milliseconds to wait.")] = 10_000,
                   ) -> Any:
    """ThingsBoard's HTTP long poll for server-side RPC: the next request for this device as
    {"id", "method", "params"}, or 408 when none comes within `timeout` ms. The device answers
    with POST /api/v1/{token}/rpc/{id}."""
    pipeline = _pipeline(request)
    ref = await _device(pipeline, token)
    data = await _next_event(request, f"rpc.{ref.enterprise_id}.{ref.device_id}", timeout)
    if data is None:
        return Response(status_code=408)
    pipeline.note_activity(ref.device_id, "rpc")
    return {"id": data.get("id"), "method": data.get("method"), "params": data.get("params", {})}


def _offer(queue: asyncio.Queue[dict[str, Any]], data: dict[str, Any]) -> None:
    with contextlib.suppress(asyncio.QueueFull):
        queue.put_nowait(data)


@router.post("/{token}/rpc/{request_id}", status_code=200)
async def reply_rpc(token: Token, request: Request,
                    request_id: Annotated[int, Path(ge=0, le=2_147_483_647)]) -> Response:
    """The device's answer to a server-side RPC it received (by MQTT or the long poll)."""
    pipeline = _pipeline(request)
    ref = await _device(pipeline, token)
    body = await request.body()
    try:
        answer = decode(body, max_bytes=request.app.state.settings.max_payload_bytes)
    except PayloadError as e:
        raise _bad_payload(pipeline, ref, e) from None
    pipeline.rpc_response(ref.device_id, request_id, answer)
    return Response(status_code=200)
