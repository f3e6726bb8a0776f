"""No URL password leaves LocalCat: messages, logs, /health's hosts, `localcat config`."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
from click.testing import CliRunner
from langchain_core.language_models import BaseChatModel
from langchain_core.outputs import ChatGenerationChunk, ChatResult

from core.errors import LocalCatError, RuntimeUnavailable, StoreUnavailable
from core.redact import RedactingFilter, redact, redact_url
from tests.fixtures.fake_ollama import free_port


@pytest.mark.parametrize(("url", "shown"), [
    ("http://user:pass@host:11434/api", "http://***@host:11434/api"),
    ("https://user:pass@host/path?q=1", "https://***@host/path?q=1"),
    ("http://user:pass@host", "http://***@host"),
    ("http://user@host:11434", "http://***@host:11434"),  # the user name is not shown either
    ("http://user:pass@[::1]:11434/api", "http://***@[::1]:11434/api"),
    ("http://[fe80::1]:11434", "http://[fe80::1]:11434"),
    ("postgresql+psycopg://app:s3cret@db/x", "postgresql+psycopg://***@db/x"),
    ("postgresql://app:s3cret@db:5432/localcat?sslmode=require",
     "postgresql://***@db:5432/localcat?sslmode=require"),
    ("http://u:p@ss@host:1/", "http://***@host:1/"),  # an unescaped '@' in the password
    ("postgresql://u:pa/ss@db/x", "postgresql://***@db/x"),  # an unescaped '/' (SQLAlchemy reads it)
    ("user:pass@host:8000", "***@host:8000"),  # no scheme, as the Chroma setting allows
    ("http://h/x?token=abc&q=1&api_key=z&Password=p", "http://h/x?token=***&q=1&api_key=***&Password=***"),
    ("http://127.0.0.1:11434", "http://127.0.0.1:11434"),
    ("http://host:8080/users/@me", "http://host:8080/users/@me"),  # '@' in the path: no user-info
    ("sqlite:////tmp/feedback.db", "sqlite:////tmp/feedback.db"),
    ("", ""),
])
def test_redact_url(url: str, shown: str):
    assert redact_url(url) == shown


def test_redact_finds_every_url_in_text():
    text = ("Cannot reach Ollama at http://u:s3cret@a:11434 (cannot connect); "
            "db postgresql+psycopg://app:pw2@db:5432/x, chroma 'https://k:pw3@c:8000/'. "
            'JSON {"url": "http://x:pw4@[::1]:1"} and mail me@example.com')
    out = redact(text)
    for secret in ("s3cret", "pw2", "pw3", "pw4", "u:", "app:", "k:", "x:"):
        assert secret not in out
    assert out == ("Cannot reach Ollama at http://***@a:11434 (cannot connect); "
                   "db postgresql+psycopg://***@db:5432/x, chroma 'https://***@c:8000/'. "
                   'JSON {"url": "http://***@[::1]:1"} and mail me@example.com')


def test_text_without_urls_is_unchanged():
    text = "No Ollama host could answer — start them with `ollama serve` (user@host, a:b@c)"
    assert redact(text) == text


# --- logging ------------------------------------------------------------------------------------

def _logger(name: str) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger(name)
    logger.handlers, logger.propagate = [handler], False
    return logger, out


def test_the_filter_redacts_a_message_and_its_args():
    log, out = _logger("test.redact.args")
    log.warning("Ollama at %s failed (%s); %d left", "http://u:s3cret@a:1", "cannot connect", 2)
    assert out.getvalue() == "Ollama at http://***@a:1 failed (cannot connect); 2 left\n"


def test_the_filter_keeps_args_for_formatters_that_read_them():
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s"',
                               ("127.0.0.1", "GET", "/x?next=http://u:s3cret@h/"), None)
    assert RedactingFilter().filter(record)
    assert record.args == ("127.0.0.1", "GET", "/x?next=http://***@h/")  # uvicorn unpacks them
    assert "s3cret" not in record.getMessage()


def test_the_filter_redacts_a_message_built_from_several_args():
    log, out = _logger("test.redact.parts")
    log.warning("at http://%s:%s@db/x", "app", "s3cret")
    assert out.getvalue() == "at http://***@db/x\n"


def test_the_filter_redacts_the_exception_text():
    log, out = _logger("test.redact.exc")
    try:
        raise ConnectionError("refused by http://u:s3cret@a:1/api/chat")
    except ConnectionError:
        log.exception("request to %s failed", "http://u:s3cret@a:1")
    text = out.getvalue()
    assert "s3cret" not in text
    assert "Traceback" in text and "ConnectionError: refused by http://***@a:1/api/chat" in text


def test_install_redaction_covers_third_party_loggers_through_localcat_handlers():
    from core.logs import install_redaction

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        install_redaction()
        install_redaction()  # idempotent
        assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
        assert any(isinstance(f, RedactingFilter) for f in logging.lastResort.filters)
        # A third-party logger has no filter of its own: the handler's catches its record.
        logging.getLogger("httpx").error("HTTP Request: GET %s", "http://u:s3cret@a:1/api/version")
    finally:
        root.removeHandler(handler)
    assert out.getvalue() == "HTTP Request: GET http://***@a:1/api/version\n"


# --- where URLs are named -----------------------------------------------------------------------

def test_ollama_hosts_snapshot_and_errors_hide_the_password():
    from core.llm import build_chat_model, translate_runtime_error
    from core.ollama_hosts import OllamaHosts
    from core.settings import LLMSettings

    one, two = (f"http://user:s3cret@127.0.0.1:{free_port()}" for _ in range(2))
    hosts = OllamaHosts()
    assert not hosts.probe(one)  # a real probe of a closed port
    hosts.failed(two, f"refused by {two}")
    shown = hosts.snapshot([one, two])
    assert "s3cret" not in json.dumps(shown) and "user" not in json.dumps(shown)
    assert shown[0]["url"] == one.replace("user:s3cret@", "***@") and not shown[0]["healthy"]

    with pytest.raises(RuntimeUnavailable) as single:
        build_chat_model(LLMSettings(runtime="ollama", ollama_host=one))
    with pytest.raises(RuntimeUnavailable) as several:
        build_chat_model(LLMSettings(runtime="ollama", ollama_hosts=[one, two]), hosts)
    llm = LLMSettings(ollama_host=one)
    translated = [translate_runtime_error(e, llm) for e in (
        httpx.ConnectError("refused"), httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError(f"peer {one} closed"))]
    for err in (single.value, several.value, *translated):
        assert "s3cret" not in str(err) and "Ollama at" in str(err) and "***@127.0.0.1" in str(err)


class Refused(BaseChatModel):
    """A host's chat model whose host refuses the connection."""

    @property
    def _llm_type(self) -> str:
        return "refused"

    def _generate(self, *args: Any, **kwargs: Any) -> ChatResult:
        raise AssertionError("the router streams")

    def _stream(self, *args: Any, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        raise httpx.ConnectError("refused")
        yield  # a generator: the error comes with the first chunk, as ChatOllama's does


def test_a_router_names_failed_hosts_without_their_password(caplog):
    from core.ollama_hosts import OllamaHosts, OllamaRouter

    a, b = "http://u:s3cret@a:11434", "http://u:s3cret@b:11434"
    clients = {a: Refused(), b: Refused()}
    model = OllamaRouter(model="llama3.2", clients=clients,
                         hosts=OllamaHosts(probe=lambda url: "0.9.3"))
    with caplog.at_level(logging.WARNING, "localcat.ollama"), pytest.raises(RuntimeUnavailable) as err:
        list(model.stream("hi"))
    assert "http://***@a:11434: cannot connect" in str(err.value)
    assert "s3cret" not in str(err.value) and "s3cret" not in caplog.text and caplog.text
    assert "s3cret" not in json.dumps(model._identifying_params)


def test_chroma_and_database_messages_hide_the_password(tmp_path: Path):
    from core.chroma import chroma_client
    from core.db import Database
    from core.settings import ChromaSettings

    with pytest.raises(StoreUnavailable) as err:
        chroma_client(ChromaSettings(url=f"http://u:s3cret@127.0.0.1:{free_port()}"), tmp_path)
    assert "s3cret" not in str(err.value) and "http://***@127.0.0.1" in str(err.value)

    db = Database("postgresql://app:s3cret@db:5432/localcat")
    assert db.label == "postgresql+psycopg://***@db:5432/localcat"
    with pytest.raises(StoreUnavailable) as err:
        Database("postgresql://app:s3cret@db:notaport/localcat").engine  # noqa: B018
    assert "Cannot use the database at postgresql+psycopg://***@db:notaport/localcat" in str(err.value)
    assert "s3cret" not in str(err.value) and "app" not in str(err.value)


def test_localcat_config_shows_no_password(monkeypatch: pytest.MonkeyPatch):
    from localcat.cli import main

    monkeypatch.setenv("OLLAMA_HOST", "http://olla:pw-ollama-host@gpu0:11434")
    monkeypatch.setenv("LOCALCAT_LLM__OLLAMA_HOSTS",
                       '["http://olla:pw-host-1@gpu1:11434", "http://olla:pw-host-2@gpu2:11434"]')
    monkeypatch.setenv("LOCALCAT_DATABASE__URL", "postgresql+psycopg://app:pw-database@db/x")
    monkeypatch.setenv("LOCALCAT_CHROMA__URL", "http://chroma:pw-chroma@vectors:8000")
    monkeypatch.setenv("LOCALCAT_SERVER__API_KEYS", '["pw-key-1", "pw-key-2"]')
    monkeypatch.setenv("LOCALCAT_SERVER__USER_KEYS", '["pw-user-key"]')
    for args in (["config"], ["config", "--json"]):
        out = CliRunner().invoke(main, args)
        assert out.exit_code == 0, out.output
        assert "pw-" not in out.output and "olla:" not in out.output and "app:" not in out.output
        for shown in ("http://***@gpu0:11434", "http://***@gpu1:11434", "http://***@gpu2:11434",
                      "postgresql+psycopg://***@db/x", "http://***@vectors:8000"):
            assert shown in out.output
    server = json.loads(out.output)["server"]
    assert server["api_keys"] == ["***", "***"] and server["user_keys"] == ["***"]


def test_the_cli_error_line_hides_a_password():
    from core.clikit import ErrorGroup

    @click.group(cls=ErrorGroup)
    def group() -> None:
        pass

    @group.command()
    def fail() -> None:
        raise LocalCatError("Cannot reach http://u:s3cret@a:1", "start it")

    out = CliRunner().invoke(group, ["fail"])
    assert out.exit_code == 1
    assert "s3cret" not in out.output and "Error: Cannot reach http://***@a:1 — start it" in out.output
