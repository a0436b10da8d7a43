"""Demo data for `ecoplat demo`: a chlor-alkali ecosystem and an HVAC mass-customization
ecosystem, with a user for every role.

Seeding is idempotent: every object is found by a natural key (ecosystem slug, enterprise name,
site/area/line/workstation/equipment code, user e-mail) and only created when missing, so running
the demo twice never duplicates anything. Passwords are generated once and kept in
`<data dir>/demo-credentials.json`, which is also what the banner prints."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import logging
import secrets
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from ecoplat.config import Settings
from ecoplat.db import Database
from ecoplat.tenancy.audit import record
from ecoplat.tenancy.auth import SYSTEM, hash_password, verify_password
from ecoplat.tenancy.models import (
    Area,
    Ecosystem,
    EcosystemMembership,
    Enterprise,
    Equipment,
    Line,
    MembershipRole,
    Role,
    Site,
    SizeClass,
    User,
    Workstation,
)

log = logging.getLogger(__name__)

CREDENTIALS_FILE = "demo-credentials.json"
# The argon2 hash seeded for each demo account: when the database still holds it, the printed
# password is known to match without paying for an argon2 verification per account on restart.
HASHES_FILE = ".demo-password-hashes.json"
DEVICES_FILE = "demo-devices.json"
KG = "https://ecoplat.dev/kg/"
CA = KG + "chlor-alkali#"
HVAC = KG + "hvac#"

# ---------------------------------------------------------------- the demo, as data

# (code, name, [(line code, line name, [(ws code, ws name)], [(tag, equipment name, type IRI)])])
CHLOR_ALKALI_AREAS: list[tuple[str, str, list[tuple[str, str, list[tuple[str, str]], list[tuple[str, str, str]]]]]] = [
    ("EL", "Electrolysis", [
        ("EL-1", "Membrane cell room line 1", [("EL-1-CP", "Cell room control panel")], [
            ("E-101", "Membrane electrolyzer E-101", CA + "MembraneElectrolyzer"),
            ("E-102", "Membrane electrolyzer E-102", CA + "MembraneElectrolyzer"),
            ("R-101", "Rectifier R-101", CA + "Rectifier"),
            ("B-101", "Brine purification unit B-101", CA + "BrinePurificationUnit"),
        ]),
    ]),
    ("CL", "Chlorine liquefaction", [
        ("CL-1", "Chlorine drying and liquefaction train", [("CL-1-CP", "Liquefaction control panel")], [
            ("D-201", "Chlorine drying tower D-201", CA + "ChlorineDryingTower"),
            ("C-201", "Chlorine compressor C-201", CA + "ChlorineCompressor"),
            ("L-201", "Chlorine liquefier L-201", CA + "ChlorineLiquefier"),
        ]),
    ]),
    ("ST", "Storage", [
        ("ST-1", "Liquid chlorine storage and filling", [("ST-1-FS", "Cylinder filling station")], [
            ("T-301", "Liquid chlorine tank T-301", CA + "LiquidChlorineTank"),
            ("T-302", "Liquid chlorine tank T-302", CA + "LiquidChlorineTank"),
            ("A-301", "Chlorine leak detector A-301", CA + "ChlorineGasDetector"),
            ("S-301", "Emergency chlorine absorption tower S-301", CA + "ChlorineAbsorptionTower"),
        ]),
    ]),
]

HVAC_WORKSTATIONS: list[tuple[str, str, str, str]] = [
    ("FA-WS1", "Base frame and compressor mounting", "FA-EQ1", HVAC + "CompressorMountingStation"),
    ("FA-WS2", "Refrigerant piping and brazing", "FA-EQ2", HVAC + "BrazingStation"),
    ("FA-WS3", "Electrical wiring and controller", "FA-EQ3", HVAC + "WiringStation"),
    ("FA-WS4", "Vacuum and refrigerant charging", "FA-EQ4", HVAC + "RefrigerantChargingMachine"),
    ("FA-WS5", "Run test and leak test", "FA-EQ5", HVAC + "RunTestBench"),
    ("FA-WS6", "Packaging and labelling", "FA-EQ6", HVAC + "PackagingMachine"),
]


@dataclass(frozen=True)
class EnterpriseSpec:
    key: str  # short handle, also the e-mail subdomain
    name: str
    country: str
    isic: str
    size: SizeClass
    timezone: str
    site_name: str
    site_code: str
    # (role in the ecosystem, ecosystem slug)
    memberships: tuple[tuple[MembershipRole, str], ...]
    # (local part of the e-mail, full name, roles)
    users: tuple[tuple[str, str, tuple[Role, ...]], ...]
    plant: str  # "chlor-alkali", "hvac" or "" (no plant)


ECOSYSTEMS: list[dict[str, str]] = [
    {"slug": "chlor-alkali", "name_en": "Chlor-alkali ecosystem", "name_zh": "氯碱产业生态",
     "industry": "chlor-alkali",
     "description": "Chlor-alkali producers sharing safety-production knowledge: a large co-builder and small members."},
    {"slug": "hvac-customization", "name_en": "HVAC mass-customization ecosystem", "name_zh": "暖通空调大规模定制生态",
     "industry": "hvac",
     "description": "An air-conditioner factory building customer-configured units to order."},
]

ENTERPRISES: list[EnterpriseSpec] = [
    EnterpriseSpec("ops", "Ecoplat Platform Operations", "CN", "6311", SizeClass.small, "Asia/Shanghai",
                   "", "", (), (("admin", "Platform Administrator", (Role.platform_admin,)),), ""),
    EnterpriseSpec("bohai", "Bohai Chlor-Alkali Group", "CN", "2011", SizeClass.large, "Asia/Shanghai",
                   "Tianjin Binhai plant", "TJ", ((MembershipRole.co_builder, "chlor-alkali"),),
                   (("admin", "Wang Lei", (Role.enterprise_admin,)),
                    ("steward", "Zhao Min", (Role.ecosystem_steward,)),
                    ("engineer", "Liu Yang", (Role.engineer,)),
                    ("safety", "Chen Jing", (Role.safety_officer,)),
                    ("operator", "Sun Hao", (Role.operator,))), "chlor-alkali"),
    EnterpriseSpec("huaxin", "Huaxin Salt Chemical Co.", "CN", "2011", SizeClass.small, "Asia/Shanghai",
                   "Weifang plant", "WF", ((MembershipRole.member, "chlor-alkali"),),
                   (("admin", "Li Na (demo SME admin)", (Role.enterprise_admin,)),
                    ("operator", "Zhou Qiang", (Role.operator,))), "chlor-alkali"),
    EnterpriseSpec("mekong", "Mekong Caustic Soda JSC", "VN", "2011", SizeClass.small, "Asia/Ho_Chi_Minh",
                   "Dong Nai plant", "DN", ((MembershipRole.member, "chlor-alkali"),),
                   (("admin", "Nguyen Van An", (Role.enterprise_admin,)),), "chlor-alkali"),
    EnterpriseSpec("siam", "Siam Chlor Products Co., Ltd.", "TH", "2011", SizeClass.small, "Asia/Bangkok",
                   "Rayong plant", "RY", ((MembershipRole.member, "chlor-alkali"),),
                   (("admin", "Somchai Prasert", (Role.enterprise_admin,)),), "chlor-alkali"),
    EnterpriseSpec("qingdao", "Qingdao Climate Systems", "CN", "2819", SizeClass.large, "Asia/Shanghai",
                   "Qingdao HVAC factory", "QD", ((MembershipRole.co_builder, "hvac-customization"),),
                   (("admin", "Ma Tao", (Role.enterprise_admin,)),
                    ("steward", "Gao Yan", (Role.ecosystem_steward,)),
                    ("engineer", "Xu Bo", (Role.engineer,)),
                    ("operator", "Han Mei", (Role.operator,))), "hvac"),
    EnterpriseSpec("harbor", "Harbor Hotels Ltd.", "SG", "5510", SizeClass.medium, "Asia/Singapore",
                   "", "", ((MembershipRole.member, "hvac-customization"),),
                   (("admin", "Tan Wei Ming", (Role.enterprise_admin,)),
                    ("buyer", "Lim Hui Ling", (Role.customer,))), ""),
    EnterpriseSpec("sunrise", "Sunrise Clinic", "CN", "8620", SizeClass.micro, "Asia/Shanghai",
                   "", "", ((MembershipRole.member, "hvac-customization"),),
                   (("admin", "Dr. Huang Li", (Role.enterprise_admin,)),
                    ("buyer", "Wu Fang", (Role.customer,))), ""),
]

DEMO_SME_ADMIN = "admin@huaxin.demo.ecoplat.dev"
EMAIL_DOMAIN = "demo.ecoplat.dev"


def demo_email(enterprise_key: str, local: str) -> str:
    return f"{local}@{enterprise_key}.{EMAIL_DOMAIN}"


@dataclass(frozen=True)
class DemoAccount:
    email: str
    password: str
    role: str
    enterprise: str
    full_name: str = ""


@dataclass
class DemoResult:
    ecosystem_ids: dict[str, int] = field(default_factory=dict)
    enterprise_ids: dict[str, int] = field(default_factory=dict)
    accounts: list[DemoAccount] = field(default_factory=list)
    devices: list[dict[str, Any]] = field(default_factory=list)
    created: int = 0  # objects created by this run (0 when everything already existed)
    credentials_path: Path | None = None
    devices_path: Path | None = None

    @property
    def demo_sme_admin(self) -> DemoAccount:
        return next(a for a in self.accounts if a.email == DEMO_SME_ADMIN)


# ---------------------------------------------------------------- seeding


class _Seeder:
    def __init__(self, db: Session, known_hashes: dict[str, str]) -> None:
        self.db = db
        self.created = 0
        self.hashes = known_hashes
        self.fresh_hashes: dict[str, str | None] = {}

    def _new(self, obj: Any, *, entity_type: str, enterprise_id: int | None) -> Any:
        self.db.add(obj)
        self.db.flush()
        self.created += 1
        if entity_type == "enterprise":
            enterprise_id = obj.id  # its own admin reads its creation in the audit log
        # The demo writes like an operator would, so the audit log has its history too.
        record(self.db, actor=SYSTEM, action="create", entity_type=entity_type, entity_id=obj.id,
               after=obj, enterprise_id=enterprise_id)
        return obj

    def ecosystem(self, spec: dict[str, str]) -> Ecosystem:
        eco = self.db.scalar(select(Ecosystem).where(Ecosystem.slug == spec["slug"]))
        return eco or self._new(Ecosystem(**spec), entity_type="ecosystem", enterprise_id=None)

    def enterprise(self, spec: EnterpriseSpec) -> Enterprise:
        ent = self.db.scalar(select(Enterprise).where(Enterprise.name == spec.name).order_by(Enterprise.id).limit(1))
        if ent is None:
            ent = Enterprise(name=spec.name, country=spec.country, isic_class=spec.isic, size_class=spec.size,
                             timezone=spec.timezone, limits={})
            ent = self._new(ent, entity_type="enterprise", enterprise_id=None)
        return ent

    def membership(self, ecosystem: Ecosystem, enterprise: Enterprise, role: MembershipRole) -> None:
        found = self.db.scalar(select(EcosystemMembership).where(
            EcosystemMembership.ecosystem_id == ecosystem.id, EcosystemMembership.enterprise_id == enterprise.id))
        if found is None:
            self._new(EcosystemMembership(ecosystem_id=ecosystem.id, enterprise_id=enterprise.id, role=role),
                      entity_type="ecosystem_membership", enterprise_id=enterprise.id)

    def site(self, ent: Enterprise, code: str, name: str, tz: str) -> Site:
        site = self.db.scalar(select(Site).where(Site.enterprise_id == ent.id, Site.code == code))
        return site or self._new(Site(enterprise_id=ent.id, code=code, name=name, timezone=tz, address=""),
                                 entity_type="site", enterprise_id=ent.id)

    def area(self, ent: Enterprise, site: Site, code: str, name: str) -> Area:
        area = self.db.scalar(select(Area).where(Area.enterprise_id == ent.id, Area.site_id == site.id,
                                                 Area.code == code))
        return area or self._new(Area(enterprise_id=ent.id, site_id=site.id, code=code, name=name),
                                 entity_type="area", enterprise_id=ent.id)

    def line(self, ent: Enterprise, area: Area, code: str, name: str) -> Line:
        line = self.db.scalar(select(Line).where(Line.enterprise_id == ent.id, Line.area_id == area.id,
                                                 Line.code == code))
        return line or self._new(Line(enterprise_id=ent.id, area_id=area.id, code=code, name=name),
                                 entity_type="line", enterprise_id=ent.id)

    def workstation(self, ent: Enterprise, line: Line, code: str, name: str, position: int) -> Workstation:
        ws = self.db.scalar(select(Workstation).where(Workstation.enterprise_id == ent.id,
                                                      Workstation.line_id == line.id, Workstation.code == code))
        return ws or self._new(Workstation(enterprise_id=ent.id, line_id=line.id, code=code, name=name,
                                           position=position), entity_type="workstation", enterprise_id=ent.id)

    def equipment(self, ent: Enterprise, site: Site, tag: str, name: str, iri: str, *, area: Area | None = None,
                  line: Line | None = None, workstation: Workstation | None = None) -> Equipment:
        eq = self.db.scalar(select(Equipment).where(Equipment.enterprise_id == ent.id, Equipment.site_id == site.id,
                                                    Equipment.tag == tag))
        return eq or self._new(Equipment(
            enterprise_id=ent.id, site_id=site.id, area_id=area.id if area else None,
            line_id=line.id if line else None, workstation_id=workstation.id if workstation else None,
            tag=tag, name=name, equipment_type_iri=iri), entity_type="equipment", enterprise_id=ent.id)

    def prepare_passwords(self, passwords: dict[str, str]) -> None:
        """Hashes (and checks) the demo passwords up front, several at a time: argon2 is slow on
        purpose and releases the GIL, so a thread pool halves the seeding time on two cores."""
        existing = dict(self.db.execute(select(User.email, User.password_hash)
                                        .where(User.email.in_(sorted(passwords)))).all())

        def job(email: str) -> tuple[str, str | None]:
            current = existing.get(email)
            if current is not None and (self.hashes.get(email) == current
                                        or verify_password(current, passwords[email])):
                return email, None  # the stored hash already matches the printed password
            return email, hash_password(passwords[email])

        with ThreadPoolExecutor(max_workers=4) as pool:
            self.fresh_hashes = dict(pool.map(job, sorted(passwords)))

    def user(self, ent: Enterprise, email: str, full_name: str, roles: list[str], password: str) -> User:
        fresh = self.fresh_hashes.get(email)
        user = self.db.scalar(select(User).where(User.email == email))
        if user is None:
            user = User(enterprise_id=ent.id, email=email, full_name=full_name, roles=roles,
                        password_hash=fresh or hash_password(password), locale="en", is_active=True)
            self._new(user, entity_type="user", enterprise_id=ent.id)
            self.hashes[email] = user.password_hash
            return user
        # A data dir that lost its credentials file (or a shared PostgreSQL) gets the password back
        # in step with what is printed, and the account usable again.
        if fresh is not None or not user.is_active:
            if fresh is not None:
                user.password_hash = fresh
            user.is_active = True
            user.failed_login_count = 0
            user.token_version = (user.token_version or 0) + 1
            self.db.flush()
        self.hashes[email] = user.password_hash
        return user


def _plant_chlor_alkali(s: _Seeder, ent: Enterprise, spec: EnterpriseSpec) -> None:
    site = s.site(ent, spec.site_code, spec.site_name, spec.timezone)
    for area_code, area_name, lines in CHLOR_ALKALI_AREAS:
        area = s.area(ent, site, f"{spec.site_code}-{area_code}", area_name)
        for line_code, line_name, workstations, equipment in lines:
            line = s.line(ent, area, f"{spec.site_code}-{line_code}", line_name)
            for pos, (ws_code, ws_name) in enumerate(workstations, start=1):
                s.workstation(ent, line, f"{spec.site_code}-{ws_code}", ws_name, pos)
            for tag, name, iri in equipment:
                s.equipment(ent, site, tag, name, iri, area=area, line=line)
    # A site-level utility that sits in no area: the tree shows it directly under the site.
    s.equipment(ent, site, "U-001", "Nitrogen supply skid U-001", CA + "NitrogenSupply")


def _plant_hvac(s: _Seeder, ent: Enterprise, spec: EnterpriseSpec) -> None:
    site = s.site(ent, spec.site_code, spec.site_name, spec.timezone)
    area = s.area(ent, site, f"{spec.site_code}-AS", "Assembly")
    line = s.line(ent, area, f"{spec.site_code}-FA", "Final assembly line")
    for pos, (ws_code, ws_name, eq_tag, iri) in enumerate(HVAC_WORKSTATIONS, start=1):
        ws = s.workstation(ent, line, f"{spec.site_code}-{ws_code}", ws_name, pos)
        s.equipment(ent, site, f"{spec.site_code}-{eq_tag}", f"{ws_name} equipment", iri, area=area, line=line,
                    workstation=ws)
    prep = s.area(ent, site, f"{spec.site_code}-PP", "Parts preparation")
    s.equipment(ent, site, f"{spec.site_code}-PP-1", "Fin press PP-1", HVAC + "FinPress", area=prep)


def _load_passwords(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        return {r["email"]: r["password"] for r in rows if isinstance(r, dict) and "email" in r and "password" in r}
    except (ValueError, TypeError, KeyError):
        log.warning("ignoring unreadable %s; new demo passwords will be generated", path)
        return {}


def _load_hashes(path: Path, passwords: dict[str, str]) -> dict[str, str]:
    # Without the passwords they were made from, remembered hashes prove nothing.
    if not path.exists() or not passwords:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.items() if k in passwords} if isinstance(data, dict) else {}


def _new_password() -> str:
    # Readable enough to type from the banner, long enough not to be guessed.
    return "demo-" + secrets.token_urlsafe(9)


def _seed_devices(db: Session, settings: Settings, result: DemoResult) -> list[dict[str, Any]]:
    """The connect domain's demo devices, if that domain offers them (ecoplat.connect.demo)."""
    if importlib.util.find_spec("ecoplat.connect.demo") is None:
        return []
    module = importlib.import_module("ecoplat.connect.demo")
    fn = getattr(module, "seed_devices", None)
    if fn is None:
        return []
    params = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = {}
    for name, value in (("settings", settings), ("enterprise_ids", result.enterprise_ids),
                        ("enterprises", result.enterprise_ids), ("result", result)):
        if name in params:
            kwargs[name] = value
    devices = fn(db, **kwargs)
    return list(devices or [])


