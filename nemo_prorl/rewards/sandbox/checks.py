"""Assert-style code tests, split so that the solution never holds what it is judged against.

An assert test such as ``assert math.isclose(area(2), 12.56, rel_tol=1e-3)`` is parsed here, in the grader,
with :mod:`ast` (never executed here) and cut into three parts:

* **calls**: the smallest expressions that reach into the solution (``area(2)``): a chain of calls,
  attribute reads and subscripts whose root is a name the test does not define (the solution's function,
  ``candidate``). Their arguments are the test's *inputs*. The calls run inside the sandbox, in the
  solution's interpreter, and their values come back as **data** (:func:`decode`): ``None``, ``bool``,
  ``int``, ``float``, ``str``, ``bytes``, ``list``, ``tuple``, ``dict``, ``set``/``frozenset``. Anything
  else (an object with an ``__eq__`` that is always true, an ``int`` subclass) fails the check.
* **expected values**: the parts that do not touch the solution (``12.56``, ``set((4, 5))``). Literals
  are read with :func:`ast.literal_eval`; expressions made of the judge's own operations are evaluated by
  the judge; anything else (``math.sqrt(2)``, ``[1] * 3``) is a *remote* expression, evaluated in a
  separate sandbox launch that holds no solution.
* **the judgement**: the rest (``isclose(<value>, <expected>, rel_tol=...)``), evaluated by
  :func:`judge_case` outside the solution's interpreter, over plain data, with **type-strict**
  equality: ``True != 1``, ``1 != 1.0``, ``(0, 1) != [0, 1]`` (numbers of different types meet only
  through arithmetic, e.g. ``abs(<value> - x) < tol`` or ``isclose``). A bare ``assert <value>`` needs
  the value to be exactly ``True`` and ``assert not <value>`` exactly ``False``.

So patched builtins, frame inspection and custom ``__eq__`` inside the solution's process change nothing:
the expected values are never in its address space, and the comparison is not done there.

Accepted test sources (one ``{"assert": ...}`` case = one source; the case passes when every assert in
it passes):

* top-level ``import m`` / ``import m as a`` / ``from m import n`` and ``NAME = <literal>``;
* ``assert <expr>`` (the message part is ignored);
* HumanEval style ``def check(candidate): <asserts, docstrings, pass, print>`` (the parameter is bound to the
  row's ``entry_point``), optionally followed by ``check(<entry point or candidate>)``.

In judgements: comparisons (``== != < <= > >= in not in``, and ``is``/``is not`` against
``None``/``True``/``False``), ``and``/``or``/``not``, ``+ - * / // % **`` on numbers, tuple/list/set/dict
displays, subscripts, and the calls in :data:`JUDGE_FUNCS`. Anything else raises :class:`UnsupportedTest`
(preflight reports it with the file, row and field).
"""

from __future__ import annotations

import ast
import base64
import builtins
import json
import math
import operator
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CALL = "\x00c"
"""Prefix of the placeholder names that stand for a call's value in a judgement."""
REMOTE = "\x00r"
"""Prefix of the placeholder names that stand for a remote expected value."""
MAX_DEPTH = 100
"""Deepest nesting of a returned value (deeper: the check fails)."""
MAX_INT_BITS = 1 << 14
"""Largest integer (in bits) the judge does arithmetic on."""
_BUILTIN_NAMES = frozenset(dir(builtins))
_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "tuple": tuple, "dict": dict,
          "set": set, "frozenset": frozenset, "bytes": bytes}


class UnsupportedTest(ValueError):
    """An assert test that cannot be split into solution calls and a judgement outside the solution."""


class CheckFailed(Exception):
    """A judgement that did not hold (the message is the detail reported for the case)."""


