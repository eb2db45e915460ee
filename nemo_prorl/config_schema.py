"""One config mechanism for every section of a run config: typed dataclasses, one loader, one error.

A *section* (``policy``, ``rollout``, ``data``, ``rewards``, ``algorithm.*``, ``trainer``, ...) is a plain
dataclass. Everything this module needs is declared on it, so a package may define its sections without
importing this module (:mod:`nemo_prorl.algorithms` imports nothing else of the package):

- the **type** of each field is its annotation: ``int``, ``float``, ``str``, ``bool``, ``Any``, ``X | None``,
  ``list[X]``, ``dict[str, X]`` or another section;
- the **help** of each field is its entry in the class docstring's ``Attributes:`` section, or the ``#:``
  comment lines right above it, or ``metadata["help"]`` (:func:`field_help`); ``docs/config.md`` is
  generated from them (:mod:`nemo_prorl.configdoc`) and a test requires one for every field;
- **value rules** are plain field metadata (``field(default=..., metadata={"ge": 1})``), read by
  :func:`check`. Numbers, each element of a list and each value of a mapping obey the bounds ``ge``,
  ``gt``, ``le``, ``lt``; ``choices`` is a tuple of allowed values or a zero-argument function returning
  them (a registry, so plug-in names count); ``nonempty`` refuses ``""`` (and empty strings inside a
  list); ``one_or_many`` lets a loaded ``list[str]`` field be given as one string; ``fix`` is advice
  appended to any message about the field;
- rules that span fields live in an optional method ``problems(self, key) -> Iterable[(dotted key,
  message)]`` (``key`` is the section's own dotted key); a package that may import this module can
  also raise :class:`ConfigError` from it.

:func:`load` builds a section (and every section inside it) from a plain mapping, e.g. an OmegaConf
container (keys it leaves out, and a section given as null, keep the defaults): an unknown key names the
dotted key and its close matches, a wrong type names the dotted key, the expected type and the value (a
bool is not an int, a float must be finite), then :func:`check` applies the value rules. Every message
reads ``<dotted key>: <what is wrong>; <the fix>``.

A config never names code: values are data, and components are chosen by registry names only.
This module imports nothing but the standard library.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

__all__ = ["ConfigError", "build", "check", "check_batch_divisible", "describe_type", "field_help", "load",
           "section_help", "unknown_key"]

T = TypeVar("T")
_NONE = type(None)


class ConfigError(ValueError):
    """A configuration value is invalid.

    ``str(err)`` is ``"<key>: <message>"``.

    Attributes:
        key: full dotted key of the offending value, e.g. ``algorithm.loss.clip_low`` or ``phases[2].n``.
        message: what is wrong with it and how to fix it.

    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def join(key: str, name: str | int) -> str:
    """The dotted key of ``name`` inside ``key`` (``[i]`` for a list index; no dot at the root)."""
    if isinstance(name, int):
        return f"{key}[{name}]"
    return f"{key}.{name}" if key else name


def unknown_key(key: str, name: Any, known: Iterable[str], what: str = "key") -> ConfigError:
    """The error for ``name`` not being one of ``known`` inside ``key``, with the close matches."""
    known = sorted(known)
    close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return ConfigError(join(key, str(name)), f"unknown {what}; {hint}known: {', '.join(known) or 'none'}")


# ---------------------------------------------------------------------------------------------- types


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def describe_type(tp: Any) -> str:
    """``int | None`` -> ``"int or null"``, ``list[str]`` -> ``"list of str"``, a section -> ``"mapping"``."""
    if tp is Any:
        return "any value"
    if _is_union(tp):
        args = typing.get_args(tp)
        parts = [describe_type(a) for a in args if a is not _NONE]
        return " or ".join(parts + (["null"] if _NONE in args else []))
    origin = typing.get_origin(tp)
    if origin is list:
        (elem,) = typing.get_args(tp)
        return f"list of {describe_type(elem)}"
    if origin is dict:
        _, value = typing.get_args(tp)
        return "mapping" if value is Any else f"mapping of str to {describe_type(value)}"
    if _is_section(tp):
        return "mapping"
    return {int: "int", float: "float", str: "str", bool: "bool"}.get(tp, getattr(tp, "__name__", str(tp)))


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def _shallow_match(tp: Any, value: Any) -> bool:
    """Whether ``value`` has the outer shape of ``tp`` (elements are checked separately)."""
    if tp is Any:
        return True
    if tp is _NONE:
        return value is None
    if _is_union(tp):
        return any(_shallow_match(a, value) for a in typing.get_args(tp))
    origin = typing.get_origin(tp)
    if origin is list:
        return isinstance(value, (list, tuple))
    if origin is dict or _is_section(tp):
        return isinstance(value, Mapping) or (_is_section(tp) and isinstance(value, tp))
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp)


def _type_error(tp: Any, value: Any, key: str) -> ConfigError:
    note = "; a bool is not a number, write the number" if isinstance(value, bool) and tp is not bool \
        and not _is_union(tp) else ""
    return ConfigError(key, f"expected {describe_type(tp)}, got {_show(value)}{note}")


