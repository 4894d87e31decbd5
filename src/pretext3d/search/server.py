"""``pretext3d serve``: a local web page over an index, and the JSON API behind it.

API (every answer JSON, errors as {"error": message} with a 4xx status):

    GET  /api/info                         the index: objects, modalities, space, run, classes
    GET  /api/objects?offset=&limit=&cls=  a page of the collection (row, id, name, class, split, path)
    GET  /api/thumbnail/{row}              the object's thumbnail (PNG)
    GET  /api/views/{row}                  how many rendered views the object has
    GET  /api/view/{row}/{v}               one rendered view (PNG)
    GET  /api/search?row=&k=&modality=&query_modality=   search by an indexed object
    POST /api/search  (multipart: file, k, modality)     search by an uploaded mesh, cloud or image

Objects are addressed by their row number (ids are looked up, never used as paths). Uploads are
refused above the size limit (before they are read whole), written to a private temporary folder
under a fixed name with the upload's suffix, read with the same readers as the command line, and
removed; a bad upload gets its reason and the server goes on. One lock serialises the run's
forward passes (torch threads are shared).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from pretext3d.search.index import SearchIndex, open_index
from pretext3d.search.queries import QUERY_SUFFIXES, QueryError, read_query_file

__all__ = ["create_app", "serve", "PAGE"]

PAGE = Path(__file__).with_name("page.html")
MAX_K = 200
PAGE_LIMIT = 500


class _BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class _BodyLimit:
    """ASGI wrapper that stops reading a request body past ``limit`` bytes (a chunked upload has
    no Content-Length to refuse it by): the endpoint reading it gets a 413 ``_BadRequest``."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BadRequest(f"the upload is larger than the {_megabytes(self.limit)} limit", 413)
            return message

        await self.app(scope, limited, send)


def _error_response(err: Exception, response_class):
    """One JSON error for any failure of a request: its own status for a bad request (also when
    raised inside the multipart parser), 400 for the readers' and the index's messages, else 500."""
    bad = next((e for e in (err, err.__cause__, err.__context__) if isinstance(e, _BadRequest)), None)
    if bad is not None:
        return response_class({"error": str(bad)}, status_code=bad.status)
    if isinstance(err, (QueryError, ValueError)):
        return response_class({"error": str(err)}, status_code=400)
    return response_class({"error": f"the query failed ({type(err).__name__}: {err})"}, status_code=500)


def _int(value: str | None, name: str, default: int | None, low: int, high: int) -> int:
    """A whole-number parameter in [low, high]; ``default`` when absent (None: required)."""
    if value is None or value == "":
        if default is None:
            raise _BadRequest(f"{name} is required")
        return default
    try:
        number = int(value)
    except ValueError:
        raise _BadRequest(f"{name} must be an integer, got {value!r}") from None
    if not low <= number <= high:
        raise _BadRequest(f"{name} must be in [{low}, {high}], got {number}")
    return number


def _megabytes(count: int) -> str:
    return f"{count / 2 ** 20:.1f} MB" if count >= 2 ** 20 else f"{count / 1024:.0f} KB"


def _modality(index: SearchIndex, value: str | None, name: str = "modality") -> str | None:
    if value in (None, "", "auto"):
        return None
    if value not in index.modalities:
        raise _BadRequest(f"{name} {value!r}: the index holds {', '.join(index.modalities)}")
    return value


def _object(index: SearchIndex, row: int) -> dict[str, Any]:
    o = index.objects[row]
    return {"row": row, "id": o["id"], "name": o["name"], "class": o.get("class"), "split": o.get("split"),
            "path": o.get("path", "")}


