"""Thin routes over the alarm service: rules, alarms and their life cycle, KPIs, notification
channels. Alarm and rule events go on the bus once the request's unit of work commits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy.orm import Session

from ecoplat.alarms import service
from ecoplat.alarms.schemas import (
    AckIn,
    AlarmOut,
    AlarmRuleIn,
    AlarmRuleOut,
    AlarmRulePatch,
    ChannelIn,
    ChannelOut,
    ChannelPatch,
    CommentIn,
    CommentOut,
    InAppNotificationOut,
    KpiOut,
    NoteIn,
    OutboxOut,
    ShelveIn,
    TransitionOut,
)
from ecoplat.alarms.state import AlarmState
from ecoplat.api_common import MAX_ID, ObjectId, client_ip
from ecoplat.db import DbSession
from ecoplat.pagination import Page, PageQuery
from ecoplat.tenancy.auth import CurrentPrincipal


def _alarm_db(request: Request, db: DbSession) -> Session:
    """The request's session, publishing the alarm events it collects after it commits."""
    service.publish_after_commit(db, request.app.state.events.publish)
    return db


AlarmDb = Annotated[Session, Depends(_alarm_db)]
OptId = Annotated[int | None, Query(ge=1, le=MAX_ID)]

rules_router = APIRouter(prefix="/api/alarm-rules", tags=["alarms"])
alarms_router = APIRouter(prefix="/api/alarms", tags=["alarms"])
channels_router = APIRouter(prefix="/api/notification-channels", tags=["alarms"])
router = APIRouter()


# ------------------------------------------------------------------------------------- rules


@rules_router.get("", response_model=Page[AlarmRuleOut])
def list_rules(db: DbSession, actor: CurrentPrincipal, page: PageQuery, device_id: OptId = None,
               profile_id: OptId = None, kind: Annotated[str | None, Query(max_length=32)] = None) -> Page[AlarmRuleOut]:
    actor.require("alarms:read")
    rows, cursor = service.list_rules(db, actor=actor, page=page, device_id=device_id, profile_id=profile_id,
                                      kind=kind)
    return Page(items=[AlarmRuleOut.model_validate(r) for r in rows], next_cursor=cursor)


@rules_router.post("", response_model=AlarmRuleOut, status_code=201)
def create_rule(request: Request, db: AlarmDb, actor: CurrentPrincipal, body: AlarmRuleIn) -> AlarmRuleOut:
    rule = service.create_rule(db, actor=actor, data=body, ip=client_ip(request))
    return AlarmRuleOut.model_validate(rule)


@rules_router.post("/from-profile/{profile_id}", response_model=list[AlarmRuleOut], status_code=201)
def rules_from_profile(request: Request, db: AlarmDb, actor: CurrentPrincipal, profile_id: ObjectId) -> list[AlarmRuleOut]:
    """Creates the rules of a device profile's rule templates (default_rules) it does not have yet."""
    rules = service.instantiate_profile_rules(db, actor=actor, profile_id=profile_id, ip=client_ip(request))
    return [AlarmRuleOut.model_validate(r) for r in rules]


@rules_router.get("/{rule_id}", response_model=AlarmRuleOut)
def get_rule(db: DbSession, actor: CurrentPrincipal, rule_id: ObjectId) -> AlarmRuleOut:
    actor.require("alarms:read")
    return AlarmRuleOut.model_validate(service.get_rule(db, actor=actor, rule_id=rule_id))


@rules_router.patch("/{rule_id}", response_model=AlarmRuleOut)
def update_rule(request: Request, db: AlarmDb, actor: CurrentPrincipal, rule_id: ObjectId,
                body: AlarmRulePatch) -> AlarmRuleOut:
    rule = service.update_rule(db, actor=actor, rule_id=rule_id, data=body, ip=client_ip(request))
    return AlarmRuleOut.model_validate(rule)


@rules_router.delete("/{rule_id}", status_code=204)
def delete_rule(request: Request, db: AlarmDb, actor: CurrentPrincipal, rule_id: ObjectId) -> Response:
    service.delete_rule(db, actor=actor, rule_id=rule_id, ip=client_ip(request))
    return Response(status_code=204)


# ------------------------------------------------------------------------------------ alarms


@alarms_router.get("", response_model=Page[AlarmOut])
def list_alarms(
    db: DbSession, actor: CurrentPrincipal, page: PageQuery,
    site_id: OptId = None, device_id: OptId = None,
    priority: Annotated[list[int] | None, Query(description="1-4; repeat for several")] = None,
    state: Annotated[list[AlarmState] | None, Query(description="repeat for several")] = None,
    start: Annotated[datetime | None, Query(description="alarms still sounding at or after this time")] = None,
    end: Annotated[datetime | None, Query(description="alarms first triggered before this time")] = None,
    open: Annotated[bool, Query(description="only alarms not yet back to normal")] = False,  # noqa: A002
) -> Page[AlarmOut]:
    if priority and any(p < 1 or p > 4 for p in priority):
        from ecoplat.errors import Unprocessable

        raise Unprocessable("priority: must be 1 to 4.",
                            errors=[{"field": "priority", "message": "must be 1 to 4", "type": "value_error"}])
    filters = service.AlarmFilter(site_id=site_id, device_id=device_id, priorities=tuple(priority or ()),
                                  states=tuple(s.value for s in state or ()), start=start, end=end, open_only=open)
    rows, cursor = service.list_alarms(db, actor=actor, page=page, filters=filters)
    return Page(items=[AlarmOut.model_validate(r) for r in rows], next_cursor=cursor)


@alarms_router.get("/kpis", response_model=KpiOut)
def alarm_kpis(db: DbSession, actor: CurrentPrincipal,
               start: Annotated[datetime | None, Query(description="default: 24 h before end")] = None,
               end: Annotated[datetime | None, Query(description="default: now")] = None) -> KpiOut:
    end = _aware(end) if end is not None else datetime.now(UTC)
    start = _aware(start) if start is not None else end - timedelta(hours=24)
    return KpiOut.model_validate(service.kpis(db, actor=actor, start=start, end=end))


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


@alarms_router.get("/unacknowledged-count")
def unacknowledged_count(db: DbSession, actor: CurrentPrincipal) -> dict[str, int]:
    actor.require("alarms:read")
    return {"count": service.count_unacknowledged(db, actor=actor)}


@alarms_router.get("/{alarm_id}", response_model=AlarmOut)
def get_alarm(db: DbSession, actor: CurrentPrincipal, alarm_id: ObjectId) -> AlarmOut:
    return AlarmOut.model_validate(service.get_alarm(db, actor=actor, alarm_id=alarm_id))


@alarms_router.get("/{alarm_id}/transitions", response_model=list[TransitionOut])
def list_transitions(db: DbSession, actor: CurrentPrincipal, alarm_id: ObjectId) -> list[TransitionOut]:
    return [TransitionOut.model_validate(t) for t in service.list_transitions(db, actor=actor, alarm_id=alarm_id)]


@alarms_router.get("/{alarm_id}/comments", response_model=list[CommentOut])
def list_comments(db: DbSession, actor: CurrentPrincipal, alarm_id: ObjectId) -> list[CommentOut]:
    return [CommentOut.model_validate(c) for c in service.list_comments(db, actor=actor, alarm_id=alarm_id)]


@alarms_router.post("/{alarm_id}/ack", response_model=AlarmOut)
def ack(request: Request, db: AlarmDb, actor: CurrentPrincipal, alarm_id: ObjectId,
        body: AckIn | None = None) -> AlarmOut:
    alarm = service.acknowledge(db, actor=actor, alarm_id=alarm_id, note=body.note if body else "",
                                ip=client_ip(request))
    return AlarmOut.model_validate(alarm)


@alarms_router.post("/{alarm_id}/shelve", response_model=AlarmOut)
def shelve(request: Request, db: AlarmDb, actor: CurrentPrincipal, alarm_id: ObjectId, body: ShelveIn) -> AlarmOut:
    return AlarmOut.model_validate(service.shelve(db, actor=actor, alarm_id=alarm_id, data=body,
                                                  ip=client_ip(request)))


