"""The model registry: fine-tuned versions, which one the assistant serves, and how to go back.

A store like the others (core/db.py: a SQLite file, or the shared PostgreSQL). A version
keeps copies of its artifacts under ``models_dir/<name>/`` (the run folder may be deleted), their
checksums, its data set, metrics, parent and base. Activations are a log, so ``rollback`` returns to whatever was
served before, the base model included.

This module stays light (no torch): the container reads the active version on every start.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from core.db import Database, Store
from core.errors import BadRequest, ConfigError, LocalCatError
from core.settings import LLMSettings
from finetune.artifacts import ADAPTER_GGUF, MODELFILE, RunLayout, read_manifest
from finetune.base import BaseInfo, ChatTemplate

REGISTRY_FILE = "registry.sqlite"
# The tables as the code queries them; their history is core/migrations/models/.
metadata = sa.MetaData()
versions_t = sa.Table(
    "versions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("run", sa.Text, nullable=False),
    sa.Column("parent", sa.Integer, sa.ForeignKey("versions.id")),
    sa.Column("base_name", sa.Text, nullable=False),
    sa.Column("base_path", sa.Text, nullable=False),
    sa.Column("base_sha256", sa.Text, nullable=False),
    sa.Column("trainer", sa.Text, nullable=False),
    sa.Column("adapter_gguf", sa.Text, nullable=False),
    sa.Column("adapter_sha256", sa.Text, nullable=False),
    sa.Column("adapter_dir", sa.Text, nullable=False),
    sa.Column("modelfile", sa.Text, nullable=False),
    sa.Column("dataset", sa.Text, nullable=False),
    sa.Column("metrics", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("ollama_name", sa.Text),
    sa.Column("ollama_host", sa.Text),
    sa.Column("active", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Index("versions_one_active", "active", unique=True, sqlite_where=sa.text("active = 1"),
             postgresql_where=sa.text("active = 1")),
)
activations_t = sa.Table(
    "activations", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id")),
    sa.Column("at", sa.Text, nullable=False),
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
    def from_row(cls, row: Any) -> Version:
        data = dict(row._mapping)
        data["dataset"] = json.loads(data["dataset"])
        data["metrics"] = json.loads(data["metrics"])
        data["active"] = bool(data["active"])
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ModelRegistry(Store):
    """Model versions in ``models_dir/registry.sqlite`` (or the shared database); artifacts in
    ``models_dir/<name>/``."""

    SCHEMA = "models"
    KIND = "model registry"

    def __init__(self, models_dir: Path, database: Database | None = None):
        self.dir = Path(models_dir)
        super().__init__(database or self.dir / REGISTRY_FILE)

    # --- reads ------------------------------------------------------------------------------------

    def versions(self) -> list[Version]:
        return [Version.from_row(r) for r in self.all(sa.select(versions_t).order_by(versions_t.c.id))]

    def get(self, name: str) -> Version:
        v = versions_t
        row = self.one(sa.select(v).where((v.c.name == name) | (sa.cast(v.c.id, sa.Text) == name)))
        if row is None:
            known = ", ".join(v.name for v in self.versions()) or "none"
            raise BadRequest(f"No model version {name!r} (registered: {known})",
                             "see `localcat models list`")
        return Version.from_row(row)

    def find(self, run: str, adapter_sha256: str) -> Version | None:
        v = versions_t
        row = self.one(sa.select(v).where(v.c.run == run, v.c.adapter_sha256 == adapter_sha256))
        return None if row is None else Version.from_row(row)

    def active(self) -> Version | None:
        row = self.one(sa.select(versions_t).where(versions_t.c.active == 1))
        return None if row is None else Version.from_row(row)

    def activation(self) -> int:
        """Moves on with every `use` or `rollback` (0: never): servers poll it to swap models."""
        return self.scalar(sa.select(sa.func.coalesce(sa.func.max(activations_t.c.id), 0)))

    # --- writes -----------------------------------------------------------------------------------

    def add(self, *, run: str, base: BaseInfo, trainer: str, export_dir: Path,
            dataset: dict[str, Any], metrics: dict[str, Any], status: str,
            adapter_sha256: str) -> Version:
        """Copy the export's artifacts under a new version name and record it (not active yet)."""
        v = versions_t
        with self.transaction() as db:
            n = db.execute(sa.select(sa.func.coalesce(sa.func.max(v.c.id), 0) + 1)).scalar()
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
            active = db.execute(sa.select(v.c.id).where(v.c.active == 1)).scalar()
            db.execute(sa.insert(v).values(
                id=n, name=name, run=run, parent=active, base_name=base.name,
                base_path=str(base.path), base_sha256=base.sha256, trainer=trainer,
                adapter_gguf=str(target / f"{name}.gguf"), adapter_sha256=adapter_sha256,
                adapter_dir=str(target / "adapter"), modelfile=str(modelfile),
                dataset=json.dumps(dataset), metrics=json.dumps(metrics), status=status,
                created_at=datetime.now(UTC).isoformat()))
        return self.get(name)

    def set_ollama(self, name: str, ollama_name: str, host: str) -> None:
        with self.transaction() as db:
            db.execute(sa.update(versions_t).where(versions_t.c.name == name)
                       .values(ollama_name=ollama_name, ollama_host=host))

    def use(self, name: str | None) -> Version | None:
        """Serve version ``name`` (None or 'base': the base model alone); running servers follow
        within ``models.poll_s``."""
        version = None if name in (None, "base") else self.get(name)
        if version is not None:
            verify(version)
        v = versions_t
        with self.transaction() as db:
            db.execute(sa.update(v).where(v.c.active == 1).values(active=0))
            if version is not None:
                db.execute(sa.update(v).where(v.c.id == version.id).values(active=1))
            db.execute(sa.insert(activations_t).values(
                version_id=version.id if version else None, at=datetime.now(UTC).isoformat()))
        return self.get(version.name) if version else None

    def rollback(self) -> Version | None:
        """Serve what was served before the current activation; returns it (None: the base)."""
        rows = self.all(sa.select(activations_t.c.version_id).order_by(activations_t.c.id.desc()))
        if not rows:
            raise BadRequest("Nothing to roll back: no model version was ever activated",
                             "see `localcat models list`")
        current = rows[0][0]
        previous = next((r[0] for r in rows[1:] if r[0] != current), None)
        if previous is None and current is None:
            raise BadRequest("Already serving the base model, with nothing before it",
                             "activate a version with `localcat models use NAME`")
        target = None if previous is None else self.scalar(
            sa.select(versions_t.c.name).where(versions_t.c.id == previous))
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
    run_dir: Path, base: Any, registry: ModelRegistry, *, ollama_host: str | list[str],
    ollama_prefix: str,
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
    # Every Ollama host serves the version (llm.ollama_hosts); with `auto`, those that answer.
    hosts = [ollama_host] if isinstance(ollama_host, str) else list(ollama_host)
    if ollama is None:
        hosts = [h for h in hosts if ollama_status(h, AUTO_PROBE_S) is not None]
    if hosts and ollama is not False:
        name = f"{ollama_prefix}-{base.slug}:{version.name}"
        for host in hosts:
            ollama_register(version, host, name)
        registry.set_ollama(version.name, name, ", ".join(hosts))
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
