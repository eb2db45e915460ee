"""The vLLM engine's logic on CPU, without vLLM: replica layout, batched seeding, sleep rules, weight stream.

vLLM is not importable here (official wheels are CUDA-only). Each vLLM-facing behaviour is isolated in a
small function of ``nemo_prorl/rollout/vllm_engine.py``; these tests check those functions against an
emulation of the upstream code they meet, named in each test's docstring (vLLM main, the 0.32 API). The
last tests drive ``VLLMRolloutEngine`` itself over :class:`EmulatedLLM`, a stand-in for ``vllm.LLM``
whose sleep / wake / reload / sampling semantics follow the upstream files named on it.
"""

from __future__ import annotations

import json
import os
import sys
import types

import pytest
import torch

from nemo_prorl.rollout.base import SamplingParams
from nemo_prorl.rollout.vllm_engine import (
    SleepState,
    checked_weight_stream,
    ordered_completions,
    replica_layout,
    request_params,
    rng_seed,
    seeded_rng,
)


# ------------------------------------------------------------------------------------ replica layout
def _vllm_tp_groups(world: int, tp: int) -> list[list[int]]:
    """vLLM ``initialize_model_parallel`` (``vllm/distributed/parallel_state.py``) without DP/PP/PCP:
    ``all_ranks = arange(world).reshape(-1, dp=1, pp=1, pcp=1, tp)``; TP groups are ``view(-1, tp)``."""
    all_ranks = torch.arange(world).reshape(-1, 1, 1, 1, tp)
    return [g.tolist() for g in all_ranks.view(-1, tp).unbind(0)]


def test_replica_layout_matches_vllm_external_dp_axis():
    """Every rank's replica is the index of its vLLM TP group on the leading ("external DP") axis."""
    for world in (1, 2, 4, 8, 16):
        for tp in (t for t in (1, 2, 4, 8) if world % t == 0):
            groups = _vllm_tp_groups(world, tp)
            for rank in range(world):
                replica, count = replica_layout(rank, world, tp)
                assert rank in groups[replica] and count == len(groups)
    assert replica_layout(5, 8, 2) == (2, 4)
    assert replica_layout(7, 8, 8) == (0, 1)
    with pytest.raises(ValueError, match="rollout.tensor_parallel_size=3 does not divide"):
        replica_layout(0, 8, 3)
    with pytest.raises(ValueError, match="outside"):
        replica_layout(8, 8, 1)


# ---------------------------------------------------------------------------------- batched sampling
def _vllm_generators(params: dict) -> dict[int, torch.Generator]:
    """vLLM's input batch (``vllm/v1/worker/gpu_input_batch.py``, ``add_request``) makes a per-request
    ``torch.Generator`` exactly when ``sampling_params.seed is not None``."""
    gens = {}
    if params["seed"] is not None:
        g = torch.Generator()
        g.manual_seed(params["seed"])
        gens[0] = g
    return gens


def _vllm_random_sample(probs: torch.Tensor, generators: dict[int, torch.Generator]) -> torch.Tensor:
    """``random_sample`` in ``vllm/v1/sample/ops/topk_topp_sampler.py``: one batched ``exponential_`` on
    the default generator for rows without a generator, then one call per seeded row."""
    q = torch.empty_like(probs)
    if len(generators) != probs.shape[0]:
        q.exponential_()
    for i, g in generators.items():
        q[i].exponential_(generator=g)
    return probs.div(q).argmax(dim=-1)


def test_request_params_carry_no_seed_so_sampling_stays_batched():
    """No request gets its own generator, so the sampler never takes its one-request-at-a-time loop."""
    sp = SamplingParams(temperature=1.2, top_p=0.9, top_k=-1, max_tokens=7, stop=["</s>"], seed=123)
    kw = request_params(sp, 16)
    assert kw["seed"] is None and _vllm_generators(kw) == {}
    assert (kw["n"], kw["temperature"], kw["top_p"], kw["top_k"], kw["max_tokens"]) == (16, 1.2, 0.9, 0, 7)
    assert kw["stop"] == ["</s>"] and kw["logprobs"] == 0 and kw["include_stop_str_in_output"] is False
    kw = request_params(SamplingParams(top_k=5, stop=[], logprobs=False), 1)
    assert (kw["top_k"], kw["stop"], kw["logprobs"]) == (5, None, None)


