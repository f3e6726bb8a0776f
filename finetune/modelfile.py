"""The Ollama Modelfile of a fine-tuned model, its TEMPLATE derived from the training template.

One source of truth: ``template_parts`` reads the literal text a Jinja chat template puts around
each message (by rendering probe conversations), and both the Go ``TEMPLATE`` and the stop markers
used to cut training targets come from those parts. The parts are checked by rendering sample
conversations both ways; a template they cannot reproduce is refused rather than approximated.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError
from finetune.base import ChatTemplate, Messages

_PROBE = {"system": "LcPrbSys", "user": "LcPrbUsrA", "assistant": "LcPrbAst"}


class UnsupportedTemplate(ConfigError):
    """A chat template whose per-message structure cannot be written as an Ollama TEMPLATE."""


@dataclass(frozen=True)
class TemplateParts:
    """The literal text a chat template puts around messages.

    ``system_head`` opens a conversation whose first message is the system prompt (anything the
    template writes first, e.g. a BOS, included); ``no_system_head`` opens one without (e.g. a
    default system prompt such as SmolLM2's). Then each message is prefix + content + suffix for its
    role, and ``generation`` asks for the assistant's reply.
    """

    system_head: str
    system_suffix: str
    no_system_head: str
    user_prefix: str
    user_suffix: str
    assistant_prefix: str
    assistant_suffix: str
    generation: str

    def render(self, messages: Messages, add_generation_prompt: bool = True) -> str:
        """What the Go TEMPLATE renders for ``messages`` (the reference the checks compare)."""
        out = []
        if messages and messages[0]["role"] != "system":
            out.append(self.no_system_head)
        for m in messages:
            prefix, suffix = self._wrap(m["role"])
            out += [prefix, m["content"], suffix]
        if add_generation_prompt:
            out.append(self.generation)
        return "".join(out)

    def _wrap(self, role: str) -> tuple[str, str]:
        match role:
            case "system":
                return self.system_head, self.system_suffix
            case "user":
                return self.user_prefix, self.user_suffix
            case "assistant":
                return self.assistant_prefix, self.assistant_suffix
        raise UnsupportedTemplate(f"No TEMPLATE branch for role {role!r}")

    @property
    def stops(self) -> list[str]:
        """Markers that end the assistant's turn: its own closing text, and the next user turn."""
        out: list[str] = []
        for s in (self.assistant_suffix.strip(), self.user_prefix.strip()):
            if s and s not in out:
                out.append(s)
        return out

    def go_template(self) -> str:
        """The Ollama (Go text/template) TEMPLATE rendering the same text as ``render``."""
        branches = "".join(
            f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}'
            f"{_lit(prefix)}{{{{ .Content }}}}{_lit(suffix)}"
            for i, (role, (prefix, suffix)) in enumerate(
                (r, self._wrap(r)) for r in ("system", "user", "assistant")
            )
        )
        head = (
            f'{{{{ if .Messages }}}}{{{{ if ne (index .Messages 0).Role "system" }}}}'
            f"{_lit(self.no_system_head)}{{{{ end }}}}{{{{ end }}}}"
            if self.no_system_head
            else ""
        )
        return f"{head}{{{{ range .Messages }}}}{branches}{{{{ end }}}}{{{{ end }}}}{_lit(self.generation)}"


def _lit(text: str) -> str:
    # Literal text may hold anything but the action delimiter; a string action prints it safely.
    return f"{{{{ {json.dumps(text, ensure_ascii=False)} }}}}" if "{{" in text else text


def _between(text: str, markers: Sequence[str]) -> list[str]:
    """``text`` split at each marker in order: n markers give n + 1 pieces."""
    pieces, rest = [], text
    for marker in markers:
        head, found, rest = rest.partition(marker)
        if not found or marker in rest:
            raise UnsupportedTemplate(
                "The chat template does not copy each message's text once, in order",
                "use a model whose template writes every message as prefix + content + suffix",
            )
        pieces.append(head)
    return [*pieces, rest]


