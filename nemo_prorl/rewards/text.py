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


_BRACE_TOKENS = re.compile(r"\\.|[{}]", re.S)  # an escape pair (``\{``, ``\\``) or a bare brace


def match_brace(text: str, open_pos: int, stop: int | None = None) -> int:
    r"""Index of the ``}`` closing the ``{`` at ``open_pos``, or -1 when it is not closed before ``stop``.

    Escaped braces (``\{``, ``\}``) do not count. Linear in ``stop - open_pos`` (default: to the end of
    ``text``), with only the braces and backslashes visited in Python; to match many braces of one text
    use :func:`brace_pairs`.
    """
    depth = 0
    for m in _BRACE_TOKENS.finditer(text, open_pos, len(text) if stop is None else stop):
        c = m.group()
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return m.start()
    return -1


def brace_pairs(text: str) -> dict[int, int]:
    r"""``{open index: close index}`` for every matched ``{...}`` of ``text``, in one linear pass.

    Escaped braces (``\{``, ``\}``) do not count; an unmatched ``{`` is absent from the result and an
    unmatched ``}`` is ignored.
    """
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE_TOKENS.finditer(text):
        c = m.group()
        if c == "{":
            stack.append(m.start())
        elif c == "}" and stack:
            pairs[stack.pop()] = m.start()
    return pairs


_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _box_contents(text: str, nested: bool = False) -> list[tuple[int, int, str]]:
    """``(start, end, content)`` of each complete box in ``text``, by start, in linear time.

    A box inside another box's content is listed only with ``nested=True``.
    """
    out: list[tuple[int, int, str]] = []
    pairs: dict[int, int] | None = None
    covered = -1
    for m in _BOX_RE.finditer(text):
        if m.start() < covered and not nested:
            continue
        j = m.end()
        while j < len(text) and text[j] == " ":
            j += 1
        if j < len(text) and text[j] == "{":
            if pairs is None:
                pairs = brace_pairs(text)
            close = pairs.get(j, -1)
            if close >= 0:
                out.append((m.start(), close + 1, text[j + 1:close].strip()))
                covered = close + 1
        elif j > m.end() and j < len(text):
            tok = re.match(r"[^\s$]{1,200}", text[j:j + 200])
            if tok:
                out.append((m.start(), j + tok.end(), tok.group(0)))
                covered = j + tok.end()
    return out


def box_spans(text: str) -> list[tuple[int, int, str]]:
    r"""``(start, end, content)`` of every complete top-level box of ``text``, in order (linear time)."""
    return _box_contents(text)


def all_boxed(text: str) -> list[str]:
    r"""Contents of every complete ``\boxed{...}`` / ``\fbox{...}`` of ``text``, in order (linear time)."""
    return [c for _, _, c in _box_contents(text)]


def last_boxed(text: str) -> str | None:
    r"""Content of the last complete ``\boxed{...}`` / ``\fbox{...}`` in ``text``.

    ``\boxed 5`` (one token after a space) is accepted too. An unclosed box at the end (a truncated
    response) is skipped in favour of the previous complete one. Linear in ``len(text)`` however many
    unclosed boxes it holds (one pass matches every brace).

    Args:
        text: the answer region.

    Returns:
        The box content, stripped, or ``None`` when there is no complete box.

    """
    # Candidates from the end; a box whose brace is not closed before the last unclosed box met so far
    # is not closed at all (its depth never returns to zero after that point), so each stretch of text
    # is scanned once: linear however many unclosed boxes there are.
    stop = len(text)
    # The next candidate of each command, found by rfind from the end; only the one just used is searched
    # again (below it), so every character is looked at a bounded number of times.
    cands = {cmd: text.rfind(cmd) for cmd in ("\\boxed", "\\fbox")}
    while True:
        cmd, pos = max(cands.items(), key=lambda kv: kv[1])
        if pos < 0:
            return None
        cands[cmd] = text.rfind(cmd, 0, pos)
        cmd_end = pos + len(cmd)
        if cmd_end < len(text) and text[cmd_end].isalpha():
            continue  # \boxedx: another command
        j = cmd_end
        while j < len(text) and text[j] == " ":
            j += 1
        if j < len(text) and text[j] == "{":
            close = match_brace(text, j, stop)
            if close >= 0:
                return text[j + 1:close].strip()
            stop = j
        elif j > cmd_end and j < len(text):
            tok = re.match(r"[^\s$]{1,200}", text[j:j + 200])
            if tok:
                return tok.group(0)


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


_FENCE_OPEN = re.compile(r"[ \t]*```[ \t]*([A-Za-z0-9_+.#-]*)")
_FENCE_CLOSE = re.compile(r"[ \t]*```[ \t]*")


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    r"""``(tag, body)`` of each fenced code block of ``text``, in order, in one pass over its lines.

    The same blocks as ``finditer`` of the multi-line pattern
    ``^[ \t]*```[ \t]*(tag)[^\n]*\n(.*?)^[ \t]*```[ \t]*$`` (``re.M | re.S``): a line that starts with
    a fence opens a block (its tag is the run of ``[A-Za-z0-9_+.#-]`` after the backticks) when a newline
    follows it; the block's body runs to the next line that is only a fence. That regex tries every
    opening line against the rest of the text (quadratic on thousands of unclosed fences); this scan
    looks at each line once: once a block has no closing line, no later line can close one either.
    """
    out: list[tuple[str, str]] = []
    lines = text.split("\n")
    starts = [0]
    for line in lines[:-1]:
        starts.append(starts[-1] + len(line) + 1)
    k = 0
    while k < len(lines) - 1:  # an opening line needs a newline after it
        m = _FENCE_OPEN.match(lines[k])
        if not m:
            k += 1
            continue
        close = k + 1
        while close < len(lines) and not _FENCE_CLOSE.fullmatch(lines[close]):
            close += 1
        if close == len(lines):
            break
        out.append((m.group(1), text[starts[k + 1]:starts[close]]))
        k = close + 1
    return out
