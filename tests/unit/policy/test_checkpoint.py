"""Checkpoints of MegatronPolicy: round trip (weights, optimizer, reference, RNG, extra state), atomicity."""

from __future__ import annotations

import json
import random

import pytest
import torch

from nemo_prorl.policy.interface import TokenBatch
from nemo_prorl.policy.megatron import checkpoint as C
from nemo_prorl.policy.megatron.config import MegatronPolicyConfig

VOCAB = 320


def _make_ckpt(path, complete: bool = True):
    path.mkdir(parents=True)
    (path / "metadata.json").write_text("{}")
    if complete:
        (path / C.COMPLETE).write_text("ok\n")
    return path


def test_latest_checkpoint_ignores_and_cleans_partial(tmp_path):
    assert C.latest_checkpoint(tmp_path / "missing") is None
    assert C.latest_checkpoint(tmp_path) is None
    good3 = _make_ckpt(C.checkpoint_path(tmp_path, 3))
    good10 = _make_ckpt(C.checkpoint_path(tmp_path, 10))
    partial12 = _make_ckpt(C.checkpoint_path(tmp_path, 12), complete=False)  # crashed after rename
    tmp15 = _make_ckpt(tmp_path / "step_00000015.tmp-abc123")  # crashed before rename
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    (tmp_path / "other_dir").mkdir()
    assert C.latest_checkpoint(tmp_path) == good10
    assert partial12.exists() and tmp15.exists()
    assert C.latest_checkpoint(tmp_path, cleanup=True) == good10
    assert not partial12.exists() and not tmp15.exists()
    assert good3.exists() and (tmp_path / "other_dir").exists()
    assert C.checkpoint_path(tmp_path, 7).name == "step_00000007"
    with pytest.raises(ValueError):
        C.checkpoint_path(tmp_path, -1)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from nemo_prorl.policy.megatron import parallel
    from nemo_prorl.policy.megatron.engine import MegatronPolicy
    from nemo_prorl.policy.megatron.testing import make_tiny_hf_model

    hf_dir = make_tiny_hf_model(tmp_path_factory.mktemp("tiny") / "llama", "llama", seed=1, tied=True)
    pol = MegatronPolicy(hf_dir, MegatronPolicyConfig(micro_batch_size=2, lr=1e-3))
    yield pol
    parallel.destroy_parallel()


def _batch(seed: int) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (4, 10), generator=g)
    mask = torch.zeros(4, 10)
    mask[:, 4:] = 1
    return TokenBatch(ids, mask, extras={"advantages": torch.randn(4, generator=g)})


def _loss(lp, ent, micro, norm):
    m = micro["response_mask"].float()
    return -(lp * m * (1 + micro["advantages"][:, None])).sum() / norm["num_tokens"], {}


def _params(pol):
    return {n: p.detach().clone() for n, p in pol.model.named_parameters()}


def _opt_state(pol):
    from nemo_prorl.policy.megatron.engine import _torch_optimizers

    out = []
    for opt in _torch_optimizers(pol.optimizer):
        for group in opt.param_groups:
            for p in group["params"]:
                st = opt.state[p]
                out.append({k: (v.clone() if torch.is_tensor(v) else v) for k, v in st.items()})
    return out


def _same_opt_state(a, b) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(torch.equal(torch.as_tensor(x[k]), torch.as_tensor(y[k])) for k in x)
        for x, y in zip(a, b)
    )


def test_round_trip_restores_everything(policy, tmp_path):
    policy.train_step(_batch(0), _loss)
    policy.train_step(_batch(1), _loss)
    policy.reset_reference()
    policy.train_step(_batch(2), _loss)
    saved_params, saved_opt = _params(policy), _opt_state(policy)
    saved_since_reset = policy.steps_since_optimizer_reset  # the lr warm-up position
    saved_ref, _ = policy.logprobs(_batch(3), reference=True)
    extra = {"step": 3, "sampler": {"epoch": 0, "offset": 12}, "history": [1.5, 2.0]}
    ckpt = policy.save_checkpoint(C.checkpoint_path(tmp_path, 3), extra)
    assert C.is_complete(ckpt) and C.latest_checkpoint(tmp_path) == ckpt
    assert json.loads((ckpt / "extra_state.json").read_text()) == extra
    assert not list(tmp_path.glob("*.tmp-*"))
    rng_after_save = (torch.rand(3), random.random())

    m_cont = policy.train_step(_batch(4), _loss)  # the uninterrupted run's next step
    params_cont = _params(policy)
    policy.train_step(_batch(5), _loss)  # move everything further away, then rewind
    policy.reset_reference()
    torch.manual_seed(999)
    random.seed(999)

    assert policy.load_checkpoint(ckpt) == extra
    assert policy.steps_taken == 3
    assert policy.steps_since_optimizer_reset == saved_since_reset > 0
    loaded = _params(policy)
    assert all(torch.equal(loaded[k], saved_params[k]) for k in saved_params)
    assert _same_opt_state(_opt_state(policy), saved_opt)
    ref, _ = policy.logprobs(_batch(3), reference=True)
    assert torch.equal(ref, saved_ref)
    assert torch.equal(torch.rand(3), rng_after_save[0]) and random.random() == rng_after_save[1]
    m_resumed = policy.train_step(_batch(4), _loss)
    assert m_resumed["loss"] == m_cont["loss"] and m_resumed["grad_norm"] == m_cont["grad_norm"]
    resumed = _params(policy)
    assert all(torch.equal(resumed[k], params_cont[k]) for k in params_cont)


def test_rng_is_restored(policy, tmp_path):
    ckpt = policy.save_checkpoint(tmp_path / "rng_ckpt", {"step": 0})
    expected = (torch.rand(4), random.random())
    torch.manual_seed(12345)
    random.seed(12345)
    policy.load_checkpoint(ckpt)
    got = (torch.rand(4), random.random())
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1]