@dataclass(frozen=True)
class CasePlan:
    """One assert case, split.

    Attributes:
        prelude: the test's import and literal-assignment statements (source), run before the calls.
        aliases: names bound to the row's ``entry_point`` (``check``'s parameter, ``candidate``).
        calls: solution call expressions (source), evaluated in the solution's interpreter.
        remote: expected-value expressions (source) evaluated in a sandbox without the solution.
        judgements: the assert tests with calls and remote values replaced by placeholder names.
        imported: the test's imported names, ``(local name, dotted path)``.

    """

    prelude: tuple[str, ...]
    aliases: tuple[str, ...]
    calls: tuple[str, ...]
    remote: tuple[str, ...]
    judgements: tuple[ast.expr, ...]
    imported: tuple[tuple[str, str], ...] = ()


# --------------------------------------------------------------------------------------------------
# planning


class _Splitter:
    """Rewrites one assert test: calls -> ``CALL<i>``, remote expected values -> ``REMOTE<i>``."""

    def __init__(self, imported: dict[str, str], constants: dict[str, Any], aliases: set[str],
                 entry_point: str | None = None) -> None:
        self.imported = imported
        self.constants = constants
        self.aliases = aliases
        self.entry_point = entry_point
        self.calls: list[str] = []
        self.remote: list[str] = []

    def is_solution_name(self, name: str) -> bool:
        if name in self.aliases or name == self.entry_point:
            return True
        return name not in self.imported and name not in self.constants and name not in _BUILTIN_NAMES

    def touches_solution(self, node: ast.AST) -> bool:
        return any(isinstance(n, ast.Name) and self.is_solution_name(n.id) for n in ast.walk(node))

    def chain_root(self, node: ast.AST) -> ast.AST:
        while isinstance(node, (ast.Call, ast.Attribute, ast.Subscript)):
            node = node.func if isinstance(node, ast.Call) else node.value
        return node

    def rewrite(self, node: ast.expr) -> ast.expr:
        if any(isinstance(n, ast.Name) and n.id.startswith("\x00") for n in ast.walk(node)):
            raise UnsupportedTest("reserved name")
        if not self.touches_solution(node):
            return self.expected(node)
        root = self.chain_root(node)
        if isinstance(root, ast.Name) and self.is_solution_name(root.id) and root is not node:
            self.calls.append(ast.unparse(node))
            return ast.Name(id=f"{CALL}{len(self.calls) - 1}", ctx=ast.Load())
        if isinstance(node, ast.Name):
            raise UnsupportedTest(f"the name {node.id!r} is compared without being called")
        return self.judge_node(node)

    def expected(self, node: ast.expr) -> ast.expr:
        """A part that does not touch the solution: a literal, a judge expression, or a remote one."""
        try:
            value = ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            pass
        else:
            return ast.Constant(value=_Frozen(value))
        try:
            value = _Judge({}, self.imported, self.constants).ev(node)
        except (UnsupportedTest, CheckFailed, ArithmeticError, ValueError, TypeError, RecursionError):
            self.remote.append(ast.unparse(node))
            return ast.Name(id=f"{REMOTE}{len(self.remote) - 1}", ctx=ast.Load())
        return ast.Constant(value=_Frozen(value))

    def judge_node(self, node: ast.expr) -> ast.expr:
        """A judge-side node that contains solution calls: rewrite its children, check its form."""
        if isinstance(node, ast.Compare):
            for op, left, right in zip(node.ops, [node.left, *node.comparators], node.comparators):
                if isinstance(op, (ast.Is, ast.IsNot)) and not (_singleton(left) or _singleton(right)):
                    raise UnsupportedTest("'is' is supported only against None, True or False")
            return ast.Compare(left=self.rewrite(node.left), ops=node.ops,
                               comparators=[self.rewrite(c) for c in node.comparators])
        if isinstance(node, ast.BoolOp):
            return ast.BoolOp(op=node.op, values=[self.rewrite(v) for v in node.values])
        if isinstance(node, ast.UnaryOp):
            return ast.UnaryOp(op=node.op, operand=self.rewrite(node.operand))
        if isinstance(node, ast.BinOp):
            return ast.BinOp(left=self.rewrite(node.left), op=node.op, right=self.rewrite(node.right))
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return type(node)(elts=[self.rewrite(e) for e in node.elts], ctx=ast.Load())
        if isinstance(node, ast.Dict) and None not in node.keys:
            return ast.Dict(keys=[self.rewrite(k) for k in node.keys],
                            values=[self.rewrite(v) for v in node.values])
        if isinstance(node, ast.Subscript) and not isinstance(node.slice, ast.Slice):
            return ast.Subscript(value=self.rewrite(node.value), slice=self.rewrite(node.slice),
                                 ctx=ast.Load())
        if isinstance(node, ast.Call):
            name = _func_path(node.func, self.imported)
            if name not in JUDGE_FUNCS:
                raise UnsupportedTest(f"the call {ast.unparse(node.func)}(...) around the solution's value")
            allowed = JUDGE_FUNCS[name][1]
            for kw in node.keywords:
                if kw.arg is None or kw.arg not in allowed:
                    raise UnsupportedTest(f"keyword {kw.arg!r} of {name}()")
            if any(isinstance(a, ast.Starred) for a in node.args):
                raise UnsupportedTest("starred arguments")
            return ast.Call(func=node.func, args=[self.rewrite(a) for a in node.args],
                            keywords=[ast.keyword(arg=k.arg, value=self.rewrite(k.value))
                                      for k in node.keywords])
        raise UnsupportedTest(f"{type(node).__name__} around the solution's value")


