"""Helpers every benchmark shares: percentiles, the one JSON object printed last, Rich progress
bars on stderr, free ports and waiting for a server to answer.

Benchmarks print their human-readable tables and progress to stderr and exactly ONE JSON object
as the last line of stdout, so scripts and tests can read it with `json.loads(lines[-1])`."""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing as mp
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, by linear interpolation between
    closest ranks (numpy's default), so small samples do not jump to the maximum."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    rank = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return float(sorted_values[low])
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low))


def latency_summary(latencies_s: Iterable[float], *, duration_s: float | None = None) -> dict[str, Any]:
    """p50/p95/p99/max in milliseconds, the count and, given the wall time, the throughput."""
    values = sorted(latencies_s)
    out: dict[str, Any] = {
        "count": len(values),
        "p50_ms": round(percentile(values, 50) * 1000, 3) if values else None,
        "p95_ms": round(percentile(values, 95) * 1000, 3) if values else None,
        "p99_ms": round(percentile(values, 99) * 1000, 3) if values else None,
        "max_ms": round(values[-1] * 1000, 3) if values else None,
    }
    if duration_s is not None:
        out["throughput_rps"] = round(len(values) / duration_s, 1) if duration_s > 0 else None
    return out


def print_final_json(result: dict[str, Any]) -> None:
    """The one JSON object, on one line, last on stdout."""
    sys.stdout.flush()
    sys.stdout.write(json.dumps(result, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def make_progress(*, transient: bool = False) -> Progress:
    """A Rich progress bar on stderr (stdout stays for the final JSON)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_http(url: str, *, timeout_s: float = 60.0, proc: Any = None) -> None:
    """Polls url until it answers (any status below 500); fails early if the server process died."""
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited with code {proc.returncode} before answering {url}")
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code < 500:
                return
            last_error = f"HTTP {r.status_code}"
        except httpx.HTTPError as e:
            last_error = f"{type(e).__name__}: {e}"
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s ({last_error})")


@contextlib.contextmanager
def bare_broker_process(target: Callable[..., None], args: tuple[Any, ...], *, stop: Callable[[], None],
                        what: str = "the bare amqtt broker") -> Iterator[None]:
    """Runs target(*args, ready) in a spawned process (a baseline broker), waits until it sets
    `ready`, and on the way out calls stop(), then joins the process or kills it."""
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=target, args=(*args, ready), daemon=True)
    proc.start()
    try:
        if not ready.wait(60):
            raise RuntimeError(f"{what} did not start")
        yield
    finally:
        stop()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
