"""Slurm's compressed host lists and task-count lists, expanded without calling ``scontrol``.

Slurm hands every task its node list in a compressed form (``SLURM_JOB_NODELIST=node[001-004,007],gpu-a1``)
and its per-node task counts run-length encoded (``SLURM_TASKS_PER_NODE=8(x3),4``). ``scontrol show
hostnames`` expands the first, but it is not present inside every container, so this module does both in
pure Python.

Grammar handled (the one Slurm writes):

* hosts are separated by commas at bracket depth 0;
* a host may contain any number of bracket groups; each group is a comma-separated list of integers or
  ``lo-hi`` ranges; the zero padding of ``lo`` is kept (``[008-010]`` -> ``008 009 010``);
* several groups in one host expand as a Cartesian product, leftmost group slowest
  (``r[1-2]n[1-2]`` -> ``r1n1 r1n2 r2n1 r2n2``), as Slurm does for multi-dimensional names.
"""

from __future__ import annotations

import re

__all__ = ["HostlistError", "parse_hostlist", "parse_tasks_per_node"]

_MAX_HOSTS = 1_000_000
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
_TASKS_ITEM = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")


class HostlistError(ValueError):
    """A host list or task-count list that does not follow Slurm's syntax."""


def _split_top_level(text: str, what: str) -> list[str]:
    """Split ``text`` on commas outside brackets.

    Args:
        text: the whole list, e.g. ``"a[1-2],b"``.
        what: a label for error messages (the variable name or "hostlist").

    Returns:
        The top-level items, e.g. ``["a[1-2]", "b"]``.

    Raises:
        HostlistError: on unbalanced or nested brackets.

    """
    items: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
            if depth > 1:
                raise HostlistError(f"{what}: nested '[' at position {i} in {text!r}")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise HostlistError(f"{what}: unmatched ']' at position {i} in {text!r}")
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise HostlistError(f"{what}: unclosed '[' in {text!r}")
    items.append(text[start:])
    return items


def _expand_group(group: str, host: str, what: str) -> list[str]:
    """Expand the inside of one bracket group (``"001-004,007"``) into zero-padded numbers."""
    out: list[str] = []
    for part in group.split(","):
        part = part.strip()
        m = _RANGE.match(part)
        if not m:
            raise HostlistError(f"{what}: bad range {part!r} in host {host!r} (expected N or LO-HI)")
        lo_s, hi_s = m.group(1), m.group(2)
        if hi_s is None:
            out.append(lo_s)
            continue
        lo, hi = int(lo_s), int(hi_s)
        if hi < lo:
            raise HostlistError(f"{what}: descending range {part!r} in host {host!r}")
        if hi - lo + 1 > _MAX_HOSTS:
            raise HostlistError(f"{what}: range {part!r} in host {host!r} expands to more than {_MAX_HOSTS}")
        width = len(lo_s) if lo_s.startswith("0") else 0
        out.extend(str(n).zfill(width) for n in range(lo, hi + 1))
    return out


def _expand_host(host: str, what: str) -> list[str]:
    """Expand one top-level item that may hold several bracket groups."""
    pieces = re.split(r"(\[[^\]]*\])", host)
    names = [""]
    for piece in pieces:
        if piece.startswith("["):
            inner = piece[1:-1]
            if not inner:
                raise HostlistError(f"{what}: empty brackets in host {host!r}")
            values = _expand_group(inner, host, what)
            if len(names) * len(values) > _MAX_HOSTS:
                raise HostlistError(f"{what}: host {host!r} expands to more than {_MAX_HOSTS} names")
            names = [n + v for n in names for v in values]
        else:
            if "[" in piece or "]" in piece:
                raise HostlistError(f"{what}: stray bracket in host {host!r}")
            names = [n + piece for n in names]
    return names


def parse_hostlist(text: str, what: str = "hostlist") -> list[str]:
    """Expand a Slurm compressed host list.

    Args:
        text: e.g. ``"node[001-004,007],gpu-a1"``.
        what: a label used in error messages, typically the environment variable's name.

    Returns:
        The host names in Slurm's order, e.g.
        ``["node001", "node002", "node003", "node004", "node007", "gpu-a1"]``.

    Raises:
        HostlistError: on an empty list, empty item, bad range or unbalanced brackets.

    """
    text = text.strip()
    if not text:
        raise HostlistError(f"{what}: empty host list")
    hosts: list[str] = []
    for item in _split_top_level(text, what):
        item = item.strip()
        if not item:
            raise HostlistError(f"{what}: empty host name in {text!r}")
        if any(ch.isspace() for ch in item):
            raise HostlistError(f"{what}: whitespace inside host name {item!r}")
        hosts.extend(_expand_host(item, what))
    return hosts


def parse_tasks_per_node(text: str, what: str = "SLURM_TASKS_PER_NODE") -> list[int]:
    """Expand Slurm's run-length encoded tasks-per-node list.

    Args:
        text: e.g. ``"2(x3),1"`` (three nodes with 2 tasks, then one with 1) or a plain ``"8"``.
        what: a label used in error messages, typically the environment variable's name.

    Returns:
        One count per node, e.g. ``[2, 2, 2, 1]``.

    Raises:
        HostlistError: on malformed items, zero counts or zero repeats.

    """
    text = text.strip()
    if not text:
        raise HostlistError(f"{what}: empty value")
    counts: list[int] = []
    for item in text.split(","):
        item = item.strip()
        m = _TASKS_ITEM.match(item)
        if not m:
            raise HostlistError(f"{what}={text!r}: bad item {item!r} (expected N or N(xR))")
        count = int(m.group(1))
        repeat = int(m.group(2)) if m.group(2) is not None else 1
        if count < 1 or repeat < 1:
            raise HostlistError(f"{what}={text!r}: item {item!r} must have positive count and repeat")
        if len(counts) + repeat > _MAX_HOSTS:
            raise HostlistError(f"{what}={text!r}: more than {_MAX_HOSTS} nodes")
        counts.extend([count] * repeat)
    return counts
