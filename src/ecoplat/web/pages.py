"""The foundation's pages: sign in/out, language switch, static files. The ecosystem overview,
enterprise site tree, user admin and audit log follow in this module."""

from __future__ import annotations

from typing import Annotated

from fastapi import Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from ecoplat.db import DbSession
from ecoplat.web.auth import (
    OptionalPagePrincipal,
    clear_session_cookies,
    page_router,
    safe_next,
    set_session_cookies,
)
from ecoplat.web.login import LoginFailed, password_login
from ecoplat.web.templating import LOCALE_COOKIE, STATIC_DIR, normalize_locale, render, translate

router = page_router()
router.mount("/static", StaticFiles(directory=str(STATIC_DIR), check_dir=False), name="static")


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, principal: OptionalPagePrincipal, next: str = "/") -> Response:
    if principal is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return render(request, "login.html", {"next": safe_next(next), "values": {}, "errors": {}})


@router.post("/login", response_class=HTMLResponse)
def login_submit(request: Request, db: DbSession, email: Annotated[str, Form()] = "",
                 password: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/") -> Response:
    settings = request.app.state.settings
    errors: dict[str, str] = {}
    if not email.strip():
        errors["email"] = translate(request, "Enter your e-mail address.")
    if not password:
        errors["password"] = translate(request, "Enter your password.")
    form_error = None
    status = 422
    if not errors:
        try:
            tokens = password_login(db, email=email.strip(), password=password, settings=settings,
                                    ip=request.client.host if request.client else "")
        except LoginFailed as e:
            status = e.status
            if e.retry_after_s:
                form_error = translate(request, "Too many failed sign-ins. Try again in %(seconds)s seconds.",
                                       seconds=e.retry_after_s)
            else:
                form_error = translate(request, "The e-mail address or the password is wrong, or the account is deactivated.")
        else:
            response = RedirectResponse(safe_next(next), status_code=303)
            set_session_cookies(response, tokens, settings)
            return response
    return render(request, "login.html", {"next": safe_next(next), "values": {"email": email}, "errors": errors,
                                          "form_error": form_error}, status_code=status)


@router.post("/logout")
def logout(request: Request) -> Response:
    response = RedirectResponse("/login", status_code=303)
    clear_session_cookies(response)
    return response


@router.post("/locale")
def switch_locale(request: Request, db: DbSession, principal: OptionalPagePrincipal,
                  locale: Annotated[str, Form()] = "en", next: Annotated[str, Form()] = "/") -> Response:
    """Switches the UI language: saved on the user when signed in, in a cookie in any case
    (so the login page speaks it too)."""
    chosen = normalize_locale(locale) or "en"
    if principal is not None and principal.user_id is not None:
        from ecoplat.web.login import save_user_locale

        save_user_locale(db, actor=principal, locale=chosen)
        # The principal cached on this request still carries the old locale; drop it.
        request.state.principal = None
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(LOCALE_COOKIE, chosen, max_age=365 * 86400, httponly=True, samesite="lax", path="/")
    return response