def _convert(tp: Any, value: Any, key: str, meta: Mapping[str, Any]) -> Any:
    """Type-check ``value`` against ``tp`` and build the sections inside it (tuples become lists)."""
    if _is_union(tp):
        if value is None and _NONE in typing.get_args(tp):
            return None
        for arg in typing.get_args(tp):
            if arg is not _NONE and _shallow_match(arg, value):
                return _convert(arg, value, key, meta)
        raise _type_error(tp, value, key)
    if meta.get("one_or_many") and isinstance(value, str) and typing.get_origin(tp) is list:
        value = [value]
    if value is None and _is_section(tp):  # an empty YAML section (``rewards:``) keeps the defaults
        value = {}
    if not _shallow_match(tp, value):
        raise _type_error(tp, value, key)
    origin = typing.get_origin(tp)
    if _is_section(tp):
        return value if isinstance(value, tp) else build(tp, value, key)
    if origin is list:
        (elem,) = typing.get_args(tp)
        return [_convert(elem, v, join(key, i), {}) for i, v in enumerate(value)]
    if origin is dict:
        ktp, vtp = typing.get_args(tp)
        out = {}
        for k, v in value.items():
            if ktp is str and not isinstance(k, str):
                raise ConfigError(join(key, str(k)), f"keys must be str, got {_show(k)}")
            out[k] = _convert(vtp, v, join(key, k), {})
        return out
    if tp is float and not math.isfinite(value):
        raise ConfigError(key, f"expected a finite float, got {_show(value)}")
    return value


def _check_type(tp: Any, value: Any, key: str) -> None:
    """Like :func:`_convert` for an already built value: sections are checked in place."""
    if _is_union(tp):
        if value is None and _NONE in typing.get_args(tp):
            return
        for arg in typing.get_args(tp):
            if arg is not _NONE and _shallow_match(arg, value):
                _check_type(arg, value, key)
                return
        raise _type_error(tp, value, key)
    if _is_section(tp):
        if not isinstance(value, tp):
            raise ConfigError(key, f"expected a {tp.__name__}, got {_show(value)}")
        check(value, key)
        return
    if not _shallow_match(tp, value):
        raise _type_error(tp, value, key)
    origin = typing.get_origin(tp)
    if origin is list:
        (elem,) = typing.get_args(tp)
        for i, v in enumerate(value):
            _check_type(elem, v, join(key, i))
    elif origin is dict:
        ktp, vtp = typing.get_args(tp)
        for k, v in value.items():
            if ktp is str and not isinstance(k, str):
                raise ConfigError(join(key, str(k)), f"keys must be str, got {_show(k)}")
            _check_type(vtp, v, join(key, k))
    elif tp is float and not math.isfinite(value):
        raise ConfigError(key, f"expected a finite float, got {_show(value)}")


# ---------------------------------------------------------------------------------------- value rules

BOUNDS: dict[str, tuple[Callable[[float, float], bool], str]] = {
    "ge": (lambda v, b: v >= b, ">="),
    "gt": (lambda v, b: v > b, ">"),
    "le": (lambda v, b: v <= b, "<="),
    "lt": (lambda v, b: v < b, "<"),
}


def _with_fix(message: str, meta: Mapping[str, Any]) -> str:
    return f"{message}; {meta['fix']}" if meta.get("fix") else message


def _bounds_text(meta: Mapping[str, Any]) -> str:
    return " and ".join(f"{sym} {meta[name]}" for name, (_, sym) in BOUNDS.items() if name in meta)


def choices_of(meta: Mapping[str, Any]) -> list[Any] | None:
    """The allowed values a field's metadata names (calling a registry function), or ``None``."""
    choices = meta.get("choices")
    if choices is None:
        return None
    return list(choices() if callable(choices) else choices)


def _check_scalar(value: Any, key: str, meta: Mapping[str, Any]) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        for name, (ok, _) in BOUNDS.items():
            if name in meta and not ok(value, meta[name]):
                raise ConfigError(key, _with_fix(f"must be {_bounds_text(meta)}, got {value!r}", meta))
    if isinstance(value, str) and meta.get("nonempty") and not value:
        raise ConfigError(key, _with_fix("must be a non-empty string", meta))
    choices = choices_of(meta)
    if choices is not None and value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        names = ", ".join(str(c) for c in choices) or "none"
        raise ConfigError(key, _with_fix(f"unknown value {value!r}{hint}; expected one of: {names}", meta))


def _check_rules(value: Any, key: str, meta: Mapping[str, Any]) -> None:
    if not any(k in meta for k in (*BOUNDS, "choices", "nonempty")):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_scalar(v, join(key, i), meta)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _check_scalar(v, join(key, k), meta)
    else:
        _check_scalar(value, key, meta)


# ------------------------------------------------------------------------------------ load and check


