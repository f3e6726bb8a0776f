"""Hybrid retrieval as a LangChain retriever: dense kNN (Chroma) + BM25 (bm25s), fused by
reciprocal rank, texts read from the chunk store."""

from __future__ import annotations

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from assistant.settings import RetrievalSettings
from assistant.vectorstore import BM25Index, ChunkStore

COVERAGE_DEPTH = 3  # BM25 hits checked for the query's terms when the dense side is not sure


def rrf(rankings: list[tuple[list[str], float]], k: int) -> dict[str, float]:
    """Weighted reciprocal-rank fusion: sum of weight / (k + rank) over the rankings (rank from 1)."""
    fused: dict[str, float] = {}
    for ids, weight in rankings:
        for rank, chunk_id in enumerate(ids, start=1):
            fused[chunk_id] = fused.get(chunk_id, 0.0) + weight / (k + rank)
    return fused


class HybridRetriever(BaseRetriever):
    """Returns up to ``settings.k`` relevant chunks, best first.

    Each Document's metadata: chunk_id, source, page/heading/anchor, score (fused), similarity
    (cosine, when a dense hit), bm25 (when a BM25 hit). When no candidate reaches the relevance
    bar the list is empty, meaning "nothing in the documents answers this".
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    embeddings: object
    chroma: object
    store: ChunkStore
    bm25: BM25Index
    collection: str
    settings: RetrievalSettings

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun | None = None
    ) -> list[Document]:
        return self.search(query)

    def dense(self, query: str, n: int) -> list[tuple[str, float]]:
        coll = self.chroma.get_collection(self.collection, embedding_function=None)
        # No count() first: it cost 14 of 18 ms per query at 100k chunks, and Chroma already
        # returns what there is when n_results exceeds it.
        res = coll.query(
            query_embeddings=[self.embeddings.embed_query(query)],
            n_results=n,
            include=["distances"],
        )
        return [(i, 1.0 - float(d)) for i, d in zip(res["ids"][0], res["distances"][0], strict=True)]

    def search(self, query: str, k: int | None = None) -> list[Document]:
        s = self.settings
        n = max(s.candidates, k or s.k)
        dense = self.dense(query, n) if s.dense_weight > 0 else []
        lexical = self.bm25.search(self.collection, query, n) if s.bm25_weight > 0 else []
        similarity = dict(dense)
        bm25 = dict(lexical)
        fused = rrf([([i for i, _ in dense], s.dense_weight), ([i for i, _ in lexical], s.bm25_weight)],
                    s.rrf_k)
        # The bar decides whether the documents speak to the question at all; once they do, the
        # fused order decides what the model sees (a chunk weak in one ranking may top the other).
        best_dense = max(similarity.values(), default=-1.0)
        if best_dense < s.min_similarity and (
            self.bm25.coverage(self.collection, query, [i for i, _ in lexical[:COVERAGE_DEPTH]])
            < s.min_coverage
        ):
            return []
        relevant = sorted(fused, key=fused.__getitem__, reverse=True)
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
