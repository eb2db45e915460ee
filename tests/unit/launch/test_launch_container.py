"""Static checks of the Dockerfile (it cannot be built here: no access to NGC images)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def instructions():
    text = (REPO / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    lines = [line.strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_dockerfile_shape():
    """One stage on a CUDA base; the CLI as entry point; never the bare transformer-engine meta package.

    The vLLM/torch/TE pins and the install steps are checked in tests/unit/test_dockerfile.py.
    """
    lines = instructions()
    froms = [line for line in lines if line.startswith("FROM ")]
    assert froms == ["FROM ${BASE_IMAGE}"]
    assert lines[-2:] == ['ENTRYPOINT ["nemo-prorl"]', 'CMD ["--help"]']
    runs = " ".join(line for line in lines if line.startswith("RUN "))
    assert "bubblewrap" in runs and "RUN pip check" in lines
    assert 'megatron-core==${MCORE_VERSION}' in runs
    assert not re.search(r"pip install[^&]*\btransformer[-_]engine(==|\s|\")", runs)
    assert ".[gpu]" not in runs and ".[vllm]" not in runs


def test_dockerignore_keeps_secrets_and_venvs_out():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", "runs", "**/__pycache__"} <= ignored
