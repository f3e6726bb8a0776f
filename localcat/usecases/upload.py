"""Uploading: files sent by a caller, saved under the collection's upload folder and ingested
through the server's queue. Only bytes come in, never a path on the server."""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Callable
from pathlib import Path

from core.acts import Incoming
from core.errors import BadRequest, LocalCatError
from core.schemas import IngestReport
from localcat.usecases.parts import Caller, Parts, shown_source


class TooLarge(LocalCatError):
    status = 413

    def __init__(self, name: str, limit_mb: float):
        super().__init__(f"{name} is larger than the {limit_mb:g} MB upload limit",
                         "split it, or ask an admin to raise server.max_upload_mb "
                         "(LOCALCAT_SERVER__MAX_UPLOAD_MB)")


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(raw: str) -> str:
    """A file name that is plain on every file system and in every shell: ASCII letters, digits,
    '.', '_' and '-'; no directory part, no leading dot, no control or bidi characters."""
    base = re.split(r"[\\/]", raw or "")[-1]
    # NFKD keeps 'é' as 'e'; what has no ASCII form (bidi overrides, CJK) becomes '_'.
    ascii_name = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode()
    name = _UNSAFE.sub("_", ascii_name).strip("._-")[:200]
    return name or "upload"


def upload(parts: Parts, caller: Caller, collection: str | None, files: list[Incoming], *,
           progress: Callable[..., None] | None = None) -> IngestReport:
    """Save ``files`` into ``collection`` and ingest them: scope, rate, count, size and name
    rules first; through the queue (429 when full) and journal when the server has one."""
    from core.chunkstore import check_collection_name

    s = parts.settings.server
    name = check_collection_name((collection or parts.settings.chroma.collection).strip())
    caller.require_collection(name)
    if not files:
        raise BadRequest("The upload has no files", "attach at least one file")
    if len(files) > s.max_files_per_upload:
        raise BadRequest(f"The upload has {len(files)} files, more than the "
                         f"{s.max_files_per_upload} allowed", "send them in smaller batches, or "
                         "ask an admin to raise server.max_files_per_upload")
    parts.take(caller, "upload")
    folder = parts.settings.uploads_dir / name
    limit = int(s.max_upload_mb * 1024 * 1024)

    def save() -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        return [_save(f, folder, limit, s.max_upload_mb) for f in files]

    def run(paths: list[Path], cancel: threading.Event | None = None) -> IngestReport:
        return parts.container.indexer.ingest(paths, name, prune=False, cancel=cancel,
                                              progress=progress)

    if parts.ingests is None or parts.journal is None:
        report = run(save())
    else:
        from localcat.uploads import ingest_upload

        report = ingest_upload(parts.ingests, parts.journal, name, save, run)
    parts.audit(caller, "upload", name, {"files": [f.name for f in files][:50]})
    # The uploader learns each file's saved name, not where the server keeps it.
    return report.model_copy(update={"files": [
        r.model_copy(update={"path": shown_source(r.path, folder)}) for r in report.files]})


def _save(f: Incoming, folder: Path, limit: int, limit_mb: float) -> Path:
    """Write one upload under ``folder`` by its safe name, refusing it past ``limit`` bytes
    (nothing of a refused file stays)."""
    target = folder / safe_name(f.name)
    tmp = target.with_name(target.name + ".part")
    size = 0
    try:
        with tmp.open("wb") as out:
            while block := f.content.read(1 << 20):
                size += len(block)
                if size > limit:
                    raise TooLarge(safe_name(f.name), limit_mb)
                out.write(block)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
