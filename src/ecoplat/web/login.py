"""Password sign-in and the user's language, as the pages need them.

The tenancy domain owns authentication (`ecoplat.tenancy.service`); these functions delegate to it
when it offers the call and otherwise use the same primitives (argon2 verification, token
issuance, the failed-login slowdown counters on the user row), so both paths behave alike."""

from __future__ import annotations

import importlib
import importlib.util
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ecoplat.config import Settings
from ecoplat.db import utcnow
from ecoplat.errors import NotAuthenticated, ProblemError, TooManyRequests
from ecoplat.tenancy.auth import Principal, issue_tokens, verify_password
from ecoplat.tenancy.models import User


class LoginFailed(Exception):
    def __init__(self, status: int, retry_after_s: int | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.retry_after_s = retry_after_s


def _tenancy_service() -> Any | None:
    if importlib.util.find_spec("ecoplat.tenancy.service") is None:
        return None
    return importlib.import_module("ecoplat.tenancy.service")


def login_delay_seconds(failed_count: int, settings: Settings) -> int:
    """Exponential slowdown after the free attempts: 1, 2, 4 … seconds, capped."""
    over = failed_count - settings.login_free_attempts
    if over < 0:
        return 0
    return int(min(2 ** over, settings.login_max_delay_seconds))


def _local_login(db: Session, *, email: str, password: str, settings: Settings) -> dict[str, Any]:
    user = db.scalar(select(User).where(func.lower(User.email) == email.lower()))
    now = utcnow()
    if user is not None and user.failed_login_count and user.last_failed_login_at is not None:
        wait = login_delay_seconds(user.failed_login_count, settings)
        ready_at = user.last_failed_login_at + timedelta(seconds=wait)
        if wait and ready_at > now:
            raise LoginFailed(429, max(1, int((ready_at - now).total_seconds() + 0.999)))
    if user is None or not user.is_active or not verify_password(user.password_hash, password):
        if user is not None:
            user.failed_login_count = (user.failed_login_count or 0) + 1
            user.last_failed_login_at = now
            db.flush()
        raise LoginFailed(401)
    user.failed_login_count = 0
    user.last_failed_login_at = None
    user.last_login_at = now
    db.flush()
    return issue_tokens(user, secret=settings.resolved_secret_key, access_minutes=settings.access_token_minutes,
                        refresh_days=settings.refresh_token_days)


def password_login(db: Session, *, email: str, password: str, settings: Settings, ip: str = "") -> dict[str, Any]:
    """Tokens for a valid e-mail and password; raises LoginFailed (401, or 429 with the wait)."""
    service = _tenancy_service()
    fn = getattr(service, "login", None) if service is not None else None
    if fn is None:
        return _local_login(db, email=email, password=password, settings=settings)
    try:
        result = fn(db, email=email, password=password, settings=settings, ip=ip)
    except TooManyRequests as e:
        retry = (e.headers or {}).get("Retry-After") or e.extra.get("retry_after") or 1
        raise LoginFailed(429, int(float(retry))) from e
    except NotAuthenticated as e:
        raise LoginFailed(401) from e
    except ProblemError as e:
        raise LoginFailed(e.status) from e
    if isinstance(result, dict):
        return result
    return result.model_dump() if hasattr(result, "model_dump") else dict(result)


def save_user_locale(db: Session, *, actor: Principal, locale: str) -> None:
    """Remembers the signed-in user's language (an audited change of their own profile)."""
    from ecoplat.tenancy.audit import record

    user = db.get(User, actor.user_id)
    if user is None or user.locale == locale:
        return
    before = {"locale": user.locale}
    user.locale = locale
    db.flush()
    record(db, actor=actor, action="update", entity_type="user", entity_id=user.id,
           before=before, after={"locale": locale}, enterprise_id=user.enterprise_id)