def test_seeded_rng_makes_the_batched_draw_reproducible_and_restores_state():
    """The batched draw of ``random_sample`` depends only on the call seed; the caller's RNG is untouched."""
    probs = torch.softmax(torch.randn(64, 50, generator=torch.Generator().manual_seed(0)), dim=-1)
    torch.manual_seed(999)
    expected_next = torch.rand(3)
    torch.manual_seed(999)
    with seeded_rng(7):
        a = _vllm_random_sample(probs.clone(), {})
    after = torch.rand(3)
    assert torch.equal(after, expected_next)  # fork_rng restored the outer stream
    with seeded_rng(7):
        b = _vllm_random_sample(probs.clone(), {})
    with seeded_rng(8):
        c = _vllm_random_sample(probs.clone(), {})
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert rng_seed(-1) == (1 << 63) - 1 and rng_seed(5) == 5


def test_ordered_completions_by_index():
    """``ParentRequest`` (``vllm/v1/engine/parallel_sampling.py``) files child outputs under ``index``."""
    outs = types.SimpleNamespace(outputs=[types.SimpleNamespace(index=i) for i in (2, 0, 1)])
    assert [c.index for c in ordered_completions(outs, 3)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match=r"completions \[0, 2\] for n=3"):
        two = types.SimpleNamespace(outputs=[types.SimpleNamespace(index=i) for i in (2, 0)])
        ordered_completions(two, 3)


# ------------------------------------------------------------------------------------- weight stream
EXPECTED = {"a.weight": (2, 3), "b.weight": (4,), "lm_head.weight": (5, 2)}


def _tensors():
    return [("a.weight", torch.ones(2, 3)), ("lm_head.weight", torch.ones(5, 2)), ("b.weight", torch.ones(4))]


def test_weight_stream_is_lazy_and_complete():
    """vLLM's reload (``model.load_weights(iterator)`` between ``initialize_layerwise_reload`` and
    ``finalize_layerwise_reload``, ``model_loader/reload/layerwise.py``) pulls one tensor at a time."""
    pulled = []

    def source():
        for name, t in _tensors():
            pulled.append(name)
            yield name, t

    report: dict = {}
    stream = checked_weight_stream(source(), EXPECTED, frozenset(), report)
    first = next(stream)
    assert first[0] == "a.weight" and pulled == ["a.weight"]  # nothing gathered ahead of the consumer
    rest = list(stream)
    assert [n for n, _ in rest] == ["lm_head.weight", "b.weight"]
    assert report == {"tensors": 3, "bytes": (6 + 10 + 4) * 4}
    # a tied head is dropped, not loaded
    names = [n for n, _ in checked_weight_stream(_tensors(), EXPECTED, frozenset({"lm_head.weight"}))]
    assert names == ["a.weight", "b.weight"]


@pytest.mark.parametrize("bad, error, match", [
    ([("zzz", torch.ones(1))], KeyError, "unknown parameter name 'zzz'"),
    ([("a.weight", torch.ones(2, 3)), ("a.weight", torch.ones(2, 3))], KeyError, "given twice"),
    ([("a.weight", torch.ones(3, 2))], ValueError, r"shape mismatch for a.weight: got \(3, 2\)"),
    ([("a.weight", torch.full((2, 3), float("nan")))], ValueError, "a.weight contains NaN"),
    ([("a.weight", [1.0])], ValueError, "not a tensor"),
    ([("a.weight", torch.ones(2, 3))], KeyError, r"missing parameter names \['b.weight', 'lm_head.weight'\]"),
])
def test_weight_stream_rejects(bad, error, match):
    with pytest.raises(error, match=match):
        list(checked_weight_stream(iter(bad), EXPECTED))


# --------------------------------------------------------------------------------------- sleep rules
def test_sleep_state_level2_needs_a_load_before_wake():
    s = SleepState()
    s.sleep(2)
    assert s.asleep and s.needs_weight_wake() and not s.weights_valid
    with pytest.raises(RuntimeError, match="level-2 sleep"):
        s.check_wake()
    with pytest.raises(RuntimeError, match="unmapped"):
        s.loading()
    s.weights_woken()
    s.loading()
    s.loaded()
    s.check_wake()
    s.woke()
    assert not s.asleep and s.weights_valid and not s.needs_weight_wake()
    s.sleep(1)  # level 1 keeps a host copy: wake needs no load
    s.check_wake()
    with pytest.raises(ValueError, match="rollout.sleep_level"):
        s.sleep(3)


def test_sleep_state_failed_load_is_invalid():
    s = SleepState()
    s.loading()  # awake engine, a stream that will fail half-way
    with pytest.raises(RuntimeError, match="load failed"):
        s.check_wake()


