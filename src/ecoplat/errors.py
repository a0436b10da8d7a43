"""RFC 9457 problem details for every error the API gives, and the domain errors services raise."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

_TITLES = {
    400: "Bad request",
    401: "Not authenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Validation failed",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


class ProblemError(Exception):
    """A domain error that the API turns into problem+json. Services raise its subclasses."""

    status: int = 400
    type_slug: str = "bad-request"

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers
        self.extra = extra


class BadRequest(ProblemError):
    status, type_slug = 400, "bad-request"


class NotAuthenticated(ProblemError):
    status, type_slug = 401, "not-authenticated"


class Forbidden(ProblemError):
    status, type_slug = 403, "forbidden"


class NotFound(ProblemError):
    status, type_slug = 404, "not-found"

    def __init__(self, kind: str, ident: object) -> None:
        super().__init__(f"No {kind} with id {ident} exists, or it belongs to another enterprise.")


class Conflict(ProblemError):
    status, type_slug = 409, "conflict"


class Unprocessable(ProblemError):
    status, type_slug = 422, "validation-failed"


class TooManyRequests(ProblemError):
    status, type_slug = 429, "too-many-requests"


def problem(status: int, detail: str, *, type_slug: str | None = None, instance: str | None = None,
            headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://ecoplat.dev/problems/{type_slug or _TITLES.get(status, 'error').lower().replace(' ', '-')}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(p) for p in loc if p not in ("body",)) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _domain(request: Request, exc: ProblemError) -> JSONResponse:
        return problem(exc.status, exc.detail, type_slug=exc.type_slug, instance=request.url.path,
                       headers=exc.headers, errors=exc.errors, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for e in exc.errors():
            errors.append({"field": _loc(e.get("loc", ())), "message": e.get("msg", ""), "type": e.get("type")})
        first = errors[0] if errors else {"field": "body", "message": "invalid"}
        if any(e["type"] == "json_invalid" for e in errors):
            # The body is not JSON at all: a malformed request (400), not a failed validation (422).
            bad = next(e for e in errors if e["type"] == "json_invalid")
            return problem(400, f"The request body is not valid JSON: {bad['message']}",
                           type_slug="malformed-json", instance=request.url.path, errors=[bad])
        detail = f"{first['field']}: {first['message']}"
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return problem(422, detail, type_slug="validation-failed", instance=request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"No route {request.method} {request.url.path}."
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}."
        return problem(exc.status_code, detail, instance=request.url.path,
                       headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "The server hit an unexpected error; it has been logged.",
                       instance=request.url.path)


class BodySizeLimit:
    """Rejects bodies over the limit with 413 before the route reads them (Content-Length or streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        received = 0
        too_big = False

        async def limited_receive() -> Message:
            nonlocal received, too_big
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_big = True
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(413, f"The request body is larger than the limit of {self.max_bytes} bytes.",
                           instance=scope.get("path"))
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


class RejectNulText:
    """Answers 422 for NUL characters in a JSON body or the query string of the REST API.

    PostgreSQL text cannot hold NUL, so such input would otherwise fail deep in the database.
    The device API (/api/v1/…) is left to the payload parser, which counts the reject per device."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/api/") or path.startswith("/api/v1/"):
            await self.app(scope, receive, send)
            return
        raw_path: bytes = scope.get("raw_path") or b""
        if b"%00" in scope.get("query_string", b"") or b"%00" in raw_path or "\x00" in path:
            await self._reject(scope, receive, send, "the query string or path")
            return
        headers = dict(scope.get("headers") or [])
        if b"json" not in headers.get(b"content-type", b""):
            await self.app(scope, receive, send)
            return

        # Read the whole body first (BodySizeLimit, outside, bounds it), then replay it.
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if b"\\u0000" in body:
            await self._reject(scope, receive, send, "the JSON body")
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _reject(scope: Scope, receive: Receive, send: Send, where: str) -> None:
        response = problem(422, f"Text in {where} must not contain NUL (\\u0000) characters.",
                           type_slug="validation-failed", instance=scope.get("path"))
        await response(scope, receive, send)
