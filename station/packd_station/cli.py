"""packd-station: `serve` runs lines from the camera to the PLC and the operator's page; `detect` judges a folder of
images in one command; `token` makes a token for --token."""

from __future__ import annotations

import json
import logging
import secrets
import sys
from pathlib import Path
from typing import Annotated

import typer

from packd_runtime.errors import PackdError
from packd_station.config import DEFAULT_DB

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
log = logging.getLogger("packd_station")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option(help="station TOML file (lines, sinks); or the flags below")] = None,
    bundle: Annotated[Path | None, typer.Option(help="one line's bundle folder")] = None,
    line: Annotated[str, typer.Option(help="the line's name")] = "line1",
    source: Annotated[str, typer.Option(help="folder:DIR, video:FILE|URL|DEVICE|PIPELINE, or api")] = "api",
    key: Annotated[list[Path] | None, typer.Option(help="trusted public key (signed bundles only)")] = None,
    backend: Annotated[str, typer.Option(help="auto, onnxruntime, tensorrt, or triton:http://HOST:PORT (a Triton "
                                         "server running this bundle's line model)")] = "auto",
    db: Annotated[str, typer.Option(help="sqlite:///PATH or postgresql://USER@HOST/DB")] = DEFAULT_DB,
    data: Annotated[Path, typer.Option(help="products, normal pools, the token")] = Path("station"),
    mqtt: Annotated[str | None, typer.Option(help="mqtt://HOST:PORT/PREFIX")] = None,
    webhook: Annotated[str | None, typer.Option(help="http(s)://HOST/PATH")] = None,
    opcua: Annotated[str | None, typer.Option(help="opc.tcp://HOST:PORT")] = None,
    http: Annotated[str, typer.Option(help="HOST:PORT of the page and API")] = "127.0.0.1:8321",
    token: Annotated[str | None, typer.Option(help="bearer token for actions (required beyond 127.0.0.1)",
                                                 envvar="PACKD_STATION_TOKEN")] = None,
    retention_days: Annotated[float, typer.Option(help="delete records older than this (0: never)")] = 0.0,
    retention_mb: Annotated[float, typer.Option(help="keep the records within this many MiB (0: no limit)")] = 0.0,
) -> None:
    """Run the station: frames from each line's source, verdicts recorded and sent, the page at --http."""
    import uvicorn

    from packd_station import config as station_config
    from packd_station.station import Station
    from packd_station.web import app_for

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        if config is not None:
            if bundle is not None:
                raise PackdError("give --config or --bundle, not both")
            cfg = station_config.load(config)
        else:
            if bundle is None:
                raise PackdError("give --bundle DIR (one line) or --config FILE (lines in a TOML file)")
            cfg = station_config.StationConfig(
                lines=(station_config.LineConfig(name=line, bundle=bundle, source=source, backend=backend,
                                                 trusted_keys=tuple(key or ())),),
                db=db, data=data, http=http, token=token, mqtt=mqtt, webhook=webhook, opcua=opcua,
                retention_days=retention_days, retention_mb=retention_mb)
        host, port = cfg.host_port
        station = Station(cfg)
    except PackdError as e:
        _fail(str(e))
    station.start()
    shown = "from --token" if cfg.token else f"in {cfg.data / 'token'}"
    log.info("station: lines %s; page http://%s:%d/ ; operator token %s", ", ".join(station.lines),
             host if ":" not in host else f"[{host}]", port, shown)
    try:
        uvicorn.run(app_for(station), host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)
    finally:
        station.close()


@app.command()
def detect(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    images: Annotated[Path, typer.Argument(help="an image file or a folder of them")],
    supports: Annotated[Path | None, typer.Option(help="folder of k good images (few-shot bundles)")] = None,
    calibrate: Annotated[Path | None, typer.Option(help="folder of 5+ good images: the threshold")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the verdicts as JSON")] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="write the verdicts as CSV")] = None,
    overlays: Annotated[Path | None, typer.Option(help="write an overlay PNG per image here")] = None,
    key: Annotated[list[Path] | None, typer.Option(help="trusted public key (signed bundles only)")] = None,
    backend: Annotated[str, typer.Option(help="auto, onnxruntime or tensorrt")] = "auto",
) -> None:
    """Judge your own images: changeover on --supports, threshold from --calibrate, a verdict per image."""
    from packd_runtime.threshold import verdict_text
    from packd_station.detect import check_output, write_csv, write_json
    from packd_station.detect import detect as run

    if json_out is not None and csv_out is not None:
        _fail("give --json or --csv, not both")
    try:
        for path, kind in ((json_out, "json"), (csv_out, "csv")):
            if path is not None:
                check_output(path, kind)
        judged = run(bundle, images, supports=supports, calibrate=calibrate, trusted_keys=key, overlays=overlays,
                     backend=backend)
        if json_out is not None:
            write_json(judged, json_out)
        if csv_out is not None:
            write_csv(judged, csv_out)
    except PackdError as e:
        _fail(str(e))
    for j in judged:
        typer.echo(f"{Path(j.file).name}: {verdict_text(j.score, j.threshold)}")
    counts = {v: sum(j.verdict == v for j in judged) for v in ("ok", "defect", "uncalibrated")}
    typer.echo(json.dumps(counts))


@app.command()
def token() -> None:
    """Print a new random token for --token (32 URL-safe characters)."""
    typer.echo(secrets.token_urlsafe(24))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
