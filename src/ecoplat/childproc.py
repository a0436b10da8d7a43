"""Work in a child process of its own, called one operation at a time.

The platform process runs the MQTT broker's event loop, ingest, the rule engine and the alarm
writer as threads under one GIL. Work that is heavy in Python and needs nothing of the
process's memory (the historian's writes, the alarm writes) runs in a child instead, and the
thread that used to do it waits for the answer without holding the GIL.

    parent thread ── (op, args) over a socket pair ──► child: handler.handle(op, args)
       waits without the GIL   ◄── ("ok", result) | ("error", exception) ──┘

The child is a fresh interpreter (`python -m MODULE FD`), not a fork: the platform process has
threads, and a forked copy of a threaded process can inherit a lock held by a thread that does
not exist in the copy; nor does it re-import the parent's main module, as multiprocessing's
spawn would. Its setup (e.g. a database URL, which may hold a password) comes as the first
message, never on the command line. A child that dies fails the call in progress with
WorkerProcessError, and the next call starts a new one."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Protocol

from ecoplat import heap

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


class WorkerProcessError(RuntimeError):
    """The child process died, could not start or was closed; the call may not have run."""


class Handler(Protocol):
    """What a child serves: its operations, and what to release when it stops."""

    def handle(self, op: str, args: tuple[Any, ...]) -> Any: ...

    def close(self) -> None: ...


IDLE_AFTER_S = 0.5


def cpu_seconds() -> float:
    """CPU time (user + system) this process has used."""
    t = os.times()
    return t.user + t.system


def _portable(e: BaseException) -> BaseException:
    """The exception itself when it survives pickling, else a RuntimeError saying what it was."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")


def _stop(process: subprocess.Popen[bytes]) -> int | None:
    """Waits for the child to exit (after it was told to, or its pipe closed), killing it when
    it does not; its exit code."""
    try:
        return process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(STOP_TIMEOUT_S)


def serve(open_handler: Callable[[Any], Handler], *, name: str) -> None:
    """A child's main(): takes its end of the socket pair from argv, its setup from the first
    message, and runs the parent's calls in order until told to stop or the parent goes away.
    Once the handler is open, the heap is settled (heap.settle: what start-up made is kept out of
    the cycle collector's walks). `cpu_seconds` and `heap_stats` are operations of every child.
    A handler with an `idle()` method has it called when no call came for IDLE_AFTER_S (work it
    put off, such as a flush, gets done)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Ctrl-C in a terminal reaches the whole process group; the parent stops the child in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if len(sys.argv) > 2:
        os.nice(int(sys.argv[2]))  # before any thread: each thread has its own niceness on Linux
    conn = Connection(int(sys.argv[1]))
    try:
        setup = conn.recv()
    except EOFError:
        return
    try:
        handler = open_handler(setup)
    except Exception as e:
        conn.send(("error", _portable(e)))
        return
    heap.settle(name)
    conn.send(("ok", os.getpid()))
    idle = getattr(handler, "idle", None)
    try:
        while True:
            try:
                if idle is not None and not conn.poll(IDLE_AFTER_S):
                    try:
                        idle()
                    except Exception:
                        log.warning("%s: idle work failed", name, exc_info=True)
                    continue
                message = conn.recv()
            except (EOFError, OSError):
                return  # the parent is gone
            if message is None:
                conn.send(("ok", None))
                return
            op, args = message
            try:
                result = (cpu_seconds() if op == "cpu_seconds" else heap.stats() if op == "heap_stats"
                          else handler.handle(op, args))
            except Exception as e:
                # The parent raises it again; the traceback from here is only in this log.
                log.warning("%s: %s failed", name, op, exc_info=True)
                conn.send(("error", _portable(e)))
            else:
                conn.send(("ok", result))
    finally:
        handler.close()


class WorkerProcess:
    """The parent's side: starts `python -m module FD`, sends it `setup`, and runs calls in it
    one at a time (a lock orders callers from several threads)."""

    def __init__(self, module: str, setup: Any, *, name: str, wait: bool = True, nice: int = 0) -> None:
        """Starts the child; with `wait`, returns once it is ready (or raises why it is not),
        else its first call waits for that. `nice`: how much lower than this process's the
        child's CPU priority is (it applies that itself, as it starts)."""
        self.module = module
        self.setup = setup
        self.name = name
        self.nice = nice
        self.restarts = 0
        self._call_lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._starting = False
        self._closed = False
        with self._call_lock:
            self._start()
            if wait:
                self._ready()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def wait_ready(self) -> None:
        """Returns once the child has started (or raises why it did not)."""
        with self._call_lock:
            self._ready()

    def _start(self) -> None:
        """Starts the child and sends its setup; its answer is read by _ready(), so the caller
        (an app starting up) goes on while the child imports what it needs."""
        ours, theirs = socket.socketpair()
        with theirs:
            process = subprocess.Popen([sys.executable, "-m", self.module, str(theirs.fileno()),
                                        *([str(self.nice)] if self.nice else [])],
                                       pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        conn = Connection(ours.detach())
        try:
            conn.send(self.setup)
        except BaseException:
            _stop(process)
            conn.close()
            raise
        self._process, self._conn, self._starting = process, conn, True

    def _ready(self) -> None:
        """Waits for the child's answer to its setup (once after each start)."""
        if not self._starting:
            return
        conn, process = self._conn, self._process
        assert conn is not None and process is not None
        try:
            if not conn.poll(START_TIMEOUT_S):
                raise WorkerProcessError(f"the {self.name} process did not start within {START_TIMEOUT_S:.0f} s")
            status, value = conn.recv()
        except (EOFError, OSError) as e:
            code = process.poll()
            self._discard()
            raise WorkerProcessError(f"the {self.name} process exited on start (code {code})") from e
        except BaseException:
            self._discard()
            raise
        if status == "error":
            self._discard()
            raise value
        self._starting = False
        log.debug("%s process %s started", self.name, value)

    def _discard(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
        if self._process is not None:
            _stop(self._process)
        self._process = self._conn = None
        self._starting = False

    def call(self, op: str, *args: Any) -> Any:
        """Runs `op` in the child and returns its result, or raises what it raised there."""
        with self._call_lock:
            if self._closed:
                raise WorkerProcessError(f"the {self.name} is closed")
            if self._conn is None:
                self.restarts += 1
                log.warning("starting a new %s process (restart %d)", self.name, self.restarts)
                self._start()
            self._ready()
            assert self._conn is not None
            try:
                self._conn.send((op, args))
                status, value = self._conn.recv()
            except (EOFError, OSError) as e:
                code = self._process.poll() if self._process is not None else None
                self._discard()
                raise WorkerProcessError(f"the {self.name} process died during {op} (exit code {code}); "
                                         f"the next call starts a new one") from e
        if status == "error":
            raise value
        return value

    def close(self) -> None:
        """Tells the child to stop and waits for it (killing it when it does not)."""
        with self._call_lock:
            if self._closed:
                return
            self._closed = True
            if self._starting:
                with contextlib.suppress(Exception):
                    self._ready()  # its setup answer first, then the stop
            if self._conn is not None:
                try:
                    self._conn.send(None)
                    if self._conn.poll(STOP_TIMEOUT_S):
                        self._conn.recv()
                except (EOFError, OSError):
                    pass
            self._discard()
