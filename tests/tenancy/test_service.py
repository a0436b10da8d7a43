"""The tenancy services called directly, as other domains and the pages call them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from ecoplat.config import Settings
from ecoplat.errors import Conflict, Forbidden, NotFound, Unprocessable
from ecoplat.pagination import PageParams, decode_cursor, encode_cursor
from ecoplat.tenancy import audit, service
from ecoplat.tenancy.models import AuditEvent, EcosystemMembership, Role, User
from ecoplat.tenancy.schemas import AreaCreate, EnterpriseCreate, SiteUpdate, UserCreate, UserUpdate

from .builders import make_site, make_tree, make_user, principal
from .conftest import World

PAGE = PageParams(limit=100)


def test_another_tenants_objects_raise_not_found(db: Session, world: World) -> None:
    b = principal(db, world.b.admin)
    for call in (lambda: service.get_site(db, actor=b, site_id=world.a.site.id),
                 lambda: service.get_area(db, actor=b, area_id=world.a.area.id),
                 lambda: service.get_line(db, actor=b, line_id=world.a.line.id),
                 lambda: service.get_workstation(db, actor=b, workstation_id=world.a.workstation.id),
                 lambda: service.get_equipment(db, actor=b, equipment_id=world.a.equipment.id),
                 lambda: service.get_user(db, actor=b, user_id=world.a.admin.id),
                 lambda: service.get_api_key(db, actor=b, api_key_id=world.a.api_key.id),
                 lambda: service.get_audit_event(db, actor=b, audit_event_id=world.a.audit_event_id),
                 lambda: service.get_enterprise(db, actor=b, enterprise_id=world.a.enterprise.id),
                 lambda: service.get_ecosystem(db, actor=b, ecosystem_id=world.a.ecosystem.id),
                 lambda: service.update_site(db, actor=b, site_id=world.a.site.id, data=SiteUpdate(name="x")),
                 lambda: service.delete_site(db, actor=b, site_id=world.a.site.id, cascade=True),
                 lambda: service.create_area(db, actor=b, data=AreaCreate(site_id=world.a.site.id, name="x"))):
        with pytest.raises(NotFound):
            call()
    assert service.get_site(db, actor=principal(db, world.a.admin), site_id=world.a.site.id).id == world.a.site.id


def test_lists_are_scoped_to_the_callers_enterprise(db: Session, world: World) -> None:
    a = principal(db, world.a.admin)
    sites, _ = service.list_sites(db, actor=a, page=PAGE)
    assert [s.id for s in sites] == [world.a.site.id]
    users, _ = service.list_users(db, actor=a, page=PAGE)
    assert {u.enterprise_id for u in users} == {world.a.enterprise.id}
    admin = principal(db, world.platform_admin)
    all_sites, _ = service.list_sites(db, actor=admin, page=PAGE)
    assert {world.a.site.id, world.b.site.id} <= {s.id for s in all_sites}
    only_b, _ = service.list_sites(db, actor=admin, page=PAGE, enterprise_id=world.b.enterprise.id)
    assert [s.id for s in only_b] == [world.b.site.id]


def test_steward_creating_an_enterprise_makes_it_a_member_and_audits_it(db: Session, world: World) -> None:
    steward = principal(db, world.steward)
    ent = service.create_enterprise(db, actor=steward, data=EnterpriseCreate(
        name="Binzhou PVC", country="CN", isic_class="2013", size_class="small"))
    membership = db.scalar(select(EcosystemMembership).where(EcosystemMembership.enterprise_id == ent.id))
    assert membership is not None and membership.ecosystem_id == world.a.ecosystem.id
    event = db.scalar(select(AuditEvent).where(AuditEvent.entity_type == "enterprise",
                                               AuditEvent.entity_id == str(ent.id)))
    assert event is not None and event.action == "create" and event.actor == world.steward.email
    assert event.after["memberships"] == [{"ecosystem_id": world.a.ecosystem.id, "role": "member"}]
    visible, _ = service.list_enterprises(db, actor=steward, page=PAGE)
    assert ent.id in {e.id for e in visible}


def test_steward_cannot_place_an_enterprise_in_someone_elses_ecosystem(db: Session, world: World) -> None:
    with pytest.raises(NotFound):
        service.create_enterprise(db, actor=principal(db, world.steward), data=EnterpriseCreate(
            name="x", country="CN", isic_class="2013", size_class="small", ecosystem_id=world.b.ecosystem.id))


def test_password_change_by_admin_revokes_refresh_tokens(db: Session, world: World) -> None:
    a = principal(db, world.a.admin)
    before = world.a.engineer.token_version
    user = service.update_user(db, actor=a, user_id=world.a.engineer.id, data=UserUpdate(password="brand-new-pass"))
    assert user.token_version == before + 1
    event = db.scalars(select(AuditEvent).where(AuditEvent.entity_type == "user",
                                                AuditEvent.entity_id == str(user.id))).all()[-1]
    assert "password_hash" not in (event.before or {}) and "password_hash" not in (event.after or {})


def test_role_grants_are_bounded_by_the_granters_roles(db: Session, world: World) -> None:
    a = principal(db, world.a.admin)
    created = service.create_user(db, actor=a, data=UserCreate(
        email="safety@example.com", password="long-enough-pw", roles=[Role.safety_officer, Role.operator]))
    assert created.roles == ["safety_officer", "operator"]
    with pytest.raises(Forbidden):
        service.create_user(db, actor=a, data=UserCreate(
            email="steward@example.com", password="long-enough-pw", roles=[Role.ecosystem_steward]))
    engineer = principal(db, world.a.engineer)
    with pytest.raises(Forbidden):
        service.create_user(db, actor=engineer, data=UserCreate(
            email="op@example.com", password="long-enough-pw", roles=[Role.operator]))


def test_email_must_be_unique_across_enterprises(db: Session, world: World) -> None:
    with pytest.raises(Conflict):
        service.create_user(db, actor=principal(db, world.b.admin), data=UserCreate(
            email=world.a.admin.email.upper(), password="long-enough-pw", roles=[Role.operator]))


def test_site_with_children_needs_cascade(db: Session, world: World) -> None:
    a = principal(db, world.a.admin)
    with pytest.raises(Conflict) as e:
        service.delete_site(db, actor=a, site_id=world.a.site.id)
    assert "1 area(s)" in e.value.detail and "1 equipment" in e.value.detail
    empty = make_site(db, world.a.enterprise)
    service.delete_site(db, actor=a, site_id=empty.id)
    with pytest.raises(NotFound):
        service.get_site(db, actor=a, site_id=empty.id)


def test_equipment_must_sit_in_one_branch(db: Session, world: World, settings: Settings) -> None:
    from ecoplat.tenancy.schemas import EquipmentCreate

    a = principal(db, world.a.admin)
    other = make_tree(db, settings, ecosystem=world.a.ecosystem)
    with pytest.raises(NotFound):  # another enterprise's line
        service.create_equipment(db, actor=a, data=EquipmentCreate(site_id=world.a.site.id, line_id=other.line.id,
                                                                   name="x"))
    second_site = make_site(db, world.a.enterprise)
    with pytest.raises(Unprocessable):
        service.create_equipment(db, actor=a, data=EquipmentCreate(site_id=second_site.id,
                                                                   workstation_id=world.a.workstation.id, name="x"))


def test_audit_snapshot_leaves_secrets_out(db: Session, world: World) -> None:
    snap = audit.snapshot(world.a.admin)
    assert snap["email"] == world.a.admin.email and "password_hash" not in snap
    key_snap = audit.snapshot(world.a.api_key)
    assert "key_hash" not in key_snap and key_snap["prefix"].startswith("ek_")
    event = audit.record(db, actor=principal(db, world.a.admin), action="update", entity_type="user",
                         entity_id=world.a.admin.id, before={"at": datetime(2026, 1, 1, tzinfo=UTC)},
                         after=world.a.admin)
    assert event.before == {"at": "2026-01-01T00:00:00+00:00"}
    assert event.enterprise_id == world.a.enterprise.id and event.actor_user_id == world.a.admin.id
    assert audit.changed({"a": 1, "b": 2}, {"a": 1, "b": 3}) == {"b": 3}


def test_login_failures_are_counted_and_audited(db: Session, world: World, settings: Settings) -> None:
    result = service.login(db, email=world.a.operator.email, password="wrong", settings=settings, ip="10.0.0.9")
    assert result.status == 401 and result.tokens is None
    user = db.get(User, world.a.operator.id)
    assert user is not None and user.failed_login_count == 1
    event = db.scalar(select(AuditEvent).where(AuditEvent.action == "login_failed"))
    assert event is not None and event.ip == "10.0.0.9" and event.enterprise_id == world.a.enterprise.id


def test_cursor_round_trip_and_tamper() -> None:
    assert decode_cursor(encode_cursor([42])) == [42]
    when = datetime(2026, 11, 27, 12, tzinfo=UTC)
    assert decode_cursor(encode_cursor([when, 7])) == [when, 7]
    for bad in ("%%%", "bm90IGpzb24", encode_cursor([1, 2])):
        with pytest.raises(Unprocessable):
            decode_cursor(bad, arity=1)


def test_deactivated_user_cannot_sign_in(db: Session, world: World, settings: Settings) -> None:
    from .builders import PASSWORD

    user = make_user(db, world.a.enterprise, Role.operator, is_active=False)
    result = service.login(db, email=user.email, password=PASSWORD, settings=settings)
    assert result.status == 401 and "deactivated" in result.detail


def test_a_duplicate_that_slips_past_the_check_is_still_a_conflict(db: Session, world: World,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # two requests racing: both pass the look-up, the unique index decides
    monkeypatch.setattr(service, "_check_email_free", lambda *a, **k: None)
    with pytest.raises(Conflict) as e:
        service.create_user(db, actor=principal(db, world.a.admin), data=UserCreate(
            email=world.b.admin.email, password="long-enough-pw", roles=[Role.operator]))
    assert world.b.admin.email in e.value.detail
    # the unit of work is still usable after the failed savepoint
    assert service.get_user(db, actor=principal(db, world.a.admin), user_id=world.a.admin.id).id == world.a.admin.id


def test_deleting_an_object_another_domain_still_references_is_a_conflict(db: Session, world: World) -> None:
    from sqlalchemy import text

    site = make_site(db, world.a.enterprise)
    # a table of some future domain that references sites without ON DELETE CASCADE
    db.execute(text("CREATE TABLE tmp_site_refs (id INTEGER PRIMARY KEY, "
                    "site_id INTEGER NOT NULL REFERENCES sites(id))"))
    db.execute(text("INSERT INTO tmp_site_refs (id, site_id) VALUES (1, :s)"), {"s": site.id})
    with pytest.raises(Conflict) as e:
        service.delete_site(db, actor=principal(db, world.a.admin), site_id=site.id)
    assert "still referenced" in e.value.detail
    assert service.get_site(db, actor=principal(db, world.a.admin), site_id=site.id).id == site.id
