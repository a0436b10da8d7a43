"""The telemetry runtime: opens the store on app.state.telemetry, runs retention passes, closes."""

from __future__ import annotations

import asyncio
import os

from ecoplat.app import create_app
from ecoplat.telemetry import runtime
from ecoplat.telemetry.base import SqlTelemetryStore
from ecoplat.telemetry.points import Point
from ecoplat.telemetry.service import apply_all_retention
from ecoplat.telemetry.writer import ProcessWriteStore

from .builders import T0
from .conftest import ApiEnv

DAY = 86_400_000


def test_runtime_opens_the_store_and_a_retention_pass_applies_each_enterprises_days(api: ApiEnv) -> None:
    b_dev = api.b.devices["B-1"][0]
    a_dev = api.a.devices["E-101"][0]
    r = api.client.put(f"/api/enterprises/{api.b.enterprise_id}/telemetry-retention", json={"days": 30},
                       headers=api.b.admin_headers)
    assert r.status_code == 200
    # The platform's writer process at a lower CPU priority, as the settings ask.
    settings = api.settings.model_copy(update={"telemetry_writer_nice": 7})
    app = create_app(settings, database=api.database, start_runtime=False)

    async def scenario() -> dict[int, int]:
        await runtime.start(app)
        store: SqlTelemetryStore = app.state.telemetry
        assert app.state.telemetry_retention_task is not None
        assert isinstance(store, ProcessWriteStore) and store.writer_pid is not None
        assert os.getpriority(os.PRIO_PROCESS, store.writer_pid) == min(os.getpriority(os.PRIO_PROCESS, 0) + 7, 19)
        old, new = T0 - 31 * DAY, T0 - DAY
        await asyncio.to_thread(store.write, [Point(b_dev, "ppm", old, 1.0), Point(b_dev, "ppm", new, 2.0)],
                                {b_dev: api.b.enterprise_id})
        await asyncio.to_thread(store.write, [Point(a_dev, "old_ppm", old, 1.0)], {a_dev: api.a.enterprise_id})
        deleted = await asyncio.to_thread(apply_all_retention, api.database, store, T0)
        await runtime.stop(app)
        return deleted

    deleted = asyncio.run(scenario())
    assert deleted == {api.b.enterprise_id: 1}  # A has no retention set: kept forever
    assert [s.ts for s in api.store.range(b_dev, ["ppm"], 0, T0)["ppm"]] == [T0 - DAY]
    assert len(api.store.range(a_dev, ["old_ppm"], 0, T0)["old_ppm"]) == 1
    assert app.state.telemetry_retention_task.cancelled()
