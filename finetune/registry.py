"""The model registry: fine-tuned versions, which one the assistant serves, and how to go back.

SQLite as every LocalCat store uses it (``core.sqlite``: WAL, numbered migrations). A version
keeps copies of its artifacts under ``models_dir/<name>/`` (the run folder may be deleted), their
checksums, its data set, metrics, parent and base. Activations are a log, so ``rollback`` returns to whatever was
served before, the base model included.

This module stays light (no torch): the container reads the active version on every start.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.errors import BadRequest, ConfigError, LocalCatError
from core.settings import LLMSettings
from core.sqlite import Database, migrations
from finetune.artifacts import ADAPTER_GGUF, MODELFILE, RunLayout, read_manifest
from finetune.base import BaseInfo, ChatTemplate

REGISTRY_FILE = "registry.sqlite"
MIGRATIONS, _migration = migrations()


@_migration
def m001_versions(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE versions (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,          -- v1, v2, ...
            run TEXT NOT NULL,                  -- the finetune run that made it
            parent INTEGER REFERENCES versions(id), -- what was active when it was registered
            base_name TEXT NOT NULL,
            base_path TEXT NOT NULL,
            base_sha256 TEXT NOT NULL,
            trainer TEXT NOT NULL,
            adapter_gguf TEXT NOT NULL,
            adapter_sha256 TEXT NOT NULL,
            adapter_dir TEXT NOT NULL,          -- PEFT safetensors + config
            modelfile TEXT NOT NULL,
            dataset TEXT NOT NULL,              -- JSON: run, sha256, counts
            metrics TEXT NOT NULL,              -- JSON: the evaluation report's metrics
            status TEXT NOT NULL CHECK (status IN ('promoted', 'forced')),
            ollama_name TEXT,                   -- name:tag in Ollama, when registered there
            ollama_host TEXT,
            active INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE UNIQUE INDEX versions_one_active ON versions(active) WHERE active = 1")
    db.execute(
        """
        CREATE TABLE activations (
            id INTEGER PRIMARY KEY,
            version_id INTEGER REFERENCES versions(id), -- NULL: the base model, no adapter
            at TEXT NOT NULL
        )
        """
    )


class NotPromoted(LocalCatError):
    status = 409


@dataclass(frozen=True)
class Version:
    id: int
    name: str
    run: str
    parent: int | None
    base_name: str
    base_path: str
    base_sha256: str
    trainer: str
    adapter_gguf: str
    adapter_sha256: str
    adapter_dir: str
    modelfile: str
    dataset: dict[str, Any]
    metrics: dict[str, Any]
    status: str
    ollama_name: str | None
    ollama_host: str | None
    active: bool
    created_at: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Version:
        data = dict(row)
        data["dataset"] = json.loads(data["dataset"])
        data["metrics"] = json.loads(data["metrics"])
        data["active"] = bool(data["active"])
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ModelRegistry(Database):
    """Model versions in ``models_dir/registry.sqlite``; artifacts in ``models_dir/<name>/``."""

    MIGRATIONS = MIGRATIONS
    KIND = "model registry"

    def __init__(self, models_dir: Path):
        self.dir = Path(models_dir)
        super().__init__(self.dir / REGISTRY_FILE)

    # --- reads ------------------------------------------------------------------------------------

    def versions(self) -> list[Version]:
        return [Version.from_row(r) for r in self.db.execute("SELECT * FROM versions ORDER BY id")]

    def get(self, name: str) -> Version:
        row = self.db.execute("SELECT * FROM versions WHERE name = ? OR CAST(id AS TEXT) = ?",
                              (name, name)).fetchone()
        if row is None:
            known = ", ".join(v.name for v in self.versions()) or "none"
            raise BadRequest(f"No model version {name!r} (registered: {known})",
                             "see `localcat models list`")
        return Version.from_row(row)

    def find(self, run: str, adapter_sha256: str) -> Version | None:
        row = self.db.execute("SELECT * FROM versions WHERE run = ? AND adapter_sha256 = ?",
                              (run, adapter_sha256)).fetchone()
        return None if row is None else Version.from_row(row)

    def active(self) -> Version | None:
        row = self.db.execute("SELECT * FROM versions WHERE active = 1").fetchone()
        return None if row is None else Version.from_row(row)

    # --- writes -----------------------------------------------------------------------------------

    def add(self, *, run: str, base: BaseInfo, trainer: str, export_dir: Path,
            dataset: dict[str, Any], metrics: dict[str, Any], status: str,
            adapter_sha256: str) -> Version:
        """Copy the export's artifacts under a new version name and record it (not active yet)."""
        with self.transaction() as db:
            n = db.execute("SELECT coalesce(max(id), 0) + 1 FROM versions").fetchone()[0]
            name = f"v{n}"
            target = self.dir / name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(export_dir, target)
            # Named after the version: llama.cpp's model tag (kept with every answer) becomes
            # e.g. "smollm2+lora:v3", so feedback says which version answered.
            (target / ADAPTER_GGUF).rename(target / f"{name}.gguf")
            modelfile = target / MODELFILE
            modelfile.write_text(modelfile.read_text().replace(
                f"ADAPTER ./{ADAPTER_GGUF}", f"ADAPTER ./{name}.gguf"))
            active = db.execute("SELECT id FROM versions WHERE active = 1").fetchone()
            db.execute(
                """INSERT INTO versions (id, name, run, parent, base_name, base_path, base_sha256,
                   trainer, adapter_gguf, adapter_sha256, adapter_dir, modelfile, dataset, metrics,
                   status, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
                (n, name, run, active[0] if active else None, base.name, str(base.path),
                 base.sha256, trainer, str(target / f"{name}.gguf"), adapter_sha256,
                 str(target / "adapter"), str(modelfile), json.dumps(dataset),
                 json.dumps(metrics), status, datetime.now(UTC).isoformat()),
            )
        return self.get(name)

    def set_ollama(self, name: str, ollama_name: str, host: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE versions SET ollama_name = ?, ollama_host = ? WHERE name = ?",
                       (ollama_name, host, name))

    def use(self, name: str | None) -> Version | None:
        """Serve version ``name`` (None or 'base': the base model alone) from the next start on."""
        version = None if name in (None, "base") else self.get(name)
        if version is not None:
            verify(version)
        with self.transaction() as db:
            db.execute("UPDATE versions SET active = 0 WHERE active = 1")
            if version is not None:
                db.execute("UPDATE versions SET active = 1 WHERE id = ?", (version.id,))
            db.execute("INSERT INTO activations (version_id, at) VALUES (?, ?)",
                       (version.id if version else None, datetime.now(UTC).isoformat()))
        return self.get(version.name) if version else None

    def rollback(self) -> Version | None:
        """Serve what was served before the current activation; returns it (None: the base)."""
        rows = self.db.execute("SELECT version_id FROM activations ORDER BY id DESC").fetchall()
        if not rows:
            raise BadRequest("Nothing to roll back: no model version was ever activated",
                             "see `localcat models list`")
        current = rows[0][0]
        previous = next((r[0] for r in rows[1:] if r[0] != current), None)
        if previous is None and current is None:
            raise BadRequest("Already serving the base model, with nothing before it",
                             "activate a version with `localcat models use NAME`")
        target = None if previous is None else self.db.execute(
            "SELECT name FROM versions WHERE id = ?", (previous,)).fetchone()[0]
        return self.use(target)


def verify(version: Version) -> None:
    """The version's base and adapter are on disk and unchanged, or a clear error."""
    from core.gguf import AdapterCorrupt, BaseMismatch, check_lora_gguf, file_sha256

    base = Path(version.base_path)
    if not base.is_file():
        raise ConfigError(
            f"The base model of {version.name}, {base}, is gone",
            "reinstall it, or serve another version (`localcat models use base`)",
        )
    if file_sha256(base) != version.base_sha256:
        raise BaseMismatch(
            f"{base} changed since {version.name} was trained on it (checksum differs)",
            "restore that file, or fine-tune again on the new one; `localcat models use base` "
            "serves it without the adapter",
        )
    adapter = Path(version.adapter_gguf)
    if not adapter.is_file():
        raise AdapterCorrupt(f"The adapter of {version.name}, {adapter}, is gone",
                             "register the run again with `localcat finetune register`")
    check_lora_gguf(adapter, base)
    if file_sha256(adapter) != version.adapter_sha256:
        raise AdapterCorrupt(
            f"The adapter {adapter} of {version.name} is damaged (checksum differs)",
            "register the run again with `localcat finetune register`",
        )


def served_llm_settings(llm: LLMSettings, registry: ModelRegistry | None) -> LLMSettings:
    """``settings.llm`` with the active version applied: what the assistant should serve.

    The active version sets the embedded runtime's base and ``lora_path`` and, when it was
    registered in Ollama, the Ollama model name. Settings given explicitly (environment or
    ``localcat.toml``) win, except that an explicit ``model_path`` other than the version's base
    is refused: its adapter would be applied to the wrong model.
    """
    version = registry.active() if registry is not None else None
    if version is None:
        return llm
    explicit = llm.model_fields_set
    update: dict[str, Any] = {}
    if "lora_path" not in explicit:
        if "model_path" in explicit and llm.model_path is not None and (
            Path(llm.model_path).resolve() != Path(version.base_path).resolve()
        ):
            from core.gguf import BaseMismatch

            raise BaseMismatch(
                f"The active model version {version.name} adapts {version.base_path}, but "
                f"LOCALCAT_LLM__MODEL_PATH is {llm.model_path}",
                "serve the base alone with `localcat models use base`, or unset "
                "LOCALCAT_LLM__MODEL_PATH",
            )
        update["model_path"] = Path(version.base_path)
        update["lora_path"] = Path(version.adapter_gguf)
    if version.ollama_name and "ollama_model" not in explicit:
        update["ollama_model"] = version.ollama_name
    return llm.model_copy(update=update)


def register_run(
    run_dir: Path, base: Any, registry: ModelRegistry, *, ollama_host: str, ollama_prefix: str,
    ollama: bool | None = None, activate: bool = True, force: bool = False,
) -> dict[str, Any]:
    """Register a run's exported adapter as a new version; returns what was done.

    Refuses an adapter that did not beat the base (unless ``force``), one made for another base,
    and one llama.cpp cannot load. ``ollama``: True registers in Ollama too, None does when an
    Ollama answers at ``ollama_host``, False never.
    """
    from core.gguf import AdapterCorrupt, check_lora_gguf, file_sha256
    from core.llm import AUTO_PROBE_S, ollama_status

    layout = RunLayout(run_dir)
    exported = layout.read_export()
    manifest = read_manifest(layout.export_adapter)
    manifest.check_base(base)
    report = layout.read_eval() if layout.eval_json.is_file() else None
    if report is None and not force:
        raise NotPromoted(f"Run {layout.name} has not been evaluated",
                          f"run `localcat finetune eval --run {layout.name}` (or pass --force)")
    if report is not None and not report.promoted and not force:
        raise NotPromoted(f"The adapter of {layout.name} {report.reason}",
                          "collect more feedback and train again, or register it anyway with --force")
    gguf = layout.export_gguf
    check_lora_gguf(gguf, base.path)
    if file_sha256(gguf) != exported.sha256.adapter_gguf:
        raise AdapterCorrupt(f"{gguf} changed since it was exported (checksum differs)",
                             f"export it again: `localcat finetune export --run {layout.name}`")
    dataset = layout.read_dataset()
    # Registering the same export again adds nothing; it may still add Ollama or activate.
    version = registry.find(layout.name, exported.sha256.adapter_gguf) or registry.add(
        run=layout.name, base=base.describe(), trainer=manifest.trainer,
        export_dir=layout.export,
        dataset=dataset.model_dump(mode="json", include={"run", "sha256", "sft", "kto"}),
        metrics=report.metrics.model_dump(mode="json") if report is not None else {},
        status="promoted" if report is not None and report.promoted else "forced",
        adapter_sha256=exported.sha256.adapter_gguf,
    )
    if ollama or (ollama is None and ollama_status(ollama_host, AUTO_PROBE_S) is not None):
        name = f"{ollama_prefix}-{base.slug}:{version.name}"
        ollama_register(version, ollama_host, name)
        registry.set_ollama(version.name, name, ollama_host)
    if activate:
        registry.use(version.name)
    return registry.get(version.name).as_dict()


# --- Ollama -----------------------------------------------------------------------------------------


def ollama_register(version: Version, host: str, name: str, timeout: float = 600) -> str:
    """Create ``name`` in the Ollama at ``host`` from the version's base, adapter and template.

    Uses the API (blobs + create), so it works with a remote server too: the base and adapter are
    uploaded unless Ollama has them already.
    """
    from ollama import Client, ResponseError

    from finetune.modelfile import template_parts

    client = Client(host=host, timeout=timeout)
    try:
        base_digest = _blob(client, host, Path(version.base_path))
        adapter_digest = _blob(client, host, Path(version.adapter_gguf))
        template = _template_of(version)
        parts = template_parts(template)
        client.create(
            model=name,
            files={Path(version.base_path).name: base_digest},
            adapters={"adapter.gguf": adapter_digest},
            template=parts.go_template(),
            parameters={"stop": parts.stops},
            stream=False,
        )
    except ResponseError as err:
        raise LocalCatError(f"Ollama at {host} refused to create {name}: {err.error}",
                            "see the Ollama server's log") from err
    except (ConnectionError, OSError) as err:
        raise LocalCatError(f"Cannot reach Ollama at {host} ({err})",
                            "start it with `ollama serve`, or register with --no-ollama") from err
    return name


def _blob(client: Any, host: str, path: Path) -> str:
    from core.gguf import file_sha256
    from core.llm import ollama_has_blob

    digest = f"sha256:{file_sha256(path)}"
    if ollama_has_blob(client, digest):  # skip the upload
        return digest
    return client.create_blob(path)


def _template_of(version: Version) -> ChatTemplate:
    return read_manifest(Path(version.adapter_dir)).chat_template.template()
