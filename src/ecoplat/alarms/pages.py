"""Alarm pages: the live alarm console (SSE from the bus topic alarm.<enterprise>, filters, ack
and shelve via HTMX), the alarm KPIs page (ECharts), and the unacknowledged-alarm banner shown
on every page. Everything goes through the alarm service, scoped by tenant."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import Form, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from markupsafe import Markup, escape

from ecoplat.alarms import service
from ecoplat.alarms.schemas import ShelveIn
from ecoplat.alarms.state import AlarmState
from ecoplat.db import DbSession
from ecoplat.events import Event
from ecoplat.pagination import PageParams
from ecoplat.tenancy import service as tenancy
from ecoplat.tenancy.auth import Principal
from ecoplat.web.auth import PagePrincipal, page_router
from ecoplat.web.templating import (
    N_,
    NAV,
    NavItem,
    get_translations,
    register_banner,
    render,
    request_locale,
)

router = page_router()

for _item in (NavItem("/alarms", N_("Alarms"), "alarms:read", order=40),
              NavItem("/alarms/kpis", N_("Alarm KPIs"), "alarms:read", order=41)):
    if all(n.path != _item.path for n in NAV):
        NAV.append(_item)

STATE_LABELS = {
    "unacknowledged": N_("Unacknowledged"), "acknowledged": N_("Acknowledged"),
    "rtn_unacknowledged": N_("Returned to normal, unacknowledged"), "normal": N_("Normal"),
    "shelved": N_("Shelved"), "suppressed": N_("Suppressed by design"), "out_of_service": N_("Out of service"),
}
PRIORITY_LABELS = {1: N_("Urgent"), 2: N_("High"), 3: N_("Medium"), 4: N_("Low")}
SHELVE_MINUTES = (15, 60, 240, 480, 1440)
CONSOLE_ROWS = 200


@register_banner
def unacknowledged_banner(request: Request, principal: Any) -> Markup | None:
    """'N unacknowledged alarms' under the navigation of every page, linking to the console."""
    if principal is None or not principal.can("alarms:read") or not hasattr(request.app.state, "db"):
        return None
    with request.app.state.db.session() as db:
        count = service.count_unacknowledged(db, actor=principal)
    if not count:
        return None
    t = get_translations(request_locale(request))
    text = t.ngettext("%(num)d unacknowledged alarm", "%(num)d unacknowledged alarms", count) % {"num": count}
    return Markup('<a href="/alarms?state=unacknowledged&amp;state=rtn_unacknowledged" '
                  'id="alarm-banner" data-count="{}">{}</a>').format(count, escape(text))


def _filters(site_id: int | None, priority: list[int] | None, state: list[str] | None,
             show: str) -> service.AlarmFilter:
    states = tuple(s for s in (state or []) if s in STATE_LABELS)
    return service.AlarmFilter(site_id=site_id, priorities=tuple(p for p in (priority or []) if 1 <= p <= 4),
                               states=states, open_only=show != "all")


def _row_view(alarm: Any, sites: dict[int, tuple[str, str]]) -> dict[str, Any]:
    site_name, tz = sites.get(alarm.site_id or 0, ("", "UTC"))
    return {"alarm": alarm, "state_label": STATE_LABELS.get(alarm.state, alarm.state),
            "priority_label": PRIORITY_LABELS.get(alarm.priority, str(alarm.priority)),
            "site": site_name, "tz": tz}


def _rows(db: Any, principal: Principal, filters: service.AlarmFilter) -> list[dict[str, Any]]:
    alarms, _ = service.list_alarms(db, actor=principal, page=PageParams(limit=CONSOLE_ROWS), filters=filters)
    sites = _site_map(db, principal)
    return [_row_view(a, sites) for a in alarms]


def _site_map(db: Any, principal: Principal) -> dict[int, tuple[str, str]]:
    """Site id → (name, time zone): times are shown in the site's zone."""
    if not principal.can("plant:read"):
        return {}
    sites, _ = tenancy.list_sites(db, actor=principal, page=PageParams(limit=500))
    return {s.id: (s.name, s.timezone or "UTC") for s in sites}


def _sites(db: Any, principal: Principal) -> list[tuple[int, str]]:
    return [(i, name) for i, (name, _tz) in _site_map(db, principal).items()]


