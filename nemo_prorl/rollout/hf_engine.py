"""``HFRolloutEngine``: a transformers-based generation engine for CPU (tests, the embedded demo, eval).

It runs its own decoding loop instead of ``model.generate`` so that sampling is exactly the one
specified in :mod:`nemo_prorl.rollout.sampling` (vLLM's semantics) and the returned log-probs come from
the distribution actually sampled from. The prompts are prefilled with the model's forward (left
padding); the decode steps run through the model's forward with a growing HF cache (:class:`_HFDecoder`,
any causal LM; only public transformers API: the forward, ``DynamicCache`` and its batch methods).
Sampling, EOS and length bookkeeping are tensor operations over the whole batch; finished rows are
dropped from the batch once a quarter of it has finished.

With ``compile_decode=True`` (``rollout.compile``) the decode step is the same forward through
``torch.compile`` (inductor, dynamic batch size and cache length): on a CPU, where a small model's step is
bound by per-operation Python overhead, it is one generated kernel per fused group instead of hundreds of
dispatched operations. The first decode step compiles (seconds to a minute, once per process; inductor
caches its kernels on disk); a few recompiles follow (a batch of a single row is specialised). Prefill
stays eager (its shapes vary with every batch of prompts).

(A hand-written Llama-family decode step, which read transformers internals, was removed on 2026-12-06:
on the demo it gave 0.86x-1.06x the transformers forward's speed, interleaved medians; see
benchmarks/RESULTS.md, "CPU decode step".)

Reproducibility: sample ``j`` of prompt ``i`` draws its random numbers from a generator seeded with
``sample_seed(seed, i, j)``, one uniform number per decoding step (drawn up front as one vector, which
gives the same numbers as one draw per step). The random stream of a sample is
therefore independent of the other prompts in the call, of ``n`` ordering and of ``max_batch_size``.
The *logits* of a row can still differ in the last float bits between batch compositions (BLAS kernels
pick different blockings for different shapes; padding changes the attention reduction length), which
can flip a token only when a uniform number falls within ~1e-7 of a CDF boundary. Identical calls (same
weights, prompts, params and seed) give identical samples.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from nemo_prorl.rollout.base import GenerationOutput, Sample, SamplingParams
from nemo_prorl.rollout.limits import check_prompts, check_sampling, check_state_dict
from nemo_prorl.rollout.registry import register_rollout_backend
from nemo_prorl.rollout.sampling import find_stop, sample_seed, sample_tokens, tokens_covering

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _tied_lm_head(model: torch.nn.Module) -> bool:
    out = model.get_output_embeddings()
    inp = model.get_input_embeddings()
    return out is not None and inp is not None and out.weight is inp.weight


class HFRolloutEngine:
    """Batched sampling with a transformers causal LM, with vLLM's sampling semantics.

    Args:
        model: a transformers ``PreTrainedModel`` with a causal-LM head (put in eval mode here).
        tokenizer: the matching Hugging Face tokenizer (used to decode responses and find stop strings).
        max_prompt_tokens: longest accepted prompt.
        max_response_tokens: upper bound of ``SamplingParams.max_tokens``.
        max_batch_size: most sequences decoded together.
        overlong_prompt: ``"error"`` or ``"skip"`` (see :func:`nemo_prorl.rollout.limits.check_prompts`).
        eos_token_ids: tokens that end a sample; default: the tokenizer's EOS plus the model's
            ``generation_config.eos_token_id``.
        decoder: ``"auto"`` or ``"hf"`` (the same: the model's own forward with a growing HF cache).
            ``"llama"``, the removed hand-written step, is refused with the reason.
        compile_decode: run the decode steps through ``torch.compile(model, dynamic=True)`` (built at the
            first decode step; a compile failure raises :class:`RuntimeError` naming ``rollout.compile``).

    Raises:
        ValueError: the limits exceed the model's context (``max_position_embeddings``); an unknown
            ``decoder``.

    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        max_prompt_tokens: int = 1024,
        max_response_tokens: int = 1024,
        max_batch_size: int = 64,
        overlong_prompt: str = "error",
        eos_token_ids: Sequence[int] | None = None,
        decoder: str = "auto",
        compile_decode: bool = False,
    ) -> None:
        if decoder == "llama":
            raise ValueError("HFRolloutEngine: decoder='llama' was removed (on the demo it ran at "
                             "0.86x-1.06x the transformers forward's speed); use decoder='auto' or 'hf'")
        if decoder not in ("auto", "hf"):
            raise ValueError(f"HFRolloutEngine: decoder must be 'auto' or 'hf', got {decoder!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.max_response_tokens = int(max_response_tokens)
        self.max_batch_size = int(max_batch_size)
        self.overlong_prompt = overlong_prompt
        cfg = model.config
        self.vocab_size = int(cfg.vocab_size)
        max_pos = getattr(cfg, "max_position_embeddings", None)
        if max_pos is not None and self.max_prompt_tokens + self.max_response_tokens > max_pos:
            raise ValueError(
                f"max_prompt_tokens ({self.max_prompt_tokens}) + max_response_tokens "
                f"({self.max_response_tokens}) exceeds the model's max_position_embeddings ({max_pos})"
            )
        if eos_token_ids is None:
            ids: set[int] = set()
            if getattr(tokenizer, "eos_token_id", None) is not None:
                ids.add(int(tokenizer.eos_token_id))
            gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
            if gen_eos is not None:
                ids.update([gen_eos] if isinstance(gen_eos, int) else gen_eos)
            eos_token_ids = sorted(ids)
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = int(pad if pad is not None else (min(self.eos_token_ids, default=0)))
        self._tied = _tied_lm_head(model)
        self._asleep = False
        self.weights_version = 0
        self.compile_decode = bool(compile_decode)
        self._compiled: Any = None  # torch.compile(model), made at the first decode step
        self._compile_checked = False  # set once a compiled step has run

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | os.PathLike,
        tokenizer: Any = None,
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
        **kwargs: Any,
    ) -> HFRolloutEngine:
        """Load an HF model directory (``config.json`` + safetensors) from local disk only.

        Args:
            model_dir: the directory.
            tokenizer: a tokenizer; default: loaded from ``model_dir``.
            dtype: ``float32`` | ``bfloat16`` | ``float16`` | ``auto`` (``auto`` = float32 on CPU).
            attn_implementation: ``sdpa`` or ``eager``.
            **kwargs: forwarded to the constructor (limits, batch size ...).

        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not an HF model directory (no config.json)")
        model = AutoModelForCausalLM.from_pretrained(
            str(path),
            dtype=_DTYPES.get(dtype, torch.float32),
            attn_implementation=attn_implementation,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=True,
        )
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        return cls(model, tokenizer, **kwargs)

    @classmethod
    def from_state_dict(
        cls,
        hf_config: Any,
        state_dict: Mapping[str, torch.Tensor],
        tokenizer: Any,
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
        **kwargs: Any,
    ) -> HFRolloutEngine:
        """Build the model from an HF config and load an HF-named state dict (strictly).

        Args:
            hf_config: a transformers ``PretrainedConfig``.
            state_dict: full tensors named as in the HF model.
            tokenizer: the tokenizer.
            dtype: parameter dtype.
            attn_implementation: ``sdpa`` or ``eager``.
            **kwargs: forwarded to the constructor.

        """
        from transformers import AutoModelForCausalLM

        hf_config._attn_implementation = attn_implementation
        model = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=False)
        model = model.to(_DTYPES.get(dtype, torch.float32))
        engine = cls(model, tokenizer, **kwargs)
        engine.update_weights(dict(state_dict))
        engine.weights_version = 0
        return engine

    # ------------------------------------------------------------------ protocol
    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy new weights into the model in place (no re-allocation, no disk).

        Strict: every parameter must be given (``lm_head.weight`` may be omitted when tied to the
        embeddings), no unknown names, same shapes, finite values. Nothing is copied unless every
        check passes. Allowed while asleep (weights stay in CPU memory).

        Args:
            state_dict: HF-named full tensors; dtypes are cast to the engine's.

        Raises:
            KeyError: unknown or missing names.
            ValueError: shape mismatch / non-finite / tied weights that disagree.

        """
        params = dict(self.model.named_parameters(remove_duplicate=False))
        expected = {k: v.shape for k, v in params.items()}
        optional = frozenset({"lm_head.weight"}) if self._tied and "lm_head.weight" in params else frozenset()
        check_state_dict(state_dict, expected, optional)
        if self._tied and "lm_head.weight" in state_dict:
            emb_name = next(k for k, v in params.items() if v is self.model.get_input_embeddings().weight)
            if emb_name in state_dict and not torch.equal(state_dict["lm_head.weight"], state_dict[emb_name]):
                raise ValueError(
                    f"update_weights: lm_head.weight differs from {emb_name}, but this model ties them"
                )
        with torch.no_grad():
            for name, tensor in state_dict.items():
                # a streamed sync hands over tensors gathered on the training device (NCCL: the GPU)
                params[name].copy_(tensor.to(params[name].device))
        self.weights_version += 1

    def sleep(self) -> None:
        """Mark the engine asleep; ``generate`` refuses to run until :meth:`wake`.

        On CPU there is no KV cache kept between calls and the weights stay where they are, so nothing
        is freed.
        """
        self._asleep = True

    def wake(self) -> None:
        """Leave sleep; the next ``generate`` uses the latest weights given to ``update_weights``."""
        self._asleep = False

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> GenerationOutput:
        """Sample ``n`` responses per prompt.

        Args:
            prompts: tokenized prompts (``P_i`` ids each).
            n: samples per prompt.
            sampling: sampling parameters (``max_tokens <= max_response_tokens``).

        Returns:
            ``n`` consecutive samples per (non-skipped) prompt; log-probs ``[R]`` float32.

        Raises:
            RuntimeError: the engine is asleep.
            PromptTooLongError / ValueError: invalid prompts or parameters (before any model call).

        """
        if self._asleep:
            raise RuntimeError("HFRolloutEngine.generate called while asleep; call wake() first")
        check_sampling(sampling, n, self.max_response_tokens)
        skipped = check_prompts(prompts, self.vocab_size, self.max_prompt_tokens, self.overlong_prompt)
        base_seed = sampling.seed if sampling.seed is not None else secrets.randbits(62)
        t0 = time.perf_counter()
        skipped_set = set(skipped)
        keep = [i for i in range(len(prompts)) if i not in skipped_set]
        rows = [(i, j) for i in keep for j in range(n)]
        samples: list[Sample] = []
        prompts_per_batch = max(1, self.max_batch_size // n)
        for start in range(0, len(keep), prompts_per_batch):
            chunk = keep[start : start + prompts_per_batch]
            chunk_prompts = [list(prompts[i]) for i in chunk]
            samples.extend(self._generate_chunk(chunk_prompts, chunk, n, sampling, base_seed))
        elapsed = time.perf_counter() - t0
        n_tokens = sum(len(s.token_ids) for s in samples)
        timings = {
            "generate_s": elapsed,
            "tokens": float(n_tokens),
            "tokens_per_s": n_tokens / elapsed if elapsed > 0 else 0.0,
        }
        assert len(samples) == len(rows)
        return GenerationOutput(samples=samples, timings=timings, skipped_prompts=skipped)

    # ------------------------------------------------------------------ internals
    def _decode_forward(self) -> Any:
        """The callable that runs decode steps: the model, or its ``torch.compile`` wrapper."""
        if not self.compile_decode:
            return self.model
        if self._compiled is None:
            self._compiled = torch.compile(self.model, dynamic=True)
        return self._compiled

    def _decode_step(self, decoder: _HFDecoder, tok: torch.Tensor) -> torch.Tensor:
        """One decode step; the first compiled one turns a compile failure into an error naming the key."""
        if not self.compile_decode or self._compile_checked:
            return decoder.step(tok)
        try:
            logits = decoder.step(tok)
        except Exception as exc:  # noqa: BLE001 - dynamo/inductor raise many types; re-raised with the fix
            raise RuntimeError(
                f"rollout.compile: torch.compile of the decode step failed ({type(exc).__name__}: {exc}); "
                "set rollout.compile=false to decode eagerly (inductor on a CPU needs a C++ compiler)"
            ) from exc
        self._compile_checked = True
        return logits

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _generate_chunk(
        self,
        prompts: list[list[int]],
        prompt_indices: list[int],
        n: int,
        sampling: SamplingParams,
        base_seed: int,
    ) -> list[Sample]:
        """Decode ``len(prompts) * n`` rows together; returns their samples in row order.

        The prompts are prefilled once (HF forward, left padding); each of the ``n`` samples of a prompt
        then gets its own copy of the prompt's KV cache. The decode loop keeps all bookkeeping in
        tensors: per batch position the row it holds, whether it is still decoding, its kept length and
        whether it ended with EOS / a stop string. Rows that finish stay in the batch (their new tokens
        are ignored) until at least a quarter of the batch is finished; then the batch and the KV cache
        are compacted to the unfinished rows. The only per-row Python work is the stop-string check,
        and only when ``sampling.stop`` is set.
        """
        from transformers import DynamicCache

        device = next(self.model.parameters()).device
        lengths = [len(p) for p in prompts]
        width = max(lengths)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):  # left padding
            ids[r, width - len(p) :] = torch.tensor([int(t) for t in p], dtype=torch.long)
            mask[r, width - len(p) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        mask, lengths_t = mask.to(device), torch.tensor(lengths, dtype=torch.long, device=device)

        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=ids.to(device),
            attention_mask=mask,
            position_ids=positions.to(device),
            use_cache=True,
            logits_to_keep=1,
            **cache_kwarg(self.model, cache),
        )
        logits = out.logits[:, -1, :].repeat_interleave(n, dim=0)  # [B, V]
        steps = sampling.max_tokens
        decoder = _HFDecoder(self.model, cache, mask, lengths_t, n, forward=self._decode_forward())

        rows = [(i, j) for i in prompt_indices for j in range(n)]
        n_rows = len(rows)
        # Sample j of prompt i: one uniform number per step from its own generator, drawn up front
        # (a vector draw gives the same numbers as one scalar draw per step).
        uniforms = torch.stack([
            torch.rand(steps, generator=torch.Generator().manual_seed(sample_seed(base_seed, i, j)),
                       dtype=torch.float64)
            for i, j in rows
        ]).to(device)  # [R, steps]
        out_tokens = torch.zeros((n_rows, steps), dtype=torch.long, device=device)
        out_logps = torch.zeros((n_rows, steps), dtype=torch.float32, device=device)
        eos = torch.tensor(sorted(self.eos_token_ids), dtype=torch.long, device=device)
        # per row (flushed from the batch state at compaction and at the end)
        kept = torch.full((n_rows,), steps, dtype=torch.long, device=device)
        stopped = torch.zeros(n_rows, dtype=torch.bool, device=device)
        # per batch position
        row_of = torch.arange(n_rows, device=device)
        alive = torch.ones(n_rows, dtype=torch.bool, device=device)
        kept_b = kept.clone()
        stopped_b = stopped.clone()
        # stop strings (per-row Python work, only when requested)
        texts: dict[int, str] = {}
        so_far: list[list[int]] = [[] for _ in range(n_rows)]
        checked_chars = [0] * n_rows
        longest_stop = max((len(s) for s in sampling.stop), default=0)

        for step in range(steps):
            tok, logp = sample_tokens(
                logits, sampling.temperature, sampling.top_k, sampling.top_p, uniforms[row_of, step]
            )
            out_tokens[row_of, step] = tok
            out_logps[row_of, step] = logp.float()
            hit = alive & torch.isin(tok, eos)
            kept_b = torch.where(hit, step + 1, kept_b)
            stopped_b |= hit
            alive &= ~hit
            if sampling.stop:
                rows_now = row_of.tolist()
                toks_now = tok.tolist()
                for b in alive.nonzero().flatten().tolist():
                    r = rows_now[b]
                    so_far[r].append(toks_now[b])
                    text = self._decode(so_far[r])
                    pos = find_stop(text, sampling.stop, max(0, checked_chars[r] - longest_stop - 4))
                    checked_chars[r] = len(text)
                    if pos is not None:
                        kept_b[b] = tokens_covering(so_far[r], pos, self._decode)
                        stopped_b[b] = True
                        alive[b] = False
                        texts[r] = text[:pos]
            if step + 1 == steps:
                break
            n_alive = int(alive.sum())
            if n_alive == 0:
                break
            if 4 * n_alive <= 3 * alive.numel():  # compact: drop the finished rows
                kept[row_of], stopped[row_of] = kept_b, stopped_b
                sel = alive.nonzero().flatten()
                decoder.keep(sel)
                row_of, tok, kept_b, stopped_b, alive = (
                    row_of[sel], tok[sel], kept_b[sel], stopped_b[sel], alive[sel]
                )
            logits = self._decode_step(decoder, tok)
        kept[row_of], stopped[row_of] = kept_b, stopped_b

        token_lists = out_tokens.tolist()
        kept_list, stopped_list = kept.tolist(), stopped.tolist()
        logps_cpu = out_logps.cpu()
        samples = []
        for r, (i, _j) in enumerate(rows):
            token_ids = token_lists[r][: kept_list[r]]
            samples.append(
                Sample(
                    prompt_index=i,
                    prompt_token_ids=list(prompts[prompt_indices.index(i)]),
                    token_ids=token_ids,
                    text=texts[r] if r in texts else self._decode(token_ids),
                    logprobs=logps_cpu[r, : kept_list[r]].clone() if sampling.logprobs else None,
                    finish_reason="stop" if stopped_list[r] else "length",
                )
            )
        return samples


