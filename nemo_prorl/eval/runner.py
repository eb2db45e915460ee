"""Evaluate checkpoints: sample n per prompt through the rollout factory, score, report pass@k.

The library half of ``nemo-prorl eval`` (:mod:`nemo_prorl.eval.cli` parses the command line into an
:class:`EvalSpec` and calls :func:`run_eval`; no module imports the CLI).

The engine comes from :func:`nemo_prorl.rollout.factory.build_rollout_engine` with the configured
``rollout.backend``: ``auto`` picks vLLM where CUDA and vLLM are present (pass@k at n=16 of a 1.5B model on
AIME/MATH-sized sets is a vLLM job) and the transformers engine otherwise. One engine serves every
checkpoint of the same architecture, tokenizer and limits: the next checkpoint's weights are loaded into
it in place (a lazy stream over its safetensors files), so vLLM starts once per run, not per checkpoint.

A checkpoint is a Hugging Face model directory (``config.json`` + safetensors) or a Megatron directory
written by ``nemo-prorl convert --to-megatron`` (converted to an HF directory in a scratch folder).
Samples are appended to ``OUT/samples/<label>.jsonl`` as they are produced, one line per prompt;
re-running the same spec skips prompts already there, so an interrupted evaluation resumes. Results:
``OUT/results.json`` (per checkpoint, overall and per domain and per benchmark file), ``OUT/results.md``
and ``OUT/passk.png``. ProRL's evaluation settings are the defaults: temperature 0.6, top_p 0.95, n 16.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemo_prorl.eval.sampling import DEFAULT_MAX_TOKENS, fit_lengths, sample_and_score, summarize

#: config.json keys that do not change what a model computes (ignored when deciding to reuse an engine)
_NAME_KEYS = frozenset({"_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype"})
#: rollout keys the evaluator sets itself from the spec (``--n``, ``--max-tokens`` ...)
_SPEC_KEYS = frozenset({"backend", "n", "temperature", "top_p", "seed", "max_prompt_tokens",
                        "max_response_tokens", "overlong_prompt"})


class EvalError(ValueError):
    """Bad input to an evaluation (a checkpoint, a data file, a setting); the message names it."""


@dataclass
class EvalSpec:
    """What to evaluate and how.

    Attributes:
        checkpoints: ``(label, directory)`` pairs, HF or Megatron directories.
        data: eval files in the row format (JSONL/JSON/parquet).
        out: output directory (samples, results.json/.md, passk.png).
        n: samples per prompt (ProRL: 16; 256 for boundary curves).
        ks: k values (default: powers of 2 up to n).
        temperature, top_p: sampling (ProRL eval: 0.6, 0.95).
        max_tokens: most response tokens per sample (default: the model's positions minus the longest
            prompt, at most 1024: :func:`nemo_prorl.eval.sampling.fit_lengths`).
        max_prompt_tokens: longest prompt (default: the longest prompt of the data, or the model's
            positions minus ``max_tokens`` when that is given); longer
            prompts are skipped and reported.
        max_prompts: use only the first N prompts of each file.
        seed: sampling seed (the run is reproducible for a given engine and layout).
        workers: reward worker processes.
        batch_prompts: prompts per generate call (default: 32 for the transformers engine, 512 for
            others, whose throughput grows with the batch).
        templates: ``{domain: format}`` prompt template overrides.
        backend: ``auto`` (vLLM where CUDA and vLLM exist, else ``hf``) or a registered rollout backend.
        rollout: further ``rollout.*`` settings (e.g. ``gpu_memory_utilization``, ``enforce_eager``,
            ``dtype``, ``max_batch_size``); keys the spec sets itself are refused. The evaluator is one
            process: ``tensor_parallel_size`` > 1 needs a torchrun launch it does not do.

    """

    checkpoints: list[tuple[str, Path]]
    data: list[str]
    out: Path
    n: int = 16
    ks: list[int] | None = None
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int | None = None
    max_prompt_tokens: int | None = None
    max_prompts: int | None = None
    seed: int = 1234
    workers: int = 2
    batch_prompts: int | None = None
    templates: dict[str, str] = field(default_factory=dict)
    backend: str = "auto"
    rollout: dict[str, Any] = field(default_factory=dict)

    def k_values(self) -> list[int]:
        """``ks`` checked against ``n`` (default: powers of two up to ``n``)."""
        ks = self.ks or [2**i for i in range(0, 20) if 2**i <= self.n]
        if any(k > self.n for k in ks):
            raise EvalError(f"--k {max(ks)} exceeds --n {self.n}")
        return ks


# ------------------------------------------------------------------------------------- the engine
def resolve_backend(name: str, cuda: bool | None = None, vllm: bool | None = None) -> str:
    """The rollout backend ``name`` stands for: ``auto`` -> ``vllm`` with CUDA and vLLM, else ``hf``."""
    if name != "auto":
        return name
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if vllm is None:
        vllm = importlib.util.find_spec("vllm") is not None
    return "vllm" if cuda and vllm else "hf"


def rollout_config(spec: EvalSpec, max_prompt_tokens: int) -> Any:
    """The validated :class:`~nemo_prorl.rollout.config.RolloutConfig` the engine is built with.

    Raises:
        EvalError: a ``rollout`` key the spec sets itself, or an invalid value (named ``--rollout KEY``).

    """
    from nemo_prorl.rollout.config import RolloutConfig

    clash = sorted(set(spec.rollout) & _SPEC_KEYS)
    if clash:
        raise EvalError(f"--rollout {clash}: set by the eval options (--backend, --n, --temperature, "
                        "--top-p, --seed, --max-tokens, --max-prompt-tokens)")
    # nothing trains beside the evaluator: no sleep mode, and most of the GPU for the KV cache (the rest
    # leaves room for converting a Megatron checkpoint on the GPU while the engine lives)
    values: dict[str, Any] = {"enable_sleep_mode": False, "gpu_memory_utilization": 0.8}
    values.update(spec.rollout)
    values.update(backend=resolve_backend(spec.backend), n=spec.n, temperature=spec.temperature,
                  top_p=spec.top_p, seed=spec.seed, max_prompt_tokens=max_prompt_tokens,
                  max_response_tokens=spec.max_tokens if spec.max_tokens is not None else DEFAULT_MAX_TOKENS,
                  overlong_prompt="skip")
    try:
        return RolloutConfig.from_dict(values, where="--rollout")
    except (ValueError, TypeError) as exc:
        raise EvalError(str(exc)) from None


def engine_signature(hf_dir: Path, tokenizer: Any, config: Any) -> str:
    """What must match for one engine to serve two checkpoints: architecture, vocabulary, rollout config."""
    arch = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    arch = {k: v for k, v in arch.items() if k not in _NAME_KEYS}
    vocab = sorted(tokenizer.get_vocab().items())
    return json.dumps([arch, vocab, dataclasses.asdict(config)], sort_keys=True, default=str)


def iter_safetensors(hf_dir: Path) -> Iterator[tuple[str, Any]]:
    """The tensors of an HF directory's ``*.safetensors`` files, one at a time (lazy: one file open)."""
    from safetensors import safe_open

    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise EvalError(f"{hf_dir}: no *.safetensors files")
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)


