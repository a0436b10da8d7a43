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
   always index-backed and bounded; a term in one name in ten or more fills its page there;
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
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session, aliased

from ecoplat.pagination import PageParams, cursor_values, finish_page
from ecoplat.tenancy.models import Enterprise

# Rows walked in the first window per row the page needs.
FIRST_WINDOW_ROWS_PER_ROW = 10
# The longest second walk (about 25 ms of filtering on a busy 2-core machine).
SECOND_WINDOW_MAX_ROWS = 10_000

# The search's conditions (name pattern, scope, filters) for the enterprise table or an alias of it.
Conditions = Callable[[Any], list[ColumnElement[bool]]]


def enterprise_search_page(db: Session, *, conditions: Conditions, page: PageParams,
                           ) -> tuple[list[Enterprise], str | None]:
    """One keyset page (by id) of the enterprises matching `conditions`, read as described above."""
    need = page.limit + 1
    after = cursor_values(page, (Enterprise.id,))
    after_id: int | None = after[0] if after else None
    rows: list[Enterprise] = []
    window = need * FIRST_WINDOW_ROWS_PER_ROW
    first = True
    while window:
        rows += _walk(db, conditions, after_id=after_id, window=window, limit=need - len(rows))
        if len(rows) >= need:
            return finish_page(rows, page, ("id",))
        end, last = _window_end(db, after_id=after_id, window=window)
        if end is None:  # the table ends inside the window: every match is in
            return finish_page(rows, page, ("id",))
        after_id = end
        if not (first and walking_on_is_cheaper(found=len(rows), walked=window, missing=need - len(rows),
                                                 rest=last - end)):
            break
        window, first = SECOND_WINDOW_MAX_ROWS, False
    stmt = select(Enterprise).where(*conditions(Enterprise))
    if after_id is not None:
        stmt = stmt.where(Enterprise.id > after_id)
    rows += db.scalars(stmt.order_by(Enterprise.id + 0).limit(need - len(rows))).all()
    return finish_page(rows, page, ("id",))


def _walk(db: Session, conditions: Conditions, *, after_id: int | None, window: int, limit: int,
          ) -> list[Enterprise]:
    """The matches among the next `window` rows by id: the LIMIT inside the subquery keeps the
    conditions out of it, so the plan is a primary-key range walk that stops at `window` rows."""
    walked = select(Enterprise).order_by(Enterprise.id).limit(window)
    if after_id is not None:
        walked = walked.where(Enterprise.id > after_id)
    ent = aliased(Enterprise, walked.subquery("walked"))
    return list(db.scalars(select(ent).where(*conditions(ent)).order_by(ent.id).limit(limit)).all())


def _window_end(db: Session, *, after_id: int | None, window: int) -> tuple[int | None, int]:
    """The id of the window's last row (None when the table ends before it) and the largest id."""
    nth = select(Enterprise.id).order_by(Enterprise.id).offset(window - 1).limit(1)
    if after_id is not None:
        nth = nth.where(Enterprise.id > after_id)
    end, last = db.execute(select(nth.scalar_subquery(), select(func.max(Enterprise.id)).scalar_subquery())).one()
    return end, last or 0


def walking_on_is_cheaper(*, found: int, walked: int, missing: int, rest: int) -> bool:
    """With `found` matches in `walked` rows, filling the page by walking reads about
    missing / density rows; sorting instead reads about density * rest matches."""
    if not found:
        return False
    density = found / walked
    to_walk = missing / density
    return to_walk <= SECOND_WINDOW_MAX_ROWS and to_walk <= density * rest
