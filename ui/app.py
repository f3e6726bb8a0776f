"""The Gradio page: chat with streamed answers and their sources, feedback, pickers and upload;
admins can pull a model from the Model picker (ui/models.py).

It only renders what ``assistant/`` gives it: answers come from ``container.pipeline(...).stream``,
feedback goes to ``container.feedback``, uploads to ``container.indexer``. The server mounts it with
``gr.mount_gradio_app(app, build_ui(container, principal=..., audit=...), path="/ui")``; admins also
get the Admin tab (ui/admin.py).

No ``from __future__ import annotations`` here: Gradio reads handler annotations such as
``gr.LikeData`` at runtime, and ``gr`` is only a local of ``build_ui`` (imported lazily).
"""

import html
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from core.errors import LocalCatError, MissingDependency
from core.schemas import Answer, Citation, IngestReport, Message, new_answer_id
from core.settings import LLMSettings

if TYPE_CHECKING:
    import gradio

FILES_ROUTE = "/files"
NO_SOURCES = "<p class='lc-empty'>No sources for this question.</p>"
SEARCHING = "<p class='lc-empty'>Searching the documents…</p>"
RATING_ICON = {"up": "👍", "down": "👎"}
THUMB = {"up": "Like", "down": "Dislike"}  # gr.Chatbot's feedback labels


@dataclass
class Session:
    """Per-browser-tab state, kept in ``gr.State`` (Gradio deep-copies it for each session)."""

    history: list[Message] = field(default_factory=list)
    answer_ids: dict[int, str] = field(default_factory=dict)  # chat message index -> answer id
    last_answer_id: str | None = None
    ratings: dict[str, str] = field(default_factory=dict)  # answer id -> this tab's last rating


# --- rendering ------------------------------------------------------------------------------------

def source_url(collection: str, chunk_id: str) -> str:
    return f"{FILES_ROUTE}/{quote(collection, safe='')}/{quote(chunk_id, safe='')}"


def _which(sentences: list[int]) -> str:
    """'sentence 2' / 'sentences 1, 3' (1-based, as a reader counts)."""
    return f"sentence{'s' if len(sentences) > 1 else ''} " + ", ".join(str(i + 1) for i in sentences)


def sources_footer(citations: list[Citation], collection: str) -> str:
    """Compact markdown list appended under an answer in the chat."""
    if not citations:
        return ""
    lines = ["", "", "**Sources**"]
    for c in citations:
        name = Path(c.source).name.replace("[", "(").replace("]", ")")
        place = c.place
        mark = f" · ✓ cited by {_which(c.sentences)}" if c.sentences else " · ✓ cited" if c.cited else ""
        # A reviewed answer is a user's correction, not a file: nothing to link to.
        title = f"✎ {name}" if c.reviewed else f"[{name}]({source_url(collection, c.chunk_id)})"
        lines.append(f"{c.n}. {title}{' — ' + place if place else ''} · score {c.score:.4f}{mark}")
    return "\n".join(lines)


def card_id(answer_id: str, n: int) -> str:
    """The element id of source [n]'s card in the panel: the answer's [n] marks link to it."""
    return f"lc-src-{answer_id.removeprefix('ans_')[:12]}-{n}"


def sources_html(citations: list[Citation], collection: str, answer_id: str = "") -> str:
    """The side panel: one card per source with its snippet (and, once answered, what cites it)."""
    if not citations:
        return NO_SOURCES
    cards = []
    for c in citations:
        esc = html.escape
        name = Path(c.source).name
        place = c.place
        sim = "" if c.similarity is None else f" · similarity {c.similarity:.2f}"
        cited = f" ✓ cited by {_which(c.sentences)}" if c.sentences else " ✓ cited" if c.cited else ""
        cards.append(
            f"<div class='lc-source' id='{card_id(answer_id, c.n)}' data-n='{c.n}'>"
            f"<div class='lc-head'><b>[{c.n}]</b> "
            + (f"<i title='a reviewed answer'>✎ {esc(c.source)}</i>" if c.reviewed else
               f"<a href='{esc(source_url(collection, c.chunk_id))}' target='_blank' "
               f"title='{esc(c.source)}'>{esc(name)}</a>") +
            f"{' — ' + esc(place) if place else ''}{cited}</div>"
            f"<div class='lc-score'>score {c.score:.4f}{sim}</div>"
            f"<div class='lc-snippet'>{esc(c.snippet)}</div></div>"
        )
    return "".join(cards)


