"""``HFRolloutEngine``: a transformers-based generation engine for CPU (tests, the embedded demo, eval).

It runs its own decoding loop over ``model(..., past_key_values=...)`` (left padding, KV cache) instead
of ``model.generate`` so that sampling is exactly the one specified in :mod:`nemo_prorl.rollout.sampling`
(vLLM's semantics) and the returned log-probs come from the distribution actually sampled from.

Reproducibility: sample ``j`` of prompt ``i`` draws its random numbers from a generator seeded with
``sample_seed(seed, i, j)``, one uniform number per decoding step. The random stream of a sample is
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
from nemo_prorl.rollout.sampling import find_stop, sample_seed, select_next_tokens, tokens_covering

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

    Raises:
        ValueError: the limits exceed the model's context (``max_position_embeddings``).

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
    ) -> None:
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
                params[name].copy_(tensor)
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
        """Decode ``len(prompts) * n`` rows together; returns their samples in row order."""
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

        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        # Prefill once per prompt, then give each of the n samples its own copy of the cache.
        logits = out.logits[:, -1, :].repeat_interleave(n, dim=0)  # [B, V]
        if n > 1:
            cache.batch_repeat_interleave(n)
        mask = mask.repeat_interleave(n, dim=0).to(device)
        next_pos = torch.tensor(lengths, dtype=torch.long).repeat_interleave(n).to(device)  # [B]

        rows = [(i, j) for i in prompt_indices for j in range(n)]
        gens = [torch.Generator().manual_seed(sample_seed(base_seed, i, j)) for i, j in rows]
        n_rows = len(rows)
        tokens: list[list[int]] = [[] for _ in range(n_rows)]
        logps: list[list[float]] = [[] for _ in range(n_rows)]
        finish: list[str | None] = [None] * n_rows
        texts: list[str | None] = [None] * n_rows
        longest_stop = max((len(s) for s in sampling.stop), default=0)
        checked_chars = [0] * n_rows
        active = list(range(n_rows))  # rows still decoding, in the order of the batch dimension

        for step in range(sampling.max_tokens):
            act_gens = [gens[r] for r in active]
            new_tok, new_logp = select_next_tokens(
                logits, sampling.temperature, sampling.top_k, sampling.top_p, act_gens
            )
            still: list[int] = []
            for b, r in enumerate(active):
                tok = int(new_tok[b])
                tokens[r].append(tok)
                logps[r].append(float(new_logp[b]))
                if tok in self.eos_token_ids:
                    finish[r] = "stop"
                elif sampling.stop:
                    text = self._decode(tokens[r])
                    pos = find_stop(text, sampling.stop, max(0, checked_chars[r] - longest_stop - 4))
                    checked_chars[r] = len(text)
                    if pos is not None:
                        keep = tokens_covering(tokens[r], pos, self._decode)
                        tokens[r], logps[r] = tokens[r][:keep], logps[r][:keep]
                        finish[r], texts[r] = "stop", text[:pos]
                if finish[r] is None and step + 1 == sampling.max_tokens:
                    finish[r] = "length"
                if finish[r] is None:
                    still.append(b)
            if not still:
                break
            sel = torch.tensor(still, dtype=torch.long, device=device)
            if len(still) < len(active):  # drop finished rows from the batch and the cache
                cache.batch_select_indices(sel)
                mask, next_pos = mask[sel], next_pos[sel]
            active = [active[b] for b in still]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            out = self.model(
                input_ids=new_tok[sel].unsqueeze(-1).to(device),
                attention_mask=mask,
                position_ids=next_pos.unsqueeze(-1),
                past_key_values=cache,
                use_cache=True,
            )
            logits = out.logits[:, -1, :]
            next_pos = next_pos + 1

        samples = []
        for r, (i, _j) in enumerate(rows):
            text = texts[r] if texts[r] is not None else self._decode(tokens[r])
            samples.append(
                Sample(
                    prompt_index=i,
                    prompt_token_ids=list(prompts[prompt_indices.index(i)]),
                    token_ids=tokens[r],
                    text=text,
                    logprobs=torch.tensor(logps[r], dtype=torch.float32) if sampling.logprobs else None,
                    finish_reason=finish[r] or "length",
                )
            )
        return samples


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