SiteQ = Annotated[int | None, Query(ge=1, le=2_147_483_647)]
PrioQ = Annotated[list[int] | None, Query()]
StateQ = Annotated[list[str] | None, Query()]
ShowQ = Annotated[str, Query(pattern="^(open|all)$")]


def _context(db: Any, principal: Principal, site_id: int | None, priority: list[int] | None,
             state: list[str] | None, show: str) -> dict[str, Any]:
    return {"rows": _rows(db, principal, _filters(site_id, priority, state, show)),
            "params": {"site_id": site_id, "priority": priority or [], "state": state or [], "show": show},
            "can_ack": principal.can("alarms:ack"), "can_shelve": principal.can("alarms:shelve"),
            "shelve_minutes": SHELVE_MINUTES}


@router.get("/alarms", response_class=HTMLResponse)
def console(request: Request, db: DbSession, principal: PagePrincipal, site_id: SiteQ = None,
            priority: PrioQ = None, state: StateQ = None, show: ShowQ = "open") -> Response:
    principal.require("alarms:read")
    ctx = _context(db, principal, site_id, priority, state, show)
    ctx.update({"sites": _sites(db, principal), "state_labels": STATE_LABELS, "priority_labels": PRIORITY_LABELS,
                "query": request.url.query, "notifications": service.list_in_app(db, actor=principal, limit=10)})
    return render(request, "alarms/console.html", ctx)


@router.get("/alarms/rows", response_class=HTMLResponse)
def console_rows(request: Request, db: DbSession, principal: PagePrincipal, site_id: SiteQ = None,
                 priority: PrioQ = None, state: StateQ = None, show: ShowQ = "open") -> Response:
    """The console's table body, re-fetched by HTMX on every alarm event."""
    principal.require("alarms:read")
    return render(request, "alarms/_rows.html", _context(db, principal, site_id, priority, state, show))


def _row(request: Request, db: Any, principal: Principal, alarm: Any) -> Response:
    ctx = {"row": _row_view(alarm, _site_map(db, principal)),
           "can_ack": principal.can("alarms:ack"), "can_shelve": principal.can("alarms:shelve"),
           "shelve_minutes": SHELVE_MINUTES}
    return render(request, "alarms/_row.html", ctx)


def _publishing(request: Request, db: Any) -> Any:
    service.publish_after_commit(db, request.app.state.events.publish)
    return db


@router.post("/alarms/{alarm_id}/ack", response_class=HTMLResponse)
def ack(request: Request, db: DbSession, principal: PagePrincipal, alarm_id: int,
        note: Annotated[str, Form(max_length=1000)] = "") -> Response:
    alarm = service.acknowledge(_publishing(request, db), actor=principal, alarm_id=alarm_id, note=note,
                                ip=request.client.host if request.client else "")
    return _row(request, db, principal, alarm)


@router.post("/alarms/{alarm_id}/shelve", response_class=HTMLResponse)
def shelve(request: Request, db: DbSession, principal: PagePrincipal, alarm_id: int,
           minutes: Annotated[int, Form(ge=1, le=43_200)], reason: Annotated[str, Form(min_length=1, max_length=500)]
           ) -> Response:
    alarm = service.shelve(_publishing(request, db), actor=principal, alarm_id=alarm_id,
                           data=ShelveIn(minutes=minutes, reason=reason),
                           ip=request.client.host if request.client else "")
    return _row(request, db, principal, alarm)


@router.post("/alarms/{alarm_id}/unshelve", response_class=HTMLResponse)
def unshelve(request: Request, db: DbSession, principal: PagePrincipal, alarm_id: int) -> Response:
    alarm = service.unshelve(_publishing(request, db), actor=principal, alarm_id=alarm_id,
                             ip=request.client.host if request.client else "")
    return _row(request, db, principal, alarm)


