"""Telemetry writes in a child process (the platform's default): what goes in reads back the
same as in-process, errors come back as themselves, a killed writer fails only the call in
progress and is replaced, and closing stops the child."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from ecoplat.telemetry.base import SqlTelemetryStore
from ecoplat.telemetry.points import Frames, Point, Sample
from ecoplat.telemetry.store import open_store
from ecoplat.telemetry.writer import ProcessWriteStore, WriterProcessError

from .builders import T0, new_device_id, new_enterprise_id, open_process_store, process_gone


@pytest.fixture
def process_store(database_url: str) -> Iterator[ProcessWriteStore]:
    with open_process_store(database_url) as s:
        yield s


def test_the_writer_is_another_process_and_what_it_writes_reads_back(
        process_store: ProcessWriteStore, store: SqlTelemetryStore) -> None:
    assert process_store.writer_pid not in (None, os.getpid())
    dev, ent = new_device_id(), new_enterprise_id()
    process_store.write(Frames([(dev, T0, {"current_ka": 12.5, "mode": "auto"}),
                                (dev, T0 + 1000, {"current_ka": 13, "running": True})]), {dev: ent})
    process_store.write([Point(dev, "current_ka", T0 + 2000, 14.0)], {dev: ent})
    expected = {"current_ka": Sample(T0 + 2000, 14.0), "mode": Sample(T0, "auto"),
                "running": Sample(T0 + 1000, True)}
    # Read here (the reader side) and through an independent in-process store alike.
    assert process_store.latest(dev) == expected
    assert store.latest(dev) == expected
    assert [s.value for s in process_store.range(dev, ["current_ka"], T0, T0 + 3000)["current_ka"]] == [12.5, 13, 14.0]
    assert process_store.writer_cpu_seconds() > 0


def test_an_error_in_the_writer_comes_back_as_itself_and_the_writer_goes_on(
        process_store: ProcessWriteStore) -> None:
    dev = new_device_id()
    with pytest.raises(ValueError, match=f"no enterprise given for device {dev}"):
        process_store.write([Point(dev, "x", T0, 1.0)], {})
    process_store.write([Point(dev, "x", T0, 1.0)], {dev: new_enterprise_id()})
    assert process_store.latest(dev) == {"x": Sample(T0, 1.0)}
    assert process_store.restarts == 0


def test_a_killed_writer_fails_the_call_then_a_new_one_takes_over(process_store: ProcessWriteStore) -> None:
    dev, ent = new_device_id(), new_enterprise_id()
    process_store.write([Point(dev, "x", T0, 1.0)], {dev: ent})
    first = process_store.writer_pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    assert process_gone(first)
    with pytest.raises(WriterProcessError, match="died during write"):
        process_store.write([Point(dev, "x", T0 + 1000, 2.0)], {dev: ent})
    # The sender retries (QoS 1 unacknowledged): the point lands through a new writer.
    process_store.write([Point(dev, "x", T0 + 1000, 2.0)], {dev: ent})
    assert process_store.writer_pid not in (None, first)
    assert process_store.restarts == 1
    assert [s.value for s in process_store.range(dev, ["x"], T0, T0 + 2000)["x"]] == [1.0, 2.0]


def test_retention_and_device_deletion_run_in_the_writer(process_store: ProcessWriteStore) -> None:
    dev, ent = new_device_id(), new_enterprise_id()
    process_store.write([Point(dev, "x", T0, 1.0), Point(dev, "x", T0 + 3_600_000, 2.0)], {dev: ent})
    assert process_store.apply_retention(ent, T0 + 1) == 1
    assert [s.value for s in process_store.range(dev, ["x"], 0, T0 + 7_200_000)["x"]] == [2.0]
    assert process_store.delete_device(dev) == 1
    assert process_store.latest(dev) == {}


def test_close_stops_the_writer_and_later_writes_say_so(database_url: str) -> None:
    s = open_store(database_url, write_process=True)
    assert isinstance(s, ProcessWriteStore)
    pid = s.writer_pid
    assert pid is not None
    s.close()
    assert process_gone(pid)
    with pytest.raises(WriterProcessError, match="closed"):
        s.write([Point(new_device_id(), "x", T0, 1.0)], {1: 1})


def test_the_writer_runs_at_the_lower_cpu_priority_it_is_given_and_so_does_its_replacement(database_url: str) -> None:
    own = os.getpriority(os.PRIO_PROCESS, 0)
    with open_process_store(database_url) as plain:
        assert plain.writer_pid is not None
        assert os.getpriority(os.PRIO_PROCESS, plain.writer_pid) == own  # 0: the platform's own
    s = open_store(database_url, write_process=True, writer_nice=5)
    assert isinstance(s, ProcessWriteStore)
    try:
        first = s.writer_pid
        assert first is not None
        assert os.getpriority(os.PRIO_PROCESS, first) == min(own + 5, 19)
        dev, ent = new_device_id(), new_enterprise_id()
        s.write([Point(dev, "x", T0, 1.0)], {dev: ent})
        os.kill(first, signal.SIGKILL)
        assert process_gone(first)
        with pytest.raises(WriterProcessError):
            s.write([Point(dev, "x", T0 + 1000, 2.0)], {dev: ent})
        s.write([Point(dev, "x", T0 + 1000, 2.0)], {dev: ent})
        assert s.writer_pid not in (None, first)
        assert os.getpriority(os.PRIO_PROCESS, s.writer_pid) == min(own + 5, 19)
    finally:
        s.close()
