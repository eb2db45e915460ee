"""The package's import layering (DESIGN.md, "The house"), checked on the source with ``ast``.

* ``nemo_prorl/algorithms/`` imports nothing of the package outside ``nemo_prorl.algorithms`` (it is pure
  torch; the collectives helper lives in it).
* Nothing under ``nemo_prorl/trainer/`` imports megatron-core (``megatron``) or the megatron engine
  (``nemo_prorl.policy.megatron``): the trainer talks to a ``PolicyInterface`` built by name.

Every import statement counts, also those inside functions and ``TYPE_CHECKING`` blocks. Relative imports
are resolved against the importing module's package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "nemo_prorl"


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``source`` (the code of ``module``).

    ``from a import b`` yields ``a.b`` as well as ``a`` (``b`` may be a submodule), so a check on a
    prefix sees ``from nemo_prorl import collectives`` as an import of ``nemo_prorl.collectives``.
    """
    out: list[tuple[int, str]] = []
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names if a.name != "*"]
    return out


def _modules(sub: str) -> list[tuple[Path, str]]:
    root = PACKAGE / sub
    return [(p, "nemo_prorl." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts))
            for p in sorted(root.rglob("*.py"))]


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_scanner_resolves_each_spelling():
    src = """import megatron.core
from megatron.core import parallel_state as ps
from nemo_prorl import collectives
from ..policy.megatron import engine
from . import records

def f():
    from nemo_prorl.policy.megatron.checkpoint import latest_checkpoint
"""
    found = imported_modules(src, "nemo_prorl.trainer.trainer")
    names = {n for _, n in found}
    assert {"megatron.core", "megatron.core.parallel_state", "nemo_prorl.collectives",
            "nemo_prorl.policy.megatron.engine", "nemo_prorl.trainer.records",
            "nemo_prorl.policy.megatron.checkpoint.latest_checkpoint"} <= names
    assert (8, "nemo_prorl.policy.megatron.checkpoint") in found  # inside a function: line 8


@pytest.mark.parametrize("path,module", _modules("algorithms"), ids=lambda v: str(v)[-40:])
def test_algorithms_import_nothing_else_of_the_package(path, module):
    bad = [f"{path.name}:{line}: {name}" for line, name in imported_modules(path.read_text(), module)
           if _under(name, "nemo_prorl") and not _under(name, "nemo_prorl.algorithms")]
    assert not bad, "nemo_prorl.algorithms must stay self-contained:\n" + "\n".join(bad)


@pytest.mark.parametrize("path,module", _modules("trainer"), ids=lambda v: str(v)[-40:])
def test_the_trainer_imports_no_megatron(path, module):
    bad = [f"{path.name}:{line}: {name}" for line, name in imported_modules(path.read_text(), module)
           if _under(name, "megatron") or _under(name, "nemo_prorl.policy.megatron")]
    assert not bad, ("the trainer talks to the policy through PolicyInterface only (policy/interface.py; "
                     "build it with policy.registry.build_policy):\n" + "\n".join(bad))


def test_the_layers_exist():
    """The parametrised checks above ran over real files (an empty glob would pass vacuously)."""
    assert len(_modules("algorithms")) >= 10 and len(_modules("trainer")) >= 12
