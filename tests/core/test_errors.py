"""Problem details for requests that never reach a service: malformed JSON, unknown routes."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_malformed_json_body_answers_400_problem_saying_it_is_not_json(client: TestClient) -> None:
    r = client.post("/api/auth/refresh", content=b'{"refresh_token": ', headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == 400 and "not valid JSON" in body["detail"]


def test_unknown_route_answers_404_problem_naming_the_route(client: TestClient) -> None:
    r = client.get("/api/no-such-thing")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "/api/no-such-thing" in r.json()["detail"]


def test_nul_characters_in_json_text_answer_422_not_a_database_error(client: TestClient) -> None:
    r = client.post("/api/auth/refresh", content=b'{"refresh_token": "a\\u0000b"}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert "NUL" in r.json()["detail"]
    r = client.get("/api/enterprises?q=a%00b")
    assert r.status_code == 422 and "NUL" in r.json()["detail"]