def create_app(index: SearchIndex | str | Path, max_upload_bytes: int = 64 * 1024 * 1024):
    """The Starlette application serving ``index`` (a folder or an opened index)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    opened = index if isinstance(index, SearchIndex) else open_index(index)
    lock = threading.Lock()
    classes = sorted({o.get("class") for o in opened.objects if o.get("class")})

    def row_of(request: Request, key: str = "row") -> int:
        return _int(request.path_params.get(key, request.query_params.get(key)), key, None, 0, len(opened) - 1)

    def hits_payload(vector, asked_as: str, target: str, k: int, query: dict[str, Any]) -> dict[str, Any]:
        hits = opened.search_vector(vector, target, k)
        return {"query": query, "query_modality": asked_as, "modality": target,
                "hits": [{**h.as_dict(), "row": opened.row_of[h.id]} for h in hits]}

    def guarded(handler):
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as err:  # the server keeps serving whatever one request did
                return _error_response(err, JSONResponse)
        return endpoint

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE.read_text())

    async def info(request: Request) -> Response:
        i = opened.info
        return JSONResponse({"objects": len(opened), "modalities": list(opened.modalities), "space": i["space"],
                             "method": i["method"], "run": i["run"], "source": i["source"], "classes": classes,
                             "dims": i["dims"], "search": i["search"], "pool": i["pool"],
                             "max_upload_bytes": max_upload_bytes, "query_suffixes": list(QUERY_SUFFIXES),
                             "views": opened.store is not None})

    async def objects(request: Request) -> Response:
        offset = _int(request.query_params.get("offset"), "offset", 0, 0, 10 ** 9)
        limit = _int(request.query_params.get("limit"), "limit", 60, 1, PAGE_LIMIT)
        wanted = request.query_params.get("cls") or None
        rows = [r for r, o in enumerate(opened.objects) if wanted is None or o.get("class") == wanted]
        return JSONResponse({"total": len(rows), "offset": offset,
                             "objects": [_object(opened, r) for r in rows[offset:offset + limit]]})

    async def thumbnail(request: Request) -> Response:
        row = row_of(request)
        return Response(opened.thumbnail(row), media_type="image/png",
                        headers={"Cache-Control": "max-age=3600"})

    async def views(request: Request) -> Response:
        row = row_of(request)
        count = len(await run_in_threadpool(opened.views, opened.objects[row]["id"])) if opened.store else 0
        return JSONResponse({"row": row, "views": count})

    async def view(request: Request) -> Response:
        row = row_of(request)
        images = await run_in_threadpool(opened.views, opened.objects[row]["id"])
        v = _int(request.path_params.get("v"), "v", None, 0, len(images) - 1)
        return Response(images[v], media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    async def search_by_object(request: Request) -> Response:
        row = row_of(request)
        k = _int(request.query_params.get("k"), "k", 10, 1, MAX_K)
        modality = _modality(opened, request.query_params.get("modality"))
        query_modality = _modality(opened, request.query_params.get("query_modality"), "query_modality")

        def run():
            vector, asked_as, target = opened.resolve(row, modality, query_modality)
            return hits_payload(vector, asked_as, target, k, _object(opened, row))
        return JSONResponse(await run_in_threadpool(run))

    async def search_by_upload(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_upload_bytes + 64 * 1024:
            raise _BadRequest(f"the upload is {_megabytes(int(length))}; the limit is {_megabytes(max_upload_bytes)}", 413)
        try:
            form = await request.form(max_files=1, max_fields=8, max_part_size=max_upload_bytes)
        except _BadRequest:
            raise
        except Exception as err:  # multipart errors (too large a part, malformed body) come in several types
            status = 413 if "size" in str(err).lower() or "large" in str(err).lower() else 400
            raise _BadRequest(f"the upload could not be read ({err})", status) from None
        upload = form.get("file")
        if upload is None or not hasattr(upload, "filename"):
            raise _BadRequest("no file in the upload (send it as the form field 'file')")
        k = _int(form.get("k"), "k", 10, 1, MAX_K)
        modality = _modality(opened, form.get("modality"))
        suffix = Path(upload.filename or "").suffix.lower()
        if suffix not in QUERY_SUFFIXES:
            raise _BadRequest(f"{upload.filename!r}: not a query file type (expected one of {' '.join(QUERY_SUFFIXES)})")
        folder = Path(tempfile.mkdtemp(prefix="pretext3d-upload-"))
        try:
            target = folder / f"query{suffix}"  # never the upload's own name
            size = 0
            with open(target, "wb") as out:
                while chunk := await upload.read(1 << 20):
                    size += len(chunk)
                    if size > max_upload_bytes:
                        raise _BadRequest(f"{upload.filename} is larger than the {_megabytes(max_upload_bytes)} limit",
                                          413)
                    out.write(chunk)

            def run():
                try:
                    read = read_query_file(target)
                except QueryError as err:  # name the upload, not the temporary file
                    raise QueryError(str(err).replace(str(target), upload.filename or "the upload")) from None
                with lock:
                    vector, asked_as, chosen = opened.resolve(read, modality)
                return hits_payload(vector, asked_as, chosen, k, {"file": upload.filename, "kind": read.kind})
            return JSONResponse(await run_in_threadpool(run))
        finally:
            await upload.close()
            shutil.rmtree(folder, ignore_errors=True)

    routes = [Route("/", page), Route("/api/info", guarded(info)), Route("/api/objects", guarded(objects)),
              Route("/api/thumbnail/{row}", guarded(thumbnail)), Route("/api/views/{row}", guarded(views)),
              Route("/api/view/{row}/{v}", guarded(view)),
              Route("/api/search", guarded(search_by_object), methods=["GET"]),
              Route("/api/search", guarded(search_by_upload), methods=["POST"])]
    app = Starlette(routes=routes)
    app.state.index = opened
    return _BodyLimit(app, max_upload_bytes + 64 * 1024)


def serve(path: Path, host: str = "127.0.0.1", port: int = 8765, max_upload_bytes: int = 64 * 1024 * 1024,
          device: str = "auto") -> None:
    """Run the page and API until interrupted."""
    import uvicorn

    index = open_index(path, device)
    if "run" in index.info and Path(index.info["run"]).is_dir():
        index.embedder  # load the run now: the first upload should not wait for it
    print(f"serving {path} ({len(index)} objects) on http://{host}:{port}/", flush=True)
    uvicorn.run(create_app(index, max_upload_bytes), host=host, port=port, log_level="warning")