def cache_kwarg(model: torch.nn.Module, cache: Any) -> dict[str, Any]:
    """The keyword a causal LM's ``forward`` takes its KV cache under, with ``cache`` as its value.

    ``{"cache": cache}`` where the forward has that parameter (transformers 5.x: ``past_key_values`` is
    deprecated there and goes in 5.40), else ``{"past_key_values": cache}`` (older releases).
    """
    import inspect

    forward = getattr(model, "forward", model)
    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        params = {}
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


class _HFDecoder:
    """Decode steps through the model's own forward (any HF causal LM): growing KV cache, 2D mask."""

    def __init__(self, model: torch.nn.Module, cache: Any, prompt_mask: torch.Tensor,
                 prompt_lengths: torch.Tensor, n: int, forward: Any = None) -> None:
        self.forward = model if forward is None else forward  # the model or its compiled wrapper
        self.cache = cache
        # resolved once, from the model itself (a compiled wrapper's forward hides the signature):
        # signature inspection costs ~0.1 ms a step
        self.cache_kw = cache_kwarg(model, cache)
        if n > 1:
            cache.batch_repeat_interleave(n)
        self.mask = prompt_mask.repeat_interleave(n, dim=0)  # [B, width + steps so far]
        self.pos = prompt_lengths.repeat_interleave(n)  # position of each row's next token

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row ``[B]``; return the next-token logits ``[B, V]``."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        out = self.forward(
            input_ids=tokens.unsqueeze(-1),
            attention_mask=self.mask,
            position_ids=self.pos.unsqueeze(-1),
            use_cache=True,
            **self.cache_kw,
        )
        self.pos = self.pos + 1
        return out.logits[:, -1, :]

    def keep(self, sel: torch.Tensor) -> None:
        """Keep only the batch positions ``sel`` (ascending)."""
        self.cache.batch_select_indices(sel)
        self.mask, self.pos = self.mask[sel], self.pos[sel]


