"""The Dockerfile's version pins against what the wheels themselves require (no docker needed).

Each vLLM wheel pins one exact torch in its METADATA (``Requires-Dist: torch==X``); installing it next to
any other torch either fails to resolve or leaves vLLM's compiled kernels linked against the wrong torch.
``KNOWN_PINS`` below was read from the PyPI wheels' METADATA on 2026-12-06 (``pip install --dry-run
--no-deps --report`` for ``vllm==X`` on cp312 / manylinux x86_64, then ``requires_dist`` of the report;
the same lines ``unzip -p vllm-X.whl '*/METADATA' | grep ^Requires-Dist`` prints). ``TORCH_CUDA`` is the
CUDA major of the PyPI torch build, from torch's own METADATA (``nvidia-*-cu12`` requirements for 2.9.1
and 2.10.0; ``cuda-toolkit[...]==13.0.3`` and ``nvidia-nccl-cu13`` for 2.13.0). docs/cluster.md,
section 5, records the full check. To move the image to another vLLM, read that wheel's METADATA the
same way and add a row here.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"

#: vllm version -> (torch it pins, transformers range it requires), from the wheels' METADATA
KNOWN_PINS = {
    "0.16.0": ("2.9.1", ">=4.56.0,<5"),
    "0.17.0": ("2.10.0", ">=4.56.0,<5"),
    "0.18.0": ("2.10.0", ">=4.56.0,<5"),
    "0.19.1": ("2.10.0", ">=4.56.0,!=5.0.*,!=5.1.*,!=5.2.*,!=5.3.*,!=5.4.*,!=5.5.0"),
    "0.22.1": ("2.11.0", ">=4.56.0,!=5.0.*,!=5.1.*,!=5.2.*,!=5.3.*,!=5.4.*,!=5.5.0"),
    "0.26.0": ("2.11.0", ">=5.5.3"),
    "0.30.0": ("2.13.0", ">=5.10.4"),
    "0.32.0": ("2.13.0", ">=5.16.1,<5.20.0"),
    "0.33.0": ("2.14.0", ">=5.16.1,<5.21.0"),
    "0.34.0": ("2.14.0", ">=5.16.1,<5.23.0"),
}
#: torch (PyPI build) -> CUDA major it is built for
TORCH_CUDA = {"2.9.1": 12, "2.10.0": 12, "2.13.0": 13}


def dockerfile_args(text: str) -> dict[str, str]:
    """``ARG NAME=default`` lines -> {NAME: default} (ARGs without a default are left out)."""
    return dict(re.findall(r"^ARG\s+([A-Za-z_][A-Za-z0-9_]*)=(\S+)\s*$", text, flags=re.M))


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether a ``.dockerignore`` excludes ``path`` (POSIX, relative to the build context).

    Emulates Docker's rule that the last matching line wins and ``!`` re-includes. It is stricter than
    Docker: ``fnmatch``'s ``*`` also crosses ``/``, so a pattern that Docker anchors at the root may
    count as excluding a nested file here. A package-data file passing this check is therefore sent.
    """
    excluded = False
    for raw in patterns:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = line[1:] if neg else line
        pat = pat.lstrip("/").replace("**/", "")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p.rsplit("/", 1)[-1], pat) for p in prefixes):
            excluded = not neg
    return excluded


@pytest.fixture(scope="module")
def text() -> str:
    return DOCKERFILE.read_text(encoding="utf-8")


def test_arg_parser_reads_defaults():
    got = dockerfile_args("ARG A=1\nARG B\n  ARG C=x y\nARG D=nvidia/cuda:13.0.0-devel\n")
    assert got == {"A": "1", "D": "nvidia/cuda:13.0.0-devel"}


def test_dockerignore_emulation_last_match_wins():
    pats = ["*.safetensors", "**/*.pyc", "!keep/model.safetensors", "build"]
    assert dockerignore_excludes(pats, "a/model.safetensors")
    assert not dockerignore_excludes(pats, "keep/model.safetensors")
    assert dockerignore_excludes(pats, "x/y/z.pyc")
    assert dockerignore_excludes(pats, "build/lib/a.py")
    assert not dockerignore_excludes(pats, "nemo_prorl/conf/demo.yaml")


def test_vllm_and_torch_are_a_pair_vllm_pins(text):
    args = dockerfile_args(text)
    vllm, torch = args["VLLM_VERSION"], args["TORCH_VERSION"]
    assert vllm in KNOWN_PINS, f"VLLM_VERSION={vllm}: read its METADATA and add a KNOWN_PINS row"
    assert KNOWN_PINS[vllm][0] == torch, f"vllm {vllm} pins torch=={KNOWN_PINS[vllm][0]}, not {torch}"
    # both are installed in one pip call, so a mismatch could not even resolve
    assert re.search(r'pip install "vllm==\$\{VLLM_VERSION\}" "torch==\$\{TORCH_VERSION\}"', text)


def test_cuda_major_agrees_across_torch_te_and_the_base_image(text):
    args = dockerfile_args(text)
    cuda = TORCH_CUDA[args["TORCH_VERSION"]]
    base = re.search(r"nvidia/cuda:(\d+)\.", args["BASE_IMAGE"])
    assert base and int(base.group(1)) == cuda, (args["BASE_IMAGE"], cuda)
    assert f"transformer_engine[core_cu{cuda}]" in text
    # TE's torch extension must compile against the installed torch, not an isolated build's
    assert re.search(r"--no-build-isolation \"transformer_engine_torch==", text)


def test_vllm_transformers_range_meets_this_package(text):
    """setup.py's transformers requirement and vLLM's pin must overlap (the lower end of vLLM's range)."""
    setup = (REPO / "setup.py").read_text(encoding="utf-8")
    ours = SpecifierSet(re.search(r'"transformers([^"]+)"', setup).group(1))
    theirs = SpecifierSet(KNOWN_PINS[dockerfile_args(text)["VLLM_VERSION"]][1])
    lowest = min(Version(s.version.replace(".*", "")) for s in theirs if s.operator == ">=")
    assert lowest in ours and lowest in theirs


def test_package_installed_for_real_with_bubblewrap(text):
    assert re.search(r"apt-get install[^\n]*\bbubblewrap\b", text)
    assert "bwrap --version" in text
    installs = [ln for ln in text.splitlines() if "pip install" in ln and "/opt/src/nemo_prorl" in ln]
    assert installs and not any(" -e " in ln or "--editable" in ln for ln in installs)
    assert "COPY . /opt/src/nemo_prorl" in text
    assert "pip check" in text


def test_dockerignore_sends_every_package_data_file():
    patterns = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    must = ["setup.py", "pyproject.toml", "README.md", "nemo_prorl/__init__.py",
            *[p.relative_to(REPO).as_posix() for p in (REPO / "nemo_prorl" / "conf").glob("*.yaml")],
            *[p.relative_to(REPO).as_posix() for p in (REPO / "nemo_prorl" / "assets" / "demo").iterdir()]]
    assert any(m.endswith("model.safetensors") for m in must)
    left_out = [m for m in must if dockerignore_excludes(patterns, m)]
    assert not left_out, f".dockerignore leaves package data out of the image: {left_out}"
