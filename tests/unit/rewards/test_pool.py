import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from nemo_prorl.rewards import RewardPool, RewardResult, RewardsConfig, error_rate
from nemo_prorl.rewards.pool import is_grader_fault


def math_row(i, resp=None):
    return {"domain": "math", "response": resp or f"\\boxed{{{i}}}", "answer": str(i)}


@pytest.fixture(scope="module")
def pool():
    with RewardPool(RewardsConfig(num_workers=2, timeout_s=3.0)) as p:
        yield p


def test_results_in_input_order(pool):
    rows = [math_row(i, f"\\boxed{{{i if i % 3 else i + 1}}}") for i in range(40)]
    res = pool.score(rows)
    assert [r.score for r in res] == [0.0 if i % 3 == 0 else 1.0 for i in range(40)]


def test_invalid_rows_become_errors_not_exceptions(pool):
    res = pool.score(
        [
            {"domain": "nope", "response": "x"},
            "not a dict",
            math_row(2),
            {"domain": "math", "response": "\\boxed{1}"},
        ]
    )
    assert [r.status for r in res] == ["error", "error", "ok", "error"]
    assert "unknown domain 'nope'" in res[0].info["reason"]
    assert "answer: missing" in res[3].info["reason"]
    detailed = pool.score_detailed([{"domain": "math", "response": "x"}])
    assert detailed[0].problems == [("answer", "missing (required for domain 'math')")]


def test_pathological_math_inputs_end_by_deadline():
    rows = [
        math_row(1, "\\boxed{9^{9^{9^9}}}"),
        math_row(1, "\\boxed{(10^8)!}"),
        math_row(1, "\\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}"),
        math_row(1, "\\boxed{" + "{" * 20000 + "1" + "}" * 20000 + "}"),
        math_row(5),
    ]
    with RewardPool(RewardsConfig(num_workers=2, timeout_s=1.5, load_timeout_s=30)) as p:
        p.score([math_row(1)] * 4)  # warm both workers (imports)
        t0 = time.monotonic()
        res = p.score(rows)
        elapsed = time.monotonic() - t0
    assert elapsed < 10, elapsed
    for r in res[:4]:
        assert r.score == 0.0 and r.status in ("ok", "timeout")
    assert res[4].score == 1.0


def test_hanging_sample_killed_while_others_finish():
    # the ifeval language check on a long text is slow; a 0.3 s deadline turns it into a timeout
    # (95k characters: under the ifeval reward's max_chars cap, about 4 s for 20 language checks)
    slow = {
        "domain": "ifeval",
        "response": "word " * 19_000,
        "instructions": [{"id": "language:response_language", "kwargs": {"language": "en"}}] * 20,
    }
    rows = [math_row(i) for i in range(6)] + [slow] + [math_row(i) for i in range(6, 12)]
    with RewardPool(RewardsConfig(num_workers=2, timeout_s=0.3, load_timeout_s=30)) as p:
        res = p.score(rows)
        assert p.restarts["timeout"] == 1
    assert res[6].status == "timeout" and res[6].score == 0.0
    assert [r.score for r in res[:6] + res[7:]] == [1.0] * 12


def test_worker_sigkilled_mid_batch_loses_no_rows():
    cfg = RewardsConfig(num_workers=2, timeout_s=5.0, max_retries=1)
    with RewardPool(cfg) as p:
        p.score([math_row(0)] * 2)
        victims = []
        rows = [math_row(i, f"\\boxed{{{i}}} " + "pad " * 20000) for i in range(200)]

        def killer():  # SIGKILL a worker while it is busy, once a few rows are done
            deadline = time.monotonic() + 20
            while not victims and time.monotonic() < deadline:
                for w in list(p._workers):
                    if w.task is not None and w.task >= 20:
                        victims.append(w.proc.pid)
                        os.kill(w.proc.pid, signal.SIGKILL)
                        break
                time.sleep(0.001)

        t = threading.Thread(target=killer)
        t.start()
        res = p.score(rows)
        t.join()
        assert len(res) == 200
        assert all(r.status == "ok" and r.score == 1.0 for r in res), [r for r in res if r.score != 1.0]
        assert victims and victims[0] not in p.pids
        assert p.restarts["died"] == 1


