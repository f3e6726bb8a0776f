"""The Gradio page: chat with streamed answers and their sources, feedback, pickers and upload;
admins can pull a model from the Model picker (ui/models.py).

It only renders what the use cases (localcat/usecases/) return, acting as the caller behind each
request: asking, rating, correcting and uploading get the API's checks. The server mounts it with
``gr.mount_gradio_app(app, build_ui(usecases, principal=...), path="/ui")``; admins also get the
Admin tab (ui/admin.py).

No ``from __future__ import annotations`` here: Gradio reads handler annotations such as
``gr.LikeData`` at runtime, and ``gr`` is only a local of ``build_ui`` (imported lazily).
"""

import html
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from core.errors import LocalCatError, MissingDependency
from core.schemas import Answer, Citation, IngestReport, Message, new_answer_id
from core.settings import LLMSettings
from ui.chat import THUMB, Callers, ChatHandlers, Session

if TYPE_CHECKING:
    import gradio

    from localcat.auth import Principal
    from localcat.usecases import UseCases

FILES_ROUTE = "/files"
NO_SOURCES = "<p class='lc-empty'>No sources for this question.</p>"
SEARCHING = "<p class='lc-empty'>Searching the documents…</p>"


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


def build_ui(uc: "UseCases", *,
             principal: Callable[[Mapping[str, str]], "Principal"]) -> "gradio.Blocks":
    """The LocalCat page over the use cases ``uc`` (localcat/usecases/).

    ``principal`` tells who is behind a request from its headers (the server's key gate); every
    handler acts as that caller, so the page gets exactly the API's checks. Admins also get the
    Admin tab (ui/admin.py).
    """
    try:
        import gradio as gr
    except ImportError as err:
        raise MissingDependency("gradio", "./scripts/setup") from err

    from ui.admin import build_admin
    from ui.models import PullControls

    callers = Callers(principal)
    container = uc.parts.container
    chat = ChatHandlers(uc, callers, _warn, lambda exc: _as_localcat_error(exc, container.served_llm))
    pulls = PullControls(uc, callers)
    # Page files (uploads on their way in, exports on their way out) live at most 15 minutes.
    with gr.Blocks(title="LocalCat", fill_height=True, delete_cache=(300, 900)) as page:
        session = gr.State(Session())
        gr.Markdown("## 🐱 LocalCat — ask your documents")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat-tab", elem_id="chat-tab"):
                ui = _chat_layout(gr, uc.parts.settings.chroma.collection)
            # Shown to admins only (on load); its handlers check again.
            _, admin_load, admin_outputs = build_admin(uc, callers)
        _wire_chat(gr, page, ui, session, chat, pulls, uc)
        page.load(admin_load, None, admin_outputs)
    # Gradio checks that a client's FileData paths lie in its upload folder only for a launched
    # page; mounted, it would copy any server file the client names into its cache (and hand it
    # to the handler). Marked launched, its own check applies; ui/chat.py checks again.
    page.has_launched = True
    return page