def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@router.get("/alarms/stream")
async def stream(request: Request, db: DbSession, principal: PagePrincipal,
                 heartbeat: Annotated[float, Query(ge=1, le=60)] = 15) -> StreamingResponse:
    """Server-Sent Events: one `alarm` event per alarm state change of the reader's enterprise."""
    principal.require("alarms:read")
    # The stream may stay open for hours: end the request's unit of work so it holds no connection.
    await run_in_threadpool(db.commit)
    topic = f"alarm.{principal.enterprise_id}"
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=1000)

    def put(event: Event) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a slow page drops events, never blocks the bus
            queue.put_nowait(event)

    def on_event(event: Event) -> None:  # in the publisher's thread
        if event.topic == topic:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(put, event)

    remove = request.app.state.events.add_listener(topic, on_event)

    async def events() -> AsyncIterator[bytes]:
        try:
            yield b": connected\n\n"
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=heartbeat)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield b": heartbeat\n\n"
                    continue
                yield _sse("alarm", event.data)
        finally:
            remove()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# ------------------------------------------------------------------------------- KPIs page


def _kpi_charts(k: dict[str, Any], gettext: Any) -> dict[str, Any]:
    series = k["rate_series"]
    x = [s["start"][11:16] if len(series) <= 144 else s["start"][5:16] for s in series]
    ops = max(1, int(k["operators"]))
    per_op = [round(s["count"] / ops, 2) for s in series]
    flood_areas = [[{"xAxis": f["start"][11:16] if len(series) <= 144 else f["start"][5:16]},
                    {"xAxis": (f["end"][11:16] if len(series) <= 144 else f["end"][5:16])}] for f in k["floods"]]
    rate = {
        "title": {"text": gettext("Alarms per operator per 10 minutes"), "left": "center", "textStyle": {"fontSize": 14}},
        "tooltip": {"trigger": "axis"}, "grid": {"left": 40, "right": 20, "bottom": 40},
        "xAxis": {"type": "category", "data": x}, "yAxis": {"type": "value", "minInterval": 1},
        "series": [{"type": "bar", "name": gettext("Alarms"), "data": per_op,
                    "markLine": {"symbol": "none", "data": [
                        {"yAxis": 1, "name": gettext("Target"), "lineStyle": {"color": "#12b76a"},
                         "label": {"formatter": gettext("1 (acceptable)")}},
                        {"yAxis": 2, "name": gettext("Maximum manageable"), "lineStyle": {"color": "#f79009"},
                         "label": {"formatter": gettext("2 (manageable)")}},
                        {"yAxis": 10, "name": gettext("Flood"), "lineStyle": {"color": "#d92d20"},
                         "label": {"formatter": gettext("10 (flood)")}}]},
                    "markArea": {"itemStyle": {"color": "rgba(217,45,32,0.12)"}, "data": flood_areas}}],
    }
    names = {"urgent": gettext("Urgent"), "high": gettext("High"), "medium": gettext("Medium"), "low": gettext("Low")}
    pie = {"title": {"text": gettext("Priority distribution"), "left": "center", "textStyle": {"fontSize": 14}},
           "tooltip": {"trigger": "item", "formatter": "{b}: {c} ({d}%)"},
           "series": [{"type": "pie", "radius": "60%",
                       "data": [{"name": names[p], "value": v} for p, v in k["priority_distribution"].items()]}]}
    top = list(reversed(k["top10"]))
    bar = {"title": {"text": gettext("Top 10 most frequent alarms"), "left": "center", "textStyle": {"fontSize": 14}},
           "tooltip": {"trigger": "axis"}, "grid": {"left": 220, "right": 20},
           "xAxis": {"type": "value", "minInterval": 1},
           "yAxis": {"type": "category", "data": [t["label"][:40] for t in top]},
           "series": [{"type": "bar", "data": [t["count"] for t in top]}]}
    return {"rate": rate, "priority": pie, "top10": bar}


@router.get("/alarms/kpis", response_class=HTMLResponse)
def kpi_page(request: Request, db: DbSession, principal: PagePrincipal,
             hours: Annotated[int, Query(ge=1, le=24 * 92)] = 24) -> Response:
    principal.require("alarms:read")
    end = datetime.now(UTC)
    start = end - timedelta(hours=hours)
    k = service.kpis(db, actor=principal, start=start, end=end)
    t = get_translations(request_locale(request))
    return render(request, "alarms/kpis.html", {"k": k, "hours": hours, "charts": _kpi_charts(k, t.gettext),
                                                 "states": [s.value for s in AlarmState]})
