"""The operator's page and the HTTP API (Starlette). Reading is open; every request that changes state
(changeover, calibrate, feedback) must carry `Authorization: Bearer TOKEN` (never a cookie). Uploads are bounded
before they are parsed, and images are decoded with the station's decompression-bomb limit."""

from __future__ import annotations

import asyncio
import hmac
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from packd_runtime.errors import PackdError
from packd_station.images import MAX_IMAGE_BYTES, decode, encode
from packd_station.line import Line
from packd_station.station import Station

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD_FILES = 64
MAX_REQUEST_BYTES = 256 << 20
EVENTS_QUEUE = 512  # events a slow page may fall behind by before its stream is closed (it reconnects)
OPERATOR = re.compile(r"[\w .@-]{1,64}")


class UploadTooLarge(Exception):
    """A request body over MAX_REQUEST_BYTES: refused (413) before it is parsed."""


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _line(station: Station, request: Request) -> Line:
    name = request.path_params["name"]
    if name not in station.lines:
        raise LookupError(f"no line {name!r}; lines: {sorted(station.lines)}")
    return station.lines[name]


def _who(request: Request) -> str:
    who = request.headers.get("x-operator", "operator")
    if not OPERATOR.fullmatch(who):
        raise PackdError("X-Operator: 1-64 letters, digits, spaces, '.', '@', '-' or '_'")
    return who


def _int(request: Request, key: str, default: int | None, low: int = 0, high: int = 10**12) -> int | None:
    raw = request.query_params.get(key)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise PackdError(f"{key} must be a whole number from {low} to {high}, got {raw[:20]!r}")
    return int(raw)