def seed_demo(settings: Settings, *, database: Database | None = None) -> DemoResult:
    """Creates what is missing of the demo ecosystems (idempotent) and writes the credentials file."""
    data_dir = settings.ensure_data_dir()
    cred_path = data_dir / CREDENTIALS_FILE
    passwords = _load_passwords(cred_path)
    hashes_path = data_dir / HASHES_FILE
    known_hashes = _load_hashes(hashes_path, passwords)
    own_db = database is None
    database = database or Database(settings.resolved_database_url)
    result = DemoResult(credentials_path=cred_path)
    try:
        with database.session() as db:
            s = _Seeder(db, known_hashes)
            demo_emails = [demo_email(spec.key, local) for spec in ENTERPRISES for local, _n, _r in spec.users]
            for email in demo_emails:
                passwords.setdefault(email, _new_password())
            s.prepare_passwords({email: passwords[email] for email in demo_emails})
            ecosystems = {spec["slug"]: s.ecosystem(spec) for spec in ECOSYSTEMS}
            result.ecosystem_ids = {slug: eco.id for slug, eco in ecosystems.items()}
            for spec in ENTERPRISES:
                ent = s.enterprise(spec)
                result.enterprise_ids[spec.key] = ent.id
                for role, slug in spec.memberships:
                    s.membership(ecosystems[slug], ent, role)
                if spec.plant == "chlor-alkali":
                    _plant_chlor_alkali(s, ent, spec)
                elif spec.plant == "hvac":
                    _plant_hvac(s, ent, spec)
                for local, full_name, roles in spec.users:
                    email = demo_email(spec.key, local)
                    password = passwords[email]
                    s.user(ent, email, full_name, [r.value for r in roles], password)
                    for role in roles:
                        result.accounts.append(DemoAccount(email=email, password=password, role=role.value,
                                                           enterprise=spec.name, full_name=full_name))
            result.devices = _seed_devices(db, settings, result)
            result.created = s.created
    finally:
        if own_db:
            database.dispose()
    _write_json(hashes_path, {e: h for e, h in known_hashes.items() if e in passwords or
                              any(a.email == e for a in result.accounts)})
    _write_json(cred_path, [{"email": a.email, "password": a.password, "role": a.role, "enterprise": a.enterprise}
                            for a in result.accounts])
    if result.devices:
        result.devices_path = data_dir / DEVICES_FILE
        _write_json(result.devices_path, result.devices)
    return result


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    tmp.chmod(0o600)  # passwords and device tokens: readable by the owner only
    tmp.replace(path)


