"""Bulk seeding for the benchmarks: fresh databases and many tenants fast.

Seeding 100,000 enterprises with 10 users each through the API, or with one argon2 hash per user,
would take hours (argon2 is slow on purpose). So rows go in with the database driver's bulk path
(sqlite3 `executemany` in large transactions, psycopg `COPY`), every user shares ONE precomputed
argon2 hash, and the benchmark measures the API rather than the seeding.

Rows are built from the SQLAlchemy table definitions: columns the seeder does not set get their
model default, converted once through the column type's own bind processor, so the rows look
exactly like rows the platform writes (timestamps in SQLite's storage format, JSON as JSONB)."""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, create_engine, text
from sqlalchemy.engine import Dialect, make_url

from ecoplat.db import make_engine, utcnow
from ecoplat.migrations_runner import upgrade
from ecoplat.tenancy.auth import hash_password
from ecoplat.tenancy.models import (
    Ecosystem,
    EcosystemMembership,
    Enterprise,
    MembershipRole,
    Role,
    SizeClass,
    User,
)

DEFAULT_POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ADMIN_EMAIL = "platform-admin@bench.example"

# Names a reader from the industry would recognise: "<city> <brand> <trade> Co., Ltd.".
CITIES = ["Qingdao", "Jinan", "Yantai", "Weifang", "Zibo", "Tianjin", "Tangshan", "Shanghai",
          "Ningbo", "Hangzhou", "Suzhou", "Wuxi", "Nanjing", "Hefei", "Wuhan", "Changsha",
          "Chengdu", "Chongqing", "Xi'an", "Lanzhou", "Urumqi", "Baotou", "Shenyang", "Dalian",
          "Harbin", "Changchun", "Shijiazhuang", "Taiyuan", "Zhengzhou", "Luoyang", "Xiamen",
          "Fuzhou", "Guangzhou", "Shenzhen", "Foshan", "Dongguan", "Nanning", "Kunming",
          "Guiyang", "Haikou"]
SYLLABLES = ["heng", "tai", "xin", "hua", "long", "sheng", "feng", "yuan", "da", "jin", "kang",
             "rui", "bao", "cheng", "guang", "hai", "hong", "jia", "li", "ming", "an", "tong",
             "wei", "xiang", "yong", "zhong", "de", "fu", "han", "qiang", "shun", "tian", "wan",
             "xing", "yi", "zhi", "bo", "chang", "ding", "ke"]
TRADES = ["Chlor-Alkali", "Chemical", "Electrolysis", "Salt Chemical", "PVC", "Caustic Soda",
          "HVAC", "Air Conditioning", "Refrigeration", "Machinery", "Valve", "Pump",
          "Instrument", "Automation", "Steel", "Plastics", "Logistics", "Electric", "Packaging",
          "Tooling"]
SUFFIXES = ["Co., Ltd.", "Group Co., Ltd.", "Industrial Co., Ltd.", "Technology Co., Ltd."]
COUNTRIES = ["CN"] * 8 + ["DE", "IN", "VN", "TH", "ID", "BR", "US", "JP", "KR", "IT"]
ISIC_CLASSES = ["2011", "2013", "2029", "2220", "2410", "2813", "2819", "2825", "2829", "2651",
                "3312", "4922", "5210"]
# Most enterprises in an ecosystem are small or micro (the point of the platform).
SIZE_WEIGHTS = [(SizeClass.large, 2), (SizeClass.medium, 10), (SizeClass.small, 40), (SizeClass.micro, 48)]
ECOSYSTEMS = [("chlor-alkali", "Chlor-alkali", "氯碱", "chemicals"),
              ("hvac", "HVAC mass customization", "暖通空调大规模定制", "hvac"),
              ("salt-chemicals", "Salt chemicals", "盐化工", "chemicals"),
              ("pumps-valves", "Pumps and valves", "泵阀", "machinery")]
USER_ROLES = [Role.enterprise_admin, Role.engineer, Role.safety_officer, Role.operator, Role.operator,
              Role.operator, Role.engineer, Role.operator, Role.customer, Role.operator]