# ------------------------------------------------------------------------ the engine over an emulation
class EmulatedLLM:
    """Stand-in for ``vllm.LLM`` (in-process engine core), following upstream semantics:

    * ``sleep(level)``: ``Worker.sleep`` (``vllm/v1/worker/gpu_worker.py``) -- KV cache dropped; level 1
      offloads the weights (kept), level 2 discards them (``offload_tags=()``): here they become NaN.
    * ``wake_up(tags)``: maps the tagged memory back (level-2 weights come back uninitialised).
    * ``collective_rpc("reload_weights", kwargs)``: the worker's layer-wise reload, consuming
      ``weights_iterator`` lazily and writing each tensor into its parameter.
    * ``generate``: one request per prompt with ``params.n`` samples; tokens drawn from the default torch
      generator (vLLM's batched ``q.exponential_()``) and a per-request generator only when
      ``params.seed`` is set; refuses to run on NaN weights or while asleep.
    """

    instances: list[EmulatedLLM] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.weights = {"a.weight": torch.zeros(2, 3), "b.weight": torch.zeros(4)}
        self.asleep: set[str] = set()
        self.calls: list[tuple] = []
        EmulatedLLM.instances.append(self)

    def get_tokenizer(self):
        return None

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))

    def sleep(self, level):
        self.calls.append(("sleep", level))
        self.asleep = {"weights", "kv_cache"}
        if level == 2:
            self.weights = {k: torch.full_like(v, float("nan")) for k, v in self.weights.items()}

    def wake_up(self, tags):
        self.calls.append(("wake_up", tuple(tags)))
        self.asleep -= set(tags)

    def collective_rpc(self, method, kwargs):
        assert method == "reload_weights" and kwargs["is_checkpoint_format"] is True
        assert "weights" not in self.asleep, "load into unmapped weight memory"
        for name, tensor in kwargs["weights_iterator"]:
            self.weights[name] = tensor.clone()
        self.calls.append(("reload_weights",))

    def generate(self, requests, params, use_tqdm=False):
        assert not self.asleep, "generate while asleep"
        assert all(bool(torch.isfinite(w).all()) for w in self.weights.values()), "garbage weights"
        self.calls.append(("generate", len(requests), params.n, params.seed))
        gen = None if params.seed is None else torch.Generator().manual_seed(params.seed)
        outs = []
        for _ in requests:
            comps = []
            for j in range(params.n):
                toks = torch.randint(3, 50, (params.max_tokens,), generator=gen).tolist()
                lps = [{t: types.SimpleNamespace(logprob=-1.0)} for t in toks]
                comps.append(types.SimpleNamespace(index=j, token_ids=toks, logprobs=lps, text="x",
                                                   finish_reason="length", stop_reason=None))
            outs.append(types.SimpleNamespace(outputs=comps[::-1]))  # any order: the engine sorts
        return outs


@pytest.fixture()
def emulated_vllm(monkeypatch):
    platform = types.SimpleNamespace(is_sleep_mode_available=lambda: True, is_cpu=lambda: False)
    vllm = types.ModuleType("vllm")
    vllm.LLM = EmulatedLLM
    vllm.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = platform
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    EmulatedLLM.instances.clear()
    return EmulatedLLM


def _model_dir(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 50, "tie_word_embeddings": False}))
    zeros = {"a.weight": torch.zeros(2, 3), "b.weight": torch.zeros(4)}
    save_file(zeros, str(tmp_path / "model.safetensors"))
    return tmp_path


def _engine(tmp_path, **kw):
    from nemo_prorl.rollout.vllm_engine import VLLMRolloutEngine

    return VLLMRolloutEngine(_model_dir(tmp_path), tokenizer=object(), distributed_executor_backend="uni",
                             max_prompt_tokens=8, max_response_tokens=4, **kw)


def test_engine_level2_cycle_with_streamed_sync(tmp_path, emulated_vllm):
    eng = _engine(tmp_path)
    llm = emulated_vllm.instances[0]
    assert "data_parallel_size" not in llm.kwargs and (eng.dp_rank, eng.dp_size) == (0, 1)
    sp = SamplingParams(temperature=1.0, max_tokens=4, seed=11)
    first = eng.generate([[1, 2], [3]], 3, sp)
    # one unseeded request per prompt carrying n; samples grouped per prompt in index order
    assert llm.calls[-1] == ("generate", 2, 3, None)
    assert [s.prompt_index for s in first.samples] == [0, 0, 0, 1, 1, 1]
    eng.sleep()
    assert ("sleep", 2) in llm.calls
    with pytest.raises(RuntimeError, match="level-2 sleep"):
        eng.wake()  # discarded weights are never served
    new = {"a.weight": torch.full((2, 3), 0.5), "b.weight": torch.full((4,), 2.0)}
    eng.update_weights(iter(new.items()))  # a stream, as MegatronPolicy.iter_hf_weights gives
    assert llm.calls[-3:] == [("wake_up", ("weights",)), ("reload_weights",), ("reset_prefix_cache",)]
    assert torch.equal(llm.weights["b.weight"], new["b.weight"])
    assert eng.last_sync["tensors"] == 2.0 and eng.last_sync["bytes"] == 40.0
    eng.wake()
    assert llm.calls[-1] == ("wake_up", ("kv_cache",))  # the weights are already mapped
    again = eng.generate([[1, 2], [3]], 3, sp)
    assert [s.token_ids for s in again.samples] == [s.token_ids for s in first.samples]  # call seed
    other = eng.generate([[1, 2], [3]], 3, SamplingParams(temperature=1.0, max_tokens=4, seed=12))
    assert [s.token_ids for s in other.samples] != [s.token_ids for s in first.samples]


