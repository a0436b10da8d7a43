"""Every error is RFC 9457 problem+json with a message a person can act on."""

from __future__ import annotations

from ecoplat.config import Settings

from .conftest import World

PROBLEM = "application/problem+json"


def _is_problem(r, status: int) -> dict:  # type: ignore[no-untyped-def, type-arg]
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"].startswith("https://")
    return body


def test_422_names_the_field(client, world: World) -> None:
    body = _is_problem(client.post("/api/sites", headers=world.a.headers, json={"name": "x", "latitude": 123}), 422)
    assert body["detail"].startswith("latitude")
    assert body["errors"][0]["field"] == "latitude"


def test_422_on_unknown_fields_and_400_on_malformed_json(client, world: World) -> None:
    body = _is_problem(client.post("/api/sites", headers=world.a.headers, json={"name": "x", "colour": "red"}), 422)
    assert "colour" in body["detail"]
    r = client.post("/api/sites", headers={**world.a.headers, "content-type": "application/json"},
                    content=b'{"name": ')
    _is_problem(r, 400)


def test_422_on_bad_path_ids(client, world: World) -> None:
    body = _is_problem(client.get("/api/sites/abc", headers=world.a.headers), 422)
    assert "site_id" in body["detail"]
    _is_problem(client.get("/api/sites/99999999999999999999", headers=world.a.headers), 422)


def test_401_without_credentials(client) -> None:  # type: ignore[no-untyped-def]
    body = _is_problem(client.get("/api/enterprises"), 401)
    assert "Authorization" in body["detail"]


def test_403_names_the_missing_permission(client, world: World, settings: Settings) -> None:
    from .builders import headers_for

    body = _is_problem(client.get("/api/users", headers=headers_for(settings, world.a.operator)), 403)
    assert "users:read" in body["detail"]


def test_404_for_missing_objects_and_routes(client, world: World) -> None:
    body = _is_problem(client.get("/api/sites/2147483647", headers=world.a.headers), 404)
    assert "site" in body["detail"]
    _is_problem(client.get("/api/no-such-thing", headers=world.a.headers), 404)


def test_409_on_duplicate_email(client, world: World) -> None:
    body = _is_problem(client.post("/api/users", headers=world.a.headers, json={
        "email": world.a.engineer.email, "password": "long-enough-pw", "roles": ["operator"]}), 409)
    assert world.a.engineer.email in body["detail"]


def test_413_when_the_body_is_over_the_limit(client, world: World, settings: Settings) -> None:
    big = {"name": "x", "address": "a" * (settings.max_body_bytes + 10)}
    body = _is_problem(client.post("/api/sites", headers=world.a.headers, json=big), 413)
    assert str(settings.max_body_bytes) in body["detail"]
