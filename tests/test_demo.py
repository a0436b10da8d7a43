"""`ecoplat demo`: seeding creates what the foundation issue lists, writes the credentials file,
is idempotent; the banner prints the URL and accounts. (The CLI itself, two demos side by side,
is tested in tests/web/test_browser.py, which shares those servers with the browser test.)"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from rich.console import Console
from sqlalchemy import func, select

from ecoplat.config import Settings
from ecoplat.db import Database
from ecoplat.demo import CREDENTIALS_FILE, DEMO_SME_ADMIN, print_demo_banner, seed_demo
from ecoplat.tenancy.auth import verify_password
from ecoplat.tenancy.models import (
    Area,
    AuditEvent,
    Ecosystem,
    EcosystemMembership,
    Enterprise,
    Equipment,
    Line,
    Role,
    Site,
    User,
    Workstation,
)

TABLES = (Ecosystem, Enterprise, EcosystemMembership, Site, Area, Line, Workstation, Equipment, User)


def _counts(database: Database) -> dict[str, int]:
    with database.session() as s:
        return {m.__tablename__: int(s.scalar(select(func.count()).select_from(m)) or 0) for m in TABLES}


def test_seed_demo_creates_the_issue_s_ecosystems_and_is_idempotent(fresh_database_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var", database_url=fresh_database_url, secret_key="s" * 40)
    first = seed_demo(settings)
    database = Database(fresh_database_url)
    try:
        with database.session() as s:
            ecosystems = {e.slug: e for e in s.scalars(select(Ecosystem))}
            assert set(ecosystems) == {"chlor-alkali", "hvac-customization"}
            chlor = ecosystems["chlor-alkali"]
            assert (chlor.name_zh, chlor.name_en) == ("氯碱产业生态", "Chlor-alkali ecosystem")
            members = s.execute(select(Enterprise, EcosystemMembership.role)
                                .join(EcosystemMembership, EcosystemMembership.enterprise_id == Enterprise.id)
                                .where(EcosystemMembership.ecosystem_id == chlor.id)).all()
            by_role = Counter((role.value, ent.size_class.value) for ent, role in members)
            assert by_role == {("co_builder", "large"): 1, ("member", "small"): 3}
            for ent, _role in members:
                sites = s.scalars(select(Site).where(Site.enterprise_id == ent.id)).all()
                assert len(sites) == 1, ent.name
                areas = {a.name for a in s.scalars(select(Area).where(Area.site_id == sites[0].id))}
                assert areas == {"Electrolysis", "Chlorine liquefaction", "Storage"}
                iris = set(s.scalars(select(Equipment.equipment_type_iri).where(Equipment.enterprise_id == ent.id)))
                assert "https://ecoplat.dev/kg/chlor-alkali#MembraneElectrolyzer" in iris
                assert "https://ecoplat.dev/kg/chlor-alkali#LiquidChlorineTank" in iris
                assert "https://ecoplat.dev/kg/chlor-alkali#ChlorineCompressor" in iris
            # HVAC: one factory with a final-assembly line of six workstations, and customers.
            hvac = ecosystems["hvac-customization"]
            line = s.scalar(select(Line).where(Line.name == "Final assembly line"))
            assert line is not None
            assert s.scalar(select(func.count()).select_from(Workstation).where(Workstation.line_id == line.id)) == 6
            hvac_members = set(s.scalars(select(EcosystemMembership.enterprise_id)
                                         .where(EcosystemMembership.ecosystem_id == hvac.id)))
            assert line.enterprise_id in hvac_members
            customers = s.scalars(select(User)).all()
            customer_ents = {u.enterprise_id for u in customers if Role.customer.value in u.roles}
            assert len(customer_ents) >= 1 and customer_ents <= hvac_members
            # A user for every role; an enterprise admin for every enterprise.
            roles = Counter(r for u in customers for r in u.roles)
            assert set(roles) == {r.value for r in Role}
            admin_ents = {u.enterprise_id for u in customers if Role.enterprise_admin.value in u.roles}
            platform_ents = {u.enterprise_id for u in customers if Role.platform_admin.value in u.roles}
            all_ents = set(s.scalars(select(Enterprise.id)))
            assert admin_ents | platform_ents == all_ents
            # The seeding is in the audit trail like any other write.
            assert s.scalar(select(func.count()).select_from(AuditEvent)) > 50
        # The credentials file: every account, a password that really signs in.
        rows = json.loads((settings.data_dir / CREDENTIALS_FILE).read_text(encoding="utf-8"))
        assert {tuple(sorted(r)) for r in rows} == {("email", "enterprise", "password", "role")}
        assert {r["role"] for r in rows} == {r.value for r in Role}
        sme = next(r for r in rows if r["email"] == DEMO_SME_ADMIN)
        assert sme["role"] == "enterprise_admin" and sme["enterprise"] == "Huaxin Salt Chemical Co."
        with database.session() as s:
            user = s.scalar(select(User).where(User.email == DEMO_SME_ADMIN))
            assert user is not None and verify_password(user.password_hash, sme["password"])
        assert oct((settings.data_dir / CREDENTIALS_FILE).stat().st_mode & 0o777) == "0o600"

        before = _counts(database)
        second = seed_demo(settings)
        assert second.created == 0 and first.created > 100
        assert _counts(database) == before
        assert json.loads((settings.data_dir / CREDENTIALS_FILE).read_text(encoding="utf-8")) == rows
    finally:
        database.dispose()


def test_banner_prints_url_and_every_account(tmp_path: Path) -> None:
    from ecoplat.demo import DemoAccount, DemoResult

    result = DemoResult(accounts=[DemoAccount(DEMO_SME_ADMIN, "demo-pw-1234", "enterprise_admin", "Huaxin"),
                                  DemoAccount("ops@x.example", "demo-pw-9", "platform_admin", "Ops")],
                        credentials_path=tmp_path / CREDENTIALS_FILE)
    console = Console(record=True, width=200)
    print_demo_banner(Settings(data_dir=tmp_path, host="0.0.0.0", port=8123), result, console)
    out = console.export_text()
    assert "http://127.0.0.1:8123" in out
    assert DEMO_SME_ADMIN in out and "demo-pw-1234" in out and "ops@x.example" in out and "demo-pw-9" in out


def test_demo_moves_off_a_taken_default_port_but_keeps_a_chosen_one() -> None:
    import socket

    from ecoplat.demo import choose_demo_ports, port_is_free

    with socket.socket() as http_holder, socket.socket() as mqtt_holder:
        for holder in (http_holder, mqtt_holder):
            holder.bind(("127.0.0.1", 0))
            holder.listen()
        http_taken, mqtt_taken = http_holder.getsockname()[1], mqtt_holder.getsockname()[1]
        assert not port_is_free("127.0.0.1", http_taken)
        settings = Settings(port=http_taken, mqtt_port=mqtt_taken)
        notes = choose_demo_ports(settings, http_explicit=False, mqtt_explicit=False)
        assert settings.port != http_taken and settings.mqtt_port != mqtt_taken
        assert settings.port != settings.mqtt_port
        assert port_is_free("127.0.0.1", settings.port) and port_is_free("127.0.0.1", settings.mqtt_port)
        assert len(notes) == 2 and str(mqtt_taken) in notes[1]
        chosen = Settings(port=http_taken, mqtt_port=mqtt_taken)
        assert choose_demo_ports(chosen, http_explicit=True, mqtt_explicit=True) == []
        assert (chosen.port, chosen.mqtt_port) == (http_taken, mqtt_taken)
        bridged = Settings(port=http_taken, mqtt_port=mqtt_taken, mqtt_bridge_url="mqtt://127.0.0.1:1883")
        choose_demo_ports(bridged, http_explicit=True, mqtt_explicit=False)
        assert bridged.mqtt_port == mqtt_taken  # no embedded broker to move