def load_weights(engine: Any, hf_dir: Path) -> None:
    """Load a checkpoint's weights into a live engine (a stream where the engine takes one)."""
    weights = iter_safetensors(hf_dir)
    engine.update_weights(weights if getattr(engine, "accepts_weight_stream", False) else dict(weights))


def close_engine(engine: Any) -> None:
    """Release an engine before another is built (its ``close()`` where it has one)."""
    close = getattr(engine, "close", None)
    if callable(close):
        close()


# --------------------------------------------------------------------------------- checkpoints
def hf_dir_for(path: Path, scratch: Path) -> Path:
    """An HF directory for ``path``, converting a Megatron directory written by ``nemo-prorl convert``.

    Raises:
        EvalError: ``path`` is neither, or the conversion fails.

    """
    from nemo_prorl.policy.megatron.layout import HF_CONFIG_SUBDIR, META_FILE, WEIGHTS_SUBDIR, is_megatron_dir

    if (path / "config.json").is_file():
        return path
    if not is_megatron_dir(path):
        raise EvalError(f"{path}: neither an HF model directory (config.json) nor a Megatron directory "
                        f"written by `nemo-prorl convert --to-megatron` ({META_FILE})")
    import torch
    from transformers import AutoConfig

    from nemo_prorl.policy.megatron import convert, parallel
    from nemo_prorl.policy.megatron.model import UnsupportedModelError, build_gpt_model

    cfg_dir = path / HF_CONFIG_SUBDIR
    meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    dtype = getattr(torch, str(meta.get("dtype", "float32")))
    out = scratch / path.name
    try:
        hf_config = AutoConfig.from_pretrained(str(cfg_dir), trust_remote_code=False)
        parallel.init_parallel(1, 1)
        try:
            model = build_gpt_model(hf_config, params_dtype=dtype)
            convert.load_megatron_weights(model, path / WEIGHTS_SUBDIR)
            convert.save_hf_checkpoint(convert.export_hf_state_dict(model, hf_config), hf_config, out,
                                       tokenizer_dir=cfg_dir)
        finally:
            parallel.destroy_parallel()
    except (OSError, ValueError, KeyError, convert.ConversionError, UnsupportedModelError) as exc:
        raise EvalError(f"{path}: conversion to HF failed ({exc})") from None
    return out


