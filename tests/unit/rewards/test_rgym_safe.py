"""The eval-free reasoning-gym scorers agree with the originals; the guard and the state check hold.

Agreement: for each replaced task, the task's own generated reference answer plus wrong and
reformatted variants of it (list forms that earn the "python list" partial credit, dropped terms,
changed numbers, ``^`` for ``**``...) are scored by the original ``<Dataset>.score_answer`` of the
installed reasoning-gym and by :data:`nemo_prorl.rewards.rgym_safe.SAFE_SCORERS`; the scores must be
equal. The originals are only ever given these test-built strings.
"""

import json
import os

import pytest

reasoning_gym = pytest.importorskip("reasoning_gym")

from nemo_prorl.rewards.guard import CodeExecutionBlocked, no_code_execution  # noqa: E402
from nemo_prorl.rewards.rgym import ReasoningGymReward  # noqa: E402
from nemo_prorl.rewards.rgym_safe import SAFE_SCORERS, GoldParseError, score_polynomial_multiplication  # noqa: E402


def variants(task, e):
    g = e["answer"]
    out = [g, "garbage", "1 + 2", "[1, 2]"]
    if task == "string_insertion":
        out += [str(list(g)), repr(g), str(tuple(g)), g[:-1], str(list(g[:-1])), json.dumps(list(g))]
    elif task == "spiral_matrix":
        xs = g.split()
        out += ["[" + ", ".join(xs) + "]", "(" + ", ".join(xs) + ")", ", ".join(xs),
                "[" + ", ".join(xs[:-1]) + "]", str([int(a) for a in xs][::-1]),
                "[" + ", ".join(f"'{a}'" for a in xs) + "]"]
    elif task == "binary_matrix":
        m = [[int(a) for a in r.split()] for r in g.split("\n")]
        out += [str(m), str(m[::-1]), str([tuple(r) for r in m])]
    elif task == "n_queens":
        b = [r.split() for r in g.split("\n")]
        out += [str(b), str(b[::-1]), json.dumps(b)]
    elif task == "number_sorting":
        xs = [float(a) for a in json.loads(g.replace("'", '"'))]
        out += [json.dumps(xs), json.dumps(xs[::-1]), str(xs), json.dumps([a + 0.5 for a in xs]),
                json.dumps([a + 2 for a in xs])]
    elif task in ("countdown", "puzzle24"):
        out += [g.replace("*", "+", 1), "(" + g + ")", g + " + 0", g.replace(" ", ""), "24", "4*6*1*1",
                "(" + g + ")*1.0", g + " - 0.000001", g + " + 0.5"]
    elif task == "bitwise_arithmetic":
        n = int(g, 16)
        out += [hex(n + 1), str(n), bin(n), " " + g + " ", g.upper()]
    elif task == "polynomial_multiplication":
        out += [g.replace("**", "^"), g.replace(" + ", " - ", 1), "(" + g + ")", g + " + 0",
                g.replace("1", "2", 1), "-(" + g + ")*-1", g + " + 1 - 1", g.replace("x", "X")]
    else:  # integration
        out += [g.replace(" + C", ""), g.replace("C", "K"), g.replace("2", "3", 1), "(" + g + ")", g + " + 5",
                g.replace("**", "^"), e["metadata"]["integrand"], g.replace(" + C", " + C + x")]
    return out


SIZES = {"simple_integration": 4, "intermediate_integration": 3, "polynomial_multiplication": 8}


@pytest.mark.parametrize("task", sorted(SAFE_SCORERS))
def test_agrees_with_the_original_scorer(task):
    original = reasoning_gym.get_score_answer_fn(task)
    safe = SAFE_SCORERS[task]
    ds = reasoning_gym.create_dataset(task, size=SIZES.get(task, 12), seed=7)
    n = 0
    for entry in ds:
        entry = json.loads(json.dumps(entry))
        for answer in variants(task, entry):
            with no_code_execution() as blocked:
                got = safe(answer, entry)
            assert not blocked, (task, answer, blocked)
            assert got == original(answer, entry), (task, answer)
            n += 1
    assert n >= 3 * len(variants(task, entry))


def test_partial_credit_forms_still_earn_their_credit():
    e = reasoning_gym.create_dataset("spiral_matrix", size=1, seed=3)[0]
    as_list = "[" + ", ".join(e["answer"].split()) + "]"
    assert SAFE_SCORERS["spiral_matrix"](as_list, e) == 0.1
    q = reasoning_gym.create_dataset("n_queens", size=1, seed=3)[0]
    assert SAFE_SCORERS["n_queens"](str([r.split() for r in q["answer"].split("\n")]), q) == 0.5


def test_unreadable_reference_is_a_grader_fault():
    with pytest.raises(GoldParseError):
        score_polynomial_multiplication("x", {"answer": "x +* 2"})
    row = {"domain": "reasoning_gym", "task": "polynomial_multiplication",
           "entry": {"question": "q", "answer": "x +* 2", "metadata": {}}}
    res = ReasoningGymReward().score("<answer>x</answer>", row)
    assert res.status == "error" and "cannot read the row's reference" in res.info["reason"]