def _note_route(name: str, fn: Any, summary: str) -> None:
    def route(request: Request, db: AlarmDb, actor: CurrentPrincipal, alarm_id: ObjectId,
              body: NoteIn | None = None) -> AlarmOut:
        alarm = fn(db, actor=actor, alarm_id=alarm_id, note=body.note if body else "", ip=client_ip(request))
        return AlarmOut.model_validate(alarm)

    route.__name__ = name.replace("-", "_")
    alarms_router.add_api_route(f"/{{alarm_id}}/{name}", route, methods=["POST"], response_model=AlarmOut,
                                summary=summary)


_note_route("unshelve", service.unshelve, "Un-shelve an alarm")
_note_route("suppress", service.suppress, "Suppress an alarm by design")
_note_route("unsuppress", service.unsuppress, "End the suppression of an alarm")
_note_route("out-of-service", service.remove_from_service, "Take an alarm out of service")
_note_route("return-to-service", service.return_to_service, "Return an alarm to service")


@alarms_router.post("/{alarm_id}/comment", response_model=CommentOut, status_code=201)
def comment(request: Request, db: AlarmDb, actor: CurrentPrincipal, alarm_id: ObjectId, body: CommentIn) -> CommentOut:
    return CommentOut.model_validate(service.add_comment(db, actor=actor, alarm_id=alarm_id, text=body.text,
                                                         ip=client_ip(request)))


# ---------------------------------------------------------------------------- notifications


@channels_router.get("", response_model=Page[ChannelOut])
def list_channels(db: DbSession, actor: CurrentPrincipal, page: PageQuery) -> Page[ChannelOut]:
    rows, cursor = service.list_channels(db, actor=actor, page=page)
    return Page(items=[ChannelOut.of(r) for r in rows], next_cursor=cursor)


@channels_router.post("", response_model=ChannelOut, status_code=201)
def create_channel(request: Request, db: DbSession, actor: CurrentPrincipal, body: ChannelIn) -> ChannelOut:
    return ChannelOut.of(service.create_channel(db, actor=actor, data=body, ip=client_ip(request)))


@channels_router.get("/{channel_id}", response_model=ChannelOut)
def get_channel(db: DbSession, actor: CurrentPrincipal, channel_id: ObjectId) -> ChannelOut:
    return ChannelOut.of(service.get_channel(db, actor=actor, channel_id=channel_id))


@channels_router.patch("/{channel_id}", response_model=ChannelOut)
def update_channel(request: Request, db: DbSession, actor: CurrentPrincipal, channel_id: ObjectId,
                   body: ChannelPatch) -> ChannelOut:
    return ChannelOut.of(service.update_channel(db, actor=actor, channel_id=channel_id, data=body,
                                                ip=client_ip(request)))


@channels_router.delete("/{channel_id}", status_code=204)
def delete_channel(request: Request, db: DbSession, actor: CurrentPrincipal, channel_id: ObjectId) -> Response:
    service.delete_channel(db, actor=actor, channel_id=channel_id, ip=client_ip(request))
    return Response(status_code=204)


@channels_router.get("/{channel_id}/outbox", response_model=list[OutboxOut])
def channel_outbox(db: DbSession, actor: CurrentPrincipal, channel_id: ObjectId) -> list[OutboxOut]:
    return [OutboxOut.model_validate(m) for m in service.list_outbox(db, actor=actor, channel_id=channel_id)]


@router.get("/api/in-app-notifications", response_model=list[InAppNotificationOut], tags=["alarms"])
def in_app_notifications(db: DbSession, actor: CurrentPrincipal,
                         limit: Annotated[int, Query(ge=1, le=200)] = 50) -> list[InAppNotificationOut]:
    return [InAppNotificationOut.model_validate(n) for n in service.list_in_app(db, actor=actor, limit=limit)]


router.include_router(rules_router)
router.include_router(alarms_router)
router.include_router(channels_router)
