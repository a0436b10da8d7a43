"""`ecoplat import telemetry FILE.csv`: history from a CSV file into the telemetry store.

Columns device, ts, key, value (the form /api/devices/{id}/telemetry.csv exports), or the wide
form ts,key1,key2,… (with a device column, or one device for the file via --device). `device` is
a device id, an access token or a device name (names must be unique across enterprises to be
used here); `ts` is milliseconds since the epoch or ISO 8601; `value` is a number, true/false,
a JSON object or array, or any other text. Points go to the store in batches of 10,000; a bad
row is counted and reported with its line number and reason, and the import goes on."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from sqlalchemy import select

from ecoplat.config import Settings
from ecoplat.connect.ingest import hash_token
from ecoplat.connect.models import Device
from ecoplat.db import Database
from ecoplat.telemetry.base import SqlTelemetryStore
from ecoplat.telemetry.points import Point, Value
from ecoplat.telemetry.query import parse_time
from ecoplat.telemetry.store import open_store

BATCH_POINTS = 10_000
MAX_REPORTED = 50
REQUIRED = ("device", "ts", "key", "value")


@dataclass
class ImportResult:
    imported: int = 0
    rejected: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line, reason), the first few

    def reject(self, line: int, reason: str) -> None:
        self.rejected += 1
        if len(self.errors) < MAX_REPORTED:
            self.errors.append((line, reason))


def parse_value(text: str) -> Value:
    """The inverse of the CSV export's cell format."""
    t = text.strip()
    if t in ("true", "false"):
        return t == "true"
    try:
        number = float(t)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            raise ValueError(f"value '{t}' is not a finite number")
        return number
    if t[:1] in ("{", "[", '"'):
        try:
            return orjson.loads(t)
        except orjson.JSONDecodeError:
            return text
    return text


class DeviceResolver:
    """device column -> (device_id, enterprise_id), cached; raises ValueError with the reason."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._cache: dict[str, tuple[int, int] | str] = {}

    def __call__(self, ref: str) -> tuple[int, int]:
        found = self._cache.get(ref)
        if found is None:
            found = self._lookup(ref.strip())
            self._cache[ref] = found
        if isinstance(found, str):
            raise ValueError(found)
        return found

    def _lookup(self, ref: str) -> tuple[int, int] | str:
        if not ref:
            return "the device column is empty"
        with self.database.session() as db:
            rows: list[Device] = []
            if ref.isdigit():
                device = db.get(Device, int(ref))
                rows = [device] if device is not None else []
            if not rows:
                rows = list(db.scalars(select(Device).where(Device.token_hash == hash_token(ref))))
            if not rows:
                rows = list(db.scalars(select(Device).where(Device.name == ref).limit(2)))
            if not rows:
                return f"no device with id, token or name '{ref}'"
            if len(rows) > 1:
                return f"the device name '{ref}' is used in several enterprises; use the device id"
            device = rows[0]
            if device.enterprise_id is None:
                return f"device '{ref}' has not been claimed by an enterprise yet"
            return device.id, device.enterprise_id


def _check_key(key: str) -> str:
    key = key.strip()
    if not key:
        raise ValueError("the key is empty")
    if len(key) > 255:
        raise ValueError("the key is longer than 255 characters")
    return key


def import_csv(database: Database, store: SqlTelemetryStore, path: Path,
               progress: Callable[[int], None] | None = None, *, device: str | None = None) -> ImportResult:
    """Imports the file; `progress(bytes_read)` is called after every batch.

    Long form: columns device, ts, key, value. Wide form: a ts column and one column per key
    (ts,current_ka,voltage_v,…), with a device column or, for the whole file, `device`."""
    result = ImportResult()
    resolve = DeviceResolver(database)
    batch: list[Point] = []
    enterprise_of: dict[int, int] = {}

    def flush() -> None:
        if batch:
            store.write(batch, enterprise_of)
            result.imported += len(batch)
            batch.clear()

    with path.open("rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        reader = csv.reader(text)
        header = [h.strip() for h in next(reader, [])]
        lower = [h.lower() for h in header]
        long_form = all(c in lower for c in REQUIRED)
        if "ts" not in lower or (not long_form and "device" not in lower and device is None):
            result.reject(1, f"the header must name the columns {', '.join(REQUIRED)} (long form), or ts "
                             f"and one column per key with a device column or --device (wide form); "
                             f"found {', '.join(header) or 'nothing'}")
            return result
        if long_form:
            col = {c: lower.index(c) for c in REQUIRED}
            key_cols: list[tuple[int, str]] = []
        else:
            col = {c: lower.index(c) for c in ("device", "ts") if c in lower}
            key_cols = [(i, h) for i, h in enumerate(header) if lower[i] not in ("device", "ts")]
            if not key_cols:
                result.reject(1, "the wide form needs at least one key column besides ts")
                return result
        width = max([*col.values(), *(i for i, _ in key_cols)]) + 1
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < width:
                result.reject(line, f"expected {len(header)} columns, found {len(row)}")
                continue
            try:
                device_id, enterprise_id = resolve(row[col["device"]] if "device" in col else device or "")
                ts = parse_time(row[col["ts"]])
                if long_form:
                    pts = [Point(device_id, _check_key(row[col["key"]]), ts, parse_value(row[col["value"]]))]
                else:
                    pts = []
                    for i, key in key_cols:
                        if row[i].strip() == "":
                            continue  # no value of this key at this time
                        try:
                            pts.append(Point(device_id, _check_key(key), ts, parse_value(row[i])))
                        except ValueError as e:
                            raise ValueError(f"column {key}: {e}") from None
            except ValueError as e:
                result.reject(line, str(e))
                continue
            enterprise_of[device_id] = enterprise_id
            batch.extend(pts)
            if len(batch) >= BATCH_POINTS:
                flush()
                if progress:
                    progress(raw.tell())
        flush()
        if progress:
            progress(raw.tell())
    return result


def import_csv_cli(settings: Settings, path: Path, console: Console, device: str | None = None) -> ImportResult:
    """The CLI command: a Rich progress bar by bytes read, then a summary with the bad rows."""
    if not path.is_file():
        console.print(f"[red]No such file:[/red] {path}")
        raise SystemExit(2)
    database = Database(settings.resolved_database_url)
    store = open_store(settings.resolved_database_url)
    try:
        with Progress(TextColumn("[bold]Importing[/bold] {task.description}"), BarColumn(),
                      DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                      console=console) as bar:
            task = bar.add_task(path.name, total=path.stat().st_size)
            result = import_csv(database, store, path, device=device,
                                progress=lambda done: bar.update(task, completed=done))
    finally:
        store.close()
        database.dispose()
    console.print(f"[green]{result.imported} points imported[/green], "
                  f"{'[red]' if result.rejected else ''}{result.rejected} rows rejected"
                  f"{'[/red]' if result.rejected else ''}.")
    if result.errors:
        table = Table("line", "reason", title="Rejected rows" + (
            f" (first {len(result.errors)})" if result.rejected > len(result.errors) else ""))
        for line, reason in result.errors:
            table.add_row(str(line), reason)
        console.print(table)
    return result