class _Frozen:
    """A precomputed expected value held in an ``ast.Constant`` (marks it as judge data)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _singleton(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and (node.value is None or type(node.value) is bool)


def _func_path(func: ast.expr, imported: dict[str, str]) -> str | None:
    """Dotted name of a called function: ``abs``, ``math.isclose`` (through the test's imports)."""
    if isinstance(func, ast.Name):
        if func.id in imported:
            return imported[func.id]
        return func.id if func.id in _BUILTIN_NAMES else None
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in imported:
        return f"{imported[func.value.id]}.{func.attr}"
    return None


def _inert(stmt: ast.stmt) -> bool:
    """A statement with no bearing on the verdict: a docstring, a bare ``print`` or a ``print(...)``."""
    if not isinstance(stmt, ast.Expr):
        return False
    v = stmt.value
    return (isinstance(v, ast.Constant) or (isinstance(v, ast.Name) and v.id == "print")
            or (isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "print"))


def plan_case(source: str, entry_point: str | None = None) -> CasePlan:
    """Split one assert test source; see the module docstring for what is accepted.

    Raises:
        UnsupportedTest: naming the construct that cannot be split.

    """
    try:
        tree = ast.parse(source, mode="exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise UnsupportedTest(f"not valid Python: {type(exc).__name__}: {exc}") from None
    imported: dict[str, str] = {}
    constants: dict[str, Any] = {}
    prelude: list[str] = []
    asserts: list[ast.Assert] = []
    aliases: set[str] = {"candidate"} if entry_point else set()
    check_param: str | None = None
    for stmt in tree.body:
        if isinstance(stmt, ast.Import):
            for alias in stmt.names:
                local = alias.asname or alias.name.split(".")[0]
                imported[local] = alias.name if alias.asname else local
            prelude.append(ast.unparse(stmt))
        elif isinstance(stmt, ast.ImportFrom) and stmt.level == 0 and stmt.module:
            for alias in stmt.names:
                if alias.name == "*":
                    raise UnsupportedTest("'from ... import *'")
                imported[alias.asname or alias.name] = f"{stmt.module}.{alias.name}"
            prelude.append(ast.unparse(stmt))
        elif (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
              and isinstance(stmt.targets[0], ast.Name)):
            try:
                constants[stmt.targets[0].id] = ast.literal_eval(stmt.value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                raise UnsupportedTest(f"assignment to {stmt.targets[0].id!r} of a non-literal") from None
            prelude.append(ast.unparse(stmt))
        elif isinstance(stmt, ast.Assert):
            asserts.append(stmt)
        elif isinstance(stmt, ast.FunctionDef) and stmt.name == "check" and check_param is None:
            args = stmt.args
            if (len(args.args) != 1 or args.vararg or args.kwarg or args.kwonlyargs or args.posonlyargs
                    or stmt.decorator_list):
                raise UnsupportedTest("check() must take exactly one parameter")
            if not entry_point:
                raise UnsupportedTest("a check(candidate) test needs the row's entry_point")
            check_param = args.args[0].arg
            aliases.add(check_param)
            for inner in stmt.body:
                if isinstance(inner, ast.Assert):
                    asserts.append(inner)
                elif isinstance(inner, ast.Pass) or _inert(inner):
                    continue
                else:
                    raise UnsupportedTest(f"statement {type(inner).__name__} inside check() "
                                          f"(line {inner.lineno})")
        elif (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) and check_param is not None
              and isinstance(stmt.value.func, ast.Name) and stmt.value.func.id == "check"):
            continue  # the explicit check(candidate) call: the asserts above are the checks
        elif isinstance(stmt, ast.Pass) or _inert(stmt):
            continue
        else:
            raise UnsupportedTest(f"statement {type(stmt).__name__} (line {stmt.lineno}); only imports, "
                                  "literal assignments, asserts and def check(candidate) are supported")
    if not asserts:
        raise UnsupportedTest("no assert statement")
    # MBPP keeps ``import math`` in a separate field: a standard-library module name the test uses
    # without importing it is still the module (imported here), never a name the solution may define
    for a in asserts:
        for n in ast.walk(a.test):
            if not (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)):
                continue
            mod = n.value.id
            if (mod in sys.stdlib_module_names and mod not in imported and mod not in constants
                    and mod not in aliases and mod != entry_point):
                imported[mod] = mod
                prelude.insert(0, f"import {mod}")
    splitter = _Splitter(imported, constants, aliases, entry_point)
    judgements = tuple(splitter.rewrite(a.test) for a in asserts)
    if not splitter.calls:
        raise UnsupportedTest("no assert calls the solution")
    return CasePlan(prelude=tuple(prelude), aliases=tuple(sorted(aliases)), calls=tuple(splitter.calls),
                    remote=tuple(splitter.remote), judgements=judgements,
                    imported=tuple(sorted(imported.items())))


# --------------------------------------------------------------------------------------------------
# values on the wire


def decode(data: bytes) -> list[tuple[str, Any]]:
    """Decode the driver's result record: one ``(kind, value)`` per call.

    ``kind`` is ``"v"`` (``value`` is the returned plain data), ``"x"`` (the call raised; ``value`` is the
    exception's type name) or ``"e"`` (the value was not plain data; ``value`` says why).

    Raises:
        ValueError: the record is not a well-formed result list (the case fails).

    """
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise ValueError(f"unreadable result record ({type(exc).__name__})") from None
    if not isinstance(raw, list):
        raise ValueError("result record is not a list")
    out: list[tuple[str, Any]] = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 2 and item[0] in ("v", "x", "e")):
            raise ValueError("malformed result item")
        kind, payload = item
        try:
            out.append((kind, _dec(payload, 0)))
        except (OverflowError, TypeError, RecursionError, MemoryError) as exc:
            raise ValueError(f"malformed value ({type(exc).__name__})") from None
    return out


