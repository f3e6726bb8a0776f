"""The same ingest and retrieval against a real `chroma run` server (LOCALCAT_CHROMA__URL)."""

from __future__ import annotations

import pytest

from tests.fixtures.servers import chroma_server

pytestmark = pytest.mark.integration


def test_ingest_and_retrieve_through_a_chroma_server(tmp_path, docs_dir, monkeypatch):
    from localcat.container import Container

    with chroma_server(tmp_path / "chroma-server") as url:
        monkeypatch.setenv("LOCALCAT_CHROMA__URL", url)
        c = Container()
        report = c.indexer.ingest([docs_dir], "kbase")
        assert report.count("added") == 3
        assert "kbase" in [col.name for col in c.vectors.client.list_collections()]
        assert not (c.settings.data_dir / "chroma").exists()  # nothing went to the embedded store

        docs = c.retriever("kbase").invoke("espresso machine cleaning schedule")
        assert docs[0].metadata["source"].endswith("kitchen.html")

        (docs_dir / "kitchen.html").unlink()
        assert c.indexer.ingest([docs_dir], "kbase").count("removed") == 1
        remote = c.vectors.client.get_collection("kbase", embedding_function=None)
        assert set(remote.get(include=[])["ids"]) == c.store.chunk_ids("kbase")

        c.indexer.drop_collection("kbase")
        assert "kbase" not in [col.name for col in c.vectors.client.list_collections()]


def test_unreachable_chroma_server_names_the_fix(monkeypatch):
    from core.errors import StoreUnavailable
    from localcat.container import Container
    from tests.fixtures.servers import free_port

    monkeypatch.setenv("LOCALCAT_CHROMA__URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StoreUnavailable, match="chroma run"):
        Container().vectors.client  # noqa: B018 - opening the client is the act under test
