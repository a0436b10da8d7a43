"""The API reuses what a verified access token resolved to (tenancy.auth.PrincipalCache), and
every change to what it was read from applies to the next request: roles, deactivation,
deletion, a steward's ecosystems."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import jwt
from sqlalchemy import event
from sqlalchemy.orm import Session

from ecoplat.config import Settings
from ecoplat.tenancy.models import Role

from .builders import headers_for
from .conftest import World


@contextmanager
def user_lookups(db: Session) -> Iterator[Callable[[], int]]:
    """How many statements read the users table while the block runs."""
    seen: list[str] = []

    def listen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM users" in statement:
            seen.append(statement)

    engine = db.get_bind().engine
    event.listen(engine, "before_cursor_execute", listen)
    try:
        yield lambda: len(seen)
    finally:
        event.remove(engine, "before_cursor_execute", listen)


def test_a_token_seen_before_is_not_looked_up_again(client, world: World, db: Session) -> None:
    h = world.a.headers
    assert client.get("/api/enterprises", headers=h).status_code == 200
    with user_lookups(db) as lookups:
        for _ in range(3):
            assert client.get("/api/enterprises", headers=h).status_code == 200
    assert lookups() == 0


def test_a_cached_token_is_looked_up_again_after_the_cache_time(client, world: World, db: Session) -> None:
    principals = client.app.state.principals
    h = world.a.headers
    assert client.get("/api/enterprises", headers=h).status_code == 200
    now = principals.clock()
    principals.clock = lambda: now + principals.ttl_s + 0.1
    with user_lookups(db) as lookups:
        assert client.get("/api/enterprises", headers=h).status_code == 200
    assert lookups() == 1


def test_a_cached_token_is_kept_no_longer_than_it_is_valid(client, world: World, settings: Settings) -> None:
    principals = client.app.state.principals
    principals.ttl_s = 3600.0
    h = world.a.headers
    assert client.get("/api/auth/me", headers=h).status_code == 200
    token = h["Authorization"].removeprefix("Bearer ")
    expires = jwt.decode(token, settings.resolved_secret_key, algorithms=["HS256"])["exp"]
    assert principals._entries[token][2] == expires
    principals.clock = lambda: expires + 1.0
    assert principals.get(token) is None


def test_role_changes_apply_to_tokens_already_in_use(client, world: World) -> None:
    operator = headers_for(client.app.state.settings, world.a.operator)
    assert client.get("/api/auth/me", headers=operator).json()["roles"] == ["operator"]
    r = client.patch(f"/api/users/{world.a.operator.id}", headers=world.a.headers, json={"roles": ["engineer"]})
    assert r.status_code == 200, r.text
    assert client.get("/api/auth/me", headers=operator).json()["roles"] == ["engineer"]


def test_deactivation_flushed_by_any_session_of_the_app_stops_a_cached_token(client, world: World,
                                                                            db: Session) -> None:
    operator = headers_for(client.app.state.settings, world.a.operator)
    assert client.get("/api/enterprises", headers=operator).status_code == 200
    world.a.operator.is_active = False
    db.flush()
    assert client.get("/api/enterprises", headers=operator).status_code == 401


def test_deleted_users_cached_token_stops_working(client, world: World) -> None:
    engineer = headers_for(client.app.state.settings, world.a.engineer)
    assert client.get("/api/enterprises", headers=engineer).status_code == 200
    assert client.delete(f"/api/users/{world.a.engineer.id}", headers=world.a.headers).status_code == 204
    assert client.get("/api/enterprises", headers=engineer).status_code == 401


def test_steward_removed_from_the_ecosystem_stops_seeing_its_members(client, world: World) -> None:
    h = world.steward_headers
    me = client.get("/api/auth/me", headers=h).json()
    assert me["stewarded_ecosystem_ids"] == [world.a.ecosystem.id]
    assert client.get(f"/api/enterprises/{world.a.enterprise.id}", headers=h).status_code == 200
    r = client.delete(f"/api/ecosystems/{world.a.ecosystem.id}/members/{world.steward.enterprise_id}",
                      headers=world.platform_headers)
    assert r.status_code == 204, r.text
    assert client.get("/api/auth/me", headers=h).json()["stewarded_ecosystem_ids"] == []
    assert client.get(f"/api/enterprises/{world.a.enterprise.id}", headers=h).status_code == 404


def test_a_login_does_not_invalidate_other_cached_tokens(client, world: World, db: Session) -> None:
    """Sign-ins write the user's login counters, which no Principal is read from."""
    h = world.a.headers
    assert client.get("/api/enterprises", headers=h).status_code == 200
    r = client.post("/api/auth/token", data={"username": world.a.engineer.email, "password": "wrong password"})
    assert r.status_code == 401
    with user_lookups(db) as lookups:
        assert client.get("/api/enterprises", headers=h).status_code == 200
    assert lookups() == 0


def test_api_keys_are_checked_on_every_request(client, world: World, db: Session) -> None:
    key = {"Authorization": f"Bearer {world.a.api_key_secret}"}
    assert client.get("/api/enterprises", headers=key).status_code == 200
    with user_lookups(db) as lookups:
        assert client.get("/api/enterprises", headers=key).status_code == 200
    assert lookups() == 1
    assert Role.platform_admin.value not in client.get("/api/auth/me", headers=key).json()["roles"]
