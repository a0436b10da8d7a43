"""A request's unit of work is committed before its response is sent: a client that is told a
write succeeded (or a browser that follows the redirect after it) reads it on its next call,
and a commit that fails is answered as a failure instead of after a success was sent."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.orm import Session

from .conftest import World


def test_the_write_is_committed_before_the_response_starts(app, world: World, db: Session) -> None:
    order: list[str] = []
    event.listen(app.state.db.sessionmaker, "after_commit", lambda _session: order.append("commit"))

    async def recording(scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def send_and_note(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                order.append("response")
            await send(message)

        await app(scope, receive, send_and_note)

    with TestClient(recording) as client:
        response = client.patch("/api/auth/me", json={"locale": "zh_CN"}, headers=world.a.headers)
    assert response.status_code == 200, response.text
    assert "commit" in order and order.index("commit") < order.index("response"), order
