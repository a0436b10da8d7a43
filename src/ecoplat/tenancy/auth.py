"""Who is asking: passwords (argon2), JWT access/refresh tokens, API keys, and the FastAPI
dependencies that turn a request into a Principal."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy import event, inspect, select
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction, sessionmaker
from starlette.concurrency import run_in_threadpool

from ecoplat.db import DbSession, utcnow
from ecoplat.errors import Forbidden, NotAuthenticated
from ecoplat.tenancy.models import ApiKey, Ecosystem, EcosystemMembership, Enterprise, Role, User
from ecoplat.tenancy.permissions import permissions_for

_hasher = PasswordHasher()
API_KEY_PREFIX = "ek_"
ALGORITHM = "HS256"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def hash_api_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_api_key_secret() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    """The acting user (or API key) as services see it."""

    user_id: int | None
    enterprise_id: int
    roles: frozenset[str]
    label: str
    permissions: frozenset[str] = field(default_factory=frozenset)
    stewarded_ecosystem_ids: frozenset[int] = field(default_factory=frozenset)
    locale: str = "en"
    api_key_id: int | None = None

    @property
    def is_platform_admin(self) -> bool:
        return Role.platform_admin.value in self.roles

    def can(self, permission: str) -> bool:
        return self.is_platform_admin or permission in self.permissions

    def require(self, permission: str) -> None:
        if not self.can(permission):
            raise Forbidden(f"Your role ({', '.join(sorted(self.roles)) or 'none'}) does not allow "
                            f"'{permission}'. Ask your enterprise admin for a role that does.")

    def sees_enterprise(self, enterprise_id: int) -> bool:
        return self.is_platform_admin or enterprise_id == self.enterprise_id


SYSTEM = Principal(user_id=None, enterprise_id=0, roles=frozenset({Role.platform_admin.value}),
                   label="system", permissions=permissions_for([Role.platform_admin.value]))


def principal_for_user(db: Session, user: User, *, roles: list[str] | None = None,
                       api_key_id: int | None = None, label: str | None = None) -> Principal:
    roles = list(roles if roles is not None else user.roles)
    stewarded: frozenset[int] = frozenset()
    if Role.ecosystem_steward.value in roles:
        stewarded = frozenset(db.scalars(
            select(EcosystemMembership.ecosystem_id).where(EcosystemMembership.enterprise_id == user.enterprise_id)
        ).all())
    return Principal(user_id=user.id, enterprise_id=user.enterprise_id, roles=frozenset(roles),
                     label=label or user.email, permissions=permissions_for(roles),
                     stewarded_ecosystem_ids=stewarded, locale=user.locale, api_key_id=api_key_id)


def issue_tokens(user: User, *, secret: str, access_minutes: int, refresh_days: int) -> dict[str, Any]:
    now = datetime.now(UTC)
    access = jwt.encode({"sub": str(user.id), "ent": user.enterprise_id, "typ": "access", "iat": now,
                         "exp": now + timedelta(minutes=access_minutes)}, secret, algorithm=ALGORITHM)
    refresh = jwt.encode({"sub": str(user.id), "typ": "refresh", "ver": user.token_version, "iat": now,
                          "jti": secrets.token_hex(8), "exp": now + timedelta(days=refresh_days)},
                         secret, algorithm=ALGORITHM)
    return {"access_token": access, "refresh_token": refresh, "token_type": "bearer",
            "expires_in": access_minutes * 60}


def decode_token(token: str, *, secret: str, expected_type: str) -> dict[str, Any]:
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM])
    except jwt.ExpiredSignatureError as e:
        raise NotAuthenticated("Your token has expired; sign in again or use your refresh token.",
                               headers={"WWW-Authenticate": "Bearer"}) from e
    except jwt.PyJWTError as e:
        raise NotAuthenticated("The token is not valid.", headers={"WWW-Authenticate": "Bearer"}) from e
    if claims.get("typ") != expected_type:
        raise NotAuthenticated(f"Expected an {expected_type} token.", headers={"WWW-Authenticate": "Bearer"})
    return claims


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    cookie = request.cookies.get("ecoplat_access")
    return cookie or None


def authenticate(db: Session, token: str, *, secret: str) -> Principal:
    if token.startswith(API_KEY_PREFIX):
        key = db.scalar(select(ApiKey).where(ApiKey.key_hash == hash_api_key(token)))
        now = utcnow()
        if key is None or key.revoked_at is not None:
            raise NotAuthenticated("This API key is unknown or has been revoked.",
                                   headers={"WWW-Authenticate": "Bearer"})
        if key.expires_at is not None and key.expires_at <= now:
            raise NotAuthenticated("This API key has expired.", headers={"WWW-Authenticate": "Bearer"})
        user = db.get(User, key.user_id)
        if user is None or not user.is_active:
            raise NotAuthenticated("The owner of this API key is no longer active.",
                                   headers={"WWW-Authenticate": "Bearer"})
        if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
            key.last_used_at = now
        roles = [r for r in key.roles if r in user.roles] or list(user.roles)
        return principal_for_user(db, user, roles=roles, api_key_id=key.id, label=f"api-key:{key.prefix}")
    claims = decode_token(token, secret=secret, expected_type="access")
    return _access_principal(db, claims)


def _access_principal(db: Session, claims: dict[str, Any]) -> Principal:
    user = db.get(User, int(claims["sub"]))
    if user is None or not user.is_active:
        raise NotAuthenticated("This account no longer exists or is deactivated.",
                               headers={"WWW-Authenticate": "Bearer"})
    return principal_for_user(db, user)


# What a Principal for an access token is read from: the user's own row (existence, is_active,
# roles, enterprise, e-mail for the label, locale) and, for a steward, the enterprise's
# memberships. Deleting an enterprise or an ecosystem deletes users or memberships by cascade
# in the database, where no ORM event sees them.
_USER_FIELDS = ("is_active", "roles", "enterprise_id", "email", "locale")
_AUTH_TABLES = frozenset(t.__tablename__ for t in (User, EcosystemMembership, Enterprise, Ecosystem))


class PrincipalCache:
    """What verified access tokens resolved to, reused for `ttl_s` seconds (never past the
    token's own expiry) so that a request does not decode the JWT and load the user again.

    Revocation stays immediate within the process: every flush or bulk statement through
    `sessions` that changes what a Principal is read from (see _USER_FIELDS and _AUTH_TABLES)
    moves the generation on, at the flush and again at the commit, and an entry counts only
    in the generation it was read in (read before the database was, so a lookup racing a
    change cannot store the old answer as current). Changes made by other processes apply
    within `ttl_s`. API keys are not cached (their use is recorded on the key)."""

    def __init__(self, sessions: sessionmaker[Session], *, ttl_s: float, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self.generation = 0
        self._entries: dict[str, tuple[Principal, int, float]] = {}
        self._lock = threading.Lock()
        event.listen(sessions, "after_flush", self._after_flush)
        event.listen(sessions, "do_orm_execute", self._after_statement)
        event.listen(sessions, "after_commit", self._after_commit)

    def get(self, token: str) -> Principal | None:
        entry = self._entries.get(token)
        if entry is None or entry[1] != self.generation or entry[2] <= self.clock():
            return None
        return entry[0]

    def resolve(self, db: Session, token: str, *, secret: str) -> Principal:
        """authenticate(), keeping what an access token resolved to."""
        if token.startswith(API_KEY_PREFIX) or self.ttl_s <= 0:
            return authenticate(db, token, secret=secret)
        generation = self.generation
        claims = decode_token(token, secret=secret, expected_type="access")
        principal = _access_principal(db, claims)
        valid_until = min(self.clock() + self.ttl_s, float(claims.get("exp", 0)))
        with self._lock:
            if len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]  # the oldest
            self._entries[token] = (principal, generation, valid_until)
        return principal

    def invalidate(self) -> None:
        with self._lock:
            self.generation += 1

    def _after_flush(self, session: Session, _flush: UOWTransaction) -> None:
        if (any(isinstance(obj, EcosystemMembership) for obj in session.new)
                or any(_changes_principals(obj) for obj in session.dirty)
                or any(isinstance(obj, User | EcosystemMembership | Enterprise | Ecosystem) for obj in session.deleted)):
            session.info["ecoplat_principals_changed"] = True
            self.invalidate()

    def _after_statement(self, state: ORMExecuteState) -> None:
        if state.is_insert or state.is_update or state.is_delete:
            table = getattr(state.statement, "table", None)
            if getattr(table, "name", None) in _AUTH_TABLES:
                state.session.info["ecoplat_principals_changed"] = True
                self.invalidate()

    def _after_commit(self, session: Session) -> None:
        if session.info.pop("ecoplat_principals_changed", False):
            self.invalidate()


def _changes_principals(obj: object) -> bool:
    """Whether a changed (dirty) object changes what a Principal is read from."""
    if isinstance(obj, EcosystemMembership):
        return True
    if isinstance(obj, User):
        attrs = inspect(obj).attrs
        return any(attrs[name].history.has_changes() for name in _USER_FIELDS)
    return False


# Declares the bearer scheme in OpenAPI so /docs "Authorize" signs in through the password flow.
# auto_error=False: the token may also come from the page cookie; _bearer() reads both.
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/auth/token", auto_error=False)


async def current_principal(request: Request, db: DbSession,
                            _token: Annotated[str | None, Depends(oauth2_scheme)] = None) -> Principal:
    """Async so that a token found in the app's PrincipalCache costs no worker-thread hop; the
    database is read on a worker thread otherwise."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    token = _bearer(request)
    if not token:
        raise NotAuthenticated("Sign in first: send 'Authorization: Bearer <token or API key>'.",
                               headers={"WWW-Authenticate": "Bearer"})
    secret = request.app.state.settings.resolved_secret_key
    principals: PrincipalCache | None = getattr(request.app.state, "principals", None)
    if principals is None:
        principal = await run_in_threadpool(authenticate, db, token, secret=secret)
    else:
        principal = principals.get(token) or await run_in_threadpool(principals.resolve, db, token, secret=secret)
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require(permission: str) -> Any:
    """A dependency that answers 403 unless the caller has the permission."""

    async def _dep(principal: CurrentPrincipal) -> Principal:  # async: no worker-thread hop for a check
        principal.require(permission)
        return principal

    return Depends(_dep)
