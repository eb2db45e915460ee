"""A tripwire that forbids code evaluation and process/network side effects while a scorer runs.

Scorers must never execute model text: the reasoning-gym scorers that did (``eval``, sympy
``parse_expr``) are replaced by parsers with no code path (:mod:`nemo_prorl.rewards.safe_parse`). This
module is the defence in depth behind that, for any path that was missed or that a new upstream
version adds. Inside :func:`no_code_execution`, a process-wide audit hook (PEP 578,
:func:`sys.addaudithook`) raises :class:`CodeExecutionBlocked` *before* any of these happen:

* ``exec`` of a code object that was not loaded from a file. ``eval``/``exec`` of a string (and so
  sympy's ``parse_expr``/``sympify`` of a string) raise the ``exec`` audit event with a code object
  whose ``co_filename`` is ``"<string>"``; module imports raise it with the module's real path (or
  ``"<frozen ...>"``), which stays allowed so that lazy imports keep working. Two exceptions, neither
  of which ever sees model text: code executed while a module is being imported (a lazily imported
  module's top level may ``sympify`` constant strings: ``sympy.physics.units`` does, and ``simplify``
  imports it on demand), and the template code generators in :data:`_CODEGEN_CALLERS`.
* starting processes (``os.system``, ``os.exec*``, ``os.posix_spawn``, ``os.spawn*``, ``os.fork``,
  ``subprocess.Popen``), sending signals (``os.kill``, ``os.killpg``), opening or binding sockets,
  unpickling classes (``pickle.find_class``), loading shared libraries
  (``ctypes.dlopen``) and building code or function objects by hand (``code.__new__``,
  ``function.__new__``).

Patches to modules, classes or functions are not refused here (``object.__setattr__`` is audited only
for a few special attributes, and sympy sets some of those legitimately while simplifying);
:mod:`nemo_prorl.rewards.rgym` fingerprints the scorer's class, module and code objects after each row
instead.

The hook is installed when this module is imported and stays for the life of the process (audit hooks
cannot be removed), but it acts only while a guard is active in the calling thread, so rewards that
legitimately start processes (the code reward's sandbox) are unaffected. A scorer that swallows the
exception (a bare ``except:``) still cannot run the payload: the event is refused before the code
runs, and the list that :func:`no_code_execution` yields reports it afterwards.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import Any

#: audit events refused while a guard is active (``exec`` is decided by the code object's origin)
FORBIDDEN_EVENTS: frozenset[str] = frozenset({
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg",
    "subprocess.Popen", "socket.__new__", "socket.connect", "socket.bind", "socket.sendto",
    "pickle.find_class", "ctypes.dlopen", "ctypes.cdata", "code.__new__",
    "function.__new__", "os.putenv", "os.unsetenv",
})

#: modules that generate and ``exec`` their own source from fixed templates (``namedtuple``,
#: ``@dataclass``; sympy's monomial arithmetic, built per number of generators the first time a
#: polynomial ring of that size is used, e.g. inside ``simplify``); they never see model text
_CODEGEN_CALLERS: tuple[str, ...] = (
    "/collections/__init__.py", "/dataclasses.py", "/sympy/polys/monomials.py",
)


class CodeExecutionBlocked(RuntimeError):
    """Raised inside a guarded scorer when it tries to evaluate code or cause a side effect."""


_local = threading.local()


def _from_file(filename: str) -> bool:
    return bool(filename) and (not filename.startswith("<") or filename.startswith("<frozen "))


def _in_import_or_codegen(frame: Any) -> bool:
    """Whether the exec comes from a template code generator or runs inside a module's import."""
    if frame.f_code.co_filename.endswith(_CODEGEN_CALLERS):
        return True
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def _hook(event: str, args: tuple) -> None:
    if not getattr(_local, "depth", 0):
        return
    if event == "exec":
        code = args[0] if args else None
        filename = getattr(code, "co_filename", "")
        if _from_file(filename) or _in_import_or_codegen(sys._getframe(1)):
            return
        why = f"exec of code compiled from {filename or 'a string'!r}"
    elif event in FORBIDDEN_EVENTS:
        why = event
    else:
        return
    _local.blocked.append(why)
    raise CodeExecutionBlocked(f"blocked while scoring: {why}")


@contextlib.contextmanager
def no_code_execution() -> Iterator[list[str]]:
    """Run the body with code evaluation and side effects refused; yields the list of refused events.

    Example::

        with no_code_execution() as blocked:
            value = scorer(answer, entry)
        if blocked:
            ...  # the scorer tried to evaluate something: do not trust ``value``

    Nested guards share the outer guard's list.
    """
    depth = getattr(_local, "depth", 0)
    if depth == 0:
        _local.blocked = []
    blocked = _local.blocked
    _local.depth = depth + 1
    try:
        yield blocked
    finally:
        _local.depth = depth


def guard_active() -> bool:
    """Whether the calling thread is inside :func:`no_code_execution`."""
    return bool(getattr(_local, "depth", 0))


# Installed at import (the hook is inert outside a guard), so this module's globals never change after.
sys.addaudithook(_hook)
