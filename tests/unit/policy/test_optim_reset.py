"""restart_adam and the FusedAdam emulation, on plain torch optimizers (no megatron).

The Transformer Engine behaviour emulated here is TE's ``FusedAdam``
(``transformer_engine/pytorch/optimizers/fused_adam.py``: ``step`` advances ``param_groups[i]["step"]``
before the update; ``initialize_state`` creates ``exp_avg``/``exp_avg_sq`` and, with ``master_weights``,
``master_param``; ``state_dict``/``load_state_dict`` pass every state key through ``name_to_dtype_map`` via
``get_unscaled_state``/``set_scaled_state`` and so raise ``KeyError`` on any other key) and its kernel
(``transformer_engine/common/multi_tensor/adam.cu``: ``AdamFunctor``, ``multi_tensor_adam_cuda``). See
:mod:`nemo_prorl.policy.megatron.fused_adam_emulation`.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from nemo_prorl.policy.megatron.fused_adam_emulation import FusedAdamEmulation
from nemo_prorl.policy.megatron.optim_reset import (
    PER_GROUP,
    PER_PARAMETER,
    restart_adam,
    state_roles,
    step_layout,
)

SHAPES = [(3, 4), (5,), (2, 2, 3)]
HYPER = {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1}


def _params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in SHAPES]


def _grads(step: int, params):
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=g).to(p.dtype) for p in params]


def _make(kind: str, params):
    if kind == "torch_adam":
        return torch.optim.Adam(params, **HYPER)
    if kind == "torch_adamw":
        return torch.optim.AdamW(params, **HYPER)
    if kind == "fused_adamw":
        return FusedAdamEmulation(params, **HYPER, adam_w_mode=True)
    if kind == "fused_adam_l2":
        return FusedAdamEmulation(params, **HYPER, adam_w_mode=False)
    if kind == "fused_master":  # megatron's precision-aware optimizer: bf16 params, fp32 master_param
        return FusedAdamEmulation(params, **HYPER, master_weights=True)
    if kind == "fused_bf16_moments":
        bf16 = torch.bfloat16
        return FusedAdamEmulation(params, **HYPER, exp_avg_dtype=bf16, exp_avg_sq_dtype=bf16)
    raise AssertionError(kind)


KINDS = ["torch_adam", "torch_adamw", "fused_adamw", "fused_adam_l2", "fused_master", "fused_bf16_moments"]


def _dtype(kind):
    return torch.bfloat16 if kind == "fused_master" else torch.float32


def _step(opt, params, step: int):
    for p, g in zip(params, _grads(step, params), strict=True):
        p.grad = g
    opt.step()


def _state_snapshot(opt):
    return [{k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[p].items()}
            for group in opt.param_groups for p in group["params"]]


def _old_reset(opt):
    """The reset MegatronPolicy.reset_optimizer did before: zero every per-parameter state value."""
    for state in opt.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                value.zero_()
            elif isinstance(value, int | float):
                state[key] = type(value)(0)


# ----------------------------------------------------------------------------- layout and roles


def test_step_layout_and_roles():
    params = _params()
    assert step_layout(torch.optim.Adam(params)) == PER_PARAMETER
    assert step_layout(torch.optim.AdamW(params)) == PER_PARAMETER
    assert step_layout(FusedAdamEmulation(params)) == PER_GROUP
    with pytest.raises(TypeError, match="SGD"):
        step_layout(torch.optim.SGD(params, lr=0.1))
    assert state_roles(PER_PARAMETER) == {
        "exp_avg": "moment", "exp_avg_sq": "moment", "max_exp_avg_sq": "moment", "step": "counter"}
    assert state_roles(PER_GROUP) == {"exp_avg": "moment", "exp_avg_sq": "moment", "master_param": "master"}


# ----------------------------------------------------------------------------- the emulation itself


@pytest.mark.parametrize("adam_w_mode,torch_cls", [(True, torch.optim.AdamW), (False, torch.optim.Adam)])
def test_emulation_is_adam(adam_w_mode, torch_cls):
    """Same trajectory as torch's Adam/AdamW (different float op order: equal to ~1e-6)."""
    pa, pb = _params(), _params()
    ea = FusedAdamEmulation(pa, **HYPER, adam_w_mode=adam_w_mode)
    tb = torch_cls(pb, **HYPER)
    for s in range(6):
        _step(ea, pa, s)
        _step(tb, pb, s)
    for a, b in zip(pa, pb, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert ea.param_groups[0]["step"] == 6
    assert all("step" not in ea.state[p] for p in pa)


def test_emulation_first_step_by_hand():
    """Step 1 on one weight: m = 0.1 g, v = 0.001 g^2, bc1 = 0.1, bc2 = 0.001 -> p -= lr (sign g + wd p)."""
    p = torch.nn.Parameter(torch.tensor([2.0]))
    opt = FusedAdamEmulation([p], lr=0.5, betas=(0.9, 0.999), eps=0.0, weight_decay=0.25)
    p.grad = torch.tensor([-3.0])
    opt.step()
    # AdamW: update = (m/bc1)/sqrt(v/bc2) + wd * p = -1 + 0.5 = -0.5; p = 2 - 0.5 * -0.5 = 2.25
    assert float(p.detach()) == pytest.approx(2.25, abs=1e-5)
    assert float(opt.state[p]["exp_avg"]) == pytest.approx(-0.3, abs=1e-7)
    assert float(opt.state[p]["exp_avg_sq"]) == pytest.approx(0.009, rel=1e-4)  # (1 - b2) in fp32
    assert opt.param_groups[0]["step"] == 1


def test_emulation_state_dict_maps_keys_like_te():
    params = _params()
    opt = FusedAdamEmulation(params, **HYPER)
    for s in range(3):
        _step(opt, params, s)
    sd = opt.state_dict()
    assert [g["step"] for g in sd["param_groups"]] == [3]
    assert all(set(v) == {"exp_avg", "exp_avg_sq"} for v in sd["state"].values())
    # a per-parameter "step" (what torch Adam keeps, and what the old checkpoint code injected)
    bad = copy.deepcopy(sd)
    bad["state"][0]["step"] = torch.tensor(3.0)
    with pytest.raises(KeyError, match="step"):
        FusedAdamEmulation(_params(), **HYPER).load_state_dict(bad)
    opt.state[params[0]]["step"] = torch.tensor(3.0)
    with pytest.raises(KeyError, match="step"):
        opt.state_dict()


@pytest.mark.parametrize("kind", ["fused_adamw", "fused_master", "fused_bf16_moments", "torch_adamw"])
def test_state_dict_round_trip_continues_bit_for_bit(kind):
    """save after 3 steps -> load into a new optimizer -> next steps equal the uninterrupted run."""
    pa = _params(_dtype(kind))
    opt = _make(kind, pa)
    for s in range(3):
        _step(opt, pa, s)
    sd = copy.deepcopy(opt.state_dict())
    pb = [torch.nn.Parameter(p.detach().clone()) for p in pa]
    resumed = _make(kind, pb)
    resumed.load_state_dict(sd)
    for s in range(3, 5):
        _step(opt, pa, s)
        _step(resumed, pb, s)
    assert all(torch.equal(a, b) for a, b in zip(pa, pb, strict=True))
    pairs = zip(_state_snapshot(opt), _state_snapshot(resumed), strict=True)
    assert all(torch.equal(x[k], y[k]) for x, y in pairs for k in x)


# ----------------------------------------------------------------------------- restart_adam


@pytest.mark.parametrize("kind", KINDS)
def test_restart_equals_a_fresh_optimizer_bit_for_bit(kind):
    """Train 5 steps, restart; the next step equals a new optimizer's first step over the same weights."""
    dtype = _dtype(kind)
    params = _params(dtype)
    opt = _make(kind, params)
    for s in range(5):
        _step(opt, params, s)
    masters = [opt.state[p]["master_param"].clone() for p in params] if kind == "fused_master" else None

    summary = restart_adam(opt)
    assert summary.moments == 2 * len(params)
    assert summary.step_counters == (len(params) if kind.startswith("torch") else 1)
    assert summary.master_weights_kept == (len(params) if masters else 0)
    if kind.startswith("fused"):
        assert opt.param_groups[0]["step"] == 0
    else:
        assert all(float(opt.state[p]["step"]) == 0.0 for p in params)
    if masters:  # master weights untouched (and not the bf16 weights: they carry more bits)
        assert all(torch.equal(opt.state[p]["master_param"], m) for p, m in zip(params, masters, strict=True))
        assert any(not torch.equal(m, p.float()) for p, m in zip(params, masters, strict=True))

    fresh_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fresh = _make(kind, fresh_params)
    if masters:  # a fresh optimizer over the same master weights
        for p, m in zip(fresh_params, masters, strict=True):
            fresh.initialize_state(p)
            fresh.set_scaled_state(p, "master_param", m.clone())
    _step(opt, params, 99)
    _step(fresh, fresh_params, 99)
    assert all(torch.equal(a, b) for a, b in zip(params, fresh_params, strict=True))
    for x, y in zip(_state_snapshot(opt), _state_snapshot(fresh), strict=True):
        assert x.keys() == y.keys()
        assert all(torch.equal(torch.as_tensor(x[k]), torch.as_tensor(y[k])) for k in x)
    assert opt.param_groups[0].get("step") == fresh.param_groups[0].get("step")


def _move_after(reset, steps: int) -> tuple[float, float]:
    """(|update after reset|, |a fresh optimizer's first update|) for one weight, same gradient.

    eps = 0 and no weight decay: a fresh Adam's first update is lr * sign(g).
    """
    p = torch.nn.Parameter(torch.tensor([1.0]))
    opt = FusedAdamEmulation([p], lr=1e-3, betas=(0.9, 0.999), eps=0.0, weight_decay=0.0)
    g = torch.Generator().manual_seed(7)
    for _ in range(steps):
        p.grad = torch.randn(1, generator=g)
        opt.step()
    reset(opt)
    q = torch.nn.Parameter(p.detach().clone())
    fresh = FusedAdamEmulation([q], lr=1e-3, betas=(0.9, 0.999), eps=0.0, weight_decay=0.0)
    before = p.detach().clone()
    p.grad = q.grad = torch.tensor([0.37])
    opt.step()
    fresh.step()
    return float((before - p.detach()).abs()), float((before - q.detach()).abs())


@pytest.mark.parametrize("steps", [10, 400])
def test_the_old_reset_left_fused_adams_bias_correction_behind(steps):
    """Zeroing only per-parameter state keeps group["step"]: the next update is off by the bias corrections.

    With zero moments and an old counter t = steps + 1 the update is lr * ((1 - b1) / (1 - b1^t)) /
    sqrt((1 - b2) / (1 - b2^t)): 0.482x at t = 11, 1.818x at t = 401 (b1 = 0.9, b2 = 0.999).
    """
    t = steps + 1
    expected = (0.1 / (1 - 0.9**t)) / math.sqrt(0.001 / (1 - 0.999**t))
    assert expected == pytest.approx({10: 0.48213, 400: 1.81792}[steps], rel=1e-4)
    old, fresh = _move_after(_old_reset, steps)
    assert fresh == pytest.approx(1e-3, rel=1e-4)  # lr * |sign(g)| (fp32 round-off near 1.0)
    assert old / fresh == pytest.approx(expected, rel=1e-3)
    assert abs(old / fresh - 1.0) > 0.4
    new, fresh = _move_after(restart_adam, steps)
    assert new == fresh  # update ratio exactly 1


def test_the_old_reset_zeroed_master_weights():
    """The old reset also zeroed ``master_param``: the precision-aware optimizer's weights became 0."""
    params = _params(torch.bfloat16)
    opt = _make("fused_master", params)
    _step(opt, params, 0)
    _old_reset(opt)
    _step(opt, params, 1)
    assert all(float(p.abs().max()) < 0.05 for p in params)  # one lr-sized step away from zero
    params2 = _params(torch.bfloat16)
    opt2 = _make("fused_master", params2)
    _step(opt2, params2, 0)
    restart_adam(opt2)
    _step(opt2, params2, 1)
    assert all(float(p.abs().max()) > 0.5 for p in params2)


def test_unknown_state_keys_raise_and_change_nothing():
    params = _params()
    opt = FusedAdamEmulation(params, **HYPER)
    for s in range(2):
        _step(opt, params, s)
    before = _state_snapshot(opt)
    opt.state[params[1]]["step"] = torch.tensor(2.0)  # what the old checkpoint code injected
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['step'\].*param_groups\[i\]\['step'\]"):
        restart_adam(opt)
    del opt.state[params[1]]["step"]
    opt.state[params[2]]["ema"] = torch.ones(1)
    with pytest.raises(ValueError, match=r"\['ema'\].*nothing was reset"):
        restart_adam(opt)
    del opt.state[params[2]]["ema"]
    assert opt.param_groups[0]["step"] == 2
    assert all(torch.equal(x[k], y[k]) for x, y in zip(before, _state_snapshot(opt), strict=True) for k in x)

    torch_opt = torch.optim.AdamW(params, **HYPER)
    _step(torch_opt, params, 0)
    torch_opt.state[params[0]]["master_param"] = params[0].detach().clone()
    with pytest.raises(ValueError, match="master_param"):
        restart_adam(torch_opt)
    with pytest.raises(TypeError, match="SGD"):
        restart_adam(torch.optim.SGD(params, lr=0.1))


def test_group_step_copies_and_types_are_restarted():
    """A group 'step' in torch Adam (megatron's DistributedOptimizer writes one on load) is zeroed too."""
    params = _params()
    opt = torch.optim.AdamW(params, **HYPER)
    _step(opt, params, 0)
    opt.param_groups[0]["step"] = 1.0
    restart_adam(opt)
    assert opt.param_groups[0]["step"] == 0.0 and isinstance(opt.param_groups[0]["step"], float)
    fused = FusedAdamEmulation(params, **HYPER)
    counter = torch.tensor([7], dtype=torch.int32)  # TE with capturable=True keeps a tensor
    fused.param_groups[0]["step"] = counter
    restart_adam(fused)
    assert fused.param_groups[0]["step"] is counter and int(counter) == 0
