"""Telemetry writes in a process of their own (ecoplat.childproc).

A telemetry batch costs Python work (grouping frames, folding rollups, building statements)
that holds the GIL in runs of up to the switch interval, and every SQLite statement gives the
GIL up and waits to get it back; with the platform process near one core busy, each hand-over
queues behind the others, and the alarm path (evaluator → alarm writer → commit → event) pays
those waits several times over. So the historian's writes run in a child process with a store
of its own, and the platform process keeps its store for reads (WAL on SQLite, a pool on
PostgreSQL: readers see each committed batch).

    ingest writer thread ── write(points) ──► `python -m ecoplat.telemetry.writer FD`: open_target()

Every write goes through the child (batches, retention, deleting a device's history): it owns
the series cache and the rollups it puts off (telemetry/sqlite.py; reads here of latest values
and rollups ask it to write those first), so no second writer can hold series ids the other has
deleted. A call returns only once the child's store has returned, so write() still means durable. A child that dies
(killed, out of memory) fails the call in progress, which ingest reports to the senders (QoS 1:
they send again, and replays are idempotent), and the next call starts a new child."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from ecoplat.childproc import WorkerProcess, WorkerProcessError, serve
from ecoplat.telemetry.base import SqlTelemetryStore
from ecoplat.telemetry.points import Bucket, Frames, Point, Sample

__all__ = ["ProcessWriteStore", "WriterProcessError"]

# The name callers and tests know this error by.
WriterProcessError = WorkerProcessError


class _StoreHandler:
    """The child's side: a store of its own on the same database."""

    def __init__(self, target: tuple[str, str]) -> None:
        from ecoplat.telemetry.store import open_target

        self.store = open_target(target, defer=True)

    def handle(self, op: str, args: tuple[Any, ...]) -> Any:
        if op == "write":
            frames, rows, enterprise_of = args
            points: Sequence[Point] = Frames(frames) if frames is not None else rows
            return self.store.write(points, enterprise_of)
        if op in ("apply_retention", "delete_device", "flush"):
            return getattr(self.store, op)(*args)
        raise ValueError(f"the telemetry writer has no operation {op!r}")

    def idle(self) -> None:
        idle = getattr(self.store, "idle", None)
        (idle or self.store.flush)()

    def close(self) -> None:
        self.store.close()


class ProcessWriteStore(SqlTelemetryStore):
    """A telemetry store whose writes run in a child process (see the module's doc) and whose
    reads run here, on `reader` (a store of the same backend on the same database)."""

    def __init__(self, target: tuple[str, str], reader: SqlTelemetryStore, *, nice: int = 0) -> None:
        """target: what telemetry.store.store_target() gives for the database URL; nice: how
        much lower the child's CPU priority is than this process's (Settings.telemetry_writer_nice)."""
        super().__init__()
        self.target = target
        self.reader = reader
        self.placeholder = reader.placeholder
        self.raw_tables = reader.raw_tables
        self._worker = WorkerProcess("ecoplat.telemetry.writer", target, name="telemetry writer", nice=nice)

    def _reader(self) -> AbstractContextManager[Any]:
        return self.reader._reader()

    @property
    def writer_pid(self) -> int | None:
        return self._worker.pid

    @property
    def restarts(self) -> int:
        return self._worker.restarts

    def writer_cpu_seconds(self) -> float:
        """CPU time the current writer process has used (benchmarks add it to the platform's)."""
        return float(self._worker.call("cpu_seconds"))

    def writer_heap_stats(self) -> dict[str, Any]:
        """What the writer process's cycle collector did (heap.stats)."""
        return self._worker.call("heap_stats")  # type: ignore[no-any-return]

    # -- writes ---------------------------------------------------------------------------------
    def write(self, points: Sequence[Point], enterprise_of: Mapping[int, int]) -> None:
        if not points:
            return
        # Frames travel as their frames (no Point per value); anything else as plain Points.
        if type(points) is Frames:
            self._worker.call("write", points.frames, None, dict(enterprise_of))
        else:
            self._worker.call("write", None, list(points), dict(enterprise_of))

    def apply_retention(self, enterprise_id: int, older_than_ms: int) -> int:
        return int(self._worker.call("apply_retention", enterprise_id, older_than_ms))

    def flush(self) -> None:
        self._worker.call("flush")

    # -- reads of what the child may have put off: it writes that first -----------------------
    def _flush_for_read(self) -> None:
        try:
            self.flush()
        except WorkerProcessError:
            # The writer died with sums in memory: its successor rebuilds them as it starts.
            self.flush()

    def latest(self, device_id: int, keys: Sequence[str] | None = None) -> dict[str, Sample]:
        self._flush_for_read()
        return super().latest(device_id, keys)

    def aggregate(self, device_id: int, keys: Sequence[str], start_ms: int, end_ms: int,
                  interval_ms: int) -> dict[str, list[Bucket]]:
        self._flush_for_read()
        return super().aggregate(device_id, keys, start_ms, end_ms, interval_ms)

    def delete_device(self, device_id: int) -> int:
        return int(self._worker.call("delete_device", device_id))

    def close(self) -> None:
        self._worker.close()
        self.reader.close()


if __name__ == "__main__":
    serve(_StoreHandler, name="telemetry writer")