def _dec(node: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if not isinstance(node, list) or not node or not isinstance(node[0], str):
        raise ValueError("malformed value")
    tag, rest = node[0], node[1:]
    scalar = rest[0] if len(rest) == 1 else None
    if tag == "n" and not rest:
        return None
    if tag == "b" and scalar in (0, 1) and type(scalar) is int:
        return scalar == 1
    if tag in ("i", "f", "s", "y") and isinstance(scalar, str) and len(rest) == 1:
        if tag == "i":
            return int(scalar, 16)
        if tag == "f":
            return float.fromhex(scalar)
        if len(scalar) % 4 or not scalar.isascii():
            raise ValueError("malformed text value")
        raw = base64.b64decode(scalar, validate=True)
        return raw.decode("utf-8", "surrogatepass") if tag == "s" else raw
    if tag == "l":
        return [_dec(x, depth + 1) for x in rest]
    if tag == "t":
        return tuple(_dec(x, depth + 1) for x in rest)
    if tag == "S":
        try:
            return {_dec(x, depth + 1) for x in rest}
        except TypeError:
            raise ValueError("unhashable set element") from None
    if tag == "d" and len(rest) % 2 == 0:
        try:
            return {_dec(rest[i], depth + 1): _dec(rest[i + 1], depth + 1) for i in range(0, len(rest), 2)}
        except TypeError:
            raise ValueError("unhashable dict key") from None
    raise ValueError(f"malformed value (tag {tag[:8]!r})")


def strict_key(value: Any) -> Any:
    """A hashable form of plain data in which values of different types never compare equal."""
    t = type(value)
    if value is None:
        return ("n",)
    if t in (bool, int, float, str, bytes):
        return (t.__name__, value)
    if t is list or t is tuple:
        return (t.__name__, tuple(strict_key(v) for v in value))
    if t is set or t is frozenset:
        return ("set", frozenset(strict_key(v) for v in value))
    if t is dict:
        return ("dict", frozenset((strict_key(k), strict_key(v)) for k, v in value.items()))
    raise CheckFailed(f"not plain data: {t.__name__}")


def strict_equal(a: Any, b: Any) -> bool:
    """Type-strict equality of plain data (``True != 1``, ``1 != 1.0``, ``[1] != (1,)``)."""
    return strict_key(a) == strict_key(b)


# --------------------------------------------------------------------------------------------------
# judging


def _num(x: Any) -> int | float:
    if type(x) not in (int, float):
        raise CheckFailed(f"expected a number, got {type(x).__name__}")
    if type(x) is int and x.bit_length() > MAX_INT_BITS:
        raise CheckFailed("integer too large for the judge's arithmetic")
    return x


def _truth(x: Any) -> bool:
    if type(x) is not bool:
        raise CheckFailed(f"expected True or False, got a {type(x).__name__}")
    return x


def _iterable(x: Any) -> Any:
    if type(x) not in (list, tuple, set, frozenset, dict, str, bytes):
        raise CheckFailed(f"expected a container, got {type(x).__name__}")
    return x


def _round(x: Any, n: Any = None) -> Any:
    if n is not None and type(n) is not int:
        raise CheckFailed("round(): ndigits must be an int")
    return round(_num(x)) if n is None else round(_num(x), n)


def _isinstance(x: Any, t: Any) -> bool:
    return isinstance(x, t)


def _minmax(fn: Callable) -> Callable:
    def call(*args: Any) -> Any:
        items = list(_iterable(args[0])) if len(args) == 1 else list(args)
        return fn(items)
    return call


def _isclose(a: Any, b: Any, rel_tol: Any = 1e-9, abs_tol: Any = 0.0) -> bool:
    return math.isclose(_num(a), _num(b), rel_tol=_num(rel_tol), abs_tol=_num(abs_tol))


JUDGE_FUNCS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "abs": (lambda x: abs(_num(x)), ()),
    "len": (lambda x: len(_iterable(x)), ()),
    "set": (lambda x=(): set(_iterable(x)), ()),
    "frozenset": (lambda x=(): frozenset(_iterable(x)), ()),
    "sorted": (lambda x, reverse=False: sorted(_iterable(x), reverse=_truth(reverse)), ("reverse",)),
    "list": (lambda x=(): list(_iterable(x)), ()),
    "tuple": (lambda x=(): tuple(_iterable(x)), ()),
    "round": (_round, ("ndigits",)),
    "sum": (lambda x, start=0: sum((_num(v) for v in _iterable(x)), _num(start)), ("start",)),
    "min": (_minmax(min), ()),
    "max": (_minmax(max), ()),
    "str": (lambda x="": str(x) if x is None or type(x) in (str, int, float, bool) else _num(x), ()),
    "int": (lambda x=0: int(x) if type(x) in (int, float, str, bool) else _num(x), ()),
    "float": (lambda x=0.0: float(x) if type(x) in (int, float, str, bool) else _num(x), ()),
    "bool": (lambda x=False: bool(x), ()),
    "all": (lambda x: all(_truth(v) for v in _iterable(x)), ()),
    "any": (lambda x: any(_truth(v) for v in _iterable(x)), ()),
    "isinstance": (_isinstance, ()),
    "math.isclose": (_isclose, ("rel_tol", "abs_tol")),
    "math.fabs": (lambda x: math.fabs(_num(x)), ()),
    "math.floor": (lambda x: math.floor(_num(x)), ()),
    "math.ceil": (lambda x: math.ceil(_num(x)), ()),
    "math.sqrt": (lambda x: math.sqrt(_num(x)), ()),
    "math.isnan": (lambda x: math.isnan(_num(x)), ()),
    "math.isinf": (lambda x: math.isinf(_num(x)), ()),
}
"""Functions a judgement may apply to the solution's values: dotted name -> (function, keywords)."""

