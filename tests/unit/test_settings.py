from __future__ import annotations

from pathlib import Path

import pytest

from core.chunkstore import check_collection_name
from core.errors import BadRequest
from core.settings import Settings


def test_env_and_toml_layers(tmp_path, monkeypatch):
    cfg = tmp_path / "localcat.toml"
    cfg.write_text('[llm]\nruntime = "embedded"\nmax_tokens = 99\n[retrieval]\nk = 7\n')
    monkeypatch.setenv("LOCALCAT_CONFIG", str(cfg))
    monkeypatch.setenv("LOCALCAT_RETRIEVAL__K", "3")
    s = Settings()
    assert s.llm.runtime == "embedded" and s.llm.max_tokens == 99
    assert s.retrieval.k == 3  # the environment wins over the file
    assert s.data_dir == Path(tmp_path / "data")


def test_ollama_host_follows_ollamas_own_variable(monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0:11500")
    assert Settings().llm.ollama_host == "http://127.0.0.1:11500"


@pytest.mark.parametrize("name", ["ab", "../etc", "a/b", "-x-", "a..b", "x" * 70])
def test_bad_collection_names(name):
    with pytest.raises(BadRequest, match="collection name"):
        check_collection_name(name)


def test_config_shows_no_secrets(monkeypatch):
    from click.testing import CliRunner

    from localcat.cli import main

    monkeypatch.setenv("LOCALCAT_SERVER__API_KEYS", '["an-admin-secret"]')
    monkeypatch.setenv("LOCALCAT_DATABASE__URL", "postgresql://app:db-password@db:5432/localcat")
    for args in (["config"], ["config", "--json"]):
        out = CliRunner().invoke(main, args)
        assert out.exit_code == 0, out.output
        assert "an-admin-secret" not in out.stdout and "db-password" not in out.stdout
        assert "postgresql://***@db:5432/localcat" in out.stdout
