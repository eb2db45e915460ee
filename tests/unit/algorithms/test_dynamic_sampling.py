import pytest
import torch

from nemo_prorl.algorithms import (
    DynamicSamplingBuffer,
    DynamicSamplingExhausted,
    filter_groups,
    has_reward_variance,
)


def test_variance_rule():
    assert not has_reward_variance([1.0, 1.0, 1.0])
    assert not has_reward_variance([0.0, 0.0])
    assert not has_reward_variance([0.5])
    assert has_reward_variance([0.0, 1.0])
    assert has_reward_variance(torch.tensor([0.25, 0.5]))
    assert not has_reward_variance([0.5, 0.50001], tol=1e-3)


def test_filter_groups_keeps_order():
    kept, idx = filter_groups(["a", "b", "c", "d"], [[1, 1], [0, 1], [0, 0], torch.tensor([0.3, 0.1])])
    assert kept == ["b", "d"] and idx == [1, 3]
    with pytest.raises(ValueError, match="3 groups but rewards for 2"):
        filter_groups(["a", "b", "c"], [[1], [0]])
    with pytest.raises(ValueError, match="group 1 has no rewards"):
        filter_groups(["a", "b"], [[1, 0], []])
    with pytest.raises(ValueError, match="group 0 must be a sequence of numbers"):
        filter_groups(["a"], [["x", 1]])


def test_buffer_refills_across_rounds_and_cuts_extra():
    buf: DynamicSamplingBuffer[str] = DynamicSamplingBuffer(target_groups=3, max_rounds=5)
    assert buf.add(["p0", "p1", "p2"], [[1, 1], [0, 1], [0, 0]]) == 1
    assert not buf.full and buf.missing == 2
    assert buf.add(["p3", "p4", "p5"], [[1, 0], [0, 1], [1, 0]]) == 3
    assert buf.full and buf.num_groups == 4
    batch, stats = buf.pop_batch()
    assert batch == ["p1", "p3", "p4"]
    assert (
        stats.rounds,
        stats.groups_seen,
        stats.groups_kept,
        stats.groups_dropped,
        stats.groups_discarded,
    ) == (
        2,
        6,
        4,
        2,
        1,
    )
    assert stats.as_metrics()["dynamic_sampling/groups_dropped"] == 2.0
    # reset for the next step
    assert buf.num_groups == 0 and buf.stats.rounds == 0
    with pytest.raises(RuntimeError, match="holds 0 of 3"):
        buf.pop_batch()


def test_exhaustion_raises_with_counts_and_key():
    buf = DynamicSamplingBuffer(target_groups=4, max_rounds=2)
    buf.add([0, 1], [[1, 1], [0, 1]])
    with pytest.raises(DynamicSamplingExhausted) as info:
        buf.add([2, 3], [[0, 0], [1, 1]])
    msg = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert "only 1 of 4 groups" in msg and "after 2 generation rounds" in msg
    assert "4 groups generated, 3 dropped" in msg and "algorithm.dynamic_sampling.max_rounds" in msg


def test_partial_ok_hands_over_a_short_batch_after_max_rounds():
    buf = DynamicSamplingBuffer(target_groups=4, max_rounds=2, partial_ok=True)
    assert buf.add(["a", "b"], [[1, 1], [0, 1]]) == 1 and not buf.ready
    assert buf.add(["c", "d"], [[0, 1], [0, 0]]) == 1
    assert buf.ready and not buf.full and buf.exhausted
    batch, stats = buf.pop_batch()
    assert batch == ["b", "c"]
    assert stats.partial == 1 and stats.rounds == 2
    assert stats.groups_dropped == 2 and stats.groups_discarded == 0
    assert stats.as_metrics()["dynamic_sampling/partial"] == 1.0
    # the buffer starts the next step clean, and a full batch reports partial 0
    assert not buf.exhausted and not buf.ready
    buf.add(["e", "f", "g", "h", "i"], [[0, 1]] * 5)
    batch, stats = buf.pop_batch()
    assert batch == ["e", "f", "g", "h"] and stats.partial == 0 and stats.groups_discarded == 1


def test_partial_ok_still_raises_when_no_group_is_informative():
    buf = DynamicSamplingBuffer(target_groups=2, max_rounds=2, partial_ok=True)
    buf.add(["a"], [[1, 1]])
    with pytest.raises(DynamicSamplingExhausted, match="only 0 of 2 groups"):
        buf.add(["b"], [[0, 0]])


def test_disabled_keeps_everything():
    buf = DynamicSamplingBuffer(target_groups=2, max_rounds=1, enable=False)
    buf.add(["a", "b"], [[1, 1], [0, 0]])
    batch, stats = buf.pop_batch()
    assert batch == ["a", "b"] and stats.groups_dropped == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="target_groups"):
        DynamicSamplingBuffer(target_groups=0, max_rounds=1)
    with pytest.raises(ValueError, match="max_rounds"):
        DynamicSamplingBuffer(target_groups=1, max_rounds=0)


def test_exhaustion_names_the_common_reward_and_what_to_change():
    buf = DynamicSamplingBuffer(target_groups=2, max_rounds=2)
    buf.add(["a", "b"], [[0, 0, 0], [0.0, 0.0, 0.0]])
    with pytest.raises(DynamicSamplingExhausted) as info:
        buf.add(["c"], [torch.zeros(3)])
    msg = str(info.value)
    assert "3 groups generated, 3 dropped as all-equal: all with every reward 0)" in msg
    assert msg.endswith("Every sample scored 0: check that the prompt template asks for the answer format "
                        "the reward reads (`nemo-prorl score` on a few responses shows the status), or start "
                        "from a stronger base or easier data")
    mixed = DynamicSamplingBuffer(target_groups=2, max_rounds=1)
    with pytest.raises(DynamicSamplingExhausted) as info:
        mixed.add(["a", "b", "c"], [[1, 1], [0, 0], [1, 1]])
    assert "dropped as all-equal: 1 at 0, 2 at 1)" in str(info.value)
    assert "Every sample" not in str(info.value)
    easy = DynamicSamplingBuffer(target_groups=1, max_rounds=1)
    with pytest.raises(DynamicSamplingExhausted, match="Every sample scored 1: .* use harder data"):
        easy.add(["a"], [[1, 1]])