def demo_url(settings: Settings) -> str:
    if settings.base_url:
        return settings.base_url.rstrip("/")
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


TABLE_WIDTH = 150


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now (the way uvicorn and amqtt will bind)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR as the servers set it: a port in TIME_WAIT counts as free, a listener not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _next_free(host: str, start: int, taken: set[int]) -> int:
    for candidate in range(start, min(start + 200, 65536)):
        if candidate not in taken and port_is_free(host, candidate):
            return candidate
    raise RuntimeError(f"No free port on {host} from {start} on; pass one with --port/--mqtt-port.")


def choose_demo_ports(settings: Settings, *, http_explicit: bool, mqtt_explicit: bool) -> list[str]:
    """The demo should start on any machine: when a default port is taken (a Mosquitto on 1883,
    another demo on 8000) and the user did not ask for that port, take the next free one.
    Ports the user chose are left alone, so a clash fails loudly. Returns what was moved."""
    notes: list[str] = []
    if not http_explicit and not port_is_free(settings.host, settings.port):
        new = _next_free(settings.host, settings.port + 1, set())
        notes.append(f"HTTP port {settings.port} is in use; using {new} instead (choose one with --port).")
        settings.port = new
    embedded_broker = settings.mqtt_enabled and not settings.mqtt_bridge_url
    if embedded_broker and not mqtt_explicit and not port_is_free(settings.mqtt_host, settings.mqtt_port):
        new = _next_free(settings.mqtt_host, settings.mqtt_port + 1, {settings.port})
        notes.append(f"MQTT port {settings.mqtt_port} is in use (another broker?); the embedded broker uses {new} "
                     "instead (choose one with --mqtt-port).")
        settings.mqtt_port = new
    return notes