_MATH_CONSTANTS = {"math.pi": math.pi, "math.e": math.e, "math.tau": math.tau, "math.inf": math.inf,
                   "math.nan": math.nan}
_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}


class _Judge:
    """Evaluates a rewritten judgement over plain data (never the solution's objects)."""

    def __init__(self, env: dict[str, Any], imported: dict[str, str], constants: dict[str, Any]) -> None:
        self.env = env
        self.imported = imported
        self.constants = constants

    def ev(self, node: ast.expr) -> Any:  # noqa: C901 - one branch per node type
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, _Frozen):
                return v.value
            if v is None or type(v) in (bool, int, float, str, bytes):
                return v
            raise UnsupportedTest(f"constant of type {type(v).__name__}")
        if isinstance(node, ast.Name):
            if node.id in self.env:
                return self.env[node.id]
            if node.id in self.constants:
                return self.constants[node.id]
            if node.id in _TYPES:
                return _TYPES[node.id]
            raise UnsupportedTest(f"name {node.id!r}")
        if isinstance(node, ast.Attribute):
            path = _func_path(node, self.imported)
            if path in _MATH_CONSTANTS:
                return _MATH_CONSTANTS[path]
            raise UnsupportedTest(f"attribute {ast.unparse(node)}")
        if isinstance(node, (ast.Tuple, ast.List)):
            items = [self.ev(e) for e in node.elts]
            return tuple(items) if isinstance(node, ast.Tuple) else items
        if isinstance(node, ast.Set):
            try:
                return {self.ev(e) for e in node.elts}
            except TypeError as exc:
                raise CheckFailed(str(exc)) from None
        if isinstance(node, ast.Dict):
            try:
                return {self.ev(k): self.ev(v) for k, v in zip(node.keys, node.values)}
            except TypeError as exc:
                raise CheckFailed(str(exc)) from None
        if isinstance(node, ast.UnaryOp):
            v = self.ev(node.operand)
            if isinstance(node.op, ast.Not):
                return not _truth(v)
            if isinstance(node.op, ast.USub):
                return -_num(v)
            if isinstance(node.op, ast.UAdd):
                return +_num(v)
            raise UnsupportedTest("operator ~")
        if isinstance(node, ast.BinOp):
            a, b = _num(self.ev(node.left)), _num(self.ev(node.right))
            if isinstance(node.op, ast.Pow):
                if abs(b) > 64 or (type(a) is int and a.bit_length() > 64):
                    raise CheckFailed("power too large for the judge")
                return a ** b
            fn = _ARITH.get(type(node.op))
            if fn is None:
                raise UnsupportedTest(f"operator {type(node.op).__name__}")
            try:
                return fn(a, b)
            except (ArithmeticError, ValueError) as exc:
                raise CheckFailed(f"{type(exc).__name__}: {exc}") from None
        if isinstance(node, ast.BoolOp):
            is_and = isinstance(node.op, ast.And)
            for value in node.values:
                if _truth(self.ev(value)) != is_and:
                    return not is_and
            return is_and
        if isinstance(node, ast.Compare):
            left = self.ev(node.left)
            for op, comp in zip(node.ops, node.comparators):
                right = self.ev(comp)
                if not _compare(op, left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.Subscript):
            container, key = self.ev(node.value), self.ev(node.slice)
            if type(container) not in (list, tuple, str, bytes, dict):
                raise CheckFailed(f"cannot index a {type(container).__name__}")
            if type(container) is dict:
                matches = [v for k, v in container.items() if strict_equal(k, key)]
                if not matches:
                    raise CheckFailed("key not found")
                return matches[0]
            if type(key) is not int:
                raise CheckFailed("index must be an int")
            try:
                return container[key]
            except IndexError:
                raise CheckFailed("index out of range") from None
        if isinstance(node, ast.Call):
            path = _func_path(node.func, self.imported)
            if path not in JUDGE_FUNCS:
                raise UnsupportedTest(f"call of {ast.unparse(node.func)}")
            fn, allowed = JUDGE_FUNCS[path]
            if any(kw.arg not in allowed for kw in node.keywords) or any(
                    isinstance(a, ast.Starred) for a in node.args):
                raise UnsupportedTest(f"arguments of {path}()")
            args = [self.ev(a) for a in node.args]
            kwargs = {kw.arg: self.ev(kw.value) for kw in node.keywords}
            try:
                return fn(*args, **kwargs)
            except CheckFailed:
                raise
            except (TypeError, ValueError, ArithmeticError, RecursionError) as exc:
                raise CheckFailed(f"{path}(): {type(exc).__name__}: {exc}") from None
        raise UnsupportedTest(f"{type(node).__name__} in an expected value")


