"""Telemetry writes in a process of their own.

The platform process runs the MQTT broker's event loop, ingest, the rule engine and the alarm
writer as threads under one GIL. A telemetry batch costs Python work (grouping frames, folding
rollups, building statements) that holds the GIL in runs of up to the switch interval, and
every SQLite statement gives the GIL up and waits to get it back; with the process near one
core busy, each hand-over queues behind the others, and the alarm path (evaluator → alarm
writer → commit → event) pays those waits several times over. So the historian's writes run in
a child process with a store of its own, and the platform process keeps its store for reads
(WAL on SQLite, a pool on PostgreSQL: readers see each committed batch).

    ingest writer thread ── (op, args) over a pipe ──► writer process: open_store(url)
        waits without the GIL    ◄── ("ok", result) | ("error", exception) ──┘

Every write goes through the child (batches, retention, deleting a device's history): it owns
the series cache, so no second writer can hold series ids the other has deleted. A call returns
only once the child's store has returned, so write() still means durable. A child that dies
(killed, out of memory) fails the call in progress, which ingest reports to the senders (QoS 1:
they send again, and replays are idempotent), and the next call starts a new child.

The child is a fresh interpreter (`python -m ecoplat.telemetry.writer FD`) talking over a socket
pair, not a fork: the platform process has threads, and a forked copy of a threaded process can
inherit a lock held by a thread that does not exist in the copy; nor does it re-import the
parent's main module, as multiprocessing's spawn would."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from multiprocessing.connection import Connection
from typing import Any

from ecoplat.telemetry.base import SqlTelemetryStore
from ecoplat.telemetry.points import Frames, Point

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


class WriterProcessError(RuntimeError):
    """The writer process died or could not start; the call's points may not be stored."""


def _stop(process: subprocess.Popen[bytes]) -> int | None:
    """Waits for the child to exit (after it was told to, or its pipe closed), killing it when
    it does not; its exit code."""
    try:
        return process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(STOP_TIMEOUT_S)


def cpu_seconds() -> float:
    """CPU time (user + system) this process has used."""
    t = os.times()
    return t.user + t.system


def _portable(e: BaseException) -> BaseException:
    """The exception itself when it survives pickling, else a RuntimeError saying what it was."""
    import pickle

    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")


def _serve(target: tuple[str, str], conn: Connection) -> None:
    """The child: opens the store and runs the parent's calls in order until told to stop or
    the parent goes away."""
    from ecoplat.telemetry.store import open_target

    # Ctrl-C in a terminal reaches the whole process group; the parent stops the child in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        store = open_target(target)
    except Exception as e:
        conn.send(("error", _portable(e)))
        return
    conn.send(("ok", os.getpid()))
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return  # the parent is gone
            if message is None:
                conn.send(("ok", None))
                return
            op, args = message
            try:
                if op == "write":
                    frames, rows, enterprise_of = args
                    points: Sequence[Point] = Frames(frames) if frames is not None else rows
                    result: Any = store.write(points, enterprise_of)
                elif op == "cpu_seconds":
                    result = cpu_seconds()
                elif op in ("apply_retention", "delete_device"):
                    result = getattr(store, op)(*args)
                else:
                    raise ValueError(f"the telemetry writer has no operation {op!r}")
            except Exception as e:
                # The parent raises it again; the traceback from here is only in this log.
                log.warning("telemetry writer: %s failed", op, exc_info=True)
                conn.send(("error", _portable(e)))
            else:
                conn.send(("ok", result))
    finally:
        store.close()


class ProcessWriteStore(SqlTelemetryStore):
    """A telemetry store whose writes run in a child process (see the module's doc) and whose
    reads run here, on `reader` (a store of the same backend on the same database)."""

    def __init__(self, target: tuple[str, str], reader: SqlTelemetryStore) -> None:
        """target: what telemetry.store.store_target() gives for the database URL."""
        super().__init__()
        self.target = target
        self.reader = reader
        self.placeholder = reader.placeholder
        self._call_lock = threading.Lock()
        self._process: Any = None
        self._conn: Connection | None = None
        self._closed = False
        self.restarts = 0
        with self._call_lock:
            self._start()

    def _reader(self) -> AbstractContextManager[Any]:
        return self.reader._reader()

    # -- the child ------------------------------------------------------------------------------
    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            process = subprocess.Popen([sys.executable, "-m", "ecoplat.telemetry.writer", str(theirs.fileno())],
                                       pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        conn = Connection(ours.detach())
        try:
            conn.send(self.target)  # not on the command line: a PostgreSQL URL may hold a password
            if not conn.poll(START_TIMEOUT_S):
                raise WriterProcessError(f"the telemetry writer process did not start within {START_TIMEOUT_S:.0f} s")
            status, value = conn.recv()
        except (EOFError, OSError) as e:
            code = _stop(process)
            conn.close()
            raise WriterProcessError(f"the telemetry writer process exited on start (code {code})") from e
        except BaseException:
            _stop(process)
            conn.close()
            raise
        if status == "error":
            _stop(process)
            conn.close()
            raise value
        self._process, self._conn = process, conn
        log.debug("telemetry writer process %s started", value)

    def _discard(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
        if self._process is not None:
            _stop(self._process)
        self._process = self._conn = None

    def _call(self, op: str, *args: Any) -> Any:
        with self._call_lock:
            if self._closed:
                raise WriterProcessError("the telemetry store is closed")
            if self._conn is None:
                self.restarts += 1
                log.warning("starting a new telemetry writer process (restart %d)", self.restarts)
                self._start()
            assert self._conn is not None
            try:
                self._conn.send((op, args))
                status, value = self._conn.recv()
            except (EOFError, OSError) as e:
                code = self._process.poll() if self._process is not None else None
                self._discard()
                raise WriterProcessError(f"the telemetry writer process died during {op} (exit code {code}); "
                                         f"the next call starts a new one") from e
        if status == "error":
            raise value
        return value

    @property
    def writer_pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def writer_cpu_seconds(self) -> float:
        """CPU time the current writer process has used (benchmarks add it to the platform's)."""
        return float(self._call("cpu_seconds"))

    # -- writes ---------------------------------------------------------------------------------
    def write(self, points: Sequence[Point], enterprise_of: Mapping[int, int]) -> None:
        if not points:
            return
        # Frames travel as their frames (no Point per value); anything else as plain Points.
        if type(points) is Frames:
            self._call("write", points.frames, None, dict(enterprise_of))
        else:
            self._call("write", None, list(points), dict(enterprise_of))

    def apply_retention(self, enterprise_id: int, older_than_ms: int) -> int:
        return int(self._call("apply_retention", enterprise_id, older_than_ms))

    def delete_device(self, device_id: int) -> int:
        return int(self._call("delete_device", device_id))

    def close(self) -> None:
        with self._call_lock:
            if self._closed:
                return
            self._closed = True
            if self._conn is not None:
                try:
                    self._conn.send(None)
                    if self._conn.poll(STOP_TIMEOUT_S):
                        self._conn.recv()
                except (EOFError, OSError):
                    pass
            self._discard()
        self.reader.close()


def main() -> None:
    """`python -m ecoplat.telemetry.writer FD`: the child's entry point (FD: its end of the socket
    pair; the store's target comes as the first message)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    conn = Connection(int(sys.argv[1]))
    try:
        target = conn.recv()
    except EOFError:
        return
    _serve(target, conn)


if __name__ == "__main__":
    main()
