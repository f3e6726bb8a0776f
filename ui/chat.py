"""The page's Chat tab handlers: ask, rate, correct and upload, each through the use cases with
the caller behind the request (the same checks as the API: scope, limits, attribution).

No ``from __future__ import annotations`` (see ui/app.py).
"""

import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.acts import Incoming, Question, Verdict
from core.errors import BadRequest, LocalCatError
from core.schemas import Message

if TYPE_CHECKING:
    from localcat.auth import Principal
    from localcat.usecases import UseCases

RATING_ICON = {"up": "👍", "down": "👎"}
THUMB = {"up": "Like", "down": "Dislike"}  # gr.Chatbot's feedback labels


@dataclass
class Session:
    """Per-browser-tab state, kept in ``gr.State`` (Gradio deep-copies it for each session)."""

    history: list[Message] = field(default_factory=list)
    answer_ids: dict[int, str] = field(default_factory=dict)  # chat message index -> answer id
    last_answer_id: str | None = None
    ratings: dict[str, str] = field(default_factory=dict)  # answer id -> this tab's last rating


class Callers:
    """Who is behind a page request: the server's key gate asked with the request's headers."""

    def __init__(self, identify: Callable[[Mapping[str, str]], "Principal"]):
        self.identify = identify

    def __call__(self, request: Any) -> "Principal":
        return self.identify(request.headers if request is not None else {})


def received_file(path: str) -> Path:
    """A file Gradio received for the page (in its upload folder), never another path a client
    names: the page's file events take whatever FileData path the client sends."""
    from gradio.utils import get_upload_folder

    from ui.admin import EXPORTS

    folder = Path(get_upload_folder()).resolve()
    real = Path(os.path.realpath(path))
    if (not real.is_relative_to(folder) or real == folder or not real.is_file()
            or real.relative_to(folder).parts[0].startswith(EXPORTS)):
        raise BadRequest(f"{Path(path).name} was not uploaded through this page",
                         "upload the file with the page's upload box")
    return real


def discard_received(path: Path) -> None:
    """Gradio keeps uploads in its cache folder; once read, nothing of them stays there."""
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # its hash folder, when now empty
        path.parent.rmdir()


class ChatHandlers:
    """The handlers behind the Chat tab's events."""

    def __init__(self, uc: "UseCases", callers: Callers, warn: Callable[[LocalCatError], str],
                 translate: Callable[[Exception], LocalCatError | None]):
        self.uc = uc
        self.callers = callers
        self.warn = warn
        self.translate = translate

    def save(self, request: Any, session: Session, answer_id: str | None, rating: str | None,
             correction: str | None = None) -> tuple[bool, str]:
        """Rate or correct an answer of this tab; (saved, status line)."""
        if not answer_id:
            return False, self.warn(LocalCatError("There is no answer to rate yet",
                                                  "ask a question first"))
        # The latest row is an answer's verdict, so a correction repeats this tab's rating.
        rating = rating or session.ratings.get(answer_id)
        try:
            self.uc.rate(self.callers(request), Verdict(answer_id, rating, correction))
        except LocalCatError as err:
            return False, self.warn(err)
        if rating:
            session.ratings[answer_id] = rating
        what = "correction" if correction else "rating"
        return True, f"Saved {what} {RATING_ICON.get(rating, '')} for answer `{answer_id}`."

    def upload(self, request: Any, files: list[str], collection: str | None,
               progress: Callable[..., None]):
        """Ingest the files Gradio received (bytes only); the report."""
        from ingest.index import Progress

        received = [received_file(f) for f in files]
        total, done = len(received), 0

        def on_file_done(result) -> None:
            nonlocal done
            done += 1
            progress((done, total), desc=f"{Path(result.path).name}: {result.status}",
                     unit="files")

        progress((0, total), desc="Loading the embedding model", unit="files")
        try:
            with contextlib.ExitStack() as stack:
                incoming = [Incoming(_original_name(p), stack.enter_context(p.open("rb")))
                            for p in received]
                return self.uc.upload(self.callers(request), collection, incoming,
                                      progress=Progress(on_file_done=on_file_done))
        finally:
            for p in received:
                discard_received(p)

    def ask(self, request: Any, question: str, history: list[Message], collection: str | None,
            model: str | None, answer_id: str):
        """The use case's events for the caller's question (checks raise before any event)."""
        return self.uc.ask(self.callers(request), Question(question, history, collection, model),
                           answer_id=answer_id)


def _original_name(path: Path) -> str:
    """Gradio stores an upload as <cache>/<hash>/<the name the browser gave>."""
    return path.name
