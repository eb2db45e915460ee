"""No module of the package imports a CLI module (DESIGN.md: subcommand modules are leaves).

A CLI module is ``cli.py`` or ``*_cli.py``. The top-level dispatcher (``nemo_prorl/cli.py``) reaches the
subcommands through ``importlib`` by name, which is the one sanctioned way in; an ``import`` statement
naming a CLI module anywhere in the package fails this test (issue 17: the evaluator imported a private
helper of ``eval/cli.py`` and called the converter's ``main``).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[3] / "nemo_prorl"


def _is_cli(dotted: str) -> bool:
    last = dotted.rsplit(".", 1)[-1]
    return last == "cli" or last.endswith("_cli")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def cli_imports(source: str, module: str) -> list[str]:
    """``import`` statements of ``source`` (module ``module``) that name a CLI module, as ``line: name``."""
    found = []
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{a.name}" for a in node.names]  # `from pkg import cli` too
        else:
            continue
        found += [f"{node.lineno}: {n}" for n in names if _is_cli(n)]
    return found


def test_the_checker_sees_every_form():
    src = ("import nemo_prorl.eval.cli\nfrom nemo_prorl.eval.cli import _parse_ks\n"
           "from nemo_prorl.eval import cli\nfrom .convert_cli import main\n"
           "from nemo_prorl.eval import passk\nimport argparse\n")
    assert cli_imports(src, "nemo_prorl.policy.megatron.x") == [
        "1: nemo_prorl.eval.cli", "2: nemo_prorl.eval.cli", "3: nemo_prorl.eval.cli",
        "4: nemo_prorl.policy.megatron.convert_cli"]


def test_no_module_imports_a_cli_module():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        found = cli_imports(path.read_text(encoding="utf-8"), _module_name(path))
        if found:
            offenders[str(path.relative_to(PACKAGE.parent))] = found
    assert not offenders, f"modules importing a CLI module (move the shared code to a library): {offenders}"
