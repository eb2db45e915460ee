"""Assert tests the solution cannot reach: attacks from inside the solution's interpreter score 0.

Everything goes through ``CodeReward.score`` with the real bubblewrap sandbox (skipped where the host has
none). The split itself (``nemo_prorl.rewards.sandbox.checks``) is tested without a sandbox.
"""

from __future__ import annotations

import json
import math
from importlib import resources

import pytest

from nemo_prorl.rewards.code import CodeReward, code_row_problems
from nemo_prorl.rewards.sandbox import SandboxUnavailableError
from nemo_prorl.rewards.sandbox.checks import (
    UnsupportedTest,
    decode,
    judge_case,
    plan_case,
    strict_equal,
)

FENCE = "```"


def answer(code: str) -> str:
    return f"<think>ok</think>\n{FENCE}python\n{code}\n{FENCE}\n"


@pytest.fixture(scope="module")
def reward():
    try:
        return CodeReward(case_timeout_s=2.0, total_timeout_s=8.0, memory_mb=512)
    except SandboxUnavailableError as exc:
        pytest.skip(f"no isolated sandbox on this host: {exc}")


ADD_ROW = {"domain": "code", "entry_point": "add", "tests": [
    {"assert": "assert add(1, 2) == 3"},
    {"assert": "assert candidate(-1, 1) == 0"},
    {"assert": "assert add('a', 'b') == 'ab'"},
]}
NO_EP_ROW = {"domain": "code", "tests": [{"assert": "assert add(1, 2) == 3"},
                                        {"assert": "assert add(2, 2) == 4"}]}
HUMANEVAL_ROW = {"domain": "code", "entry_point": "add", "tests": [
    {"assert": "METADATA = {'author': 'x'}\n\ndef check(candidate):\n    assert candidate(1, 2) == 3\n"
               "    assert candidate(0, 0) == 0\n\ncheck(add)\n"},
]}
ALL_ROWS = (ADD_ROW, NO_EP_ROW, HUMANEVAL_ROW)


# ------------------------------------------------------------------ honest solutions


def test_reference_solutions_of_the_fixtures_score_one(reward):
    """Every shipped code fixture row with its reference solution scores 1.0 (stdin/stdout and asserts)."""
    fixtures = resources.files("nemo_prorl.data.fixtures")
    rows = [json.loads(x) for x in fixtures.joinpath("train/code_train.jsonl").read_text().splitlines()]
    sols = {}
    for line in fixtures.joinpath("reference/code_solutions.jsonl").read_text().splitlines():
        rec = json.loads(line)
        sols[rec["id"]] = rec["solution"]
    assert len(rows) == 12 and any("assert" in c for r in rows for c in r["tests"])
    for row in rows:
        assert code_row_problems(row) == []
        res = reward.score(answer(sols[row["id"]]), row)
        assert (res.status, res.score) == ("ok", 1.0), (row["id"], res.info)


def test_honest_add_scores_one_on_every_assert_form(reward):
    for row in ALL_ROWS:
        res = reward.score(answer("def add(a, b):\n    return a + b"), row)
        assert (res.status, res.score) == ("ok", 1.0), res.info


# ------------------------------------------------------------------ attacks (issue 16, item 2)