@torch.no_grad()
def teacher_forced_logprobs(
    model: torch.nn.Module, prompt_ids: list[int], response_ids: list[int], temperature: float = 1.0
) -> torch.Tensor:
    """Log-probs of ``response_ids`` given ``prompt_ids`` from one full forward pass (no cache).

    The reference the engines are checked against: ``log_softmax(logits / T)`` at each response position
    (``T = 1`` when ``temperature == 0``, matching the greedy convention of the engines).

    Returns:
        ``[R]`` float32.

    """
    if not response_ids:
        return torch.zeros(0)
    ids = torch.tensor([list(prompt_ids) + list(response_ids)], dtype=torch.long)
    logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1, :].float()  # [R, V]
    t = temperature if temperature > 0 else 1.0
    logp = torch.log_softmax(logits / t, dim=-1)
    return logp.gather(-1, torch.tensor(response_ids).unsqueeze(-1)).squeeze(-1)


@register_rollout_backend("hf", placement="rank0")
def build_hf_engine(config: Any, model_dir_or_state: Any, tokenizer: Any = None) -> HFRolloutEngine:
    """``rollout.backend: hf``: a transformers engine from a model directory or ``(hf_config, state)``.

    ``dtype: auto`` means float32 here (the CPU engine); see :mod:`nemo_prorl.rollout.registry`.
    """
    from nemo_prorl.rollout.factory import engine_limit_kwargs

    kwargs = dict(
        engine_limit_kwargs(config),
        max_batch_size=config.max_batch_size,
        dtype="float32" if config.dtype == "auto" else config.dtype,
        attn_implementation=config.attn_implementation,
        compile_decode=config.compile,
    )
    if isinstance(model_dir_or_state, (str, os.PathLike)):
        return HFRolloutEngine.from_pretrained(model_dir_or_state, tokenizer, **kwargs)
    hf_config, state = model_dir_or_state
    return HFRolloutEngine.from_state_dict(hf_config, state, tokenizer, **kwargs)
