"""Demo device profiles and devices for the chlor-alkali demo enterprises (`ecoplat demo`).

Idempotent like the rest of the demo: profiles and devices are found by name and only created
when missing. Tokens are secrets the database keeps only hashed, so on a re-run the token recorded
in `<data dir>/demo-devices.json` is reused when it still matches; otherwise a new one is issued."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ecoplat.config import Settings
from ecoplat.connect.ingest import hash_token
from ecoplat.connect.models import Device, DeviceProfile
from ecoplat.connect.service import TOKEN_PREFIX_LENGTH, new_token
from ecoplat.tenancy.models import Enterprise, Equipment

log = logging.getLogger(__name__)

DEVICES_FILE = "demo-devices.json"


def _key(key: str, unit: str, lo: float | None, hi: float | None, chart: str = "line", data_type: str = "number",
         description: str = "") -> dict[str, Any]:
    return {"key": key, "data_type": data_type, "unit": unit, "min": lo, "max": hi, "chart": chart,
            "description": description}


def _rule(name: str, kind: str, key: str, limit: float, unit: str, priority: int, *, deadband: float = 0.0,
          on_delay_s: float = 0.0) -> dict[str, Any]:
    # Shaped like the alarm engine's RuleSpec so the alarms domain can instantiate it per device.
    return {"name": name, "kind": kind, "key": key, "params": {"limit": limit, "unit": unit},
            "priority": priority, "deadband": deadband, "on_delay_s": on_delay_s}


# Operating windows are typical of ion-exchange membrane cells and liquid-chlorine storage.
PROFILES: dict[str, dict[str, Any]] = {
    "Membrane electrolyzer": {
        "description": "Ion-exchange membrane electrolyzer: DC load, cell voltage, catholyte temperature, brine.",
        "inactivity_timeout_s": 120,
        "telemetry_keys": [
            _key("current_ka", "kA", 0, 20, description="DC load current"),
            _key("cell_voltage_v", "V", 2.8, 3.6, "gauge", description="Mean cell voltage"),
            _key("temperature", "Cel", 80, 92, description="Catholyte outlet temperature"),
            _key("anolyte_ph", "[pH]", 2, 4.5, description="Anolyte pH"),
            _key("naoh_pct", "%", 30, 33, description="Caustic soda concentration"),
        ],
        "default_rules": [
            _rule("Cell voltage high", "high", "cell_voltage_v", 3.45, "V", 2, deadband=0.02, on_delay_s=10),
            _rule("Catholyte temperature high", "high", "temperature", 90, "Cel", 2, deadband=0.5),
        ],
    },
    "Chlorine gas detector": {
        "description": "Fixed chlorine gas detector (alarm levels after GB/T 50493-2019).",
        "inactivity_timeout_s": 60,
        "telemetry_keys": [
            _key("cl2_ppm", "[ppm]", 0, 10, "gauge", description="Chlorine concentration in air (IDLH 10 ppm)"),
            _key("sensor_ok", "", None, None, "bar", "boolean", description="Sensor self-test passed"),
        ],
        # GB/T 50493-2019: first alarm at ≤ 100 % and second at ≤ 200 % of the occupational
        # limit, which for chlorine is 1 mg/m³ ≈ 0.34 ppm (GBZ 2.1-2019); so 0.34 and 0.68 ppm.
        "default_rules": [
            _rule("Chlorine leak, first level", "high", "cl2_ppm", 0.34, "[ppm]", 2),
            _rule("Chlorine leak, second level", "high_high", "cl2_ppm", 0.68, "[ppm]", 1),
        ],
    },
    "Liquid chlorine tank": {
        "description": "Liquid chlorine storage tank: level, pressure, temperature.",
        "inactivity_timeout_s": 120,
        "telemetry_keys": [
            _key("level_pct", "%", 10, 80, "gauge", description="Filling level (keep at most 80 %)"),
            _key("pressure_kpa", "kPa", 0, 1200, description="Gauge pressure"),
            _key("temperature", "Cel", -10, 40, description="Liquid temperature"),
        ],
        "default_rules": [
            _rule("Tank overfill", "high", "level_pct", 80, "%", 1, deadband=1),
            _rule("Tank pressure high", "high", "pressure_kpa", 1000, "kPa", 2, deadband=10),
        ],
    },
}

# (device name, profile, equipment tag, device type)
DEVICES: list[tuple[str, str, str, str]] = [
    ("E-101 electrolyzer", "Membrane electrolyzer", "E-101", "membrane_electrolyzer"),
    ("A-301 Cl2 detector", "Chlorine gas detector", "A-301", "chlorine_detector"),
    ("T-301 chlorine tank", "Liquid chlorine tank", "T-301", "liquid_chlorine_tank"),
]
EXTRA_DEVICES: dict[str, list[tuple[str, str, str, str]]] = {
    "bohai": [("E-102 electrolyzer", "Membrane electrolyzer", "E-102", "membrane_electrolyzer"),
              ("T-302 chlorine tank", "Liquid chlorine tank", "T-302", "liquid_chlorine_tank")],
}
CHLOR_ALKALI = ("bohai", "huaxin", "mekong", "siam")


def _known_tokens(settings: Settings | None) -> dict[int, str]:
    if settings is None:
        return {}
    path = Path(settings.data_dir) / DEVICES_FILE
    if not path.exists():
        return {}
    try:
        return {int(d["id"]): str(d["token"]) for d in json.loads(path.read_text(encoding="utf-8"))
                if isinstance(d, dict) and "id" in d and "token" in d}
    except (ValueError, TypeError, KeyError):
        log.warning("ignoring unreadable %s", path)
        return {}


def _profile(db: Session, enterprise_id: int, name: str) -> DeviceProfile:
    profile = db.scalar(select(DeviceProfile).where(DeviceProfile.enterprise_id == enterprise_id,
                                                    DeviceProfile.name == name))
    if profile is None:
        spec = PROFILES[name]
        profile = DeviceProfile(enterprise_id=enterprise_id, name=name, description=spec["description"],
                                telemetry_keys=spec["telemetry_keys"], default_rules=spec["default_rules"],
                                inactivity_timeout_s=spec["inactivity_timeout_s"])
        db.add(profile)
        db.flush()
    return profile


def seed_devices(db: Session, *, enterprise_ids: Mapping[str, int],
                 settings: Settings | None = None) -> list[dict[str, Any]]:
    """Adds the demo profiles and devices to the chlor-alkali demo enterprises; returns
    [{"id", "name", "token", "enterprise", "profile", "type"}] for demo-devices.json."""
    known = _known_tokens(settings)
    out: list[dict[str, Any]] = []
    for key in CHLOR_ALKALI:
        enterprise_id = enterprise_ids.get(key)
        if enterprise_id is None:
            continue
        enterprise = db.get(Enterprise, enterprise_id)
        if enterprise is None:
            continue
        for name, profile_name, tag, device_type in DEVICES + EXTRA_DEVICES.get(key, []):
            profile = _profile(db, enterprise_id, profile_name)
            equipment_id = db.scalar(select(Equipment.id).where(Equipment.enterprise_id == enterprise_id,
                                                                Equipment.tag == tag))
            device = db.scalar(select(Device).where(Device.enterprise_id == enterprise_id, Device.name == name))
            if device is None:
                device = Device(enterprise_id=enterprise_id, name=name, type=device_type, profile_id=profile.id,
                                equipment_id=equipment_id, label=tag)
                db.add(device)
                db.flush()
            token = known.get(device.id)
            if token is None or device.token_hash != hash_token(token) or device.token_revoked:
                token = new_token()
                device.token_hash = hash_token(token)
                device.token_prefix = token[:TOKEN_PREFIX_LENGTH]
                device.token_revoked = False
            out.append({"id": device.id, "name": name, "token": token, "enterprise": enterprise.name,
                        "enterprise_id": enterprise_id, "profile": profile_name, "type": device_type})
    db.flush()
    return out