ATTACKS = {
    "exec_patched": "import builtins\nbuiltins.exec = lambda *a, **k: None\n"
                    "builtins.eval = lambda *a, **k: None\ndef add(a, b):\n    return None\n",
    "callable_patched": "import builtins\nbuiltins.callable = lambda f: False\n"
                        "def add(a, b):\n    return None\n",
    "always_equal": "class AlwaysEqual:\n    def __eq__(self, other):\n        return True\n"
                    "    def __ne__(self, other):\n        return False\n    __hash__ = object.__hash__\n"
                    "def add(a, b):\n    return AlwaysEqual()\n",
    "always_equal_int_subclass": "class E(int):\n    def __eq__(self, other):\n        return True\n"
                                 "    __hash__ = int.__hash__\ndef add(a, b):\n    return E(0)\n",
    "always_equal_str_subclass": "class E(str):\n    def __eq__(self, other):\n        return True\n"
                                 "    __hash__ = str.__hash__\ndef add(a, b):\n    return E('')\n",
    "type_patched_for_encoder": "import builtins\nclass A:\n    __eq__ = lambda s, o: True\n"
                                "builtins.type = lambda x: int\ndef add(a, b):\n    return A()\n",
    # read the hidden test from the caller's frames and every object in the interpreter
    "frame_reader": (
        "import sys, gc, ast\n"
        "def _steal():\n"
        "    texts = []\n"
        "    f = sys._getframe(1)\n"
        "    while f is not None:\n"
        "        texts += [v for v in f.f_locals.values() if isinstance(v, str)]\n"
        "        texts += [str(v) for v in f.f_locals.values() if isinstance(v, (dict, list))]\n"
        "        f = f.f_back\n"
        "    texts += [o for o in gc.get_objects() if isinstance(o, str)]\n"
        "    for t in texts:\n"
        "        if '==' in t:\n"
        "            try:\n"
        "                return ast.literal_eval(t.split('==', 1)[1].split(',')[0].strip())\n"
        "            except Exception:\n"
        "                pass\n"
        "    return None\n"
        "def add(a, b):\n    return _steal()\n"
    ),
    "exit_before_return": "import os\ndef add(a, b):\n    os._exit(0)\n",
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacks_from_inside_the_solution_score_zero(reward, name):
    """exec/callable patches, AlwaysEqual (with and without entry_point, HumanEval check), frame reading."""
    for row in ALL_ROWS:
        res = reward.score(answer(ATTACKS[name]), row)
        assert res.score == 0.0, (name, row["tests"][0], res.info)
        assert res.status in ("ok", "violation"), res.info
    # the grader goes on: the honest solution still scores 1 afterwards
    assert reward.score(answer("def add(a, b):\n    return a + b"), ADD_ROW).score == 1.0


def test_expected_value_is_nowhere_the_solution_can_read(reward):
    """A unique expected string: the solution scans its own memory, the harness's, its frames and /tmp."""
    row = {"domain": "code", "entry_point": "f", "tests": [{"assert": "assert f() == 'SENTI' 'NEL-8c1e'"}]}
    spy = (
        "import gc, os, re, sys\n"
        "NEEDLE = b'SENTI' + b'NEL-'\n"
        "def _scan():\n"
        "    found = set()\n"
        "    for o in gc.get_objects():\n"
        "        if isinstance(o, str) and NEEDLE.decode() in o:\n"
        "            found.add(o)\n"
        "    for pid in ('self', '1'):\n"
        "        try:\n"
        "            maps = open('/proc/%s/maps' % pid).read().splitlines()\n"
        "            mem = open('/proc/%s/mem' % pid, 'rb')\n"
        "        except OSError:\n"
        "            continue\n"
        "        for line in maps:\n"
        "            lo, hi = (int(x, 16) for x in line.split()[0].split('-'))\n"
        "            if 'r' not in line.split()[1] or hi - lo > (64 << 20):\n"
        "                continue\n"
        "            try:\n"
        "                mem.seek(lo)\n"
        "                data = mem.read(hi - lo)\n"
        "            except (OSError, ValueError, OverflowError):\n"
        "                continue\n"
        "            for m in re.finditer(re.escape(NEEDLE) + rb'[0-9a-f]{4}', data):\n"
        "                found.add(m.group().decode())\n"
        "    for root, _, files in os.walk('/tmp'):\n"
        "        for n in files:\n"
        "            try:\n"
        "                if NEEDLE in open(os.path.join(root, n), 'rb').read():\n"
        "                    found.add('file')\n"
        "            except OSError:\n"
        "                pass\n"
        "    found.discard(NEEDLE.decode())\n"
        "    return sorted(found)[0] if found else 'nothing'\n"
        "def f():\n    return _scan()\n"
    )
    res = reward.score(answer(spy), row)
    assert res.score == 0.0, res.info
    # control: the same spy finds the string when it is an input (so the scan above was effective)
    leak = {"domain": "code", "entry_point": "f", "tests": [{"assert": "assert f() == 'SENTINEL-8c1e'"}]}
    leak["tests"][0]["assert"] = "assert f(" + repr("SENTINEL-8c1e") + ") == 'SENTINEL-8c1e'"
    assert reward.score(answer(spy.replace("def f():", "def f(_):")), leak).score == 1.0
    assert reward.score(answer("def f():\n    return 'SENTINEL-8c1e'"), row).score == 1.0


def test_mbpp_style_rows_split_and_pass(reward):
    """Assert forms as MBPP's test lists write them (``import math`` lives in a separate field)."""
    rows = [
        ({"domain": "code", "tests": [
            {"assert": "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))"},
            {"assert": "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)"}]},
         "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b)))\n"),
        ({"domain": "code", "tests": [
            {"assert": "assert math.isclose(volume_cone(5,12), 314.15926535897927, rel_tol=0.001)"},
            {"assert": "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65]"},
            {"assert": "assert is_not_prime(2) == False"}]},
         "import math, heapq\ndef volume_cone(r, h):\n    return math.pi * r * r * h / 3\n"
         "def heap_queue_largest(xs, n):\n    return heapq.nlargest(n, xs)\n"
         "def is_not_prime(n):\n    return any(n % d == 0 for d in range(2, int(n ** 0.5) + 1))\n"),
    ]
    for row, src in rows:
        assert code_row_problems(row) == []
        res = reward.score(answer(src), row)
        assert (res.status, res.score) == ("ok", 1.0), res.info
        # math.isclose stays with the judge: a patched math.isclose in the solution changes nothing
        hack = "import math\nmath.isclose = lambda *a, **k: True\n" + src.replace("return", "return None #")
        assert reward.score(answer(hack), row).score == 0.0


def test_type_confusion_is_a_wrong_answer(reward):
    """True != 1, 1 != 1.0, [0, 1] != (0, 1): type-strict equality, unlike Python's ``==``."""
    row = {"domain": "code", "entry_point": "f", "tests": [{"assert": "assert f(1) == 1"}]}
    assert reward.score(answer("def f(x):\n    return True"), row).score == 0.0
    assert reward.score(answer("def f(x):\n    return 1.0"), row).score == 0.0
    assert reward.score(answer("def f(x):\n    return 1"), row).score == 1.0
    row = {"domain": "code", "entry_point": "f",
           "tests": [{"assert": "assert f(1)"}, {"assert": "assert not f(0)"}]}
    assert reward.score(answer("def f(x):\n    return x"), row).score == 0.0  # 1 and 0 are not booleans
    assert reward.score(answer("def f(x):\n    return x == 1"), row).score == 1.0
    row = {"domain": "code", "entry_point": "f", "tests": [{"assert": "assert f() == (0, 1)"}]}
    assert reward.score(answer("def f():\n    return [0, 1]"), row).score == 0.0


def test_float_tolerance_forms(reward):
    row = {"domain": "code", "entry_point": "area", "tests": [
        {"assert": "assert abs(area(1) - 3.14159) < 1e-3"},
        {"assert": "import math\nassert math.isclose(area(2), 12.566, rel_tol=0.001)"},
        {"assert": "assert round(area(0), 2) == 0.0"},
    ]}
    assert reward.score(answer("import math\ndef area(r):\n    return math.pi * r * r"), row).score == 1.0
    # an object with a __sub__/__abs__ that satisfies any tolerance: the arithmetic is the judge's
    hack = ("class Z(float):\n    def __sub__(self, o):\n        return 0.0\n    __rsub__ = __sub__\n"
            "    def __abs__(self):\n        return 0.0\ndef area(r):\n    return Z(7.0)\n")
    assert reward.score(answer(hack), row).score == 0.0


def test_all_plain_types_round_trip_through_the_sandbox(reward):
    value = "{'a': (1, -2.5, None, True, b'\\x00x', frozenset({3}), 'é😀\\udc80'), 7: [[], {}, set()], " \
            "'big': -(1 << 200), 'inf': float('inf')}"
    row = {"domain": "code", "entry_point": "f", "tests": [{"assert": f"assert f() == {value}"}]}
    res = reward.score(answer(f"def f():\n    return {value}"), row)
    assert (res.status, res.score) == ("ok", 1.0), res.info


def test_non_literal_expected_values_come_from_a_sandbox_without_the_solution(reward):
    row = {"domain": "code", "entry_point": "f", "tests": [
        {"assert": "assert f(3) == [0] * 3"},
        {"assert": "assert set(f(2)) == set((0,))"},
        {"assert": "import math\nassert f(1) == [math.factorial(0) - 1]"},
    ]}
    before = len(reward._remote_cache)
    assert reward.score(answer("def f(n):\n    return [0] * n"), row).score == 1.0
    assert len(reward._remote_cache) == before + 2  # [0] * 3 and math.factorial (set((0,)) is judged here)
    res = reward.score(answer("def f(n):\n    return [1] * n"), row)
    assert res.score == 0.0 and len(reward._remote_cache) == before + 2  # cached: no second launch
    bad = {"domain": "code", "entry_point": "f", "tests": [{"assert": "assert f(3) == [0] * (1 // 0)"}]}
    res = reward.score(answer("def f(n):\n    return [0] * n"), bad)
    assert res.status == "error" and res.info["reason"] == "bad_test", res.info


def test_huge_return_value_fails_only_its_case(reward):
    """Values past the per-case cap (1 MiB) fail that case; the harness's channel keeps room for all."""
    row = {"domain": "code", "entry_point": "f", "tests": [
        {"assert": "assert f(0) == 'a'"}, {"assert": "assert f(1) == 'b'"}, {"assert": "assert f(2) == 'c'"}]}
    src = "def f(i):\n    return 'x' * (1 << 20) if i == 1 else 'abc'[i]\n"
    res = reward.score(answer(src), row)
    assert (res.status, res.score) == ("ok", pytest.approx(2 / 3)), res.info
    assert res.info["outcomes"] == {"pass": 2, "output_limit": 1}
    big = "def f(i):\n    return 'x' * (200 << 10) + 'abc'[i]\n"
    row_big = {"domain": "code", "entry_point": "f", "tests": [
        {"assert": f"assert f({i}) == 'x' * (200 << 10) + {'abc'[i]!r}"} for i in range(3)]}
    res = reward.score(answer(big), row_big)
    assert (res.status, res.score) == ("ok", 1.0), res.info


def test_solution_exception_fails_only_its_case(reward):
    row = {"domain": "code", "entry_point": "f", "tests": [{"assert": "assert f(0) == 0"},
                                                          {"assert": "assert f(1) == 1"}]}
    res = reward.score(answer("def f(x):\n    if x:\n        raise ValueError('no')\n    return 0"), row)
    assert res.score == 0.5 and "raised ValueError" in res.info["first_failure"]["detail"]


def test_unsplittable_asserts_are_refused_with_the_case_named(reward, tmp_path):
    loop = {"domain": "code", "id": "loop-1", "prompt": "p", "entry_point": "f", "tests": [
        {"assert": "assert f(0) == 0"},
        {"assert": "for i in range(3):\n    assert f(i) == i"},
    ]}
    res = reward.score(answer("def f(x):\n    return x"), loop)
    assert res.status == "error" and res.info["reason"] == "unsupported_test"
    assert res.info["error"].startswith("case 1:") and "For" in res.info["error"]
    problems = code_row_problems(loop)
    assert [p.field for p in problems] == ["tests"] and "case 1" in problems[0].reason
    # preflight names file, row and field
    from nemo_prorl.data.preflight import preflight

    path = tmp_path / "code.jsonl"
    ok_row = dict(loop, id="ok-1", tests=loop["tests"][:1])
    path.write_text(json.dumps(ok_row) + "\n" + json.dumps(loop) + "\n")
    report = preflight([str(path)], policy="skip")
    assert [r["id"] for r in report.rows] == ["ok-1"]
    found = [i for i in report.issues if i.row == 2 and i.field == "tests" and "case 1" in i.reason]
    assert found and str(found[0]).startswith(f"{path}:2:tests: case 1"), report.issues


# ------------------------------------------------------------------ the split, without a sandbox


@pytest.mark.parametrize("src, calls, remote", [
    ("assert f(1, [2]) == 3", ["f(1, [2])"], []),
    ("assert 3 == f(1)", ["f(1)"], []),
    ("assert f(x=1) is None", ["f(x=1)"], []),
    ("assert not f('a')", ["f('a')"], []),
    ("assert f(1)[0] == 2 and g(2) != 3", ["f(1)[0]", "g(2)"], []),
    ("assert Solution().solve([1]) == 1", ["Solution().solve([1])"], []),
    ("import math\nassert math.isclose(f(2), 12.56, rel_tol=1e-3)", ["f(2)"], []),
    ("assert abs(f(1) - 2.0 / 3.0) < 1e-6", ["f(1)"], []),
    ("assert set(f((3, 4), (4, 5))) == set((4,))", ["f((3, 4), (4, 5))"], []),
    ("assert f(3) == [0] * 3", ["f(3)"], ["[0] * 3"]),
    ("assert f(g(1)) in [1, 2]", ["f(g(1))"], []),
])
def test_plan_splits_calls_from_expected_values(src, calls, remote):
    plan = plan_case(src)
    assert list(plan.calls) == calls and list(plan.remote) == remote
    assert all("==" not in c and "isclose" not in c for c in plan.calls)  # no judgement reaches the sandbox


def test_plan_stdlib_module_without_import_stays_with_the_judge():
    """MBPP keeps ``import math`` in a separate field: ``math.isclose`` must not run in the solution."""
    plan = plan_case("assert math.isclose(f(1), 2.0, rel_tol=0.01)")
    assert plan.calls == ("f(1)",) and "import math" in plan.prelude
    assert judge_case(plan, _values(2.001), [])[0] and not judge_case(plan, _values(True), [])[0]
    # an entry point named like a builtin is the solution's function, not the judge's
    assert plan_case("assert sum([1, 2]) == 3", entry_point="sum").calls == ("sum([1, 2])",)


def test_plan_humaneval_check_binds_candidate():
    src = 'def check(candidate):\n    """doc"""\n    assert candidate(1) == 2\n    assert candidate(2)\n'
    plan = plan_case(src, entry_point="inc")
    assert plan.calls == ("candidate(1)", "candidate(2)") and plan.aliases == ("candidate",)
    with pytest.raises(UnsupportedTest, match="entry_point"):
        plan_case("def check(candidate):\n    assert candidate(1) == 2\n")


@pytest.mark.parametrize("src, why", [
    ("for i in range(3):\n    assert f(i) == i", "For"),
    ("def check(c):\n    x = c(1)\n    assert x == 1", "Assign"),
    ("assert f", "without being called"),
    ("assert f(1) is g(1)", "'is'"),
    ("assert sorted(f(1), key=len) == []", "keyword"),
    ("assert [x for x in f(1)] == []", "ListComp"),
    ("assert 1 == 1", "no assert calls the solution"),
    ("x = f(1)\nassert x == 1", "non-literal"),
    ("assert f(", "not valid Python"),
])
def test_plan_refuses_what_it_cannot_split(src, why):
    with pytest.raises(UnsupportedTest, match=why):
        plan_case(src, entry_point="f")


def _values(*pairs):
    return [("v", v) for v in pairs]


def test_judge_hand_computed_cases():
    plan = plan_case("assert abs(f(1) - 0.5) < 1e-6")
    assert judge_case(plan, _values(0.5000001), []) == (True, "")
    assert judge_case(plan, _values(0.6), [])[0] is False
    assert judge_case(plan, _values(True), [])[0] is False  # bool is not a number here
    plan = plan_case("assert f(1) in (1, 2)")
    assert judge_case(plan, _values(2), [])[0] and not judge_case(plan, _values(2.0), [])[0]
    plan = plan_case("assert f(1) == 'ab' or f(2) == 'cd'")
    assert judge_case(plan, _values("x", "cd"), [])[0]
    assert not judge_case(plan, [("x", "ValueError"), ("v", "cd")], [])[0]  # Python: the first call raises
    plan = plan_case("assert sorted(f(1)) == [1, 2, 3]")
    assert judge_case(plan, _values([3, 1, 2]), [])[0]
    assert not judge_case(plan, _values([3, "a"]), [])[0]  # unorderable: fails, never raises
    plan = plan_case("assert f(1) == [0] * 3")
    assert judge_case(plan, _values([0, 0, 0]), [[0, 0, 0]])[0]
    assert judge_case(plan, _values([0, 0, 0]), [])[1] == "result record has the wrong number of values"


def test_strict_equality_hand_cases():
    assert strict_equal({"a": (1, 2.0)}, {"a": (1, 2.0)})
    assert not strict_equal(True, 1) and not strict_equal(1, 1.0) and not strict_equal([1], (1,))
    assert not strict_equal({1: "x"}, {True: "x"}) and strict_equal({1, 2}, frozenset({2, 1}))
    assert strict_equal(-0.0, 0.0) and not strict_equal(math.nan, float("nan"))


def test_decode_rejects_malformed_records():
    assert decode(b'[["v",["t",["i","0x1"],["f","0x1.8p+1"],["s","w6k="]]],["x",["s","Tw=="]]]') == [
        ("v", (1, 3.0, "é")), ("x", "O")]
    for bad in (b"", b"{}", b'[["v",["q"]]]', b'[["v",["i",1]]]', b'[["v",["S",["l"]]]]',
                b'[["v",["s","w6k"]]]',
                b'[["v",["f","0x1p99999"]]]', b'[["x",["s","\xff"]]]',
                b"[" * 100000, b'[["v",' + b'["l",' * 200 + b'["n"]' + b"]" * 200 + b"]]"):
        with pytest.raises(ValueError):
            decode(bad)
