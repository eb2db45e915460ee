"""Prompt formatting per domain, following ProRL's instructions, then the tokenizer's chat template.

A template is a plain format string; the only placeholders are ``{prompt}`` (the row's prompt, or the
content of its last user message) and ``{options}`` (an ``mcq`` row's ``options`` rendered as lines
``A. text``; empty when the row has none). Literal braces are written ``{{`` and ``}}``. Templates are
checked up front, so a config cannot reach attributes or call anything through them.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from nemo_prorl.config_schema import ConfigError
from nemo_prorl.schema import known_domains

#: ProRL's prompt suffixes (algorithm notes, section 5). Keys are domains.
DEFAULT_TEMPLATES: dict[str, str] = {
    "math": "{prompt}\nLet's think step by step and output the final answer within \\boxed{{}}.",
    "code": (
        "{prompt}\n\nWrite a complete Python 3 solution. Put the whole program in a single fenced "
        "code block:\n```python\n# your code\n```"
    ),
    "mcq": (
        "{prompt}{options}\n\nThink step by step, then give the letter of the correct option "
        "within \\boxed{{}}, e.g. \\boxed{{A}}."
    ),
    "reasoning_gym": (
        "{prompt}\n\nThink it through, then put your final answer inside <answer></answer> tags, "
        "e.g. <answer>your answer</answer>."
    ),
    "ifeval": "{prompt}",
    "reward_model": "{prompt}",
}

_PLACEHOLDERS = frozenset({"prompt", "options"})


def check_templates(templates: Mapping[str, str], where: str = "templates") -> None:
    """Raise :class:`~nemo_prorl.config_schema.ConfigError` naming the domain when a template is malformed.

    A template must be a string using only the bare placeholders ``{prompt}`` and ``{options}``
    (no attribute access, indexing, conversions or format specs), and must contain ``{prompt}``.
    """
    for domain, tmpl in templates.items():
        key = f"{where}.{domain}"
        if domain not in (known := known_domains()):
            raise ConfigError(key, f"unknown domain (known: {', '.join(known)})")
        if not isinstance(tmpl, str):
            raise ConfigError(key, f"expected a format string, got {type(tmpl).__name__}")
        try:
            parts = list(string.Formatter().parse(tmpl))
        except ValueError as exc:
            raise ConfigError(key, f"not a valid format string ({exc})") from None
        names = set()
        for _, name, spec, conv in parts:
            if name is None:
                continue
            if name not in _PLACEHOLDERS or spec or conv:
                raise ConfigError(
                    key, f"placeholder {{{name}{'!' + conv if conv else ''}{':' + spec if spec else ''}}} "
                    "is not allowed; use only {prompt} and {options} (write literal braces as {{ and }})"
                )
            names.add(name)
        if "prompt" not in names:
            raise ConfigError(key, "the template must contain {prompt}")


def merged_templates(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The default templates with ``overrides`` applied (checked)."""
    out = dict(DEFAULT_TEMPLATES)
    if overrides:
        check_templates(overrides)
        out.update(overrides)
    return out


def render_options(options: Any) -> str:
    """Render an mcq row's ``options`` as lines ``A. text`` after a blank line ("" when absent).

    Args:
        options: ``None``, a list of option texts (lettered A, B, ...), or a dict letter -> text.

    """
    if not options:
        return ""
    if isinstance(options, Mapping):
        items = [(str(k), str(v)) for k, v in options.items()]
    else:
        items = [(chr(ord("A") + i), str(v)) for i, v in enumerate(options)]
    return "\n\n" + "\n".join(f"{letter}. {text}" for letter, text in items)


def _fill(template: str, prompt: str, row: Mapping[str, Any]) -> str:
    options = render_options(row.get("options")) if "{options}" in template else ""
    return template.format_map({"prompt": prompt, "options": options})


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` carries a chat template."""
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def build_messages(
    row: Mapping[str, Any], templates: Mapping[str, str] | None = None, system_prompt: str | None = None
) -> list[dict[str, str]]:
    """The chat messages of a row, with the domain template applied to the (last) user turn.

    Args:
        row: a training row (``prompt`` is a string or a list of ``{role, content}``).
        templates: per-domain overrides of :data:`DEFAULT_TEMPLATES`.
        system_prompt: prepended as a system message unless the row already has one.

    """
    tmpl = merged_templates(templates).get(row["domain"], "{prompt}")  # plug-in domains: bare prompt
    prompt = row["prompt"]
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": _fill(tmpl, prompt, row)}]
    else:
        messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
        user_turns = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if user_turns:
            last = user_turns[-1]
            messages[last]["content"] = _fill(tmpl, messages[last]["content"], row)
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def format_prompt(
    row: Mapping[str, Any],
    tokenizer: Any = None,
    templates: Mapping[str, str] | None = None,
    system_prompt: str | None = None,
) -> str:
    """The prompt text the policy sees for ``row``.

    With a tokenizer that has a chat template, the messages go through
    ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``; otherwise the raw templated
    text is returned (message contents joined by blank lines for chat-message prompts).

    Args:
        row: a training row that passed :func:`nemo_prorl.schema.check_training_row`.
        tokenizer: a Hugging Face tokenizer, or ``None`` for raw text.
        templates: per-domain overrides of :data:`DEFAULT_TEMPLATES`.
        system_prompt: optional system message (chat template only).

    """
    if has_chat_template(tokenizer):
        messages = build_messages(row, templates, system_prompt)
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    messages = build_messages(row, templates, None)
    return "\n\n".join(m["content"] for m in messages)


def tokenize_prompt(
    row: Mapping[str, Any],
    tokenizer: Any,
    templates: Mapping[str, str] | None = None,
    system_prompt: str | None = None,
) -> list[int]:
    """Token ids of :func:`format_prompt`'s text, shape ``[P]``.

    Special tokens (BOS) are added by the tokenizer only for raw text; a chat template already
    writes its own.
    """
    text = format_prompt(row, tokenizer, templates, system_prompt)
    add_special = not has_chat_template(tokenizer)
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])
