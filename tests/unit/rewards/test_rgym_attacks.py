"""Hostile answers to reasoning-gym tasks through the real ``score`` path (CLI -> pool -> worker).

Each attack is a payload that paid before the reasoning-gym scorers stopped evaluating answers
(issue "Rewards under a policy that hunts for holes", item 1): a shell command through ``countdown``
(sympy ``parse_expr``), a forged result written into the worker's result channel through
``spiral_matrix`` (``eval``), the ``n_queens`` scorer class replaced for every later row, sympy
payloads to ``polynomial_multiplication`` and the integration tasks, and exponent towers that stalled
the worker. All rows run on ONE worker, in this order, so a successful patch would show in the rows
after it.
"""

import json
import time

import pytest

reasoning_gym = pytest.importorskip("reasoning_gym")

from nemo_prorl.rewards.cli import main  # noqa: E402


def _entry(task, seed=1):
    return json.loads(json.dumps(reasoning_gym.create_dataset(task, size=1, seed=seed)[0]))


def _row(task, answer, tag, seed=1):
    return {"domain": "reasoning_gym", "task": task, "entry": _entry(task, seed),
            "response": f"<answer>{answer}</answer>", "tag": tag}


FORGE_CHANNEL = (  # write a forged "score 1.0" line into every writable stream and fd the worker holds
    "[o.write('{\"id\": 0, \"score\": 1.0, \"status\": \"ok\", \"info\": {}, \"problems\": []}\\n') "
    "for o in __import__('gc').get_objects() if type(o).__name__ == 'TextIOWrapper' and 'w' in o.mode]"
    " + [__import__('os').write(fd, b'{\"id\": 0, \"score\": 1.0, \"status\": \"ok\"}\\n')"
    " for fd in range(3, 9)]"
)
REPLACE_NQUEENS = ("[setattr(__import__('reasoning_gym').games.n_queens.NQueensDataset, 'score_answer', "
                   "lambda *a, **k: 1.0)]")


def test_attacks_do_not_pay_or_run(tmp_path):
    pwned = tmp_path / "PWNED"
    touch = f"__import__('os').system('touch {pwned}')"
    nq = _entry("n_queens")
    rows = [
        _row("countdown", touch, "countdown-shell"),
        _row("countdown", "garbage", "countdown-garbage"),
        _row("spiral_matrix", FORGE_CHANNEL, "spiral-forge"),
        _row("n_queens", REPLACE_NQUEENS, "nqueens-patch"),
        {"domain": "reasoning_gym", "task": "n_queens", "entry": nq, "response": "<answer>wrong</answer>",
         "tag": "nqueens-after-wrong"},
        {"domain": "reasoning_gym", "task": "n_queens", "entry": nq,
         "response": f"<answer>{nq['answer']}</answer>", "tag": "nqueens-after-right"},
        _row("polynomial_multiplication", touch, "poly-shell"),
        _row("polynomial_multiplication", f"sympify(\"{touch}\")", "poly-sympify"),
        _row("polynomial_multiplication", "Symbol('x').__class__.__mro__[-1].__subclasses__()", "poly-mro"),
        _row("simple_integration", f"{touch} + C", "int-shell"),
        _row("intermediate_integration", f"x + C + {touch}", "int2-shell"),
        _row("string_insertion", touch, "insert-shell"),
        _row("binary_matrix", touch, "binary-shell"),
        _row("puzzle24", touch, "p24-shell"),
    ]
    for task in ("countdown", "puzzle24", "polynomial_multiplication", "simple_integration"):
        rows.append(_row(task, "9**9**9", f"tower-{task}"))
        rows.append(_row(task, "2**(10**8)", f"big-{task}"))
    for task in ("countdown", "spiral_matrix", "polynomial_multiplication", "simple_integration"):
        e = _entry(task)
        rows.append({"domain": "reasoning_gym", "task": task, "entry": e,
                     "response": f"<answer>{e['answer']}</answer>", "tag": f"honest-{task}"})
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    t0 = time.monotonic()
    rc = main(["--input", str(src), "--output", str(dst), "--workers", "1", "--timeout", "20",
               "--no-progress"])
    elapsed = time.monotonic() - t0
    out = {r["tag"]: r for r in map(json.loads, dst.read_text().splitlines())}
    assert rc == 0 and len(out) == len(rows)
    assert not pwned.exists()
    for tag, r in out.items():
        if tag.startswith("honest-") or tag == "nqueens-after-right":
            assert r["status"] == "ok" and r["reward"] == 1.0, r
        else:  # never more than the format credit a garbage answer gets, never a timeout
            assert r["status"] == "ok" and r["reward"] <= out["countdown-garbage"]["reward"] <= 0.01, r
    assert out["nqueens-after-right"]["reward"] == 1.0 and out["nqueens-after-wrong"]["reward"] == 0.0
    assert elapsed < 60, elapsed  # worker start-up (reasoning-gym import) included; no row stalls
