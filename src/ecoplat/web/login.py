"""Password sign-in and the user's language, as the pages need them; the tenancy service owns
both (the pages only translate its answers into form errors)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from ecoplat.config import Settings
from ecoplat.tenancy import service as tenancy
from ecoplat.tenancy.auth import Principal
from ecoplat.tenancy.schemas import MePatch


class LoginFailed(Exception):
    def __init__(self, status: int, retry_after_s: int | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.retry_after_s = retry_after_s


def password_login(db: Session, *, email: str, password: str, settings: Settings, ip: str = "") -> dict[str, Any]:
    """Tokens for a valid e-mail and password, through the tenancy service's sign-in (argon2,
    slowdown after repeated failures, audit); raises LoginFailed (401, or 429 with the wait)."""
    result = tenancy.login(db, email=email, password=password, settings=settings, ip=ip)
    if result.tokens is None:
        raise LoginFailed(result.status, result.retry_after)
    return result.tokens


def save_user_locale(db: Session, *, actor: Principal, locale: str) -> None:
    """Remembers the signed-in user's language: the same PATCH of their profile the API does."""
    from ecoplat.web.templating import LOCALES

    # Stored as the tenancy schema spells it ("en", "zh_CN"); the UI code is "zh-CN".
    tenancy.update_me(db, actor=actor, data=MePatch(locale=LOCALES.get(locale, "en")))
