"""The composition root: the one place that picks and builds concrete parts from settings.

Parts are built on first use and kept for the life of the container (a CLI command or a server
process); nothing else constructs them, and nothing holds module-level singletons.
"""

from __future__ import annotations

import threading
from functools import cached_property

from assistant.settings import Settings


class Container:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings()
        self._models: dict[str, tuple[object, str]] = {}
        self._lock = threading.Lock()

    @cached_property
    def embeddings(self):
        from assistant.embeddings import SentenceTransformerEmbeddings

        return SentenceTransformerEmbeddings(self.settings.embedding)

    @cached_property
    def chroma(self):
        from assistant.vectorstore import chroma_client

        return chroma_client(self.settings.chroma, self.settings.chroma_dir)

    @cached_property
    def store(self):
        from assistant.vectorstore import ChunkStore

        return ChunkStore(self.settings.index_db)

    @cached_property
    def bm25(self):
        from assistant.vectorstore import BM25Index

        return BM25Index(self.settings.bm25_dir)

    @cached_property
    def indexer(self):
        from ingest.index import Indexer

        return Indexer(self.settings, self.embeddings, self.chroma, self.store, self.bm25)

    @cached_property
    def feedback(self):
        from assistant.feedback import FeedbackStore

        return FeedbackStore(self.settings.feedback_db)

    def retriever(self, collection: str | None = None):
        from assistant.retriever import HybridRetriever

        name = collection or self.settings.chroma.collection
        self.store.require_collection(name)
        return HybridRetriever(
            embeddings=self.embeddings, chroma=self.chroma, store=self.store, bm25=self.bm25,
            collection=name, settings=self.settings.retrieval,
        )

    @cached_property
    def served_llm(self):
        """LLM settings with the active fine-tuned version (base + adapter) applied, if any."""
        from finetune.registry import served_llm_settings

        return served_llm_settings(self.settings)

    def llm_settings(self, model: str | None = None):
        llm = self.served_llm
        return llm.model_copy(update={"ollama_model": model}) if model else llm

    def chat_model(self, model: str | None = None):
        """(BaseChatModel, tag) for the configured runtime; ``model`` overrides the model name."""
        from assistant.llm import build_chat_model

        key = model or ""
        with self._lock:
            if key not in self._models:
                self._models[key] = build_chat_model(self.llm_settings(model))
            return self._models[key]

    def loaded_model_tags(self) -> list[str]:
        return [tag for _, tag in self._models.values()]

    def pipeline(self, collection: str | None = None, model: str | None = None):
        from assistant.llm import translate_runtime_error
        from assistant.pipeline import RagPipeline

        retriever = self.retriever(collection)
        llm, tag = self.chat_model(model)
        p = self.settings.pipeline
        llm_settings = self.llm_settings(model)
        return RagPipeline(llm, retriever, model_tag=tag, condense=p.condense,
                           history_turns=p.history_turns,
                           translate_error=lambda exc: translate_runtime_error(exc, llm_settings))
