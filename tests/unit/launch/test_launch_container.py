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
    lines = instructions()
    froms = [line for line in lines if line.startswith("FROM ")]
    assert froms == ["FROM ${REGISTRY}/nvidia/pytorch:${BASE_TAG}"]
    assert "ARG BASE_TAG=25.12-py3" in lines
    assert lines[-2:] == ['ENTRYPOINT ["nemo-prorl"]', 'CMD ["--help"]']
    runs = " ".join(line for line in lines if line.startswith("RUN "))
    assert "apt-get install -y --no-install-recommends bubblewrap" in runs
    assert 'pip install --no-deps "megatron-core==${MCORE_VERSION}"' in runs
    assert "use_existing_torch.py" in runs and "--no-build-isolation" in runs
    assert "RUN pip check" in lines
    # never the bare transformer-engine meta package, never the CUDA vLLM wheel with its torch pin
    assert not re.search(r"pip install[^&]*\btransformer[-_]engine\b", runs)
    assert not re.search(r"pip install[^&]*\bvllm\b", runs)
    assert ".[gpu]" not in runs and ".[vllm]" not in runs


def test_dockerignore_keeps_secrets_and_venvs_out():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", "runs", "**/__pycache__"} <= ignored