def test_weights_only_load_resets_optimizer(policy, tmp_path):
    ckpt = policy.save_checkpoint(tmp_path / "w", {})
    saved = _params(policy)
    policy.train_step(_batch(6), _loss)
    with pytest.warns(UserWarning, match="optimizer state not loaded"):
        policy.load_checkpoint(ckpt, load_optimizer=False)
    assert all(torch.equal(p, saved[n]) for n, p in _params(policy).items())
    from nemo_prorl.policy.megatron.engine import _torch_optimizers

    for opt in _torch_optimizers(policy.optimizer):
        for st in opt.state.values():
            assert all(float(torch.as_tensor(v).abs().sum()) == 0 for v in st.values())


def test_save_before_any_step_and_after_reset(policy, tmp_path):
    policy.reset_optimizer()  # step counters at 0: megatron writes no common step
    ckpt = policy.save_checkpoint(tmp_path / "fresh", {"k": 1})
    policy.load_checkpoint(ckpt)
    m = policy.train_step(_batch(7), _loss)
    assert m["grad_norm"] > 0


def test_partial_or_corrupt_checkpoints_are_refused(policy, tmp_path):
    partial = _make_ckpt(tmp_path / "step_00000001", complete=False)
    with pytest.raises(C.CheckpointError, match="COMPLETE"):
        policy.load_checkpoint(partial)
    with pytest.raises(C.CheckpointError, match="not a directory"):
        policy.load_checkpoint(tmp_path / "nope")
    ckpt = policy.save_checkpoint(tmp_path / "step_00000002", {})
    (ckpt / "metadata.json").write_text("{not json")
    with pytest.raises(C.CheckpointError, match="metadata.json"):
        policy.load_checkpoint(ckpt)
    ckpt2 = policy.save_checkpoint(tmp_path / "step_00000003", {})
    for f in (ckpt2 / "dist").rglob("*.distcp"):
        f.write_bytes(b"truncated")
    with pytest.raises(C.CheckpointError, match="dist"):
        policy.load_checkpoint(ckpt2)


def test_save_refuses_bad_extra_state_and_existing_dir(policy, tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        policy.save_checkpoint(tmp_path / "bad", {"x": object()})
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob("bad.tmp-*"))
    policy.save_checkpoint(tmp_path / "once", {})
    with pytest.raises(C.CheckpointError, match="already exists"):
        policy.save_checkpoint(tmp_path / "once", {})


def test_optimizer_kind_mismatch_fails_clearly(policy, tmp_path):
    ckpt = policy.save_checkpoint(tmp_path / "kind", {})
    meta = json.loads((ckpt / "metadata.json").read_text())
    meta["use_distributed_optimizer"] = True
    (ckpt / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(C.CheckpointError, match="load_optimizer=False"):
        policy.load_checkpoint(ckpt)


def _ref_params(pol):
    return {n: p.detach().clone() for n, p in pol.ref_model.named_parameters()}


def test_load_policy_weights_sets_the_reference_to_the_saved_policy_bit_for_bit(policy, tmp_path):
    """reset.reference=best without policy_to_best: only the reference changes, to the saved policy."""
    policy.train_step(_batch(10), _loss)
    best = _params(policy)
    ckpt = policy.save_checkpoint(tmp_path / "best", {"step": 1})
    policy.train_step(_batch(11), _loss)  # the run goes on; the reference is still the older one
    params, opt, taken = _params(policy), _opt_state(policy), policy.steps_taken
    assert not all(torch.equal(params[k], best[k]) for k in best)
    rng = torch.get_rng_state()
    policy.load_policy_weights(ckpt)
    ref = _ref_params(policy)
    assert ref.keys() == best.keys()
    assert all(torch.equal(ref[k], best[k]) for k in best)  # not the checkpoint's reference weights
    # the policy, its optimizer state, the step counter and the RNG stream are untouched
    assert all(torch.equal(p, params[n]) for n, p in _params(policy).items())
    assert _same_opt_state(_opt_state(policy), opt) and policy.steps_taken == taken
    assert torch.equal(torch.get_rng_state(), rng)


def test_load_policy_weights_into_policy_trains_on_from_the_saved_weights(policy, tmp_path):
    """With policy_to_best the policy (and its optimizer's master copies) go back to the saved weights."""
    policy.train_step(_batch(12), _loss)
    best = _params(policy)
    ckpt = policy.save_checkpoint(tmp_path / "best2", {"step": 1})
    policy.train_step(_batch(13), _loss)
    policy.load_policy_weights(ckpt, into_policy=True)
    assert all(torch.equal(p, best[n]) for n, p in _params(policy).items())
    assert all(torch.equal(p, best[n]) for n, p in _ref_params(policy).items())
    # the next update starts from the saved weights: it equals the update after a weights-only load
    policy.reset_optimizer()
    policy.train_step(_batch(14), _loss)
    after_best = _params(policy)
    with pytest.warns(UserWarning, match="optimizer state not loaded"):
        policy.load_checkpoint(ckpt, load_optimizer=False)
    policy.train_step(_batch(14), _loss)
    assert all(torch.equal(p, after_best[n]) for n, p in _params(policy).items())


def test_load_policy_weights_refuses_a_missing_or_partial_checkpoint(policy, tmp_path):
    with pytest.raises(C.CheckpointError, match="not a complete checkpoint"):
        policy.load_policy_weights(tmp_path / "gone")
    partial = _make_ckpt(tmp_path / "partial", complete=False)
    with pytest.raises(C.CheckpointError, match=str(partial)):
        policy.load_policy_weights(partial)