def check(obj: Any, key: str = "") -> None:
    """Check a built section: every field's type and value rules, nested sections, then ``problems``.

    Args:
        obj: a section instance.
        key: its dotted key (``""`` at the root), the prefix of every key named in an error.

    Raises:
        ConfigError: naming the first offending dotted key.

    """
    hints = type_hints(type(obj))
    for f in dataclasses.fields(obj):
        sub = join(key, f.name)
        value = getattr(obj, f.name)
        _check_type(hints[f.name], value, sub)
        _check_rules(value, sub, f.metadata)
    problems = getattr(obj, "problems", None)
    if callable(problems):
        for bad_key, message in problems(key):
            raise ConfigError(bad_key, message)


def build(cls: type[T], raw: Any, key: str = "") -> T:
    """Like :func:`load` without the final :func:`check` of the value rules (types are checked).

    For a caller that checks the built object itself, once (e.g. as part of a larger validation).
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(key or "<config>", f"expected a mapping of {cls.__name__} keys, got {_show(raw)}")
    hints = type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for name, value in raw.items():
        if name not in by_name:
            raise unknown_key(key, name, by_name)
        kwargs[name] = _convert(hints[name], value, join(key, name), by_name[name].metadata)
    return cls(**kwargs)


def load(cls: type[T], raw: Mapping[str, Any] | None, key: str = "") -> T:
    """Build and check section ``cls`` (and the sections inside it) from a plain mapping.

    Args:
        cls: the section dataclass.
        raw: its values, e.g. ``OmegaConf.to_container(cfg.rollout)``; keys it leaves out keep the
            dataclass defaults; ``None`` is an empty mapping.
        key: the section's dotted key (``"rollout"``, ``"phases[0]"``; ``""`` for a whole run config).

    Raises:
        ConfigError: an unknown key (with the close matches), a wrong type or an invalid value, naming
            its dotted key.

    """
    obj = build(cls, raw, key)
    check(obj, key)
    return obj


def check_batch_divisible(key: str, batch: int, mini_batch: int) -> int:
    """Check that ``batch`` splits into whole mini-batches of ``mini_batch``.

    Args:
        key: dotted config key to name in the error (e.g. ``trainer.mini_batch_prompts``).
        batch: the larger size (e.g. prompts or samples per step).
        mini_batch: the size it is divided into.

    Returns:
        ``batch // mini_batch``, the number of mini-batches.

    Raises:
        ConfigError: when either size is not a positive integer or the division leaves a remainder.

    """
    for value in (batch, mini_batch):
        if not _shallow_match(int, value):
            raise _type_error(int, value, key)
    if batch < 1 or mini_batch < 1:
        raise ConfigError(key, f"sizes must be >= 1 (got batch={batch}, mini_batch={mini_batch})")
    if batch % mini_batch:
        raise ConfigError(key, f"batch size {batch} is not divisible by mini-batch size {mini_batch} "
                               f"(remainder {batch % mini_batch})")
    return batch // mini_batch


# ------------------------------------------------------------------------------------------------ help

_ENTRY = re.compile(r"^(\s*)(\w+)(?: \([^)]*\))?: ?(.*)$")
_DECL = re.compile(r"^\s*(\w+)\s*:")


def _docstring_attributes(cls: type) -> dict[str, str]:
    """``name -> text`` from the ``Attributes:`` section of ``cls``'s (Google style) docstring."""
    lines = (inspect.getdoc(cls) or "").splitlines()
    out: dict[str, str] = {}
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return out
    header = len(lines[start]) - len(lines[start].lstrip())
    entry_indent, current = None, None
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= header:
            break
        m = _ENTRY.match(line)
        if m and (entry_indent is None or indent == entry_indent):
            entry_indent, current = indent, m.group(2)
            out[current] = m.group(3).strip()
        elif current is not None:
            out[current] = f"{out[current]} {line.strip()}".strip()
    return out


def _comment_attributes(cls: type) -> dict[str, str]:
    """``name -> text`` from ``#:`` comment lines right above each field declaration of ``cls``."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    pending: list[str] = []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        m = _DECL.match(line)
        if m and pending:
            out[m.group(1)] = " ".join(pending)
        pending = []
    return out


@functools.cache
def _field_help(cls: type) -> tuple[tuple[str, str], ...]:
    found = {**_comment_attributes(cls), **_docstring_attributes(cls)}
    out = []
    for f in dataclasses.fields(cls):
        text = f.metadata.get("help") or found.get(f.name, "")
        out.append((f.name, " ".join(str(text).split())))
    return tuple(out)


def field_help(cls: type) -> dict[str, str]:
    """The help text of every field of section ``cls`` (``""`` where a field has none).

    From, in this order of precedence: ``metadata["help"]``, the class docstring's ``Attributes:``
    entry, the ``#:`` comment lines above the declaration.
    """
    return dict(_field_help(cls))


def section_help(cls: type) -> str:
    """The first paragraph of a section's docstring, on one line."""
    doc = inspect.getdoc(cls) or ""
    return " ".join(doc.split("\n\n", 1)[0].split())
