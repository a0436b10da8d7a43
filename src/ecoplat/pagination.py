"""Keyset pagination shared by every list endpoint.

A page is `{"items": [...], "next_cursor": "..."}`. The cursor is opaque to clients: base64url of
the last row's sort key. The next page is `WHERE key > :cursor ORDER BY key LIMIT n`, so each page
costs one index range scan however deep the client pages (OFFSET would scan every skipped row).

Use in a route:

    @router.get("", response_model=Page[SiteOut])
    def list_sites(db: DbSession, actor: CurrentPrincipal, page: PageQuery) -> Page[SiteOut]:
        rows, next_cursor = paginate(db, select(Site).where(...), page, key=(Site.id,))
        return Page(items=[SiteOut.model_validate(r) for r in rows], next_cursor=next_cursor)
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

import orjson
from fastapi import Depends, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import Select, tuple_
from sqlalchemy.orm import Session

from ecoplat.errors import Unprocessable

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` to get the next page; null on the last page.")


@dataclass(frozen=True, slots=True)
class PageParams:
    limit: int
    cursor: str | None = None


def _encode_value(v: Any) -> Any:
    if isinstance(v, datetime):
        return {"dt": v.isoformat()}
    if hasattr(v, "value") and not isinstance(v, int | float | str):  # enums
        return v.value
    return v


def _decode_value(v: Any) -> Any:
    if isinstance(v, dict) and set(v) == {"dt"}:
        return datetime.fromisoformat(v["dt"])
    return v


def encode_cursor(key: Sequence[Any]) -> str:
    raw = orjson.dumps([_encode_value(v) for v in key])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, *, arity: int | None = None) -> list[Any]:
    """The sort key inside a cursor; a tampered or foreign cursor answers 422 naming `cursor`."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        if not isinstance(values, list) or (arity is not None and len(values) != arity):
            raise ValueError("wrong shape")
        out = [_decode_value(v) for v in values]
        if not all(v is None or isinstance(v, bool | int | float | str | datetime) for v in out):
            raise ValueError("wrong value type")
        return out
    except (ValueError, TypeError, UnicodeError, binascii.Error, orjson.JSONDecodeError) as e:
        raise _bad_cursor() from e


def _bad_cursor() -> Unprocessable:
    return Unprocessable("cursor: this cursor is not valid here; use the next_cursor of the "
                         "previous page, or omit it to start from the first page.",
                         errors=[{"field": "cursor", "message": "invalid cursor", "type": "value_error"}])


_INT_BOUND = 2**63 - 1


def _check_types(cols: Sequence[Any], values: list[Any]) -> None:
    """A cursor's values must fit their columns, or the database would fail on the comparison."""
    for col, value in zip(cols, values, strict=True):
        try:
            expected = col.type.python_type
        except (AttributeError, RuntimeError):  # types without a Python type raise a RuntimeError subclass
            continue
        ok = value is None or isinstance(value, expected)
        if expected is int:
            ok = isinstance(value, int) and not isinstance(value, bool) and abs(value) <= _INT_BOUND
        elif expected is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            raise _bad_cursor()


async def page_params(
    request: Request,
    limit: Annotated[int | None, Query(ge=1, description="Page size (default and maximum set by the server).")] = None,
    cursor: Annotated[str | None, Query(max_length=512, description="next_cursor from the previous page.")] = None,
) -> PageParams:
    settings = request.app.state.settings
    maximum = settings.page_size_max
    if limit is not None and limit > maximum:
        raise Unprocessable(f"limit: at most {maximum} items per page; follow next_cursor for more.",
                            errors=[{"field": "limit", "message": f"must be <= {maximum}", "type": "less_than_equal"}])
    return PageParams(limit=limit or settings.page_size_default, cursor=cursor or None)


# page_params is async although it awaits nothing: FastAPI runs a sync dependency on a worker
# thread, a hop that costs more CPU than reading two query parameters.
PageQuery = Annotated[PageParams, Depends(page_params)]


def paginate(db: Session, stmt: Select[Any], page: PageParams, *, key: Sequence[Any],
             descending: bool = False, key_attrs: Sequence[str] | None = None,
             scalars: bool = True) -> tuple[list[Any], str | None]:
    """Runs `stmt` (which selects one ORM entity, or with `scalars=False` several columns, read
    as rows) one page at a time, ordered by `key` columns.

    `key` must be unique together (end it with the primary key) and match an index that starts
    with the statement's equality filters, e.g. (enterprise_id, id) for `WHERE enterprise_id = ?`.
    `key_attrs` names the row attributes holding the key when the key columns are not the
    entity's own (e.g. a joined search index's rowid that equals the entity's id).
    Returns the rows and the cursor of the next page (None when this is the last one)."""
    cols = list(key)
    values = cursor_values(page, cols)
    if values is not None:
        if len(cols) == 1:
            stmt = stmt.where(cols[0] < values[0] if descending else cols[0] > values[0])
        else:
            row, after = tuple_(*cols), tuple_(*values)
            stmt = stmt.where(row < after if descending else row > after)
    order = [c.desc() for c in cols] if descending else list(cols)
    result = db.execute(stmt.order_by(*order).limit(page.limit + 1))
    rows = list(result.scalars().all() if scalars else result.all())
    return finish_page(rows, page, list(key_attrs) if key_attrs is not None else [c.key for c in cols])


def cursor_values(page: PageParams, key: Sequence[Any]) -> list[Any] | None:
    """The sort key a page starts after (checked against the key columns), or None on the first page."""
    if not page.cursor:
        return None
    values = decode_cursor(page.cursor, arity=len(key))
    _check_types(key, values)
    return values


def finish_page(rows: list[Any], page: PageParams, key_attrs: Sequence[str]) -> tuple[list[Any], str | None]:
    """Given up to `page.limit + 1` rows in key order: the page and the cursor of the next one."""
    if len(rows) <= page.limit:
        return rows, None
    rows = rows[: page.limit]
    return rows, encode_cursor([getattr(rows[-1], a) for a in key_attrs])
