"""Enterprise name search answers the same pages, in the same order, with the same cursors, however
the database reads them: on PostgreSQL tenancy.search walks primary-key windows or sorts the
trigram index's matches depending on the term; on SQLite the FTS5 index is read in id order."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, insert, select, text
from sqlalchemy.orm import Session

from ecoplat.db import utcnow
from ecoplat.pagination import PageParams
from ecoplat.tenancy import search, service
from ecoplat.tenancy.models import EcosystemMembership, Enterprise, Role

from .builders import make_ecosystem, make_enterprise, make_user, principal

N = 3_000
PAGE = 7  # the first window is 80 rows


def _name(i: int) -> str:
    words = ["Hengtai Valve"]
    if i % 2 == 0:
        words.append("Group")  # common: every other name
    if i % 15 == 0:
        words.append("Xinhua")  # medium: one in 15, walked in a second window
    if i in (37, 1201, 1202, 2999):
        words.append("Dean")  # rare
    if i > 2_000:
        words.append("Kangrui")  # common, but only past the first windows
    return " ".join(words) + f" Co., Ltd. {i:04d}"


@pytest.fixture
def named(db: Session) -> Session:
    now = utcnow()
    db.execute(insert(Enterprise), [{"name": _name(i), "country": "DE" if i % 3 else "CN", "isic_class": "2011",
                                     "size_class": "small", "timezone": "UTC", "limits": {}, "created_at": now,
                                     "updated_at": now} for i in range(N)])
    db.execute(text("ANALYZE enterprises" if db.get_bind().dialect.name == "postgresql" else "ANALYZE"))
    return db


def _pages(db: Session, actor: Any, **filters: Any) -> Iterator[tuple[list[int], str | None]]:
    cursor = None
    while True:
        rows, cursor = service.list_enterprises(db, actor=actor, page=PageParams(limit=PAGE, cursor=cursor), **filters)
        yield [e.id for e in rows], cursor
        if cursor is None:
            return


def _statements(db: Session, call: Any) -> list[str]:
    seen: list[str] = []
    engine = db.get_bind().engine

    def listen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM enterprises" in statement:
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", listen)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", listen)
    return seen


@pytest.mark.parametrize(("q", "filters", "branch"), [
    ("dean", {}, "index"),
    ("Group", {}, "first window"),
    ("xinhua", {}, "second window"),
    ("Kangrui", {}, "index"),
    ("Hengtai", {"country": "CN"}, "first window"),
    ("Dean", {"country": "DE"}, "index"),
    ("nowhere", {}, "index"),
])
def test_name_search_pages_are_the_same_whichever_way_they_are_read(
        named: Session, monkeypatch: pytest.MonkeyPatch, q: str, filters: dict[str, str], branch: str) -> None:
    db = named
    actor = principal(db, make_user(db, make_enterprise(db, name="Operator"), "platform_admin"))
    country = filters.get("country")
    expected = [i for i, name, c in db.execute(select(Enterprise.id, Enterprise.name, Enterprise.country)
                                               .order_by(Enterprise.id))
                if q.casefold() in name.casefold() and (country is None or c == country)]
    assert expected or q == "nowhere"

    chosen = list(_pages(db, actor, q=q, **filters))
    assert [i for ids, _ in chosen for i in ids] == expected
    assert all(len(ids) == PAGE for ids, cursor in chosen if cursor)
    if db.get_bind().dialect.name == "postgresql":
        first = _statements(db, lambda: service.list_enterprises(db, actor=actor, page=PageParams(limit=PAGE),
                                                                 q=q, **filters))
        walks = sum("walked" in s for s in first)
        by_index = any("ORDER BY enterprises.id + " in s for s in first)
        assert (walks, by_index) == {"first window": (1, False), "second window": (2, False),
                                     "index": (1, True)}[branch], first

    # Forced down either path alone (on SQLite these knobs do not apply), the pages are the same.
    monkeypatch.setattr(search, "FIRST_WINDOW_ROWS_PER_ROW", 0)  # trigram index only
    assert list(_pages(db, actor, q=q, **filters)) == chosen
    monkeypatch.setattr(search, "FIRST_WINDOW_ROWS_PER_ROW", 10 * N)  # one primary-key walk
    assert list(_pages(db, actor, q=q, **filters)) == chosen


def test_steward_searching_by_name_finds_only_their_ecosystems_members(named: Session) -> None:
    db = named
    eco = make_ecosystem(db)
    ids = list(db.scalars(select(Enterprise.id).order_by(Enterprise.id)))
    members = set(ids[::4])
    db.execute(insert(EcosystemMembership), [{"ecosystem_id": eco.id, "enterprise_id": i, "role": "member",
                                              "created_at": utcnow(), "updated_at": utcnow()} for i in members])
    home = make_enterprise(db, ecosystem=eco, name="Hengtai Steward Works")
    steward = principal(db, make_user(db, home, Role.ecosystem_steward))
    for q in ("Group", "xinhua", "Dean", "Hengtai"):
        expected = [i for i, name in db.execute(select(Enterprise.id, Enterprise.name).order_by(Enterprise.id))
                    if q.casefold() in name.casefold() and (i in members or i == home.id)]
        assert [i for ids_, _ in _pages(db, steward, q=q) for i in ids_] == expected, q
