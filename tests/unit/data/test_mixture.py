"""MixtureSampler: determinism, proportions, phase weights, resume (also at an epoch boundary)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from nemo_prorl.data.mixture import MixtureSampler


def rows(domain: str, n: int) -> list[dict]:
    return [{"id": f"{domain}-{i}", "domain": domain} for i in range(n)]


DATA = {"math": rows("math", 12), "code": rows("code", 6), "ifeval": rows("ifeval", 2)}


def ids(batch) -> list[str]:
    return [r["id"] for r in batch]


def test_natural_epoch_covers_every_row_once_and_reshuffles():
    s = MixtureSampler(DATA, None, seed=3)
    e0, e1 = ids(s.next_batch(20)), ids(s.next_batch(20))
    everything = sorted(r["id"] for v in DATA.values() for r in v)
    assert sorted(e0) == everything and sorted(e1) == everything
    assert e0 != e1  # epoch 1 is reshuffled
    assert s.epoch == 2


def test_natural_permutation_is_seeded_by_seed_and_epoch():
    s = MixtureSampler({"math": rows("math", 5)}, None, seed=7)
    got = [int(r["id"].split("-")[1]) for r in s.next_batch(10)]
    # the documented recipe: default_rng([seed, crc32("all"), epoch]).permutation(n)
    import zlib

    want = [int(i) for e in (0, 1) for i in np.random.default_rng([7, zlib.crc32(b"all"), e]).permutation(5)]
    assert got == want


def test_no_shuffle_keeps_order():
    s = MixtureSampler({"math": rows("math", 3), "code": rows("code", 2)}, None, shuffle=False)
    # domains are ordered by name: code first
    assert ids(s.next_batch(6)) == ["code-0", "code-1", "math-0", "math-1", "math-2", "code-0"]


def test_deterministic_given_seed_and_different_across_seeds():
    a = ids(MixtureSampler(DATA, {"math": 1, "code": 1}, seed=5).next_batch(50))
    b = ids(MixtureSampler(DATA, {"math": 1, "code": 1}, seed=5).next_batch(50))
    c = ids(MixtureSampler(DATA, {"math": 1, "code": 1}, seed=6).next_batch(50))
    assert a == b and a != c


def test_weighted_proportions():
    s = MixtureSampler(DATA, {"math": 0.5, "code": 0.3, "ifeval": 0.2}, seed=1)
    n = 20000
    counts = Counter(r["domain"] for r in s.next_batch(n))
    for d, p in {"math": 0.5, "code": 0.3, "ifeval": 0.2}.items():
        sd = (p * (1 - p) / n) ** 0.5
        assert abs(counts[d] / n - p) < 4 * sd, (d, counts[d])
    assert s.probabilities() == pytest.approx({"math": 0.5, "code": 0.3, "ifeval": 0.2})


def test_weighted_domain_streams_cover_each_domain_per_epoch():
    s = MixtureSampler(DATA, {"code": 1.0}, seed=2)
    got = ids(s.next_batch(12))
    assert sorted(got[:6]) == sorted(ids(DATA["code"])) and sorted(got[6:]) == sorted(ids(DATA["code"]))
    assert s.epoch == 2


def test_zero_weight_and_unknown_domains():
    s = MixtureSampler(DATA, {"math": 1, "ifeval": 0}, seed=0)
    assert {r["domain"] for r in s.next_batch(100)} == {"math"}
    with pytest.raises(ValueError, match="mcq.*no rows"):
        s.set_weights({"mcq": 1})
    with pytest.raises(ValueError, match="unknown domain"):
        s.set_weights({"poetry": 1})
    with pytest.raises(ValueError, match=">= 0"):
        s.set_weights({"math": -1})
    with pytest.raises(ValueError, match="no rows"):
        MixtureSampler({"math": []})


def test_set_weights_at_phase_change_keeps_positions():
    s = MixtureSampler(DATA, {"math": 1, "code": 1}, seed=4)
    first = ids(s.next_batch(30))
    s.set_weights({"math": 1, "code": 1, "ifeval": 1})  # run 3 adds instruction following
    later = s.next_batch(300)
    assert "ifeval" in {r["domain"] for r in later}
    # math rows continue their stream: the first math rows after the switch are not a replay
    ref = MixtureSampler(DATA, {"math": 1}, seed=4)
    math_stream = ids(ref.next_batch(60))
    n_math_before = sum(i.startswith("math") for i in first)
    math_after = [r["id"] for r in later if r["domain"] == "math"][:10]
    assert math_after == math_stream[n_math_before:n_math_before + 10]


@pytest.mark.parametrize("weights", [None, {"math": 2, "code": 1, "ifeval": 1}])
def test_resume_mid_epoch_matches_uninterrupted(weights):
    full = MixtureSampler(DATA, weights, seed=11)
    ref = ids(full.next_batch(70))
    s = MixtureSampler(DATA, weights, seed=11)
    head = ids(s.next_batch(27))
    state = json.loads(json.dumps(s.state_dict()))  # survives a JSON checkpoint
    fresh = MixtureSampler(DATA, weights, seed=11)
    fresh.load_state_dict(state)
    assert head + ids(fresh.next_batch(43)) == ref


def test_resume_at_epoch_boundary_neither_replays_nor_skips():
    batch = 5  # 20 rows -> 4 steps per epoch
    uninterrupted = MixtureSampler(DATA, None, seed=9)
    ref = [ids(uninterrupted.next_batch(batch)) for _ in range(8)]

    s = MixtureSampler(DATA, None, seed=9)
    steps = [ids(s.next_batch(batch)) for _ in range(4)]  # the last step of epoch 0
    assert s.epoch == 1
    state = s.state_dict()
    del s

    fresh = MixtureSampler(DATA, None, seed=9)
    fresh.load_state_dict(state)
    assert fresh.epoch == 1
    resumed = [ids(fresh.next_batch(batch)) for _ in range(4)]
    assert steps + resumed == ref
    epoch1 = [i for step in resumed for i in step]
    everything = sorted(r["id"] for v in DATA.values() for r in v)
    assert sorted(epoch1) == everything  # each prompt exactly once: nothing replayed or skipped
    assert fresh.epoch == 2


def test_load_state_rejects_other_data_or_seed():
    s = MixtureSampler(DATA, None, seed=1)
    s.next_batch(3)
    state = s.state_dict()
    with pytest.raises(ValueError, match="seed"):
        MixtureSampler(DATA, None, seed=2).load_state_dict(state)
    other = {**DATA, "code": rows("code", 7)}
    with pytest.raises(ValueError, match="rows per domain"):
        MixtureSampler(other, None, seed=1).load_state_dict(state)
    renamed = {**DATA, "ifeval": [{"id": "x", "domain": "ifeval"}, {"id": "y", "domain": "ifeval"}]}
    with pytest.raises(ValueError, match="ids or order"):
        MixtureSampler(renamed, None, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        MixtureSampler(DATA, None, seed=1).load_state_dict({**state, "version": 99})


def test_state_restores_phase_weights():
    s = MixtureSampler(DATA, {"math": 1}, seed=0)
    s.next_batch(4)
    s.set_weights({"ifeval": 1})
    fresh = MixtureSampler(DATA, {"math": 1}, seed=0)
    fresh.load_state_dict(s.state_dict())
    assert fresh.weights == {"code": 0.0, "ifeval": 1.0, "math": 0.0}
    assert ids(fresh.next_batch(6)) == ids(s.next_batch(6))