def print_demo_banner(settings: Settings, result: DemoResult, console: Console) -> None:
    """The URL and the demo accounts, as a Rich panel and table."""
    url = demo_url(settings)
    table = Table(title="Demo accounts", show_lines=False, header_style="bold")
    table.add_column("Role", no_wrap=True)
    # Never wrapped or cut: an e-mail or password split over lines cannot be copied (the table is
    # printed at least as wide as it needs, even into a pipe or an 80-column log).
    table.add_column("E-mail", no_wrap=True)
    table.add_column("Password", no_wrap=True)
    table.add_column("Enterprise")
    for a in result.accounts:
        role = a.role + (" (demo SME admin)" if a.email == DEMO_SME_ADMIN else "")
        table.add_row(role, a.email, a.password, a.enterprise)
    lines = [f"[bold]Ecoplat is starting at[/bold] [link={url}]{url}[/link]",
             f"Data directory: {settings.data_dir.resolve()}",
             f"Accounts written to: {result.credentials_path}"]
    if result.devices_path:
        lines.append(f"Demo devices written to: {result.devices_path}")
    if settings.mqtt_enabled and not settings.mqtt_bridge_url:
        lines.append(f"MQTT (ThingsBoard device API): mqtt://{settings.mqtt_host}:{settings.mqtt_port}")
    lines.append(f"Sign in as the demo SME admin: {DEMO_SME_ADMIN}")
    console.print(Panel("\n".join(lines), title="Ecoplat demo", expand=False))
    if console.width < TABLE_WIDTH:
        # Rich never prints wider than its console; a pipe or log file gets a wider one.
        Console(file=console.file, width=TABLE_WIDTH, no_color=console.no_color,
                force_terminal=console.is_terminal).print(table)
    else:
        console.print(table)
