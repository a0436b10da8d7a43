"""Device ids key telemetry and alarms, so a deleted device's id must never be handed out again."""

from __future__ import annotations

from sqlalchemy.orm import Session
from tests.connect.builders import make_actor


def test_a_new_device_never_gets_the_id_of_a_deleted_one(client, db: Session) -> None:
    a = make_actor(db)
    b = make_actor(db)
    first = client.post("/api/devices", json={"name": "cl2-detector-1"}, headers=a.headers).json()
    assert client.delete(f"/api/devices/{first['id']}", headers=a.headers).status_code == 204
    other = client.post("/api/devices", json={"name": "tank-level-1"}, headers=b.headers).json()
    assert other["id"] > first["id"]
    # and the deleted id is gone for everyone, its former owner included
    assert client.get(f"/api/devices/{first['id']}", headers=a.headers).status_code == 404