UNSUPPORTED = "No shown source supports this sentence"
# The chat's markdown keeps inline styles and titles (Gradio sanitises, but lets these through);
# page-level CSS cannot reach it, since mount_gradio_app replaces the page's css.
_UNSUPPORTED_STYLE = "opacity: 0.65; text-decoration: underline dotted;"


def answer_markdown(answer: Answer) -> str:
    """The final chat message: each [n] links to its card in the sources panel, and sentences no
    shown source supports are dimmed, underlined and flagged [?]."""
    from assistant.citations import MARK, insert_mark

    names = {c.n: Path(c.source).name for c in answer.citations}

    def link(group) -> str:
        numbers = [int(x) for x in group.group(1).replace(";", ",").split(",")]
        if not all(n in names for n in numbers):
            return group.group(0)
        return "".join(f"<a class='lc-cite' href='#{card_id(answer.id, n)}' "
                       f"title='{html.escape(names[n], quote=True)}'>[{n}]</a>" for n in numbers)

    out, pos = [], 0
    for s in answer.sentences:
        out.append(MARK.sub(link, answer.answer[pos:s.start]))
        if s.supported:
            out.append(MARK.sub(link, s.text))
        else:
            flag = f"<sup class='lc-flag' title='{UNSUPPORTED}'>[?]</sup>"
            out.append(f"<span class='lc-unsupported' style='{_UNSUPPORTED_STYLE}' "
                       f"title='{UNSUPPORTED}'>{insert_mark(s.text, flag)}</span>")
        pos = s.end
    out.append(MARK.sub(link, answer.answer[pos:]))
    return "".join(out)


SOURCES_CSS = """
.lc-source { border: 1px solid var(--border-color-primary); border-radius: 6px; padding: 6px 8px;
             margin-bottom: 6px; font-size: 0.9em; }
.lc-score { color: var(--body-text-color-subdued); font-size: 0.85em; }
.lc-snippet { margin-top: 4px; white-space: pre-wrap; }
.lc-empty { color: var(--body-text-color-subdued); }
.lc-source:target { outline: 2px solid var(--color-accent); }
"""


