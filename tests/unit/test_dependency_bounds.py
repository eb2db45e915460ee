"""setup.py bounds every requirement to the range the suite has run, and this environment lies inside it.

Read from setup.py's source (``ast``: nothing of setup() runs). Extras for stacks the CPU suite cannot
install (TE, vLLM, Megatron-Bridge, wandb) are checked for their form only where they carry bounds.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
#: extras no CPU test installs or imports (their ranges come from the image, tests/unit/test_dockerfile.py)
NOT_RUN_HERE = {"gpu", "gpu-cu13", "vllm", "vllm-cpu", "bridge", "wandb"}


def _lists() -> tuple[list[str], dict[str, list[str]]]:
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    values: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in ("CORE", "TRL"):
                values[name] = ast.literal_eval(node.value)
            elif name == "EXTRAS":  # {"dev": [..., *TRL], ...}: resolve the one starred name
                extras = {}
                for k, v in zip(node.value.keys, node.value.values):
                    items = []
                    for elt in (v.elts if isinstance(v, ast.List) else [v]):
                        if isinstance(elt, (ast.Starred, ast.Name)):  # *TRL or TRL
                            items += values["TRL"]
                        else:
                            items.append(ast.literal_eval(elt))
                    extras[ast.literal_eval(k)] = items
                values[name] = extras
    return values["CORE"], values["EXTRAS"]


def _bounded(req: Requirement) -> bool:
    ops = {s.operator for s in req.specifier}
    return "==" in ops or (bool(ops & {">=", ">"}) and bool(ops & {"<", "<="}))


def test_every_requirement_has_a_lower_and_an_upper_bound():
    core, extras = _lists()
    checked = core + [r for name, reqs in extras.items() if name not in ("bridge", "wandb") for r in reqs]
    unbounded = [r for r in checked if not _bounded(Requirement(r))]
    assert not unbounded, f"setup.py: requirements without both bounds: {unbounded}"


@pytest.mark.parametrize("group", ["core", "dev"])
def test_installed_versions_lie_inside_the_bounds(group):
    core, extras = _lists()
    reqs = core if group == "core" else extras["dev"]
    outside = []
    for text in reqs:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = Version(md.version(req.name))
        except md.PackageNotFoundError:
            outside.append(f"{req.name}: not installed")
            continue
        if not req.specifier.contains(Version(installed.base_version), prereleases=True):
            outside.append(f"{req.name} {installed} not in {req.specifier}")
    assert not outside, outside