def _compare(op: ast.cmpop, a: Any, b: Any) -> bool:
    if isinstance(op, (ast.Eq, ast.Is)):
        return strict_equal(a, b)
    if isinstance(op, (ast.NotEq, ast.IsNot)):
        return not strict_equal(a, b)
    if isinstance(op, (ast.In, ast.NotIn)):
        if type(b) in (str, bytes):
            if type(a) is not type(b):
                raise CheckFailed(f"'in' of a {type(a).__name__} in a {type(b).__name__}")
            found = a in b
        else:
            key = strict_key(a)
            found = any(strict_key(x) == key for x in _iterable(b))
        return found if isinstance(op, ast.In) else not found
    numbers = type(a) in (int, float) and type(b) in (int, float)
    if not numbers and not (type(a) is type(b) and type(a) in (str, bytes)):
        raise CheckFailed(f"cannot order a {type(a).__name__} and a {type(b).__name__}")
    order = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge}
    return order[type(op)](a, b)


def judge_case(plan: CasePlan, values: list[tuple[str, Any]], remote: list[Any]) -> tuple[bool, str]:
    """Decide one assert case from the calls' values.

    Args:
        plan: the split case.
        values: :func:`decode` of the driver's record, one per ``plan.calls``.
        remote: the remote expected values, one per ``plan.remote``.

    Returns:
        ``(passed, detail)``; ``detail`` names the first failing assert.

    """
    if len(values) != len(plan.calls) or len(remote) != len(plan.remote):
        return False, "result record has the wrong number of values"
    env: dict[str, Any] = {f"{REMOTE}{i}": v for i, v in enumerate(remote)}
    imported = dict(plan.imported)
    for i, (kind, value) in enumerate(values):
        if kind == "v":
            env[f"{CALL}{i}"] = value
    for n, judgement in enumerate(plan.judgements):
        used = [int(x.id[len(CALL):]) for x in ast.walk(judgement)
                if isinstance(x, ast.Name) and x.id.startswith(CALL)]
        for i in used:
            kind, value = values[i]
            if kind == "x":
                return False, f"{plan.calls[i][:80]} raised {str(value)[:60]}"
            if kind == "e":
                return False, f"{plan.calls[i][:80]} returned {str(value)[:80]}"
        try:
            ok = _truth(_Judge(env, imported, {}).ev(judgement))
        except CheckFailed as exc:
            return False, f"assert {n}: {exc}"[:200]
        except Exception as exc:  # the judge works on hostile data: any failure fails the case
            return False, f"assert {n}: {type(exc).__name__}: {exc}"[:200]
        if not ok:
            return False, f"assert {n} failed"
    return True, ""
