"""Signing in for pages: the session lives in HttpOnly SameSite=Lax cookies (`ecoplat_access`,
which `ecoplat.tenancy.auth.current_principal` reads, and `ecoplat_refresh`, used here to renew an
expired access cookie without bothering the user).

For page routes use `PagePrincipal` (redirects to /login?next=… when not signed in) and a router
made by `page_router()`, whose routes render domain errors (403, 404, 422…) as HTML pages::

    router = page_router()

    @router.get("/alarms")
    def alarms(request: Request, principal: PagePrincipal, db: DbSession) -> HTMLResponse: ...
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute, APIRouter

from ecoplat.config import Settings
from ecoplat.db import DbSession
from ecoplat.errors import NotAuthenticated, ProblemError, Unprocessable, _loc
from ecoplat.tenancy import service as tenancy
from ecoplat.tenancy.auth import Principal, authenticate
from ecoplat.web.templating import apply_session_cookies, render

log = logging.getLogger(__name__)

ACCESS_COOKIE = "ecoplat_access"
REFRESH_COOKIE = "ecoplat_refresh"


class LoginRequired(Exception):
    """Raised by the page dependency; the page route answers 303 to the login page."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


def safe_next(value: str | None, default: str = "/") -> str:
    """Only same-site paths may follow a login (no open redirect to another host)."""
    if not value:
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    return value


def _secure(settings: Settings) -> bool:
    return bool(settings.base_url and settings.base_url.startswith("https://"))


def set_session_cookies(response: Response, tokens: dict[str, Any], settings: Settings) -> None:
    secure = _secure(settings)
    response.set_cookie(ACCESS_COOKIE, tokens["access_token"], max_age=settings.refresh_token_days * 86400,
                        httponly=True, samesite="lax", secure=secure, path="/")
    if tokens.get("refresh_token"):
        response.set_cookie(REFRESH_COOKIE, tokens["refresh_token"], max_age=settings.refresh_token_days * 86400,
                            httponly=True, samesite="lax", secure=secure, path="/")


def clear_session_cookies(response: Response) -> None:
    response.delete_cookie(ACCESS_COOKIE, path="/", httponly=True, samesite="lax")
    response.delete_cookie(REFRESH_COOKIE, path="/", httponly=True, samesite="lax")


def _renew_from_refresh_cookie(request: Request, db: DbSession, settings: Settings) -> Principal | None:
    """A valid refresh cookie (active user, tokens not revoked) gives a new pair, through the same
    tenancy service call as POST /api/auth/refresh."""
    token = request.cookies.get(REFRESH_COOKIE)
    if not token:
        return None
    try:
        tokens = tenancy.refresh_tokens(db, refresh_token=token, settings=settings)
        principal = authenticate(db, tokens["access_token"], secret=settings.resolved_secret_key)
    except NotAuthenticated:
        return None
    pending = getattr(request.state, "pending_cookies", None)
    if pending is None:
        pending = []
        request.state.pending_cookies = pending
    pending.append(lambda response: set_session_cookies(response, tokens, settings))
    return principal


def page_principal(request: Request, db: DbSession) -> Principal:
    """The signed-in user for a page; renews an expired access cookie from the refresh cookie;
    otherwise sends the browser to the login page, coming back here afterwards."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    settings: Settings = request.app.state.settings
    token = request.cookies.get(ACCESS_COOKIE)
    principal: Principal | None = None
    if token:
        try:
            principal = authenticate(db, token, secret=settings.resolved_secret_key)
        except NotAuthenticated:
            principal = None
    if principal is None:
        principal = _renew_from_refresh_cookie(request, db, settings)
    if principal is None:
        next_url = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(next_url)
    request.state.principal = principal
    return principal


PagePrincipal = Annotated[Principal, Depends(page_principal)]


def optional_page_principal(request: Request, db: DbSession) -> Principal | None:
    """The signed-in user if there is one (e.g. the login page), never redirecting."""
    try:
        return page_principal(request, db)
    except LoginRequired:
        return None


OptionalPagePrincipal = Annotated[Principal | None, Depends(optional_page_principal)]


def login_redirect(next_url: str, request: Request) -> Response:
    location = "/login?next=" + quote(safe_next(next_url), safe="/")
    response = RedirectResponse(location, status_code=303)
    if request.headers.get("hx-request") == "true":
        # HTMX follows redirects inside the swap; ask it to navigate the whole page instead.
        response.headers["HX-Redirect"] = location
    return response


def render_problem(request: Request, exc: ProblemError) -> Response:
    """A domain error on a page, as a page (same status), in the reader's language."""
    return render(request, "error.html", {"status": exc.status, "detail": exc.detail, "problem": exc},
                  status_code=exc.status, headers=exc.headers)


# Pages are never framed by other sites (clickjacking), never sniffed into another type, and never
# leak their URLs (which carry ids and filters) to other origins.
PAGE_HEADERS = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "same-origin"}


class PageRoute(APIRoute):
    """Routes for HTML pages: a missing session redirects to /login, a domain error renders
    error.html with its status, and renewed session cookies are set on whatever is returned."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                response = await original(request)
            except LoginRequired as e:
                response = login_redirect(e.next_url, request)
            except NotAuthenticated:
                response = login_redirect(request.url.path, request)
            except ProblemError as e:
                response = render_problem(request, e)
            except RequestValidationError as e:
                # A mistyped link (?ecosystem=abc) gets a page saying what is wrong, not JSON.
                problems = "; ".join(f"{_loc(err.get('loc', ()))}: {err.get('msg', '')}" for err in e.errors())
                response = render_problem(request, Unprocessable(problems or "The request is not valid."))
            for name, value in PAGE_HEADERS.items():
                response.headers.setdefault(name, value)
            return apply_session_cookies(request, response)

        return handler


def page_router(**kwargs: Any) -> APIRouter:
    """An APIRouter for HTML pages (hidden from the OpenAPI schema)."""
    kwargs.setdefault("include_in_schema", False)
    return APIRouter(route_class=PageRoute, **kwargs)
