"""One file → its chunks, in a worker process that no input can hold past its limits.

Parsing feeds untrusted bytes to pypdf, python-docx, lxml/bs4 and LangChain's splitter, and a
crafted file can make any of them take minutes or gigabytes (a 1 MB DOCX inflating to 1 GB sat in
the splitter for 10 minutes at 6.5 GB). So each file is parsed and chunked in a pebble worker
with an address-space limit and a timeout: over either, the worker is killed and replaced, the
file gets one line naming the limit and the setting that raises it, and nothing of it is written.
The workers parse the next files while the indexer encodes the current batch.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections import Counter
from concurrent.futures import Future, TimeoutError, wait
from pathlib import Path

from core.errors import BadFile, Cancelled
from core.schemas import Chunk, chunk_id
from core.settings import ChunkingSettings, IngestSettings


def chunk_file(path: Path, digest: str, ing: IngestSettings, ch: ChunkingSettings) -> list[Chunk]:
    """Parse and chunk one file (in this process); ``BadFile`` when it cannot be ingested."""
    # Here, not at the top: the splitter pulls in most of LangChain (~0.2 s), which the
    # indexer's process never needs (the workers parse) and a re-ingest of unchanged files
    # should not pay for.
    from ingest.chunking import chunk_sections
    from ingest.loaders import load_file

    sections = load_file(path, max_bytes=int(ing.max_file_mb * 2**20),
                         max_unzipped_bytes=int(ing.max_unzipped_mb * 2**20),
                         max_zip_ratio=ing.max_zip_ratio)
    # A chunk holds at most chunk_size characters, so the text alone can prove the file over the
    # limit before the splitter spends minutes on it (a 20 MB line splits character by character).
    at_least = sum(len("".join(s.page_content.split())) for s in sections) // ch.chunk_size
    if at_least > ing.max_chunks_per_file:
        raise _too_many(path, f"at least {at_least}", ing)
    docs = chunk_sections(sections, chunk_size=ch.chunk_size, chunk_overlap=ch.chunk_overlap)
    if not docs:
        raise BadFile(f"{path.name}: no text after chunking", "check the file has readable text")
    if len(docs) > ing.max_chunks_per_file:
        raise _too_many(path, str(len(docs)), ing)
    key = str(path)
    seen: Counter[str] = Counter()
    chunks = []
    for i, d in enumerate(docs):
        chunks.append(Chunk(
            id=chunk_id(key, d.page_content, seen[d.page_content]), text=d.page_content,
            source=key, file_hash=digest, position=i, page=d.metadata.get("page"),
            heading=d.metadata.get("heading"), anchor=d.metadata.get("anchor"),
        ))
        seen[d.page_content] += 1
    return chunks


def _too_many(path: Path, count: str, ing: IngestSettings) -> BadFile:
    return BadFile(f"{path.name}: {count} chunks is over the limit of {ing.max_chunks_per_file}",
                   "split the file or raise LOCALCAT_INGEST__MAX_CHUNKS_PER_FILE")


def _in_worker(path: str, digest: str, ing: IngestSettings,
               ch: ChunkingSettings) -> list[Chunk] | str:
    """The worker's side: chunks, or the reason the file failed (errors don't cross processes
    well: ``LocalCatError`` subclasses have their own constructors)."""
    try:
        return chunk_file(Path(path), digest, ing, ch)
    except BadFile as exc:
        return str(exc)
    except MemoryError:
        return _over_memory(ing)
    except (OSError, UnicodeError, ValueError, RecursionError) as exc:
        return f"{type(exc).__name__}: {exc}"


def _over_memory(ing: IngestSettings) -> str:
    return (f"parsing needs more than the {ing.parse_memory_mb} MB memory limit — raise "
            "ingest.parse_memory_mb (LOCALCAT_INGEST__PARSE_MEMORY_MB) if the file is genuine")


def _init_worker(megabytes: int, verbose: bool) -> None:
    import resource
    import signal

    from core.logs import quiet_third_party

    quiet_third_party(verbose)
    # pebble's SIGTERM handler is Python code, which cannot run while a parse sits in one C call
    # (zlib inflating a bomb, lxml): stopping the pool then waited 3 s per worker for its SIGKILL,
    # too long for a server that must exit within 5 s. The worker holds nothing to clean up.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    limit = megabytes * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def default_workers() -> int:
    return max(1, min(2, len(os.sched_getaffinity(0))))


class Parser:
    """A pool of parse workers, started on the first file that needs parsing.

    A re-ingest of unchanged files never starts it (a worker costs ~0.5 s to import its parsers).
    """

    def __init__(self, ingest: IngestSettings, chunking: ChunkingSettings, *, verbose: bool = False):
        self.ingest = ingest
        self.chunking = chunking
        self.verbose = verbose
        self._pool = None

    @property
    def workers(self) -> int:
        return self.ingest.parse_workers or default_workers()

    def _start(self):
        if self._pool is None:
            from pebble import ProcessPool

            # forkserver: workers do not inherit the parent's threads (torch, Chroma), and the
            # memory limit applies to a small fresh process, not to a copy of a loaded model.
            self._pool = ProcessPool(
                max_workers=self.workers, initializer=_init_worker,
                initargs=(self.ingest.parse_memory_mb, self.verbose),
                context=multiprocessing.get_context("forkserver"),
            )
        return self._pool

    def submit(self, path: Path, digest: str) -> Future:
        from concurrent.futures.process import BrokenProcessPool

        args = (str(path), digest, self.ingest, self.chunking)
        try:
            return self._start().schedule(_in_worker, args=args, timeout=self.ingest.parse_timeout_s)
        except (BrokenProcessPool, RuntimeError):  # its workers died between files: start anew
            self.close()
            return self._start().schedule(_in_worker, args=args, timeout=self.ingest.parse_timeout_s)

    def result(self, future: Future, cancel: threading.Event | None = None) -> list[Chunk]:
        """The file's chunks, or ``BadFile`` saying which limit it broke.

        With ``cancel``: once it is set, ``Cancelled`` within a tenth of a second, and the parse
        is stopped (pebble kills the worker running it) rather than left to its timeout."""
        from concurrent.futures.process import BrokenProcessPool

        from pebble import ProcessExpired

        if cancel is not None:
            while not wait([future], timeout=0.1).done:
                if cancel.is_set():
                    future.cancel()
                    raise Cancelled("Parsing stopped: the process is stopping")
        try:
            out = future.result()
        except TimeoutError:
            raise BadFile(
                f"parsing took longer than the {self.ingest.parse_timeout_s:g} s limit",
                "raise ingest.parse_timeout_s (LOCALCAT_INGEST__PARSE_TIMEOUT_S) if the file is "
                "genuine",
            ) from None
        except (ProcessExpired, BrokenProcessPool) as exc:  # killed: most often the memory limit
            problem = _over_memory(self.ingest)
            raise BadFile(f"the parser died ({exc}); {problem}") from None
        if isinstance(out, str):
            raise BadFile(out)
        return out

    def close(self) -> None:
        """Stop the workers now (running parses are killed; their files stay 'not done')."""
        if self._pool is not None:
            self._pool.stop()
            self._pool.join(timeout=5)
            self._pool = None