def _row(task, seed=1):
    return {"domain": "reasoning_gym", "task": task,
            "entry": json.loads(json.dumps(reasoning_gym.create_dataset(task, size=1, seed=seed)[0]))}


def test_guard_refuses_an_upstream_eval_path(tmp_path, monkeypatch):
    """The original spiral_matrix scorer (which evals the answer) runs under the guard: the payload never
    runs, and the row is a violation; the next honest row is unaffected."""
    from nemo_prorl.rewards import rgym

    target = tmp_path / "PWNED_guard"
    monkeypatch.delitem(rgym.OVERRIDES, "spiral_matrix")  # score with reasoning-gym's own scorer
    reward = ReasoningGymReward()
    row = _row("spiral_matrix")
    res = reward.score(f"<answer>__import__('os').system('touch {target}')</answer>", row)
    assert res.status == "violation" and res.score == 0.0 and "exec of code" in res.info["reason"]
    assert not target.exists()
    assert reward.score(f"<answer>{row['entry']['answer']}</answer>", row).score == 1.0


def test_guard_refuses_processes_unpickling_and_string_code():
    import pickle

    with no_code_execution() as blocked:
        with pytest.raises(CodeExecutionBlocked):
            os.system("true")
        with pytest.raises(CodeExecutionBlocked):
            pickle.loads(pickle.dumps(pytest.raises))  # any class lookup while unpickling is refused
        with pytest.raises(CodeExecutionBlocked):
            eval("1 + 1")  # noqa: S307 - a constant, to show the guard refuses any string code
    assert len(blocked) == 3
    assert eval("1 + 1") == 2  # noqa: S307 - outside a guard nothing is refused


def test_patched_grader_state_is_a_violation_and_taints():
    import reasoning_gym.algorithmic.word_sorting as ws

    reward = ReasoningGymReward()
    row = _row("word_sorting")
    assert reward.score(f"<answer>{row['entry']['answer']}</answer>", row).score == 1.0
    original = ws.WordSortingDataset.score_answer
    try:
        ws.WordSortingDataset.score_answer = lambda self, answer, entry: 1.0  # what a hostile row would do
        res = reward.score("<answer>wrong</answer>", row)
    finally:
        ws.WordSortingDataset.score_answer = original
    assert res.status == "violation" and res.score == 0.0 and reward.tainted


def test_puzzle24_must_use_the_puzzles_numbers():
    row = _row("puzzle24")
    reward = ReasoningGymReward()
    assert reward.score(f"<answer>{row['entry']['answer']}</answer>", row).score == 1.0
    numbers = sorted(row["entry"]["metadata"]["numbers"])
    universal = "4*6*1*1" if numbers != [1, 1, 4, 6] else "2*3*4*1"
    res = reward.score(f"<answer>{universal}</answer>", row)
    assert res.score == 0.0 and "puzzle's numbers" in res.info["reason"]


def test_scorer_raising_on_a_wrong_answer_is_a_wrong_answer_not_a_fault():
    row = _row("prime_factorization")
    res = ReasoningGymReward().score("<answer>definitely wrong</answer>", row)
    assert res.status == "ok" and res.score == 0.0 and "counted as a wrong answer" in res.info["reason"]
    broken = _row("chain_sum")  # a row without its reference: the scorer fails on everything
    del broken["entry"]["answer"]
    res = ReasoningGymReward().score("<answer>12</answer>", broken)
    assert res.status == "error" and "KeyError" in res.info["reason"]


def test_wrong_integration_answers_do_not_reach_a_slow_simplify():
    # sympy's simplify took 180 s on the first of these; the numerical pre-check rejects them at once
    import time

    e = json.loads(json.dumps(reasoning_gym.create_dataset("simple_integration", size=1, seed=11)[0]))
    v = e["metadata"]["variable"]
    for answer in (f"Abs({v})/sinh({v})/atan({v})**2", f"asin({v}/2)/sinh({v}) + {v}"):
        t0 = time.perf_counter()
        assert SAFE_SCORERS["simple_integration"](answer, e) == 0.0
        assert time.perf_counter() - t0 < 2.0
    assert SAFE_SCORERS["simple_integration"](e["answer"].replace("+ C", "+ K*C + 5"), e) == 1.0


def test_agrees_on_answers_holding_an_unevaluated_integral():
    # intermediate_integration references such as "-Integral(x**2*cos(x), x) + C" (entries 3 and 10 of
    # seed 7): the numerical pre-check must not decide them
    original = reasoning_gym.get_score_answer_fn("intermediate_integration")
    ds = reasoning_gym.create_dataset("intermediate_integration", size=40, seed=7)
    for i in (3, 10):
        entry = json.loads(json.dumps(ds[i]))
        assert "Integral" in entry["answer"]
        for answer in variants("intermediate_integration", entry)[:8]:
            assert SAFE_SCORERS["intermediate_integration"](answer, entry) == original(answer, entry), answer
