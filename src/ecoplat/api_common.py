"""Small helpers every domain's API shares: id path parameters and the caller's address."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Request
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
