"""Demo devices: profiles and devices for the chlor-alkali demo enterprises, idempotent."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from tests.connect.builders import make_enterprise, make_equipment

from ecoplat.config import Settings
from ecoplat.connect.demo import DEVICES_FILE, seed_devices
from ecoplat.connect.ingest import hash_token
from ecoplat.connect.models import Device, DeviceProfile


def test_demo_devices_are_created_once_and_their_tokens_work(db: Session, tmp_path: Path):
    bohai, huaxin = make_enterprise(db), make_enterprise(db)
    eq = make_equipment(db, huaxin.id)  # tag E-101
    settings = Settings(data_dir=tmp_path)
    first = seed_devices(db, enterprise_ids={"bohai": bohai.id, "huaxin": huaxin.id, "harbor": 999_999},
                         settings=settings)
    assert len(first) == 5 + 3
    by_name = {(d["enterprise_id"], d["name"]): d for d in first}
    e101 = db.get(Device, by_name[(huaxin.id, "E-101 electrolyzer")]["id"])
    assert e101.equipment_id == eq.id and e101.token_hash == hash_token(by_name[(huaxin.id, "E-101 electrolyzer")]["token"])
    profile = db.get(DeviceProfile, e101.profile_id)
    assert profile.enterprise_id == huaxin.id
    assert {k["key"] for k in profile.telemetry_keys} >= {"current_ka", "cell_voltage_v"}
    assert profile.default_rules[0]["kind"] == "high"

    (tmp_path / DEVICES_FILE).write_text(json.dumps(first))
    second = seed_devices(db, enterprise_ids={"bohai": bohai.id, "huaxin": huaxin.id}, settings=settings)
    assert second == first  # same devices, same tokens
    assert db.scalar(select(func.count()).select_from(Device).where(Device.enterprise_id.in_([bohai.id, huaxin.id]))) == 8
    assert db.scalar(select(func.count()).select_from(DeviceProfile).where(DeviceProfile.enterprise_id == huaxin.id)) == 3
    # without the file the tokens cannot be recovered, so new ones are issued (and work)
    third = seed_devices(db, enterprise_ids={"huaxin": huaxin.id}, settings=Settings(data_dir=tmp_path / "none"))
    assert {d["id"] for d in third} == {d["id"] for d in first if d["enterprise_id"] == huaxin.id}
    for d in third:
        assert db.get(Device, d["id"]).token_hash == hash_token(d["token"])
