"""Sign-in (OAuth2 password flow), refresh, /me, the slowdown after failed sign-ins, API keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
from sqlalchemy import select
from sqlalchemy.orm import Session

from ecoplat.config import Settings
from ecoplat.tenancy.models import AuditEvent, User
from ecoplat.tenancy.service import login_delay_seconds

from .builders import PASSWORD, make_api_key
from .conftest import World


def _login(client, email: str, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    return client.post("/api/auth/token", data={"username": email, "password": password})


def test_password_sign_in_returns_tokens_that_work(client, world: World, db: Session) -> None:
    r = _login(client, world.a.admin.email)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "bearer" and body["expires_in"] > 0
    me = client.get("/api/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json()["email"] == world.a.admin.email
    assert me.json()["enterprise_id"] == world.a.enterprise.id
    assert "enterprise_admin" in me.json()["roles"]
    assert "plant:write" in me.json()["permissions"]
    events = db.scalars(select(AuditEvent).where(AuditEvent.action == "login",
                                                 AuditEvent.entity_id == str(world.a.admin.id))).all()
    assert len(events) == 1 and events[0].enterprise_id == world.a.enterprise.id


def test_sign_in_email_is_case_insensitive(client, world: World) -> None:
    assert _login(client, world.a.admin.email.upper()).status_code == 200


def test_wrong_password_and_unknown_email_get_the_same_401(client, world: World) -> None:
    wrong = _login(client, world.a.admin.email, "not-the-password")
    unknown = _login(client, "nobody@example.com", "not-the-password")
    for r in (wrong, unknown):
        assert r.status_code == 401
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["detail"] == "Wrong e-mail or password."


def test_refresh_gives_new_tokens_until_password_change_revokes_it(client, world: World) -> None:
    tokens = _login(client, world.a.admin.email).json()
    r = client.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 200, r.text
    assert r.json()["access_token"]
    # access tokens are not refresh tokens
    bad = client.post("/api/auth/refresh", json={"refresh_token": tokens["access_token"]})
    assert bad.status_code == 401 and "refresh" in bad.json()["detail"]
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    change = client.patch("/api/auth/me", headers=headers,
                          json={"current_password": PASSWORD, "new_password": "a-new-long-password"})
    assert change.status_code == 200, change.text
    revoked = client.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert revoked.status_code == 401
    assert "revoked" in revoked.json()["detail"]
    assert _login(client, world.a.admin.email, "a-new-long-password").status_code == 200


def test_password_change_needs_the_current_password(client, world: World) -> None:
    r = client.patch("/api/auth/me", headers=world.a.headers,
                     json={"current_password": "wrong", "new_password": "a-new-long-password"})
    assert r.status_code == 422
    assert r.json()["detail"].startswith("current_password")


def test_patch_me_changes_locale_and_name(client, world: World) -> None:
    r = client.patch("/api/auth/me", headers=world.a.headers, json={"locale": "zh-CN", "full_name": "王工"})
    assert r.status_code == 200, r.text
    assert r.json()["locale"] == "zh_CN"
    assert r.json()["full_name"] == "王工"
    bad = client.patch("/api/auth/me", headers=world.a.headers, json={"locale": "klingon"})
    assert bad.status_code == 422 and "locale" in bad.json()["detail"]


def test_expired_access_token_answers_401_with_a_message(client, world: World, settings: Settings) -> None:
    past = datetime.now(UTC) - timedelta(minutes=5)
    token = jwt.encode({"sub": str(world.a.admin.id), "typ": "access", "iat": past - timedelta(minutes=15),
                        "exp": past}, settings.resolved_secret_key, algorithm="HS256")
    r = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "expired" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"


def test_missing_and_forged_tokens_answer_401(client, world: World) -> None:
    assert client.get("/api/sites").status_code == 401
    forged = jwt.encode({"sub": str(world.a.admin.id), "typ": "access"}, "another-secret" * 4, algorithm="HS256")
    r = client.get("/api/sites", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401 and r.json()["detail"] == "The token is not valid."


def test_login_delay_grows_exponentially_up_to_the_cap() -> None:
    delays = [login_delay_seconds(n, free_attempts=3, max_delay=60) for n in range(12)]
    assert delays == [0, 0, 0, 1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_repeated_failed_sign_ins_are_slowed_down_with_retry_after(client, world: World, db: Session,
                                                                   settings: Settings) -> None:
    email = world.a.operator.email
    for _ in range(settings.login_free_attempts):
        assert _login(client, email, "guess").status_code == 401
    blocked = _login(client, email)  # even the right password waits
    assert blocked.status_code == 429
    assert blocked.headers["retry-after"] == "1"
    assert blocked.headers["content-type"].startswith("application/problem+json")
    assert "try again" in blocked.json()["detail"]
    user = db.get(User, world.a.operator.id)
    db.refresh(user)
    assert user.failed_login_count == settings.login_free_attempts
    # the wait passes; another wrong guess doubles it
    user.last_failed_login_at = datetime.now(UTC) - timedelta(seconds=2)
    db.flush()
    assert _login(client, email, "guess").status_code == 401
    again = _login(client, email)
    assert again.status_code == 429 and again.headers["retry-after"] == "2"
    # after the wait, the right password works and clears the counter
    db.refresh(user)
    user.last_failed_login_at = datetime.now(UTC) - timedelta(seconds=3)
    db.flush()
    assert _login(client, email).status_code == 200
    db.refresh(user)
    assert user.failed_login_count == 0


def test_api_key_authenticates_until_revoked(client, world: World) -> None:
    created = client.post("/api/api-keys", headers=world.a.headers, json={"name": "historian"})
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    assert secret.startswith("ek_") and created.json()["prefix"] == secret[:11]
    key_headers = {"Authorization": f"Bearer {secret}"}
    r = client.get("/api/sites", headers=key_headers)
    assert r.status_code == 200
    assert [s["id"] for s in r.json()["items"]] == [world.a.site.id]
    listed = client.get("/api/api-keys", headers=world.a.headers).json()["items"]
    mine = next(k for k in listed if k["id"] == created.json()["id"])
    assert "secret" not in mine and mine["last_used_at"] is not None
    assert client.delete(f"/api/api-keys/{created.json()['id']}", headers=world.a.headers).status_code == 204
    revoked = client.get("/api/sites", headers=key_headers)
    assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]


def test_expired_api_key_answers_401(client, world: World, db: Session) -> None:
    _key, secret = make_api_key(db, world.a.admin, expires_at=datetime.now(UTC) - timedelta(hours=1))
    r = client.get("/api/sites", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 401 and "expired" in r.json()["detail"]


def test_api_key_cannot_carry_roles_its_creator_lacks(client, world: World) -> None:
    r = client.post("/api/api-keys", headers=world.a.headers, json={"name": "x", "roles": ["platform_admin"]})
    assert r.status_code == 403 and "platform_admin" in r.json()["detail"]


def test_api_key_expiry_must_be_in_the_future(client, world: World) -> None:
    r = client.post("/api/api-keys", headers=world.a.headers,
                    json={"name": "x", "expires_at": "2001-01-01T00:00:00Z"})
    assert r.status_code == 422 and r.json()["detail"].startswith("expires_at")


def test_openapi_declares_the_password_flow_for_docs_authorize(client) -> None:  # type: ignore[no-untyped-def]
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    flows = [s["flows"]["password"] for s in schemes.values() if s.get("type") == "oauth2"]
    assert flows and flows[0]["tokenUrl"] == "/api/auth/token"
    assert spec["paths"]["/api/sites"]["get"].get("security"), "routes must declare the bearer scheme"
    assert client.get("/docs").status_code == 200


def test_unknown_email_costs_as_much_time_as_a_wrong_password(db: Session, world: World,
                                                               settings: Settings) -> None:
    import statistics
    import time

    from ecoplat.tenancy import service

    from .builders import make_user

    def timed(email: str) -> float:
        start = time.perf_counter()
        assert service.login(db, email=email, password="not-the-password", settings=settings).status == 401
        return time.perf_counter() - start

    timed("warm-up@example.com")  # the dummy hash is computed once, on first use
    users = [make_user(db, world.a.enterprise) for _ in range(3)]
    wrong = statistics.median(timed(u.email) for u in users)
    unknown = statistics.median(timed(f"nobody{i}@example.com") for i in range(3))
    # both pay one argon2 verification (tens of ms); without the dummy check unknown would be ~0
    assert unknown > 0.5 * wrong, (unknown, wrong)


def test_deactivated_users_tokens_stop_working(client, world: World, settings: Settings) -> None:
    from .builders import headers_for

    operator_headers = headers_for(settings, world.a.operator)
    assert client.get("/api/auth/me", headers=operator_headers).status_code == 200
    r = client.patch(f"/api/users/{world.a.operator.id}", headers=world.a.headers, json={"is_active": False})
    assert r.status_code == 200
    denied = client.get("/api/auth/me", headers=operator_headers)
    assert denied.status_code == 401 and "deactivated" in denied.json()["detail"]