def brand_names() -> list[str]:
    """Two-syllable brand words ("Hengtai"); the selective part of a name for search."""
    return [(a + b).capitalize() for a in SYLLABLES for b in SYLLABLES if a != b]


@dataclass
class SeedResult:
    url: str
    enterprises: int
    users: int
    admin_email: str
    admin_password: str
    seconds: float
    rows_per_s: float
    search_index: str
    brands: list[str] = field(default_factory=list)
    name_samples: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- databases

def _psycopg_conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def postgres_reachable(admin_url: str = DEFAULT_POSTGRES_ADMIN_URL) -> bool:
    engine = create_engine(admin_url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001 - any failure means "not usable here"
        return False
    finally:
        engine.dispose()


def create_postgres_database(admin_url: str = DEFAULT_POSTGRES_ADMIN_URL) -> str:
    """A fresh, empty PostgreSQL database next to the admin one; returns its URL."""
    name = f"ecoplat_bench_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(url: str, admin_url: str = DEFAULT_POSTGRES_ADMIN_URL) -> None:
    name = make_url(url).database
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


# ---------------------------------------------------------------------------- rows

def _constant_columns(table: Table, given: Sequence[str], dialect: Dialect) -> dict[str, Any]:
    """Every column the seeder does not set, with its model default converted for the driver."""
    out: dict[str, Any] = {}
    for col in table.columns:
        if col.name in given or col.primary_key:
            continue
        default = col.default
        if default is None:
            if col.nullable or col.server_default is not None:
                continue
            raise RuntimeError(f"{table.name}.{col.name} is NOT NULL without a default: "
                               "the benchmark seeder must be taught its value")
        if default.is_callable:
            value = default.arg(None)  # type: ignore[union-attr]
        elif default.is_scalar:
            value = default.arg  # type: ignore[union-attr]
        else:
            continue  # SQL-expression defaults are left to the database
        out[col.name] = _bind(table, col.name, value, dialect)
    return out


def _bind(table: Table, column: str, value: Any, dialect: Dialect) -> Any:
    processor = table.c[column].type.dialect_impl(dialect).bind_processor(dialect)
    return processor(value) if processor is not None else value


def _weighted(rng: random.Random, weights: list[tuple[SizeClass, int]]) -> str:
    return rng.choices([w[0].value for w in weights], weights=[w[1] for w in weights])[0]


def enterprise_rows(count: int, *, seed: int = 42) -> Iterator[tuple[int, str, str, str, str]]:
    """(id, name, country, isic_class, size_class) for ids 1..count, reproducible."""
    rng = random.Random(seed)
    brands = brand_names()
    for i in range(1, count + 1):
        name = f"{rng.choice(CITIES)} {rng.choice(brands)} {rng.choice(TRADES)} {rng.choice(SUFFIXES)}"
        yield (i, name, rng.choice(COUNTRIES), rng.choice(ISIC_CLASSES), _weighted(rng, SIZE_WEIGHTS))


# ---------------------------------------------------------------------------- seeding

def _chunks(rows: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    chunk: list[tuple[Any, ...]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Writer:
    """Writes tuples in the given column order with the driver's bulk path."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.engine = make_engine(url)
        self.dialect = self.engine.dialect
        self._raw: Any = None

    def __enter__(self) -> _Writer:
        if self.is_sqlite:
            self._raw = self.engine.raw_connection()
            # A throw-away benchmark database: durability of the seed does not matter.
            self._raw.execute("PRAGMA synchronous=OFF")
        else:
            import psycopg

            self._raw = psycopg.connect(_psycopg_conninfo(self.url))
        return self

    def __exit__(self, *exc: object) -> None:
        self._raw.close()
        self.engine.dispose()

    def write(self, table: Table, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        if self.is_sqlite:
            sql = (f"INSERT INTO {table.name} ({', '.join(columns)}) "
                   f"VALUES ({', '.join('?' for _ in columns)})")
            cur = self._raw.cursor()
            cur.executemany(sql, rows)
            cur.close()
            self._raw.commit()
        else:
            with self._raw.cursor() as cur, cur.copy(
                    f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            self._raw.commit()

    def execute(self, sql: str) -> None:
        if self.is_sqlite:
            self._raw.execute(sql)
        else:
            with self._raw.cursor() as cur:
                cur.execute(sql)
        self._raw.commit()

    def scalar(self, sql: str) -> Any:
        cur = self._raw.cursor()
        try:
            cur.execute(sql)
            row = cur.fetchone()
        finally:
            cur.close()
        return row[0] if row else None


def _search_index_kind(writer: _Writer) -> str:
    """What the tenancy migration gave enterprises for text search, found in the live schema."""
    if writer.is_sqlite:
        sql = writer.scalar("SELECT group_concat(name || ':' || sql, ' | ') FROM sqlite_master "
                            "WHERE sql LIKE '%fts5%'")
        return f"sqlite fts5 ({sql})" if sql else "none"
    found = writer.scalar("SELECT string_agg(indexname || ':' || indexdef, ' | ') FROM pg_indexes "
                          "WHERE tablename = 'enterprises' AND (indexdef ILIKE '%trgm%' "
                          "OR indexdef ILIKE '%tsvector%' OR indexdef ILIKE '%gin%')")
    return f"postgresql ({found})" if found else "none"


def _fill_sqlite_fts(writer: _Writer) -> None:
    """An external-content FTS5 index over enterprises is written by its triggers while rows go
    in; if the schema has such an index but no insert trigger feeding it, rebuild it from its
    content table, which writes the same entries."""
    rows = writer._raw.execute(
        "SELECT name, sql FROM sqlite_master WHERE type='table' AND sql LIKE '%fts5%'").fetchall()
    for name, sql in rows:
        normalized = sql.replace('"', "'")
        if "content='enterprises'" not in normalized and "content=enterprises" not in normalized:
            continue
        fed = writer.scalar(
            "SELECT count(*) FROM sqlite_master WHERE type='trigger' AND tbl_name='enterprises' "
            f"AND sql LIKE '%INSERT ON enterprises%' AND sql LIKE '%INTO {name}(%'")
        if not fed:
            writer.execute(f"INSERT INTO {name}({name}) VALUES ('rebuild')")


def seed_tenancy(url: str, *, enterprises: int, users_per_enterprise: int,
                 on_progress: Callable[[str, int, int], None] | None = None,
                 chunk_size: int = 10_000, revision: str = "heads") -> SeedResult:
    """Migrates the (empty) database at url and fills it with `enterprises` enterprises of
    `users_per_enterprise` users each plus one platform admin; returns how to sign in.

    on_progress(stage, done, total) is called after every chunk (for a Rich progress bar)."""
    started = time.perf_counter()
    upgrade(url, revision)
    password = "bench-" + secrets.token_urlsafe(12)
    password_hash = hash_password(password)  # the ONE argon2 hash every seeded user shares
    now = utcnow()
    report = on_progress or (lambda stage, done, total: None)
    brands_seen: list[str] = []
    samples: list[str] = []

    with _Writer(url) as writer:
        d = writer.dialect
        ent_table: Table = Enterprise.__table__  # type: ignore[assignment]
        ent_cols = ["id", "name", "country", "isic_class", "size_class", "created_at", "updated_at"]
        ent_const = _constant_columns(ent_table, ent_cols, d)
        ts = _bind(ent_table, "created_at", now, d)
        ent_columns = ent_cols + list(ent_const)
        ent_tail = (ts, ts, *ent_const.values())
        done = 0
        for chunk in _chunks(enterprise_rows(enterprises), chunk_size):
            writer.write(ent_table, ent_columns, [row + ent_tail for row in chunk])
            done += len(chunk)
            if len(samples) < 200:
                samples.extend(r[1] for r in chunk[: 200 - len(samples)])
            report("enterprises", done, enterprises)

        # Every enterprise belongs to one ecosystem, every tenth to a second one as well; large
        # enterprises co-build (the answer of the list/detail endpoints includes memberships).
        eco_table: Table = Ecosystem.__table__  # type: ignore[assignment]
        eco_cols = ["id", "slug", "name_en", "name_zh", "industry", "created_at", "updated_at"]
        eco_const = _constant_columns(eco_table, eco_cols, d)
        writer.write(eco_table, eco_cols + list(eco_const),
                     [(i, *eco, ts, ts, *eco_const.values()) for i, eco in enumerate(ECOSYSTEMS, 1)])
        mem_table: Table = EcosystemMembership.__table__  # type: ignore[assignment]
        mem_cols = ["id", "ecosystem_id", "enterprise_id", "role", "created_at", "updated_at"]
        mem_const = _constant_columns(mem_table, mem_cols, d)
        co_builder = _bind(mem_table, "role", MembershipRole.co_builder, d)
        member = _bind(mem_table, "role", MembershipRole.member, d)

        def memberships() -> Iterator[tuple[Any, ...]]:
            mid = 0
            for eid, _name, _c, _i, size in enterprise_rows(enterprises):
                role = co_builder if size == SizeClass.large.value else member
                ecos = [eid % len(ECOSYSTEMS) + 1]
                if eid % 10 == 0:
                    ecos.append((eid + 1) % len(ECOSYSTEMS) + 1)
                for eco in ecos:
                    mid += 1
                    yield (mid, eco, eid, role, ts, ts, *mem_const.values())

        done = 0
        for chunk in _chunks(memberships(), chunk_size):
            writer.write(mem_table, mem_cols + list(mem_const), chunk)
            done += len(chunk)
            report("memberships", done, int(enterprises * 1.1))
        report("memberships", int(enterprises * 1.1), int(enterprises * 1.1))

        user_table: Table = User.__table__  # type: ignore[assignment]
        user_cols = ["id", "enterprise_id", "email", "full_name", "password_hash", "roles",
                     "created_at", "updated_at"]
        user_const = _constant_columns(user_table, user_cols, d)
        user_columns = user_cols + list(user_const)
        uts = _bind(user_table, "created_at", now, d)
        hashed = _bind(user_table, "password_hash", password_hash, d)
        role_values = [_bind(user_table, "roles", [r.value], d) for r in USER_ROLES]
        admin_roles = _bind(user_table, "roles", [Role.platform_admin.value], d)
        user_tail = (uts, uts, *user_const.values())

        def users() -> Iterator[tuple[Any, ...]]:
            uid = 1
            yield (uid, 1, ADMIN_EMAIL, "Platform Admin", hashed, admin_roles) + user_tail
            for eid in range(1, enterprises + 1):
                for k in range(users_per_enterprise):
                    uid += 1
                    yield (uid, eid, f"user{k}@e{eid}.bench.example", f"User {k} of enterprise {eid}",
                           hashed, role_values[k % len(role_values)]) + user_tail

        total_users = enterprises * users_per_enterprise + 1
        done = 0
        for chunk in _chunks(users(), chunk_size * 2):
            writer.write(user_table, user_columns, chunk)
            done += len(chunk)
            report("users", done, total_users)

        report("search index and statistics", 0, 1)
        if writer.is_sqlite:
            _fill_sqlite_fts(writer)
        else:
            # Ids were given explicitly, so the sequences must be moved past them.
            for table in ("ecosystems", "enterprises", "ecosystem_memberships", "users"):
                writer.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                               f"(SELECT max(id) FROM {table}))")
            # What autovacuum would do shortly after such a load anyway.
            writer.execute("ANALYZE")
        index_kind = _search_index_kind(writer)
        report("search index and statistics", 1, 1)

    seconds = time.perf_counter() - started
    seen = set()
    for name in samples:
        brand = name.split(" ")[1]  # cities are one word, so the brand is always second
        if brand not in seen:
            seen.add(brand)
            brands_seen.append(brand)
    rows = enterprises + total_users
    return SeedResult(url=url, enterprises=enterprises, users=total_users, admin_email=ADMIN_EMAIL,
                      admin_password=password, seconds=round(seconds, 2),
                      rows_per_s=round(rows / seconds, 1), search_index=index_kind,
                      brands=brands_seen, name_samples=samples)
