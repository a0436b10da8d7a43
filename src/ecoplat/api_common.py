"""Small helpers every domain's API shares: id path parameters, the caller's address and
JSON answers written straight from plain data."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import Path, Request, Response
from pydantic import AfterValidator

# Ids are 32-bit on PostgreSQL; a larger number can name no row, and binding it would fail in
# the driver instead of answering a clean 404/422.
MAX_ID = 2_147_483_647

ObjectId = Annotated[int, Path(ge=1, le=MAX_ID, description="The object's id.")]


def client_ip(request: Request) -> str:
    """The caller's address for the audit trail."""
    return request.client.host if request.client else ""


def no_nul(value: Any) -> Any:
    """PostgreSQL text cannot hold NUL characters; refuse them as invalid input (422 naming the
    field) instead of letting the database fail on them."""
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("must not contain NUL (\\x00) characters")
    if isinstance(value, list | tuple):
        for item in value:
            no_nul(item)
    return value


NoNul = AfterValidator(no_nul)


def json_response(content: Any, *, status_code: int = 200) -> Response:
    """An answer written from plain dicts and lists that already have the response model's shape
    and field order, byte for byte what FastAPI writes through the model (orjson writes UTC
    datetimes with Z as pydantic does), without building, validating and dumping the model on
    every request: for a page of 50 enterprises 20 µs instead of 250 µs, plus a worker-thread
    hop for the validation. Keep a test that the answer is what the model would write."""
    return Response(orjson.dumps(content, option=orjson.OPT_UTC_Z), status_code=status_code,
                    media_type="application/json")