def _chat_layout(gr, default_collection: str) -> dict:
    """The Chat tab's components, by name."""
    ui: dict = {}
    with gr.Row():
        ui["collection"] = gr.Dropdown(label="Collection", value=default_collection,
                                       allow_custom_value=True, elem_id="collection", scale=3,
                                       info="Type a new name to upload into a new collection.")
        ui["model"] = gr.Dropdown(label="Model", allow_custom_value=True, elem_id="model", scale=3)
        ui["pull_btn"] = gr.Button("⬇ Pull", elem_id="pull", scale=1, size="sm", visible=False)
        ui["refresh_btn"] = gr.Button("🔄 Refresh", elem_id="refresh", scale=1, size="sm")
    ui["pull_status"] = gr.Markdown("", elem_id="pull-status")
    ui["pull_log"] = gr.Textbox(label="Pull output", lines=6, max_lines=6, autoscroll=True,
                                interactive=False, visible=False, elem_id="pull-log")
    ui["pull_timer"] = gr.Timer(1.0, active=False)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            ui["chat"] = gr.Chatbot(label="Chat", elem_id="chat", height=460,
                                    feedback_options=("Like", "Dislike"))
            with gr.Row():
                ui["question"] = gr.Textbox(placeholder="Ask a question about your documents…",
                                            show_label=False, elem_id="question", scale=5,
                                            submit_btn=False, lines=1, max_lines=4)
                ui["ask_btn"] = gr.Button("Ask", variant="primary", elem_id="ask", scale=1)
            ui["status"] = gr.Markdown("", elem_id="feedback-status")
            with gr.Row():
                ui["up_btn"] = gr.Button("👍 Good answer", elem_id="thumbs-up", size="sm")
                ui["down_btn"] = gr.Button("👎 Bad answer", elem_id="thumbs-down", size="sm")
            ui["correction"] = gr.Textbox(label="Correct answer (for the last answer)", lines=2,
                                          elem_id="correction")
            ui["correct_btn"] = gr.Button("Send correction", elem_id="send-correction", size="sm")
        with gr.Column(scale=2):
            gr.Markdown("### Sources")
            ui["sources"] = gr.HTML("<p class='lc-empty'>Sources of the latest answer appear "
                                    "here.</p>", elem_id="sources", css_template=SOURCES_CSS)
            ui["upload"] = gr.File(label="Add documents to the collection", file_count="multiple",
                                   elem_id="upload")
            ui["report"] = gr.Markdown("", elem_id="ingest-report")
    return ui


def _wire_chat(gr, page, ui: dict, session, chat: ChatHandlers, pulls,
               uc: "UseCases") -> None:
    """The Chat tab's events."""
    default_collection = uc.parts.settings.chroma.collection

    def refresh(collection: str | None, model: str | None, request: gr.Request):
        colls = _collection_choices(chat, request)
        names = [v for _, v in colls]
        if collection not in names:
            collection = default_collection if default_collection in names or not names else names[0]
        return gr.Dropdown(choices=colls, value=collection), pulls.dropdown(model)

    def ask(question: str, history: list[dict], state: Session, collection: str | None,
            model: str | None, request: gr.Request):
        yield from _ask(gr, chat, request, question, history, state, collection,
                        pulls.override(model))

    def thumbs(history: list[dict], state: Session):
        """The chat's own thumbs, set to this tab's ratings (one entry per assistant message)."""
        value = [THUMB.get(state.ratings.get(state.answer_ids.get(i, ""), ""))
                 for i, m in enumerate(history) if m["role"] == "assistant"]
        return gr.Chatbot(feedback_value=value)

    def rate_last(rating: str):
        def handler(history: list[dict], state: Session, request: gr.Request):
            _, status = chat.save(request, state, state.last_answer_id, rating)
            return status, state, thumbs(history, state)
        return handler

    def rate_message(history: list[dict], state: Session, data: gr.LikeData,
                     request: gr.Request):
        index = data.index if isinstance(data.index, int) else data.index[0]
        if data.liked not in (True, False):
            # Un-selecting a thumb: feedback rows are append-only, so the last verdict stands.
            return gr.skip(), state, thumbs(history, state)
        _, status = chat.save(request, state, state.answer_ids.get(index),
                              "up" if data.liked else "down")
        return status, state, thumbs(history, state)

    def send_correction(text: str, state: Session, request: gr.Request):
        if not (text or "").strip():
            gr.Warning("Write the correct answer first.")
            return gr.skip(), gr.skip(), state
        saved, status = chat.save(request, state, state.last_answer_id, None,
                                  correction=text.strip())
        return status, "" if saved else gr.skip(), state

    pickers = [ui["collection"], ui["model"]]
    page.load(refresh, pickers, pickers)
    ui["refresh_btn"].click(refresh, pickers, pickers)
    pulls.wire(gr, page, ui)
    # One event for Enter and the button, one answer at a time: llama.cpp serves one
    # generation at a time anyway, and a queue shows the user their place instead of hanging.
    gr.on([ui["question"].submit, ui["ask_btn"].click], ask,
          inputs=[ui["question"], ui["chat"], session, ui["collection"], ui["model"]],
          outputs=[ui["chat"], ui["question"], ui["sources"], session, ui["status"]],
          concurrency_limit=1)
    # The chat's own "Clear" must also forget the history the next question is condensed with.
    ui["chat"].clear(Session, None, session)
    rated = [ui["status"], session, ui["chat"]]
    ui["up_btn"].click(rate_last("up"), [ui["chat"], session], rated, api_name="rate_up")
    ui["down_btn"].click(rate_last("down"), [ui["chat"], session], rated, api_name="rate_down")
    ui["chat"].like(rate_message, [ui["chat"], session], rated)
    ui["correct_btn"].click(send_correction, [ui["correction"], session],
                            [ui["status"], ui["correction"], session])
    ui["upload"].upload(_ingest_handler(gr, chat), [ui["upload"], ui["collection"]],
                        [ui["report"], ui["collection"], ui["upload"]])


