"""Secrets out of everything LocalCat shows: URLs' user-info and secret query parameters.

``OLLAMA_HOST=http://user:pass@host`` or a ``postgresql+psycopg://user:secret@db/x`` database URL
must still connect, so the settings keep the real URL; every message, log line, /health body and
``localcat config`` that names one passes it through ``redact_url`` or ``redact`` first.
"""

from __future__ import annotations

import logging
import re

MASK = "***"

# scheme://, then everything up to whitespace, a double quote or an angle bracket: quotes and
# brackets end URLs in reprs, JSON and HTML, while user-info may hold most other characters.
_URL = re.compile(r"([a-zA-Z][a-zA-Z0-9+.\-]*://)([^\s\"<>`]*)")
_AUTHORITY = re.compile(r"[^/?#]*")
# No '@' before the first '/': still user-info when a password holds an unescaped '/' or '?'
# (SQLAlchemy reads `user:pa/ss@db` so), but not `host:8080/path/@x`, whose ':' starts a port.
_USER_WITH_SLASH = re.compile(r"[^:/?#@\[\]]*:(?!\d*(?:[/?#]|$))[^@]*@")
_SECRET_PARAM = re.compile(
    r"([?&;])([^=&#;?]*(?:pass|pwd|token|key|secret|auth|credential|signature)[^=&#;]*)=([^&#;]*)",
    re.IGNORECASE,
)


def _redact_rest(rest: str) -> str:
    """``rest``: what follows ``scheme://``."""
    authority = _AUTHORITY.match(rest)[0]
    if "@" in authority:  # the last '@' ends the user-info, as httpx and urllib read it
        rest = f"{MASK}@{rest[authority.rindex('@') + 1:]}"
    elif found := _USER_WITH_SLASH.match(rest):
        rest = f"{MASK}@{rest[found.end():]}"
    return _SECRET_PARAM.sub(rf"\1\2={MASK}", rest)


def redact_url(url: str) -> str:
    """``url`` with its user-info (user and password) and secret-named query values as ``***``.

    ``http://user:pass@host:11434/x?token=t`` → ``http://***@host:11434/x?token=***``; a URL
    without them comes back unchanged. Without a scheme (``user:pass@host:8000``, which the Chroma
    setting accepts) the part before the first '/' is read as the authority.
    """
    if found := _URL.match(url):
        return found[1] + _redact_rest(url[found.end(1):])
    return _redact_rest(url)


def redact(text: str) -> str:
    """``text`` with every ``scheme://…`` URL in it passed through ``redact_url``."""
    return _URL.sub(lambda m: m[1] + _redact_rest(m[2]), text)


class RedactingFilter(logging.Filter):
    """Redacts a record's message (``msg % args``) and its traceback text before a handler
    writes them. On a handler it covers every logger whose records reach that handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            # The handler reports a bad format itself, printing msg and args: redact those.
            record.msg = redact(str(record.msg))
            record.args = tuple(redact(str(a)) for a in _args(record))
            return True
        clean = redact(message)
        if clean != message:
            # Formatters that read args (uvicorn's access log) keep them when redacting each one
            # gives the same text; otherwise the record becomes the redacted text alone.
            args = tuple(a if isinstance(a, (int, float)) or a is None else redact(str(a))
                         for a in _args(record))
            msg = redact(str(record.msg))
            try:
                same = bool(args) and (msg % args) == clean
            except (TypeError, ValueError):
                same = False
            record.msg, record.args = (msg, args) if same else (clean, ())
        if record.exc_info and not record.exc_text:
            # Formatter.format keeps exc_text once set, so each handler writes this one.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _args(record: logging.LogRecord) -> tuple:
    if isinstance(record.args, tuple):
        return record.args
    return () if record.args is None else (record.args,)
