"""Hybrid retrieval as a LangChain retriever: dense kNN (Chroma) + BM25 (bm25s), fused by
reciprocal rank, texts read from the chunk store."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from core.bm25 import BM25Index, names_exact_terms
from core.chroma import VectorStore
from core.chunkstore import ChunkStore
from core.settings import RetrievalSettings

COVERAGE_DEPTH = 3  # BM25 hits checked for the query's terms when the dense side is not sure


def rrf(rankings: list[tuple[list[str], float]], k: int) -> dict[str, float]:
    """Weighted reciprocal-rank fusion: sum of weight / (k + rank) over the rankings (rank from 1)."""
    fused: dict[str, float] = {}
    for ids, weight in rankings:
        for rank, chunk_id in enumerate(ids, start=1):
            fused[chunk_id] = fused.get(chunk_id, 0.0) + weight / (k + rank)
    return fused


def fuse(query: str, dense: Sequence[tuple[str, float]], lexical: Sequence[tuple[str, float]],
         coverage: Callable[[], float], rs: RetrievalSettings) -> list[tuple[str, float]]:
    """The ranking: (chunk id, fused score) best first, or [] when the relevance bar turns the
    question away. The one definition, used by the retriever and by ``localcat eval``.

    ``dense`` is (id, cosine) and ``lexical`` (id, BM25 score), best first; a side with weight 0
    counts as empty; RRF runs over each side's first max(candidates, k) hits, BM25's weighted by
    whether ``query`` names an exact term (bm25_weight) or not (prose_bm25_weight). The bar:
    nothing unless the best cosine reaches min_similarity or ``coverage()`` (the query-term
    coverage of the top BM25 hits, asked only when needed) reaches min_coverage.
    """
    n = max(rs.candidates, rs.k)
    dense = dense[:n] if rs.dense_weight > 0 else []
    lexical = lexical[:n] if rs.bm25_weight > 0 else []
    # The bar decides whether the documents speak to the question at all; once they do, the
    # fused order decides what the model sees (a chunk weak in one ranking may top the other).
    best_dense = max((sim for _, sim in dense), default=-1.0)
    if best_dense < rs.min_similarity and (coverage() if lexical else 0.0) < rs.min_coverage:
        return []
    lexical_weight = rs.bm25_weight if names_exact_terms(query) else rs.prose_bm25_weight
    rankings = [([i for i, _ in dense], rs.dense_weight)]
    if lexical_weight > 0:  # the bar above still reads BM25's hits
        rankings.append(([i for i, _ in lexical], lexical_weight))
    fused = rrf(rankings, rs.rrf_k)
    return sorted(fused.items(), key=lambda item: item[1], reverse=True)


class HybridRetriever(BaseRetriever):
    """Returns up to ``settings.k`` relevant chunks, best first.

    Each Document's metadata: chunk_id, source, page/heading/anchor, score (fused), similarity
    (cosine, when a dense hit), bm25 (when a BM25 hit). When no candidate reaches the relevance
    bar the list is empty, meaning "nothing in the documents answers this".
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    embeddings: object
    vectors: VectorStore
    store: ChunkStore
    bm25: BM25Index
    collection: str
    settings: RetrievalSettings

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun | None = None
    ) -> list[Document]:
        return self.search(query)

    def dense(self, query: str, n: int) -> list[tuple[str, float]]:
        return self.vectors.search(self.collection, self.embeddings.embed_query(query), n)

    def search(self, query: str, k: int | None = None) -> list[Document]:
        s = self.settings
        n = max(s.candidates, k or s.k)
        dense = self.dense(query, n) if s.dense_weight > 0 else []
        if s.bm25_weight > 0:
            # Another process or server may have changed the collection since the index was built.
            self.bm25.sync(self.collection, self.store, every_s=s.bm25_sync_s)
        lexical = self.bm25.search(self.collection, query, n) if s.bm25_weight > 0 else []
        top = [i for i, _ in lexical[:COVERAGE_DEPTH]]
        ranked = fuse(query, dense, lexical, lambda: self.bm25.coverage(self.collection, query, top),
                      s if k is None else s.model_copy(update={"k": k}))
        similarity, bm25, fused = dict(dense), dict(lexical), dict(ranked)
        relevant = [i for i, _ in ranked]
        chunks = self.store.chunks(self.collection, relevant[: (k or s.k) * 2])
        docs = []
        for chunk_id in relevant:
            chunk = chunks.get(chunk_id)
            if chunk is None:  # a vector whose file is mid-rewrite or was removed: not shown
                continue
            meta = {"chunk_id": chunk_id, "source": chunk.source, "score": fused[chunk_id],
                    "page": chunk.page, "heading": chunk.heading, "anchor": chunk.anchor,
                    "similarity": similarity.get(chunk_id), "bm25": bm25.get(chunk_id)}
            docs.append(Document(page_content=chunk.text, metadata=meta, id=chunk_id))
            if len(docs) == (k or s.k):
                break
        return docs