def report_markdown(report: IngestReport) -> str:
    s = report.summary()
    head = (f"**{report.collection}**: {s['added']} added · {s['updated']} updated · "
            f"{s['skipped']} unchanged · {s['failed']} failed · {report.chunks_written} chunks "
            f"written in {report.seconds:.1f} s")
    rows = ["| File | Status | Chunks | Reason |", "|---|---|---|---|"]
    for f in report.files:
        reason = (f.reason or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| {Path(f.path).name} | {f.status} | {f.chunks} | {reason} |")
    return head + "\n\n" + "\n".join(rows)


# --- the page -------------------------------------------------------------------------------------

def _as_localcat_error(exc: Exception, llm: LLMSettings | None = None) -> LocalCatError | None:
    """The LocalCatError ``exc`` is or stands for (the runtime's own mid-answer errors are
    translated as the CLI and API translate them); None for anything else, which propagates."""
    if isinstance(exc, LocalCatError):
        return exc
    if llm is None:
        return None
    from core.llm import translate_runtime_error

    return translate_runtime_error(exc, llm)


def _warn(err: LocalCatError) -> str:
    """Show problem + fix as a toast; returns the inline text for the part of the page that failed.

    A toast rather than raising gr.Error: Gradio covers every output of a failed event with an
    "Error" overlay, which would hide the chat itself.
    """
    import gradio as gr

    gr.Warning(str(err), title=type(err).__name__)
    return f"⚠️ {err}"


def build_ui(container: Any, *, principal: Callable[[Mapping[str, str]], Any] | None = None,
             audit: Callable[..., None] | None = None,
             uploads: Callable[..., Any] | None = None) -> "gradio.Blocks":
    """The LocalCat page for ``container`` (an ``localcat.container.Container``).

    ``principal`` tells who is behind a request from its headers (the server's key gate; it
    returns a ``localcat.auth.Principal``); without it the page is local and its user an admin.
    ``audit`` records the admin actions taken on the page, as the API records its own.
    ``uploads(collection, save, ingest)`` runs an upload the way the server runs the API's
    (``localcat.uploads.ingest_upload``: its bounded queue, journal and cancel on shutdown).
    """
    try:
        import gradio as gr
    except ImportError as err:
        raise MissingDependency("gradio", "./scripts/setup") from err

    from ui.admin import AdminGate, CommandJob, build_admin
    from ui.models import picker, pull_argv, pull_env

    settings = container.settings
    default_collection = settings.chroma.collection
    gate = AdminGate(principal, audit)
    # One pull at a time for the whole page, followed by whichever admin tab has it open.
    pulls: dict[str, Any] = {"job": None, "name": None}

    def collection_choices() -> list[tuple[str, str]]:
        return [(f"{c['name']} ({c['files']} files, {c['chunks']} chunks)", c["name"])
                for c in container.store.collections()]

    # The model the settings name, as the list spells it. Asking with it passes no override, so the
    # page shares the container's default model (one llama.cpp load) with the HTTP API.
    configured: dict[str, str | None] = {"model": None}

    def model_dropdown(model: str | None):
        chosen = picker(container)
        if chosen.error is not None:
            # The page stays usable with the configured model; say why the list is short.
            _warn(chosen.error)
        configured["model"] = chosen.configured
        if model not in chosen.values:
            model = chosen.configured
        return gr.Dropdown(choices=chosen.choices, value=model, info=chosen.info)

    def refresh(collection: str | None, model: str | None):
        colls = collection_choices()
        names = [v for _, v in colls]
        if collection not in names:
            collection = default_collection if default_collection in names or not names else names[0]
        return gr.Dropdown(choices=colls, value=collection), model_dropdown(model)

    # --- pulling a model (admins) -----------------------------------------------------------------

    def start_pull(model: str | None, request: gr.Request):
        from core.catalog import CATALOG
        from core.llm import serves_embedded

        p = gate.require(request, "pull models")
        name = (model or "").strip()
        job: CommandJob | None = pulls["job"]
        if job is not None and job.running:
            gr.Warning(f"{job.title} is still running.")
            return gr.skip(), gr.skip(), gr.skip()
        embedded = serves_embedded(container.served_llm, container.ollama_hosts)
        if not name or (embedded and name not in CATALOG):
            gr.Warning(f"Pick a model to pull first: one of {', '.join(CATALOG)}" if embedded
                       else "Type the name of an Ollama model first (e.g. llama3.2).")
            return gr.skip(), gr.skip(), gr.skip()
        job = pulls["job"] = CommandJob(pull_argv(name, ollama=not embedded),
                                        pull_env(settings), f"Pull of `{name}`")
        pulls["name"] = name
        gate.log(p, "models.pull", name)
        return (gr.Textbox(value=job.command_line, visible=True), job.status(),
                gr.Timer(active=True))

    def follow_pull(model: str | None, request: gr.Request):
        gate.require(request, "follow model pulls")
        job = pulls["job"]
        if job is None:
            return gr.skip(), gr.skip(), gr.Timer(active=False), gr.skip()
        output = gr.Textbox(value=job.command_line + job.output(), visible=True)
        if job.running:
            return output, job.status(), gr.skip(), gr.skip()
        # Done: list it as installed (and pick it) once it is.
        return (output, job.status(), gr.Timer(active=False),
                model_dropdown(pulls["name"] if job.returncode == 0 else model))

    def pull_load(request: gr.Request):
        """The Pull button for admins; a pull that is going on is followed."""
        if not gate.is_admin(request):
            return gr.Button(visible=False), gr.skip()
        job = pulls["job"]
        return gr.Button(visible=True), gr.Timer(active=job is not None and job.running)

    def ask(question: str, chat: list[dict], session: Session, collection: str | None,
            model: str | None):
        from assistant.pipeline import Done, Sources, Token

        question = (question or "").strip()
        if not question:
            gr.Warning("Type a question first.")
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        collection = collection or default_collection
        chat = [*chat, {"role": "user", "content": question},
                {"role": "assistant", "content": "…"}]
        yield chat, "", SEARCHING, session, gr.skip()
        text = ""
        answer_id = new_answer_id()  # known up front, so the cards' ids match the answer's links
        try:
            override = model if model and model != configured["model"] else None
            pipeline = container.pipeline(collection, override, record=True)
            for event in pipeline.stream(question, session.history, answer_id=answer_id):
                if isinstance(event, Sources):
                    yield (gr.skip(), gr.skip(), sources_html(event.citations, collection, answer_id),
                           gr.skip(), gr.skip())
                elif isinstance(event, Token):
                    text += event.text
                    chat[-1] = {"role": "assistant", "content": text}
                    yield chat, gr.skip(), gr.skip(), gr.skip(), gr.skip()
                elif isinstance(event, Done):
                    answer = event.answer
        except Exception as exc:
            err = _as_localcat_error(exc, container.served_llm)
            if err is None:
                raise
            # The problem takes the place of the answer; the question goes back into the box.
            chat[-1] = {"role": "assistant", "content": _warn(err)}
            yield chat, question, NO_SOURCES, session, gr.skip()
            return
        # The text streamed as generated; the final message is the checked one.
        chat[-1] = {"role": "assistant",
                    "content": answer_markdown(answer) + sources_footer(answer.citations, collection)}
        session.answer_ids[len(chat) - 1] = answer.id
        session.last_answer_id = answer.id
        session.history += [Message(role="user", content=question),
                            Message(role="assistant", content=answer.answer)]
        yield (chat, gr.skip(), sources_html(answer.citations, collection, answer.id), session,
               f"Answer `{answer.id}` · {answer.model} · rate it or send a correction below.")

    def save(session: Session, answer_id: str | None, rating: str | None,
             correction: str | None = None) -> tuple[bool, str]:
        """(saved, status line)."""
        if not answer_id:
            gr.Warning("There is no answer to rate yet — ask a question first.")
            return False, "⚠️ There is no answer to rate yet."
        # The latest row is an answer's verdict, so a correction repeats this tab's rating.
        rating = rating or session.ratings.get(answer_id)
        try:
            container.feedback.add_feedback(answer_id, rating, correction=correction)
        except LocalCatError as err:
            return False, _warn(err)
        if rating:
            session.ratings[answer_id] = rating
        what = "correction" if correction else "rating"
        return True, f"Saved {what} {RATING_ICON.get(rating, '')} for answer `{answer_id}`."

    def thumbs(chat: list[dict], session: Session):
        """The chat's own thumbs, set to this tab's ratings (one entry per assistant message)."""
        value = [THUMB.get(session.ratings.get(session.answer_ids.get(i, ""), ""))
                 for i, m in enumerate(chat) if m["role"] == "assistant"]
        return gr.Chatbot(feedback_value=value)

    def rate_last(rating: str):
        def handler(chat: list[dict], session: Session):
            _, status = save(session, session.last_answer_id, rating)
            return status, session, thumbs(chat, session)
        return handler

    def rate_message(chat: list[dict], session: Session, data: gr.LikeData):
        answer_id = session.answer_ids.get(data.index if isinstance(data.index, int) else data.index[0])
        if data.liked not in (True, False):
            # Un-selecting a thumb: feedback rows are append-only, so the last verdict stands.
            return gr.skip(), session, thumbs(chat, session)
        _, status = save(session, answer_id, "up" if data.liked else "down")
        return status, session, thumbs(chat, session)

    def send_correction(text: str, session: Session):
        if not (text or "").strip():
            gr.Warning("Write the correct answer first.")
            return gr.skip(), gr.skip(), session
        saved, status = save(session, session.last_answer_id, None, correction=text.strip())
        return status, "" if saved else gr.skip(), session

    # Gradio injects a tracker into a parameter whose default is gr.Progress().
    def ingest(files: list[str] | None, collection: str | None,
               progress=gr.Progress()):  # noqa: B008
        from core.chunkstore import check_collection_name
        from ingest.index import Progress

        if not files:
            return gr.skip(), gr.skip(), gr.skip()
        try:
            name = check_collection_name((collection or default_collection).strip())
            # A stable copy (same folder as the HTTP API's uploads): Gradio's cache is temporary,
            # and re-uploading a changed file then updates it instead of adding a second source.
            folder = settings.uploads_dir / name

            def save() -> list[Path]:
                folder.mkdir(parents=True, exist_ok=True)
                paths = []
                for f in files:
                    target = folder / Path(f).name
                    shutil.copyfile(f, target)
                    paths.append(target)
                return paths

            total, done = len(files), 0

            def on_file_done(result) -> None:
                nonlocal done
                done += 1
                progress((done, total), desc=f"{Path(result.path).name}: {result.status}",
                         unit="files")

            def run(paths: list[Path], cancel=None):
                progress((0, total), desc="Loading the embedding model", unit="files")
                return container.indexer.ingest(paths, name, prune=False, cancel=cancel,
                                                progress=Progress(on_file_done=on_file_done))

            # In the server: the API's queue (429-like Busy when full), journal and cancel.
            report = uploads(name, save, run) if uploads is not None else run(save())
        except LocalCatError as err:
            return _warn(err), gr.skip(), None
        failed = [f for f in report.files if f.status == "failed"]
        if failed:
            gr.Warning("; ".join(f"{Path(f.path).name}: {f.reason}" for f in failed),
                       title=f"{len(failed)} file(s) not ingested")
        return (report_markdown(report), gr.Dropdown(choices=collection_choices(), value=name),
                None)

    with gr.Blocks(title="LocalCat", fill_height=True) as page:
        session = gr.State(Session())
        gr.Markdown("## 🐱 LocalCat — ask your documents")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat-tab", elem_id="chat-tab"):
                with gr.Row():
                    collection = gr.Dropdown(label="Collection", value=default_collection,
                                             allow_custom_value=True, elem_id="collection", scale=3,
                                             info="Type a new name to upload into a new collection.")
                    model = gr.Dropdown(label="Model", allow_custom_value=True, elem_id="model", scale=3)
                    pull_btn = gr.Button("⬇ Pull", elem_id="pull", scale=1, size="sm", visible=False)
                    refresh_btn = gr.Button("🔄 Refresh", elem_id="refresh", scale=1, size="sm")
                pull_status = gr.Markdown("", elem_id="pull-status")
                pull_log = gr.Textbox(label="Pull output", lines=6, max_lines=6, autoscroll=True,
                                      interactive=False, visible=False, elem_id="pull-log")
                pull_timer = gr.Timer(1.0, active=False)
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        chat = gr.Chatbot(label="Chat", elem_id="chat", height=460,
                                          feedback_options=("Like", "Dislike"))
                        with gr.Row():
                            question = gr.Textbox(placeholder="Ask a question about your documents…",
                                                  show_label=False, elem_id="question", scale=5,
                                                  submit_btn=False, lines=1, max_lines=4)
                            ask_btn = gr.Button("Ask", variant="primary", elem_id="ask", scale=1)
                        status = gr.Markdown("", elem_id="feedback-status")
                        with gr.Row():
                            up_btn = gr.Button("👍 Good answer", elem_id="thumbs-up", size="sm")
                            down_btn = gr.Button("👎 Bad answer", elem_id="thumbs-down", size="sm")
                        correction = gr.Textbox(label="Correct answer (for the last answer)", lines=2,
                                                elem_id="correction")
                        correct_btn = gr.Button("Send correction", elem_id="send-correction", size="sm")
                    with gr.Column(scale=2):
                        gr.Markdown("### Sources")
                        sources = gr.HTML("<p class='lc-empty'>Sources of the latest answer appear here.</p>",
                                          elem_id="sources", css_template=SOURCES_CSS)
                        upload = gr.File(label="Add documents to the collection", file_count="multiple",
                                         elem_id="upload")
                        report = gr.Markdown("", elem_id="ingest-report")
            # Shown to admins only (on load); its handlers check again.
            _, admin_load, admin_outputs = build_admin(container, principal=principal,
                                                       audit=audit)

        pickers = [collection, model]
        page.load(refresh, pickers, pickers)
        page.load(admin_load, None, admin_outputs)
        page.load(pull_load, None, [pull_btn, pull_timer])
        refresh_btn.click(refresh, pickers, pickers)
        # Admins only (each handler checks): hidden from the API docs as the Admin tab's are.
        pull_btn.click(start_pull, [model], [pull_log, pull_status, pull_timer],
                       api_visibility="undocumented")
        pull_timer.tick(follow_pull, [model], [pull_log, pull_status, pull_timer, model],
                        api_visibility="undocumented")

        # One event for Enter and the button, one answer at a time: llama.cpp serves one
        # generation at a time anyway, and a queue shows the user their place instead of hanging.
        gr.on([question.submit, ask_btn.click], ask,
              inputs=[question, chat, session, collection, model],
              outputs=[chat, question, sources, session, status], concurrency_limit=1)
        # The chat's own "Clear" must also forget the history the next question is condensed with.
        chat.clear(Session, None, session)

        rated = [status, session, chat]
        up_btn.click(rate_last("up"), [chat, session], rated)
        down_btn.click(rate_last("down"), [chat, session], rated)
        chat.like(rate_message, [chat, session], rated)
        correct_btn.click(send_correction, [correction, session], [status, correction, session])
        upload.upload(ingest, [upload, collection], [report, collection, upload])
    return page