def done_records(path: Path) -> dict[str, dict]:
    """Records already in a samples file, by id (a line cut by an interruption is redone)."""
    done: dict[str, dict] = {}
    if path.exists():
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                done[str(rec["id"])] = rec
    return done


def read_benchmarks(spec: EvalSpec, warn: Callable[[str], None]) -> dict[str, list[dict]]:
    """Validated rows per benchmark file (file stem -> rows); bad rows are skipped and reported."""
    from nemo_prorl.data.preflight import preflight

    rows_by_file: dict[str, list[dict]] = {}
    for f in spec.data:
        rep = preflight([f], policy="skip", templates=spec.templates)
        for issue in rep.issues[:20]:
            warn(f"skipped {issue}")
        rows = list(rep.rows)[: spec.max_prompts] if spec.max_prompts else list(rep.rows)
        if not rows:
            raise EvalError(f"{f}: no valid rows")
        rows_by_file[Path(f).stem] = rows
    return rows_by_file


# ------------------------------------------------------------------------------------- reports
def markdown(results: dict[str, dict[str, float]], ks: list[int]) -> str:
    """One row per checkpoint and scope (all, each domain, each benchmark file)."""
    heads = ["reward"] + [f"pass@{k}" for k in ks]
    lines = ["| checkpoint | scope | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
    for label, m in results.items():
        domains = sorted({k.split("/", 1)[1] for k in m if k.startswith("pass@1/") and "group:" not in k})
        groups = sorted({k.split("/group:", 1)[1] for k in m if k.startswith("pass@1/group:")})
        benches = sorted({k.split("/pass@1", 1)[0] for k in m if k.endswith("/pass@1")})
        scopes = [("all", "reward/mean", lambda h: h)]
        scopes += [(f"domain {d}", f"reward/{d}", lambda h, d=d: f"{h}/{d}") for d in domains]
        scopes += [(f"file {b}", f"{b}/reward/mean", lambda h, b=b: f"{b}/{h}") for b in benches]
        scopes += [(f"group {g}", None, lambda h, g=g: f"{h}/group:{g}") for g in groups]
        for scope, reward_key, name in scopes:
            cells = [m.get(reward_key) if reward_key else None] + [m.get(name(f"pass@{k}")) for k in ks]
            shown = ["-" if v is None else f"{v:.4f}" for v in cells]
            lines.append(f"| {label} | {scope} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, dict[str, float]], ks: list[int], path: Path) -> None:
    """pass@k against k (log2 axis), one line per checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, m in results.items():
        xs = [k for k in ks if f"pass@{k}" in m]
        ax.plot(xs, [m[f"pass@{k}"] for k in xs], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("pass@k (unbiased estimator)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------------------------- run
def run_eval(spec: EvalSpec, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate every checkpoint of ``spec``; write the outputs; return the results document.

    Raises:
        EvalError: bad input (a checkpoint, a data file, a setting), named in the message.

    """
    from transformers import AutoTokenizer

    from nemo_prorl.data.templates import tokenize_prompt
    from nemo_prorl.rewards.config import RewardsConfig
    from nemo_prorl.rewards.pool import RewardPool
    from nemo_prorl.rollout.factory import build_rollout_engine

    ks = spec.k_values()
    rows_by_file = read_benchmarks(spec, log)
    out = Path(spec.out)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, float]] = {}
    engine, signature, backend = None, None, None
    with RewardPool(RewardsConfig(num_workers=spec.workers)) as pool, \
            tempfile.TemporaryDirectory(prefix="nemo-prorl-eval-") as scratch:
        try:
            for label, path in spec.checkpoints:
                hf_dir = hf_dir_for(Path(path), Path(scratch))
                tok = AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
                hf_cfg = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
                positions = int(hf_cfg.get("max_position_embeddings", 4096))
                longest = max((len(tokenize_prompt(r, tok, spec.templates))
                               for rows in rows_by_file.values() for r in rows), default=1)
                try:  # defaults that fit the model given (the demo has 128 positions)
                    max_prompt, max_tokens, note = fit_lengths(positions, longest, spec.max_tokens,
                                                               spec.max_prompt_tokens)
                except ValueError as exc:
                    raise EvalError(f"{label}: {exc}") from None
                if note:
                    log(f"{label}: {note}")
                cspec = dataclasses.replace(spec, max_tokens=max_tokens, max_prompt_tokens=max_prompt)
                config = rollout_config(cspec, max_prompt)
                sig = engine_signature(hf_dir, tok, config)
                if engine is not None and sig == signature:
                    load_weights(engine, hf_dir)  # same architecture: new weights, same engine
                else:
                    if engine is not None:
                        close_engine(engine)
                    engine = build_rollout_engine(config, hf_dir, tok)
                    signature, backend = sig, config.backend
                batch = spec.batch_prompts or (32 if backend == "hf" else 512)
                results[label] = _evaluate_checkpoint(engine, label, tok, rows_by_file, cspec, ks, out, pool,
                                                      batch, tokenize_prompt)
                shown = ", ".join(f"pass@{k}={results[label].get(f'pass@{k}', float('nan')):.4f}" for k in ks)
                log(f"{label}: {shown}")
        finally:
            if engine is not None:
                close_engine(engine)
    doc = {"ks": ks, "n": spec.n, "temperature": spec.temperature, "top_p": spec.top_p, "backend": backend,
           "results": results}
    (out / "results.json").write_text(json.dumps(doc, indent=2))
    (out / "results.md").write_text(markdown(results, ks))
    plot(results, ks, out / "passk.png")
    return doc


