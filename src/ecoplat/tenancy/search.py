"""Enterprise name search on PostgreSQL: one page of `name ILIKE '%q%' ORDER BY id` without
walking the whole table for a rare term or sorting every match of a common one.

PostgreSQL can read such a page two ways: walk the primary key and filter each row until the page
is full (cheap for a common term, most of the table for a rare one), or collect every match through
the pg_trgm GIN index (migration 0001) and sort them (cheap for a rare term, every match read and
sorted for a common one; a GIN index cannot return rows in id order or stop early). The planner
chooses from its estimate of the matches, which for a substring pattern comes from the ~100
entries of the column's histogram: a brand in 52 of 100,000 names that happens to hit one entry is
taken for ~1,000 matches, and the walk reads nearly the whole table (80-100 ms) to fill its page.
A larger statistics target does not cure it (1,000 or 10,000 histogram entries still left 2-3 of
100 brand terms on the walk, for 2 resp. 14 ms more planning per query).

So the search measures the term instead of trusting the estimate:

1. walk a first window of the primary key (`FIRST_WINDOW_ROWS_PER_ROW` rows per row of the page),
   always index-backed and bounded; a term in one name in five or more fills its page there;
2. if the window held some matches, and walking on to the rest of the page is expected to read
   fewer rows than the term has matches left (the two cost about the same per row), walk a
   second window of at most `SECOND_WINDOW_MAX_ROWS` rows;
3. otherwise the term is rare past the windows: collect its remaining matches through the trigram
   index and sort them (`ORDER BY id + 0` keeps the planner off the primary-key walk).

Each step continues after the rows the previous one read, so the page, its order and its cursor
are exactly those of the single query. The cost of step 3 grows with the matches after the
windows: a term that is rare at the start of the id range but common further on (names that
follow creation time) sorts all its later matches.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

from sqlalchemy import ColumnElement, Table, bindparam, func, select
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from ecoplat.pagination import PageParams, cursor_values, finish_page
from ecoplat.tenancy.models import Enterprise

# Rows walked in the first window per row the page needs.
FIRST_WINDOW_ROWS_PER_ROW = 5
# The longest second walk (about 25 ms of filtering on a busy 2-core machine).
SECOND_WINDOW_MAX_ROWS = 10_000

# The search's conditions (name pattern, scope, filters) on the columns (`.c`) of the enterprise
# table or of a subquery of it.
Conditions = Callable[[Any], list[ColumnElement[bool]]]
# The columns to read of each match (the first named "id"), from the same `.c`.
Columns = Callable[[Any], list[Any]]


def enterprise_search_page(db: Session, *, conditions: Conditions, columns: Columns, page: PageParams,
                           ) -> tuple[list[Row[Any]], str | None]:
    """One keyset page (by id) of the enterprises matching `conditions`, read as described above,
    as rows of `columns`."""
    need = page.limit + 1
    after = cursor_values(page, (_enterprises().c.id,))
    after_id: int | None = after[0] if after else None
    window = need * FIRST_WINDOW_ROWS_PER_ROW
    if not window:
        return finish_page(_by_index(db, conditions, columns, after_id, limit=need), page, ("id",))
    rows = _walk(db, conditions, columns, after_id=after_id, window=window, limit=need)
    if rows and len(rows) < need:
        # The window shows how dense the term is: walk on, or sort what is left.
        end, last = db.execute(select(_nth_id(after_id is not None), _last_id()),
                               _window_params(after_id, window)).one()
        if end is None:  # the table ends inside the window: every match is in
            return finish_page(rows, page, ("id",))
        if not walking_on_is_cheaper(found=len(rows), walked=window, missing=need - len(rows),
                                     rest=(last or 0) - end):
            rows += _by_index(db, conditions, columns, end, limit=need - len(rows))
            return finish_page(rows, page, ("id",))
        after_id, window = end, SECOND_WINDOW_MAX_ROWS
        rows += _walk(db, conditions, columns, after_id=after_id, window=window, limit=need - len(rows))
    if len(rows) < need:
        # Nothing left to decide: the index continues after the window's last row, found in the
        # same statement (NULL, matching nothing, when the table ends inside the window).
        rows += _by_index(db, conditions, columns, _nth_id(after_id is not None), limit=need - len(rows),
                          params=_window_params(after_id, window))
    return finish_page(rows, page, ("id",))


# Statement parts built once, with the window as bound parameters. Core statements on the
# table (`conditions` and `columns` get the columns of the table or of the window's subquery):
# ORM attributes in a statement would put each row through the ORM's loading.

def _window_params(after_id: int | None, window: int) -> dict[str, int]:
    return {"window_rows": window} | ({"window_after": after_id} if after_id is not None else {})


@lru_cache(maxsize=2)
def _walked(after: bool) -> Any:
    """The next `window_rows` enterprises by id (after `window_after`), as a subquery's columns."""
    t = _enterprises()
    walked = select(t).order_by(t.c.id).limit(bindparam("window_rows"))
    if after:
        walked = walked.where(t.c.id > bindparam("window_after"))
    return walked.subquery("walked").c


@lru_cache(maxsize=2)
def _nth_id(after: bool) -> Any:
    """The id of the window's last row, a scalar subquery (NULL when the table ends before it)."""
    rows = _enterprises().alias("window_rows")
    nth = select(rows.c.id).order_by(rows.c.id).offset(bindparam("window_rows") - 1).limit(1)
    if after:
        nth = nth.where(rows.c.id > bindparam("window_after"))
    return nth.scalar_subquery()


@lru_cache(maxsize=1)
def _last_id() -> Any:
    return select(func.max(_enterprises().c.id)).scalar_subquery()


def _enterprises() -> Table:
    return Enterprise.__table__  # type: ignore[return-value]


def _walk(db: Session, conditions: Conditions, columns: Columns, *, after_id: int | None, window: int,
          limit: int) -> list[Row[Any]]:
    """The matches among the window's rows: the LIMIT inside the subquery keeps the conditions
    out of it, so the plan is a primary-key range walk that stops after `window` rows."""
    ent = _walked(after_id is not None)
    stmt = select(*columns(ent)).where(*conditions(ent)).order_by(ent.id).limit(limit)
    return list(db.execute(stmt, _window_params(after_id, window)).all())


def _by_index(db: Session, conditions: Conditions, columns: Columns, after: Any, *, limit: int,
              params: dict[str, int] | None = None) -> list[Row[Any]]:
    """The first matches after `after` (an id, a scalar subquery or None), every one collected
    and sorted: `id + 0` keeps the planner from walking the primary key instead."""
    ent = _enterprises().c
    stmt = select(*columns(ent)).where(*conditions(ent))
    if after is not None:
        stmt = stmt.where(ent.id > after)
    return list(db.execute(stmt.order_by(ent.id + 0).limit(limit), params or {}).all())


def walking_on_is_cheaper(*, found: int, walked: int, missing: int, rest: int) -> bool:
    """With `found` matches in `walked` rows, filling the page by walking reads about
    missing / density rows; sorting instead reads about density * rest matches."""
    if not found:
        return False
    density = found / walked
    to_walk = missing / density
    return to_walk <= SECOND_WINDOW_MAX_ROWS and to_walk <= density * rest