def test_sample_that_kills_its_worker_twice_gets_error():
    # Every worker that picks up row 0 is SIGKILLed: after max_retries re-runs the row is an error,
    # and the other row still scores.
    cfg = RewardsConfig(num_workers=1, timeout_s=5.0, max_retries=1)
    with RewardPool(cfg) as p:
        p.score([math_row(0)])
        stop = threading.Event()

        def assassin():
            while not stop.is_set():
                for w in list(p._workers):
                    if w.task == 0:
                        try:
                            os.kill(w.proc.pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                time.sleep(0.005)

        slow = {
            "domain": "ifeval",
            # under ifeval's 100,000-character cap, so it is really scored (~0.4 s: the assassin, polling
            # every 5 ms, always finds it running; an over-cap answer is refused in ~1 ms and raced it)
            "response": "word " * 19000,
            "instructions": [{"id": "language:response_language", "kwargs": {"language": "en"}}] * 5,
        }
        t = threading.Thread(target=assassin)
        t.start()
        res = p.score([slow, math_row(3)])
        stop.set()
        t.join()
    assert res[0].status == "error" and "died" in res[0].info["reason"]
    assert res[1].score == 1.0


def test_workers_do_not_import_torch():
    code = (
        "import sys, json; from nemo_prorl.rewards.worker import RewardRunner; "
        "r = RewardRunner({}); r.score_row({'domain': 'math', 'response': '\\\\boxed{1}', 'answer': '1'}); "
        "r.score_row({'domain': 'mcq', 'response': 'B', 'answer': 'B'}); "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'megatron'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_config_validation():
    with pytest.raises(ValueError, match="num_workers"):
        RewardsConfig(num_workers=0).validate()
    with pytest.raises(ValueError, match="unknown domain 'nope'"):
        RewardsConfig(domains={"nope": {}}).validate()
    with pytest.raises(ValueError, match="unknown option 'bogus'"):
        RewardsConfig(domains={"math": {"bogus": 1}}).validate()
    with pytest.raises(ValueError, match="unknown key"):
        RewardsConfig.from_dict({"workers": 3})
    cfg = RewardsConfig.from_dict({"num_workers": 3, "domains": {"math": {"fast_path": False}}})
    assert cfg.reward_kwargs("math") == {"fast_path": False}
    cfg = RewardsConfig(
        code_sandbox={"backend": "bwrap", "memory_mb": 512}, domains={"code": {"memory_mb": 256}}
    )
    assert cfg.reward_kwargs("code") == {"backend": "bwrap", "memory_mb": 256}
    assert cfg.timeout_for("code") == 45.0 and cfg.timeout_for("math") == cfg.timeout_s
    with pytest.raises(ValueError, match="unknown option 'sandbox'"):
        RewardsConfig(domains={"code": {"sandbox": {}}}).validate()
    with pytest.raises(ValueError, match="domain_timeout_s"):
        RewardsConfig(domain_timeout_s={"math": 0}).validate()


def test_error_rate_counts_only_grader_faults():
    # the policy's own timeouts, violations and missing answers are zero rewards, not grader faults:
    # a policy that writes slow or hostile output must not reach rewards.max_error_rate
    res = [
        RewardResult(1.0),
        RewardResult(0.0, "error"),
        RewardResult(0.0, "timeout"),
        RewardResult(0.0, "no_answer"),
        RewardResult(0.0, "violation"),
    ]
    assert error_rate(res) == pytest.approx(1 / 5)
    assert [is_grader_fault(r) for r in res] == [False, True, False, False, False]
    assert error_rate([]) == 0.0


def test_closed_pool_refuses():
    p = RewardPool(RewardsConfig(num_workers=1))
    p.close()
    with pytest.raises(RuntimeError, match="closed"):
        p.score([math_row(1)])
