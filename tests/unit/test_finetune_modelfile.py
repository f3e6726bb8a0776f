"""The Modelfile's TEMPLATE and stops are derived from the training template and render the same text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from finetune.base import ChatTemplate
from finetune.modelfile import UnsupportedTemplate, render_modelfile, stop_markers, template_parts

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# SmolLM2-135M-Instruct's, as stored in its GGUF: a default system prompt when none is given.
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Llama-2 folds the system prompt into the first user turn: no per-message TEMPLATE can say that.
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set sys = '<<SYS>>\n' + messages[0]['content'] + "
    "'\n<</SYS>>\n\n' %}{% set msgs = messages[1:] %}{% else %}{% set sys = '' %}"
    "{% set msgs = messages %}{% endif %}{% for m in msgs %}{% if m['role'] == 'user' %}"
    "{{ '[INST] ' + (sys if loop.first else '') + m['content'] + ' [/INST]' }}{% else %}"
    "{{ ' ' + m['content'] + ' </s>' }}{% endif %}{% endfor %}"
)

CONVERSATIONS = [
    [{"role": "system", "content": "Use the sources.\n\n[1] (a.md)\nCats sleep."},
     {"role": "user", "content": "Do cats sleep?"}],
    [{"role": "user", "content": "Hello {{ not a template }}"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"},
     {"role": "assistant", "content": "A1 [1]."}, {"role": "user", "content": "Q2\nmore"}],
]


# --- a renderer for the Go text/template subset the TEMPLATE uses ------------------------------------
# Ollama renders TEMPLATE with Go's text/template; this covers exactly what go_template() writes
# (range/if/else if/end, eq/ne, index, .Role/.Content, string literals) and refuses anything else.

# An action ends at the first "}}" outside a quoted string, as in Go's lexer.
_ACTION = re.compile(r"\{\{((?:\"(?:[^\"\\]|\\.)*\"|[^\"}]|\}(?!\}))*)\}\}", re.S)


def go_render(template: str, messages: list[dict[str, str]]) -> str:
    tokens, pos = [], 0
    for m in _ACTION.finditer(template):
        tokens.append(("text", template[pos:m.start()]))
        action = m.group(1)
        assert not action.startswith("-") and not action.endswith("-"), "no trim markers expected"
        tokens.append(("action", action.strip()))
        pos = m.end()
    tokens.append(("text", template[pos:]))
    nodes, i, term = _parse(tokens, 0)
    assert term is None and i == len(tokens)
    out: list[str] = []
    _exec(nodes, None, {"Messages": messages}, out)
    return "".join(out)


def _parse(tokens, i):
    nodes = []
    while i < len(tokens):
        kind, value = tokens[i]
        i += 1
        if kind == "text":
            nodes.append(("text", value))
        elif value.startswith("range "):
            body, i, term = _parse(tokens, i)
            assert term == "end"
            nodes.append(("range", value[6:].strip(), body))
        elif value.startswith("if "):
            branches, cond = [], value[3:].strip()
            while True:
                body, i, term = _parse(tokens, i)
                branches.append((cond, body))
                if term == "end":
                    break
                assert term.startswith("else")
                rest = term[4:].strip()
                cond = rest[3:].strip() if rest.startswith("if ") else None
            nodes.append(("if", branches))
        elif value == "end" or value.startswith("else"):
            return nodes, i, value
        else:
            nodes.append(("print", value))
    return nodes, i, None


def _value(expr: str, dot, root):
    if expr.startswith('"'):
        return json.loads(expr)
    if expr == ".Messages":
        return root["Messages"]
    if expr in (".Role", ".Content"):
        return dot[expr[1:].lower()]
    found = re.fullmatch(r"\(index \.Messages (\d+)\)\.Role", expr)
    if found:
        return root["Messages"][int(found[1])]["role"]
    raise AssertionError(f"unexpected expression {expr!r}")


def _test(cond: str, dot, root) -> bool:
    args = re.findall(r"\([^)]*\)\.\w+|\"(?:[^\"\\]|\\.)*\"|\S+", cond)
    if args[0] in ("eq", "ne"):
        same = _value(args[1], dot, root) == _value(args[2], dot, root)
        return same if args[0] == "eq" else not same
    assert len(args) == 1
    return bool(_value(args[0], dot, root))


def _exec(nodes, dot, root, out: list[str]) -> None:
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "print":
            out.append(str(_value(node[1], dot, root)))
        elif node[0] == "range":
            for item in _value(node[1], dot, root):
                _exec(node[2], item, root, out)
        else:
            for cond, body in node[1]:
                if cond is None or _test(cond, dot, root):
                    _exec(body, dot, root, out)
                    break


# --- tests -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", [CHATML, SMOLLM2, LLAMA3], ids=["chatml", "smollm2", "llama3"])
def test_ollama_template_renders_the_training_template(source: str) -> None:
    template = ChatTemplate(source, bos_token="<s>", eos_token="<|im_end|>")
    go = template_parts(template).go_template()
    for messages in CONVERSATIONS:
        # Ollama always asks for the reply, as the assistant does when it prompts llama.cpp.
        assert go_render(go, messages) == template.render(messages, add_generation_prompt=True)


def test_chatml_parts_and_stops() -> None:
    parts = template_parts(ChatTemplate(CHATML, eos_token="<|im_end|>"))
    assert parts.user_prefix == "<|im_start|>user\n"
    assert parts.assistant_suffix == "<|im_end|>\n"
    assert parts.no_system_head == ""
    assert parts.stops == ["<|im_end|>", "<|im_start|>user"]


def test_default_system_prompt_is_kept() -> None:
    parts = template_parts(ChatTemplate(SMOLLM2, eos_token="<|im_end|>"))
    assert "named SmolLM" in parts.no_system_head
    assert "(index .Messages 0).Role" in parts.go_template()


def test_template_that_folds_the_system_prompt_is_refused() -> None:
    with pytest.raises(UnsupportedTemplate, match="Ollama TEMPLATE|prefix \\+ content"):
        template_parts(ChatTemplate(LLAMA2, eos_token="</s>"))
    # Training can still cut its targets at the end-of-sequence token.
    assert stop_markers(ChatTemplate(LLAMA2, eos_token="</s>")) == ["</s>"]


def test_split_cuts_the_completion_after_the_end_of_turn() -> None:
    template = ChatTemplate(CHATML, eos_token="<|im_end|>")
    messages = CONVERSATIONS[0]
    prompt, completion = template.split(messages, "Yes [1].", stop_markers(template))
    assert prompt == template.render(messages, add_generation_prompt=True)
    assert completion == "Yes [1].<|im_end|>"  # the "\n" after it is never generated


def test_modelfile_names_base_adapter_template_and_stops(tmp_path: Path) -> None:
    template = ChatTemplate(CHATML, eos_token="<|im_end|>")
    base = tmp_path / "base model.gguf"
    text = render_modelfile(base, "./adapter.gguf", template, comment="run x\nbase sha256 abc")
    lines = text.splitlines()
    assert lines[:2] == ["# run x", "# base sha256 abc"]
    assert f"FROM {base}" in lines and "ADAPTER ./adapter.gguf" in lines
    body = re.search(r'TEMPLATE """(.*?)"""', text, re.S)[1]
    assert body == template_parts(template).go_template()
    assert 'PARAMETER stop "<|im_end|>"' in lines and 'PARAMETER stop "<|im_start|>user"' in lines


def test_literal_braces_in_template_text_are_quoted() -> None:
    source = CHATML.replace("'<|im_start|>assistant\\n'", "'{{assistant}}\\n'")
    template = ChatTemplate(source, eos_token="<|im_end|>")
    go = template_parts(template).go_template()
    assert '{{ "{{assistant}}\\n" }}' in go
    assert go_render(go, CONVERSATIONS[0]) == template.render(CONVERSATIONS[0], True)
