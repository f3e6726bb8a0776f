"""Documents: upload and ingest, the ingest queue, collections, and the files citations link to."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse

from core.acts import Incoming
from localcat.api.deps import CallerDep, UseCasesDep
from localcat.api.errors import error

router = APIRouter()


@router.post("/api/ingest")
def ingest_files(who: CallerDep, uc: UseCasesDep, files: list[UploadFile] = File(...),
                 collection: str | None = Form(None)):
    """Upload files into a collection and ingest them (429 when the queue is full)."""
    incoming = [Incoming(f.filename or "upload", f.file) for f in files]
    report = uc.upload(who, collection, incoming)
    return {**report.model_dump(mode="json"), "summary": report.summary()}


@router.get("/api/ingest/queue")
def ingest_queue(request: Request):
    """Uploads being ingested and waiting, and the limits (server.max_concurrent_ingests,
    server.ingest_queue)."""
    return request.app.state.ingests.status()


@router.get("/api/collections")
def collections(who: CallerDep, uc: UseCasesDep):
    """The collections this key may use."""
    return {"collections": uc.collections(who)}


@router.delete("/api/collections/{name}")
def delete_collection(name: str, who: CallerDep, uc: UseCasesDep):
    uc.delete_collection(who, name)
    return {"deleted": name}


@router.get("/files/{collection}/{chunk_id}")
def source_file(collection: str, chunk_id: str, who: CallerDep, request: Request):
    """The file a cited chunk came from, when it still exists and is an ingested file."""
    c = request.app.state.container
    who.require_collection(collection)
    chunk = c.store.chunks(collection, [chunk_id]).get(chunk_id)
    if chunk is None or c.store.file(collection, chunk.source) is None:
        return error(404, "No such source; it may have been re-ingested", "NotFound")
    path = Path(chunk.source)
    if not path.is_file():
        return error(404, f"{path.name} is no longer on disk", "NotFound")
    return FileResponse(path, filename=path.name, content_disposition_type="inline")
