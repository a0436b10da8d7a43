"""The `ecoplat` command: serve, migrate, demo, simulate, import, bench."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ecoplat.config import Settings

app = typer.Typer(help="Ecoplat, an open industrial-internet platform.", no_args_is_help=True,
                  add_completion=False)
import_app = typer.Typer(help="Import data from files.", no_args_is_help=True)
app.add_typer(import_app, name="import")
console = Console(stderr=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data directory (default ./var, or ECOPLAT_DATA_DIR).")]
Host = Annotated[str | None, typer.Option("--host", help="Address to listen on (default 127.0.0.1).")]
Port = Annotated[int | None, typer.Option("--port", help="HTTP port (default 8000).")]
MqttPort = Annotated[int | None, typer.Option("--mqtt-port", help="Port of the embedded MQTT broker (default 1883).")]


def _settings(data_dir: Path | None = None, **overrides: object) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    return Settings(**values)  # type: ignore[arg-type]


def _migrate(settings: Settings) -> None:
    from ecoplat.migrations_runner import upgrade

    settings.ensure_data_dir()
    upgrade(settings.resolved_database_url)


def _serve(settings: Settings) -> None:
    import uvicorn

    from ecoplat.app import create_app
    from ecoplat.logs import setup_logging

    setup_logging(settings.log_level, settings.log_json)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None,
                access_log=False, timeout_graceful_shutdown=5)


@app.command()
def migrate(data_dir: DataDir = None) -> None:
    """Create or upgrade the database schema to the newest migration."""
    settings = _settings(data_dir)
    _migrate(settings)
    console.print(f"[green]Database is current[/green]: {settings.resolved_database_url}")


@app.command()
def serve(data_dir: DataDir = None, host: Host = None, port: Port = None, mqtt_port: MqttPort = None) -> None:
    """Start the platform (HTTP API and pages, embedded MQTT broker, ingest)."""
    settings = _settings(data_dir, host=host, port=port, mqtt_port=mqtt_port)
    _migrate(settings)
    _serve(settings)


@app.command()
def demo(data_dir: DataDir = None, host: Host = None, port: Port = None, mqtt_port: MqttPort = None,
         simulate: Annotated[bool, typer.Option(help="Run simulated devices so the pages are alive.")] = True) -> None:
    """Migrate, seed the demo ecosystems, and start the platform with simulated devices."""
    from ecoplat.demo import choose_demo_ports, print_demo_banner, seed_demo

    settings = _settings(data_dir, host=host, port=port, mqtt_port=mqtt_port)
    # A default port already taken (e.g. Mosquitto on 1883) moves to the next free one.
    for note in choose_demo_ports(settings, http_explicit=port is not None or "ECOPLAT_PORT" in os.environ,
                                  mqtt_explicit=mqtt_port is not None or "ECOPLAT_MQTT_PORT" in os.environ):
        console.print(f"[yellow]{note}[/yellow]")
    _migrate(settings)
    result = seed_demo(settings)
    print_demo_banner(settings, result, console)
    if simulate:
        os.environ["ECOPLAT_DEMO_SIMULATE"] = "1"
    settings.demo_simulate_devices = settings.demo_simulate_devices if simulate else 0
    _serve(settings)


@app.command()
def simulate(
    devices: Annotated[int, typer.Option("--devices", help="How many virtual devices.")] = 5,
    rate: Annotated[float, typer.Option("--rate", help="Messages per second per device.")] = 1.0,
    host: Annotated[str, typer.Option(help="MQTT host of the platform.")] = "127.0.0.1",
    mqtt_port: MqttPort = None,
    tokens: Annotated[Path | None, typer.Option(help="JSON file of devices [{'token': …}] (e.g. var/demo-devices.json).")] = None,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds (default: run until Ctrl-C).")] = None,
    faults: Annotated[bool, typer.Option(help="Inject faults now and then.")] = True,
) -> None:
    """Run virtual chlor-alkali devices publishing over the ThingsBoard device API."""
    from ecoplat.connect.simulator import run_simulator_cli

    run_simulator_cli(devices=devices, rate=rate, host=host, port=mqtt_port or 1883, tokens_file=tokens,
                      duration=duration, faults=faults, console=console)


@import_app.command("telemetry")
def import_telemetry(
    file: Annotated[Path, typer.Argument(help="CSV with columns device (id, name or token), ts, key, value; "
                                              "or ts,key1,key2,… (wide form).")],
    data_dir: DataDir = None,
    device: Annotated[str | None, typer.Option("--device", help="The device (id, name or token) of a wide-form "
                                                                "file without a device column.")] = None,
) -> None:
    """Import historical telemetry from a CSV file, with a progress bar."""
    from ecoplat.telemetry.importer import import_csv_cli

    settings = _settings(data_dir)
    _migrate(settings)
    result = import_csv_cli(settings, file, console, device=device)
    if result.imported == 0 and result.rejected:
        raise typer.Exit(1)


# --help after the name is the benchmark's own (its options), so this command takes no --help.
@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def bench(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Benchmark: tenancy, ingest, alarms.")]) -> None:
    """Run a benchmark from bench/ (same as `python -m bench.NAME`); `ecoplat bench NAME --help`
    lists its options."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "bench" / f"{name}.py").exists():
        available = sorted(p.stem for p in (root / "bench").glob("*.py") if not p.stem.startswith("_"))
        console.print(f"[red]No benchmark '{name}'.[/red] Available: {', '.join(available)}")
        raise typer.Exit(2)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(root / "src"), os.environ.get("PYTHONPATH", "")]))
    raise typer.Exit(subprocess.call([sys.executable, "-m", f"bench.{name}", *ctx.args], cwd=root, env=env))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