def app_for(station: Station) -> Starlette:
    """The ASGI app serving `station`."""

    def authorized(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), station.token.encode())

    def guarded(handler: Any, write: bool = False) -> Any:
        async def endpoint(request: Request) -> Response:
            if write and not authorized(request):
                return _error(401, "this action needs the station's token: Authorization: Bearer TOKEN")
            try:
                return await handler(request)
            except UploadTooLarge as e:
                return _error(413, str(e))
            except LookupError as e:
                return _error(404, str(e).strip("'\""))
            except PackdError as e:
                return _error(400, str(e))
            except ValueError as e:
                return _error(409, str(e))
        return endpoint

    async def frames_from(request: Request, line: Line) -> tuple[list, dict[str, str], bool]:
        """The images a changeover or calibration uses: uploaded files (field `images`), recent OK frames
        (field `recent`: result ids), or the product's normal pool (field `pool`); the form's other fields; whether
        the images are new to the pool."""
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            raise PackdError("send the upload with a Content-Length")
        if int(length) > MAX_REQUEST_BYTES:
            raise UploadTooLarge(f"upload of {length} bytes: at most {MAX_REQUEST_BYTES}")
        async with request.form(max_files=MAX_UPLOAD_FILES, max_fields=16) as form:
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            uploads = [f for f in form.getlist("images") if not isinstance(f, str)]
            datas = []
            for f in uploads:
                data = await f.read(MAX_IMAGE_BYTES + 1)
                datas.append((f.filename or "upload", data))
        if uploads:
            frames = await run_in_threadpool(lambda: [decode(d, n) for n, d in datas])
        elif fields.get("recent"):
            ids = [int(i) for i in re.findall(r"\d+", fields["recent"])[:MAX_UPLOAD_FILES]]
            frames = line.recent_frames(ids)
        elif fields.get("pool"):
            frames = await run_in_threadpool(line.pool_frames)
        else:
            raise PackdError("send images (multipart field 'images'), 'recent' result ids, or pool=1")
        return frames, fields, not fields.get("pool") or bool(uploads)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def lines(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(station.status))

    async def results(request: Request) -> Response:
        line = _line(station, request)
        verdict = request.query_params.get("verdict") or None
        if verdict not in (None, "ok", "defect", "uncalibrated"):
            raise PackdError("verdict must be ok, defect or uncalibrated")
        rows = await run_in_threadpool(lambda: station.records.results(
            line.name, limit=_int(request, "limit", 50, 1, 1000), before=_int(request, "before", None),
            verdict=verdict, source=request.query_params.get("source", "")[:200]))
        return JSONResponse(rows)

    async def results_csv(request: Request) -> Response:
        line = _line(station, request)
        return StreamingResponse(station.records.csv_rows(line.name), media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="{line.name}-results.csv"'})

    async def audit(request: Request) -> Response:
        line = _line(station, request)
        return JSONResponse(await run_in_threadpool(station.records.audit_trail, line.name,
                                                    _int(request, "limit", 100, 1, 1000)))

    async def overlay(request: Request) -> Response:
        record = await run_in_threadpool(station.records.result, int(request.path_params["id"]))
        if record is None or not record["overlay"]:
            raise LookupError(f"record {request.path_params['id']} has no overlay")
        return Response(record["overlay"], media_type="image/jpeg")

    async def recent(request: Request) -> Response:
        line = _line(station, request)
        frame = line.recent_frames([int(request.path_params["id"])])[0]
        return Response(await run_in_threadpool(encode, frame, ".jpg"), media_type="image/jpeg")

    async def changeover(request: Request) -> Response:
        line = _line(station, request)
        frames, fields, new = await frames_from(request, line)
        product = fields.get("product") or (line.product.name if line.product else "product")
        who = _who(request)
        changed = await run_in_threadpool(line.changeover, frames, product, who, new)
        station.changed(line)
        return JSONResponse({"line": line.name, "product": changed.name, "shots": len(frames), "threshold": None,
                             "calibrated": False})

    async def calibrate(request: Request) -> Response:
        line = _line(station, request)
        frames, _, new = await frames_from(request, line)
        out = await run_in_threadpool(line.calibrate, frames, _who(request), new)
        station.changed(line)
        return JSONResponse({"line": line.name, "images": len(frames), **out})

    async def feedback(request: Request) -> Response:
        line = _line(station, request)
        try:
            body = json.loads(await request.body())
            result_id, kind = int(body["result"]), str(body["kind"])
        except (ValueError, KeyError, TypeError):
            raise PackdError('send JSON {"result": ID, "kind": "false_alarm" | "missed_defect"}') from None
        out = await run_in_threadpool(line.feedback, result_id, kind, _who(request))
        station.changed(line)
        return JSONResponse(out)

    async def events(request: Request) -> Response:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue(EVENTS_QUEUE)

        def listener(event: str, data: dict[str, Any]) -> None:
            def put() -> None:
                if queue.full():
                    queue.put_nowait(None)  # never blocks the line: the stream closes, the page reconnects
                else:
                    queue.put_nowait((event, data))
            loop.call_soon_threadsafe(put)

        async def stream() -> AsyncIterator[str]:
            station.listeners.append(listener)
            try:
                yield "retry: 2000\n\n"
                while True:
                    try:
                        item = await asyncio.wait_for(queue.get(), timeout=15)
                    except asyncio.TimeoutError:
                        yield ": ping\n\n"
                        continue
                    if item is None:
                        return
                    yield f"event: {item[0]}\ndata: {json.dumps(item[1])}\n\n"
            finally:
                station.listeners.remove(listener)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    routes = [
        Route("/", index),
        Route("/api/lines", guarded(lines)),
        Route("/api/lines/{name}/results", guarded(results)),
        Route("/api/lines/{name}/results.csv", guarded(results_csv)),
        Route("/api/lines/{name}/audit", guarded(audit)),
        Route("/api/lines/{name}/recent/{id:int}.jpg", guarded(recent)),
        Route("/api/results/{id:int}/overlay.jpg", guarded(overlay)),
        Route("/api/lines/{name}/changeover", guarded(changeover, write=True), methods=["POST"]),
        Route("/api/lines/{name}/calibrate", guarded(calibrate, write=True), methods=["POST"]),
        Route("/api/lines/{name}/feedback", guarded(feedback, write=True), methods=["POST"]),
        Route("/api/events", events),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes)
