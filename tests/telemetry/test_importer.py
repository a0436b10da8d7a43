"""`ecoplat import telemetry`: devices by id, token or name, ms or ISO timestamps, bad rows
counted with line and reason while the rest is imported."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from ecoplat.telemetry.importer import import_csv, import_csv_cli, parse_value
from ecoplat.telemetry.points import Sample

from .builders import T0, add_device
from .conftest import ApiEnv


def test_bad_rows_are_reported_with_line_and_reason_and_the_rest_is_imported(api: ApiEnv, tmp_path: Path) -> None:
    with api.database.session() as s:
        dev = add_device(s, api.a, "IMP-1")
    token = api.a.devices["IMP-1"][1]
    path = tmp_path / "mixed.csv"
    path.write_text(
        "device,ts,key,value\n"
        f"{dev},{T0},ppm,0.5\n"                      # 2 by id
        f"IMP-1,2025-11-27T00:00:01Z,ppm,0.75\n"     # 3 by name, ISO time
        f"{token},{T0 + 2000},ppm,1\n"               # 4 by token
        f"no-such-device,{T0},ppm,1\n"               # 5
        f"{dev},last tuesday,ppm,1\n"                # 6
        f"{dev},{T0 + 3000},,1\n"                    # 7
        f"{dev},{T0 + 4000},ppm,NaN\n"               # 8
        f"{dev},{T0 + 5000}\n"                       # 9
        "\n"
        f"{dev},{T0 + 6000},valve,open\n")           # 11
    result = import_csv(api.database, api.store, path)
    assert (result.imported, result.rejected) == (4, 5)
    assert [line for line, _ in result.errors] == [5, 6, 7, 8, 9]
    reasons = dict(result.errors)
    assert "no device with id, token or name 'no-such-device'" in reasons[5]
    assert "ISO 8601" in reasons[6] and "key is empty" in reasons[7] and "finite" in reasons[8]
    assert api.store.range(dev, ["ppm", "valve"], T0, T0 + 10_000) == {
        "ppm": [Sample(T0, 0.5), Sample(T0 + 1000, 0.75), Sample(T0 + 2000, 1.0)],
        "valve": [Sample(T0 + 6000, "open")]}


def test_the_cli_shows_progress_and_a_table_of_rejected_rows(api: ApiEnv, tmp_path: Path) -> None:
    with api.database.session() as s:
        dev = add_device(s, api.a, "IMP-CLI")
    path = tmp_path / "big.csv"
    lines = ["device,ts,key,value"] + [f"{dev},{T0 + i},flow_m3h,{i}" for i in range(25_000)]
    lines[100] = f"{dev},{T0},flow_m3h,inf"
    path.write_text("\n".join(lines) + "\n")
    out = io.StringIO()
    result = import_csv_cli(api.settings, path, Console(file=out, width=120, force_terminal=False))
    assert (result.imported, result.rejected) == (24_999, 1)
    text = out.getvalue()
    assert "24999 points imported" in text and "1 rows rejected" in text and "101" in text
    assert len(api.store.range(dev, ["flow_m3h"], T0, T0 + 25_000, limit=100_000)["flow_m3h"]) == 24_999


def test_a_file_without_the_required_header_is_rejected_whole(api: ApiEnv, tmp_path: Path) -> None:
    path = tmp_path / "wrong.csv"
    path.write_text("time,value\n1,2\n")
    result = import_csv(api.database, api.store, path)
    assert result.imported == 0 and result.rejected == 1 and "found time, value" in result.errors[0][1]


def test_the_wide_form_takes_one_column_per_key_for_a_named_or_given_device(api: ApiEnv, tmp_path: Path) -> None:
    with api.database.session() as s:
        cell = add_device(s, api.a, "ELEC-CELL-7")
    path = tmp_path / "wide.csv"
    path.write_text("ts,current_kA,voltage_v,state\n"
                    f"{T0},12.5,3.1,run\n"
                    f"{T0 + 1000},,3.2,\n"          # a blank cell is no value, not an error
                    f"{T0 + 2000},NaN,3.3,run\n"    # line 4: rejected whole, naming the column
                    f"{T0 + 3000},13,3.4,stop\n")
    result = import_csv(api.database, api.store, path, device="ELEC-CELL-7")
    assert (result.imported, result.rejected) == (7, 1)
    assert result.errors[0][0] == 4 and "column current_kA" in result.errors[0][1]
    assert api.store.range(cell, ["current_kA", "voltage_v", "state"], T0, T0 + 5000) == {
        "current_kA": [Sample(T0, 12.5), Sample(T0 + 3000, 13.0)],
        "voltage_v": [Sample(T0, 3.1), Sample(T0 + 1000, 3.2), Sample(T0 + 3000, 3.4)],
        "state": [Sample(T0, "run"), Sample(T0 + 3000, "stop")]}
    # a device column names the device per row; without one and without --device: refused
    path.write_text(f"device,ts,level_pct\n{cell},{T0 + 9000},55\n")
    assert import_csv(api.database, api.store, path).imported == 1
    path.write_text(f"ts,level_pct\n{T0},1\n")
    refused = import_csv(api.database, api.store, path)
    assert refused.imported == 0 and "--device" in refused.errors[0][1]


def test_cell_values_parse_back_to_their_types() -> None:
    assert parse_value("true") is True and parse_value("false") is False
    assert parse_value("12.5") == 12.5 and parse_value("-3") == -3.0
    assert parse_value('{"a": [1]}') == {"a": [1]}
    assert parse_value("{not json") == "{not json"
    assert parse_value("running") == "running"


def test_ecoplat_import_telemetry_command_end_to_end(api: ApiEnv, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from ecoplat.cli import app as cli

    with api.database.session() as s:
        dev = add_device(s, api.a, "CLI-TANK-1")
    path = tmp_path / "tank.csv"
    path.write_text("ts,level_pct,pressure_kpa\n" + "".join(f"{T0 + i * 1000},{50 + i},{101.3}\n" for i in range(300)))
    monkeypatch.setenv("ECOPLAT_DATABASE_URL", api.url)
    runner = CliRunner()
    result = runner.invoke(cli, ["import", "telemetry", str(path), "--device", "CLI-TANK-1",
                                 "--data-dir", str(tmp_path / "var")])
    assert result.exit_code == 0, result.output
    assert "600 points imported" in result.output
    assert len(api.store.range(dev, ["level_pct"], T0, T0 + 300_000)["level_pct"]) == 300
    result = runner.invoke(cli, ["import", "telemetry", str(path), "--data-dir", str(tmp_path / "var")])
    assert result.exit_code == 1 and "--device" in result.output
