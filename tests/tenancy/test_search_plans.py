"""The enterprise list, search, filters and detail stay index-backed at scale: the statements the
service really runs are captured and EXPLAINed on a table of 20,000 enterprises."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, insert, text
from sqlalchemy.orm import Session

from ecoplat.db import utcnow
from ecoplat.pagination import PageParams
from ecoplat.tenancy import service
from ecoplat.tenancy.models import Enterprise

from .builders import make_enterprise, make_user, principal

N = 20_000
COUNTRIES = ["CN", "DE", "US", "FR", "JP", "KR", "IN", "BR", "IT", "ES", "GB", "NL", "SE", "PL", "TR", "VN",
             "TH", "MX", "CA", "AU"]
WORDS = ["Chlor-Alkali", "Caustic Soda", "PVC", "Electrolysis", "HVAC", "Valve", "Pump", "Compressor"]


@contextmanager
def captured(db: Session) -> Iterator[list[tuple[str, Any]]]:
    statements: list[tuple[str, Any]] = []
    engine = db.get_bind().engine

    def listen(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if "FROM enterprises" in statement and statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", listen)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", listen)


def plan(db: Session, statement: str, parameters: Any) -> str:
    conn = db.connection()
    if conn.dialect.name == "sqlite":
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
        return "\n".join(str(r[-1]) for r in rows)
    rows = conn.exec_driver_sql("EXPLAIN " + statement, parameters).all()
    return "\n".join(r[0] for r in rows)


@pytest.fixture
def many_enterprises(db: Session) -> Session:
    now = utcnow()
    rows = [{"name": f"{WORDS[i % len(WORDS)]} Works {i:05d}", "country": COUNTRIES[i % len(COUNTRIES)],
             "isic_class": f"{2000 + i % 50}", "size_class": ("large", "medium", "small", "micro")[i % 4],
             "timezone": "UTC", "limits": {}, "created_at": now, "updated_at": now} for i in range(N)]
    db.execute(insert(Enterprise), rows)
    dialect = db.get_bind().dialect.name
    if dialect == "postgresql":
        # Rows that earlier tests inserted and rolled back still fill the GIN index's pending
        # list (no VACUUM runs between tests), which makes the trigram index look dearer than a
        # sequential scan; in a live database autovacuum merges that list.
        db.execute(text("SELECT gin_clean_pending_list('ix_enterprises_name_trgm')"))
    db.execute(text("ANALYZE enterprises" if dialect == "postgresql" else "ANALYZE"))
    return db


def _plans_of(db: Session, call: Callable[[], Any]) -> list[str]:
    db.expunge_all()  # so that a detail lookup reaches the database
    with captured(db) as statements:
        call()
    assert statements, "the service ran no SELECT on enterprises"
    return [plan(db, s, p) for s, p in statements]


def test_enterprise_list_search_filter_and_detail_use_indexes(many_enterprises: Session) -> None:
    db = many_enterprises
    platform = make_enterprise(db, name="Operator")
    actor = principal(db, make_user(db, platform, "platform_admin"))
    page = PageParams(limit=50)
    sqlite = db.get_bind().dialect.name == "sqlite"

    first, cursor = service.list_enterprises(db, actor=actor, page=page)
    assert len(first) == 50 and cursor
    cases = {
        "list": lambda: service.list_enterprises(db, actor=actor, page=PageParams(limit=50, cursor=cursor)),
        "search": lambda: service.list_enterprises(db, actor=actor, page=page, q="Works 1234"),
        # a word in every name: the page must still stop after `limit` hits, not collect them all
        "common": lambda: service.list_enterprises(db, actor=actor, page=page, q="works"),
        "country": lambda: service.list_enterprises(db, actor=actor, page=page, country="DE"),
        "detail": lambda: service.get_enterprise(db, actor=actor, enterprise_id=first[7].id),
    }
    found = service.list_enterprises(db, actor=actor, page=page, q="works 1234")[0]
    assert {e.name for e in found} == {f"{WORDS[i % len(WORDS)]} Works {i:05d}" for i in range(12340, 12350)}
    for name, call in cases.items():
        plans = _plans_of(db, call)
        for p in plans:
            if sqlite:
                # "SCAN enterprises" alone would read the whole table; a keyset page SEARCHes
                # the primary key from the cursor, a filter SEARCHes its (column, id) index.
                assert not re.search(r"SCAN enterprises\b(?!_fts)", p), (name, p)
                assert "USE TEMP B-TREE" not in p, (name, p)
                if name in ("search", "common"):
                    assert "VIRTUAL TABLE INDEX" in p, p
                if name == "country":
                    assert "ix_enterprises_country_id" in p, p
            else:
                assert "Seq Scan on enterprises" not in p, (name, p)
                if "Subquery Scan on walked" in p:  # tenancy.search's bounded primary-key window
                    assert "Index Scan using pk_enterprises" in p, p
        if not sqlite and name == "search":
            # A rare term: one bounded window of the primary key, then its few matches from the
            # trigram index (not a walk of the whole primary key).
            assert any("Subquery Scan on walked" in p for p in plans), plans
            assert "ix_enterprises_name_trgm" in plans[-1] and "walked" not in plans[-1], plans
        if not sqlite and name == "common":
            # A word in every name fills its page in the first window: nothing collected or sorted.
            assert len(plans) == 1 and "Subquery Scan on walked" in plans[0], plans
            assert "Sort" not in plans[0] and "ix_enterprises_name_trgm" not in plans[0], plans