def _strip(text: str, prefix: str = "", suffix: str = "") -> str:
    if not (text.startswith(prefix) and text.endswith(suffix)) or len(prefix) + len(suffix) > len(text):
        raise UnsupportedTemplate(
            "The chat template writes messages differently depending on their position",
            "use a model whose template writes every message as prefix + content + suffix",
        )
    return text[len(prefix): len(text) - len(suffix)]


def template_parts(template: ChatTemplate) -> TemplateParts:
    """Read the parts off ``template`` and check that they reproduce it."""
    s, u, a = ({"role": r, "content": c} for r, c in _PROBE.items())
    u2 = {"role": "user", "content": "LcPrbUsrB"}
    keys = [_PROBE["system"], _PROBE["user"], _PROBE["assistant"], "LcPrbUsrB"]
    try:
        full = _between(template.render([s, u, a, u2], True), keys)
        closed = _between(template.render([s, u, a, u2], False), keys)
        after_a = _between(template.render([s, u, a], False), keys[:3])[-1]
        no_sys = _between(template.render([u, a, u2], True), keys[1:])
    except UnsupportedTemplate:
        raise
    except Exception as err:  # a template may raise_exception() on the probe's shape
        raise UnsupportedTemplate(
            f"The chat template cannot render a plain system/user/assistant conversation ({err})",
            "use a model whose template accepts a system message and alternating turns",
        ) from err
    user_suffix = closed[-1]
    assistant_suffix = after_a
    user_prefix = _strip(full[3], prefix=assistant_suffix)
    parts = TemplateParts(
        system_head=full[0],
        system_suffix=_strip(full[1], suffix=user_prefix),
        no_system_head=_strip(no_sys[0], suffix=user_prefix),
        user_prefix=user_prefix,
        user_suffix=user_suffix,
        assistant_prefix=_strip(full[2], prefix=user_suffix),
        assistant_suffix=assistant_suffix,
        generation=_strip(full[4], prefix=user_suffix),
    )
    _check(template, parts)
    return parts


def _check(template: ChatTemplate, parts: TemplateParts) -> None:
    sys_, q, r = "You are a helpful assistant.\n\n[1] notes", "What is it?\nSay it.", "It is 42 [1]."
    shapes: list[list[dict[str, str]]] = [
        [{"role": "system", "content": sys_}, {"role": "user", "content": q}],
        [{"role": "user", "content": q}],
        [{"role": "system", "content": sys_}, {"role": "user", "content": q},
         {"role": "assistant", "content": r}, {"role": "user", "content": q}],
        [{"role": "user", "content": q}, {"role": "assistant", "content": r},
         {"role": "user", "content": "And then?"}],
    ]
    for messages in shapes:
        for gen in (True, False):
            if template.render(messages, gen) != parts.render(messages, gen):
                raise UnsupportedTemplate(
                    "The chat template cannot be written as an Ollama TEMPLATE without changing "
                    "the prompt (it writes some message differently)",
                    "register with the embedded runtime only (`--no-ollama`), or use a model with "
                    "a ChatML-style template",
                )


def stop_markers(template: ChatTemplate) -> list[str]:
    """Where a reply ends when served: the template's turn markers, else the EOS token."""
    try:
        stops = template_parts(template).stops
    except UnsupportedTemplate:
        stops = []
    if template.eos_token and template.eos_token not in stops:
        stops.append(template.eos_token)
    return stops


def _quote(value: str) -> str:
    if '"""' in value:
        raise UnsupportedTemplate('The TEMPLATE contains """, which a Modelfile cannot quote')
    return f'"""{value}"""'


def render_modelfile(
    base: Path, adapter: Path | str, template: ChatTemplate, *, comment: str = "",
    parameters: dict[str, object] | None = None,
) -> str:
    """An Ollama Modelfile: FROM the exact base file, ADAPTER, TEMPLATE and stops from ``template``."""
    parts = template_parts(template)
    lines = [f"# {line}" for line in comment.splitlines()] if comment else []
    lines += [f"FROM {base}", f"ADAPTER {adapter}", f"TEMPLATE {_quote(parts.go_template())}"]
    lines += [f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" for s in parts.stops]
    for key, value in (parameters or {}).items():
        lines.append(f"PARAMETER {key} {value}")
    return "\n".join(lines) + "\n"