def _collection_choices(chat: ChatHandlers, request) -> list[tuple[str, str]]:
    """The caller's collections, as the Collection dropdown shows them."""
    return [(f"{c['name']} ({c['files']} files, {c['chunks']} chunks)", c["name"])
            for c in chat.uc.collections(chat.callers(request))]


def _ingest_handler(gr, chat: ChatHandlers):
    """The upload box's handler: ingest the files, report, and list their collection."""

    # Gradio injects a tracker into a parameter whose default is gr.Progress().
    def ingest(files: list[str] | None, collection: str | None, request: gr.Request,
               progress=gr.Progress()):  # noqa: B008
        if not files:
            return gr.skip(), gr.skip(), gr.skip()
        try:
            report = chat.upload(request, files, collection, progress)
        except LocalCatError as err:
            return _warn(err), gr.skip(), None
        failed = [f for f in report.files if f.status == "failed"]
        if failed:
            gr.Warning("; ".join(f"{Path(f.path).name}: {f.reason}" for f in failed),
                       title=f"{len(failed)} file(s) not ingested")
        return (report_markdown(report), gr.Dropdown(choices=_collection_choices(chat, request),
                                                     value=report.collection), None)

    return ingest


def _ask(gr, chat: ChatHandlers, request, question: str, history: list[dict], state: Session,
         collection: str | None, model: str | None):
    """Stream one answer into the chat: (chat, question box, sources, state, status) updates."""
    from assistant.pipeline import Done, Sources, Token

    question = (question or "").strip()
    if not question:
        gr.Warning("Type a question first.")
        yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return
    collection = collection or chat.uc.parts.settings.chroma.collection
    history = [*history, {"role": "user", "content": question},
               {"role": "assistant", "content": "…"}]
    yield history, "", SEARCHING, state, gr.skip()
    text = ""
    answer_id = new_answer_id()  # known up front, so the cards' ids match the answer's links
    try:
        for event in chat.ask(request, question, state.history, collection, model, answer_id):
            if isinstance(event, Sources):
                yield (gr.skip(), gr.skip(), sources_html(event.citations, collection, answer_id),
                       gr.skip(), gr.skip())
            elif isinstance(event, Token):
                text += event.text
                history[-1] = {"role": "assistant", "content": text}
                yield history, gr.skip(), gr.skip(), gr.skip(), gr.skip()
            elif isinstance(event, Done):
                answer = event.answer
    except Exception as exc:
        err = chat.translate(exc)
        if err is None:
            raise
        # The problem takes the place of the answer; the question goes back into the box.
        history[-1] = {"role": "assistant", "content": _warn(err)}
        yield history, question, NO_SOURCES, state, gr.skip()
        return
    # The text streamed as generated; the final message is the checked one.
    history[-1] = {"role": "assistant",
                   "content": answer_markdown(answer) + sources_footer(answer.citations, collection)}
    state.answer_ids[len(history) - 1] = answer.id
    state.last_answer_id = answer.id
    state.history += [Message(role="user", content=question),
                      Message(role="assistant", content=answer.answer)]
    yield (history, gr.skip(), sources_html(answer.citations, collection, answer.id), state,
           f"Answer `{answer.id}` · {answer.model} · rate it or send a correction below.")
