"""The two servers bench/server.py compares, run as `python bench/_server_app.py ours|raw PORT`.

ours: LocalCat's real app (create_app) with the real retriever (MiniLM, Chroma, BM25) on the
data dir from LOCALCAT_DATA_DIR, and a chat model that answers instantly.
raw: a bare FastAPI app streaming the same SSE chunks, the floor of FastAPI + uvicorn.
"""

from __future__ import annotations

import itertools
import json
import sys

import _common  # noqa: F401  (puts the repo on sys.path, sets offline flags)
import uvicorn

ANSWER = ("Employees get 27 vacation days per calendar year [1]. Unused days carry over until "
          "March 31 [1], and sick leave is reported to your lead before 9:30 [2].")


def ours_app(with_ui: bool):
    from langchain_core.language_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    from localcat.container import Container
    from localcat.server import create_app

    class FakeModelContainer(Container):
        def chat_model(self, model=None):
            return GenericFakeChatModel(messages=itertools.repeat(AIMessage(ANSWER))), "fake"

    return create_app(FakeModelContainer(), with_ui=with_ui)


def raw_app():
    import re

    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    app = FastAPI()
    tokens = re.split(r"(\s)", ANSWER)  # as GenericFakeChatModel splits its message

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    def chat(body: dict):
        def events():
            yield f"data: {json.dumps({'choices': [{'delta': {'role': 'assistant', 'content': ''}}]})}\n\n"
            for t in tokens:
                if t:
                    yield f"data: {json.dumps({'choices': [{'delta': {'content': t}}]})}\n\n"
            yield f"data: {json.dumps({'choices': [{'delta': {}, 'finish_reason': 'stop'}]})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    app = ours_app(with_ui="--ui" in sys.argv) if kind == "ours" else raw_app()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