def _evaluate_checkpoint(engine: Any, label: str, tok: Any, rows_by_file: dict[str, list[dict]],
                         spec: EvalSpec, ks: list[int], out: Path, pool: Any, batch_prompts: int,
                         tokenize_prompt: Callable[..., list[int]]) -> dict[str, float]:
    """Sample the prompts not yet in ``OUT/samples/<label>.jsonl``, append them, summarise the file."""
    from nemo_prorl.rollout.base import SamplingParams

    sampling = SamplingParams(temperature=spec.temperature, top_p=spec.top_p, max_tokens=spec.max_tokens,
                              seed=spec.seed)
    samples_path = out / "samples" / f"{label}.jsonl"
    done = done_records(samples_path)
    with open(samples_path, "a", encoding="utf-8") as fh:
        for bench, rows in rows_by_file.items():
            todo = [r for r in rows if f"{bench}:{r['id']}" not in done]
            prompts = [tokenize_prompt(r, tok, spec.templates) for r in todo]

            def save(batch: list[dict], bench: str = bench) -> None:
                for rec in batch:
                    rec["id"] = f"{bench}:{rec['id']}"
                    rec["benchmark"] = bench
                    fh.write(json.dumps(rec) + "\n")
                fh.flush()
                os.fsync(fh.fileno())

            if todo:
                sample_and_score(engine, todo, prompts, n=spec.n, sampling=sampling, score=pool.score,
                                 batch_prompts=batch_prompts, on_batch=save)
    records = list(done_records(samples_path).values())
    metrics = summarize(records, ks)
    for bench in rows_by_file:
        recs = [r for r in records if r.get("benchmark") == bench]
        for k, v in summarize(recs, ks, prefix=f"{bench}/").items():
            if "/status/" not in k:
                metrics[k] = v
    return metrics