def test_engine_failed_stream_blocks_generation(tmp_path, emulated_vllm):
    eng = _engine(tmp_path, sleep_level=1)
    eng.sleep()
    eng.wake()  # level 1: the host copy is valid
    with pytest.raises(KeyError, match="missing parameter names"):
        eng.update_weights(iter([("a.weight", torch.ones(2, 3))]))
    with pytest.raises(RuntimeError, match="did not complete"):
        eng.generate([[1]], 1, SamplingParams(max_tokens=2, seed=0))
    eng.update_weights({"a.weight": torch.ones(2, 3), "b.weight": torch.ones(4)})
    assert len(eng.generate([[1]], 2, SamplingParams(max_tokens=2, seed=0)).samples) == 2
    with pytest.raises(ValueError, match="vLLM data parallelism is not used"):
        _engine(tmp_path, llm_kwargs={"data_parallel_size": 2})


@pytest.mark.gpu
def test_seeded_rng_on_cuda_reproduces_the_device_draw():
    """On CUDA vLLM's batched noise is ``q.exponential_()`` on the device's default generator: seeding it
    through :func:`seeded_rng` (``torch.random.fork_rng`` over the current device) reproduces the draw and
    leaves the caller's CUDA stream where it was."""
    dev = torch.device("cuda", torch.cuda.current_device())
    probs = torch.softmax(torch.randn(256, 1000, device=dev), dim=-1)
    torch.cuda.manual_seed(5)
    expected_next = torch.rand(4, device=dev)
    torch.cuda.manual_seed(5)
    with seeded_rng(21, dev):
        a = _vllm_random_sample(probs.clone(), {})
    assert torch.equal(torch.rand(4, device=dev), expected_next)
    with seeded_rng(21, dev):
        b = _vllm_random_sample(probs.clone(), {})
    assert torch.equal(a, b)


def test_launcher_env_declared_once_per_engine(monkeypatch):
    """Without torchrun a world of one is declared (what ``external_launcher`` reads); after the engine is
    closed (its process group destroyed) the next declaration takes a fresh port, a real launcher's
    environment is never touched."""
    import nemo_prorl.rollout.vllm_engine as ve

    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(ve, "_DECLARED_PORT", None)
    assert ve._ensure_launcher_env() == (0, 1)
    first = os.environ["MASTER_PORT"]
    monkeypatch.setattr(ve, "_free_port", lambda: 45678)
    assert ve._ensure_launcher_env() == (0, 1) and os.environ["MASTER_PORT"] == "45678" != first
    monkeypatch.setenv("MASTER_PORT", "29500")  # a launcher's own port: kept
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert ve._ensure_launcher_env() == (3, 8) and os.environ["MASTER_PORT"] == "29500"
    monkeypatch.delenv("MASTER_ADDR")
    with pytest.raises(RuntimeError, match="missing"):
        ve._ensure_launcher_env()


def test_driver_discards_weights_only_when_a_sync_follows(tmp_path, emulated_vllm):
    """The trainer's order: validation sessions keep the weights (level 1), a training step's rollout
    session discards them (level 2) and the sync after the update refills them before the next wake."""
    from nemo_prorl.trainer.rollout_driver import ColocatedDriver

    eng = _engine(tmp_path)
    llm = emulated_vllm.instances[0]
    drv = ColocatedDriver(eng, sleep_between=True)
    assert llm.calls[-1] == ("sleep", 1)  # built and put to sleep: a caller may generate before syncing
    sp = SamplingParams(temperature=1.0, max_tokens=4, seed=2)

    def gen():
        return drv.generate([[1, 2]], 2, sp)

    val = drv.on_rank0(gen)  # validation at step 0
    assert llm.calls[-1] == ("sleep", 1)
    drv.on_rank0(gen, weights_follow=True)  # the step's rollouts
    assert llm.calls[-1] == ("sleep", 2)
    with pytest.raises(RuntimeError, match="level-2 sleep"):
        drv.on_rank0(gen)  # generating again before the sync would serve discarded weights
    drv.update_weights(iter({"a.weight": torch.zeros(2, 3), "b.weight": torch.zeros(4)}.items()))
    again = drv.on_rank0(gen)  # validation after the sync
    assert [s.token_ids for s in again.samples] == [s.token_ids for s in val.samples]
