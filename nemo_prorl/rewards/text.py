r"""Text helpers shared by the rewards: the final-answer region, ``\boxed{}`` and tag extraction.

Model output is hostile: every helper here is linear in the input length (no backtracking regexes over
the whole response) and never evaluates anything.
"""

from __future__ import annotations

import re

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def answer_region(response: str) -> str | None:
    """Return the part of ``response`` that may hold the final answer.

    Text up to and including the last ``</think>`` is reasoning and ignored. A response that opens
    ``<think>`` but never closes it has no answer region (``None``): it was cut off while thinking.

    Args:
        response: the model's full completion.

    Returns:
        The text after the last ``</think>``, the whole response when there are no think tags, or
        ``None`` for an unclosed think block.

    """
    close = response.rfind(THINK_CLOSE)
    if close >= 0:
        return response[close + len(THINK_CLOSE):]
    if THINK_OPEN in response:
        return None
    return response


def match_brace(text: str, open_pos: int) -> int:
    r"""Index of the ``}`` closing the ``{`` at ``open_pos``, or -1 when it is never closed.

    Escaped braces (``\{``, ``\}``) do not count.
    """
    depth = 0
    i = open_pos
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


_BOX_COMMANDS = ("\\boxed", "\\fbox")


def last_boxed(text: str) -> str | None:
    r"""Content of the last complete ``\boxed{...}`` / ``\fbox{...}`` in ``text``.

    ``\boxed 5`` (one token after a space) is accepted too. An unclosed box at the end (a truncated
    response) is skipped in favour of the previous complete one.

    Args:
        text: the answer region.

    Returns:
        The box content, stripped, or ``None`` when there is no complete box.

    """
    end = len(text)
    while True:
        pos = max(text.rfind(cmd, 0, end) for cmd in _BOX_COMMANDS)
        if pos < 0:
            return None
        cmd_len = len("\\boxed") if text.startswith("\\boxed", pos) else len("\\fbox")
        j = pos + cmd_len
        while j < len(text) and text[j] == " ":
            j += 1
        if j < len(text) and text[j] == "{":
            close = match_brace(text, j)
            if close >= 0:
                return text[j + 1:close].strip()
        elif j > pos + cmd_len and j < len(text):
            m = re.match(r"[^\s$]+", text[j:j + 200])
            if m:
                return m.group(0)
        end = pos


def last_tag(text: str, tag: str) -> str | None:
    """Content of the last complete ``<tag>...</tag>`` pair in ``text`` (``None`` if absent)."""
    close_tag, open_tag = f"</{tag}>", f"<{tag}>"
    close = text.rfind(close_tag)
    while close >= 0:
        start = text.rfind(open_tag, 0, close)
        if start >= 0:
            return text[start + len(open_tag):close]
        close = text.rfind(close_tag, 0, close)
    return None


def top_level_split(text: str, sep: str = ",") -> list[str]:
    """Split ``text`` on ``sep`` outside any (), [], {} nesting."""
    parts: list[str] = []
    depth = 0
    cur: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
            cur.append(text[i:i + 2])
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth = max(0, depth - 1)
        if c == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts
