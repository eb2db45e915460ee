"""Reward workers hold nothing of value: scrubbed environment, unprivileged uid, a channel they cannot forge.

The forging workers below are the real worker (``nemo_prorl.rewards.worker.main``) with one hostile
change each, written to a temporary module: what code running inside a worker could do if a scorer
ever evaluated model text again. The pool must reject what they send.
"""

import json
import os
import textwrap

import pytest

from nemo_prorl.rewards import RewardPool, RewardsConfig
from nemo_prorl.rewards.worker import drop_privileges, import_paths, unreadable_as


def math_row(i, resp=None):
    return {"domain": "math", "response": resp or f"\\boxed{{{i}}}", "answer": str(i)}


def _environ(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)


def test_worker_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("NEMO_TEST_SECRET_TOKEN", "hunter2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "xyz")
    cfg = RewardsConfig(num_workers=1, worker_env={"NEMO_EXTRA": "1"}, worker_env_passthrough=["LANG"])
    with RewardPool(cfg) as pool:
        assert pool.score([math_row(3)])[0].score == 1.0
        env = _environ(pool.pids[0])
        home = pool._home
    assert b"NEMO_TEST_SECRET_TOKEN" not in env and b"AWS_SECRET_ACCESS_KEY" not in env
    assert env[b"HOME"] == env[b"TMPDIR"] == home.encode() and env[b"NEMO_EXTRA"] == b"1"
    allowed = {b"PATH", b"PYTHONPATH", b"HOME", b"TMPDIR", b"MPLCONFIGDIR", b"LANG", b"OMP_NUM_THREADS",
               b"PYTHONUNBUFFERED", b"PYTHONDONTWRITEBYTECODE", b"NEMO_EXTRA"}
    assert set(env) <= allowed, set(env) - allowed
    assert not os.path.exists(home)  # removed with the pool


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_drop_privileges_is_permanent():
    pid = os.fork()
    if pid == 0:  # child: become nobody, then try to get root back and to read root's files
        code = 1
        try:
            drop_privileges(65534, 65534)
            ok = os.getresuid() == (65534, 65534, 65534) and os.getgroups() == []
            try:
                os.setuid(0)
                ok = False
            except PermissionError:
                pass
            try:
                os.listdir("/root") if os.stat("/root").st_mode & 0o007 == 0 else None
                ok = ok and os.stat("/root").st_mode & 0o007 != 0
            except PermissionError:
                pass
            code = 0 if ok else 2
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="the pool drops privileges only when it runs as root")
def test_workers_drop_to_worker_user_where_the_install_allows(caplog):
    blocked = unreadable_as(65534, 65534, import_paths())
    with RewardPool(RewardsConfig(num_workers=1, worker_user="nobody")) as pool:
        assert pool.score([math_row(2)])[0].score == 1.0
        uid = pool.worker_uids[pool.pids[0]]
    if blocked is None:
        assert uid == 65534
    else:  # e.g. an interpreter under /root: the worker says why it kept root
        assert uid == 0 and any("reward workers run as root" in r.message for r in caplog.records)
    with RewardPool(RewardsConfig(num_workers=1, worker_user=None)) as pool:
        pool.score([math_row(2)])
        assert pool.worker_uids[pool.pids[0]] == 0
    with pytest.raises(ValueError, match="rewards.worker_user"):
        RewardPool(RewardsConfig(worker_user="no-such-user-here"))


def _forging_pool(tmp_path, body, **cfg):
    """A pool whose workers run the real worker with ``body`` applied first (module ``forging_worker``)."""
    (tmp_path / "forging_worker.py").write_text(textwrap.dedent(body))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__import__("nemo_prorl").__file__)))
    pool = RewardPool(RewardsConfig(num_workers=1, timeout_s=20,
                                    worker_env={"PYTHONPATH": f"{root}{os.pathsep}{tmp_path}"}, **cfg))
    pool.worker_module = "forging_worker"
    return pool


def test_forged_result_with_a_guessed_nonce_is_a_violation(tmp_path):
    body = """
        import sys
        from nemo_prorl.rewards import worker
        real = worker._send
        def forge(fd, obj):
            if "score" in obj:  # a forged "1.0" first, without the sample's nonce
                real(fd, dict(obj, score=1.0, status="ok", nonce="0" * 16))
            real(fd, obj)
        worker._send = forge
        sys.exit(worker.main())
    """
    with _forging_pool(tmp_path, body) as pool:
        res = pool.score([math_row(1, "\\boxed{7}"), math_row(2, "\\boxed{8}")])
        assert pool.restarts["tainted"] == 2
    assert [r.status for r in res] == ["violation", "violation"] and all(r.score == 0.0 for r in res)


def test_second_result_for_a_sample_voids_the_first(tmp_path):
    body = """
        import json, os, sys
        from nemo_prorl.rewards import worker
        real = worker._send
        def forge(fd, obj):
            if "score" in obj:  # the right nonce (read from the worker), but two results, in one write
                forged = json.dumps(dict(obj, score=1.0, status="ok", info={})) + "\\n"
                os.write(fd, (forged + json.dumps(obj) + "\\n").encode())
            else:
                real(fd, obj)
        worker._send = forge
        sys.exit(worker.main())
    """
    with _forging_pool(tmp_path, body) as pool:
        res = pool.score([math_row(1, "\\boxed{7}")])
    assert res[0].status == "violation" and res[0].score == 0.0
    assert "broke protocol" in res[0].info["reason"]


def test_patched_scorer_restarts_the_worker_before_the_next_row(tmp_path):
    pytest.importorskip("reasoning_gym")
    import reasoning_gym

    body = f"""
        import os, sys
        from nemo_prorl.rewards import worker
        real_score = worker.RewardRunner.score_row
        def score_row(self, row, on_loaded=None):
            out = real_score(self, row, on_loaded)
            if not os.path.exists({str(tmp_path / "patched")!r}):  # once, in the first worker only:
                open({str(tmp_path / "patched")!r}, "w").close()  # what an exploit would leave behind
                import reasoning_gym.algorithmic.word_sorting as ws
                ws.WordSortingDataset.score_answer = lambda *a, **k: 1.0
            return out
        worker.RewardRunner.score_row = score_row
        sys.exit(worker.main())
    """
    e = json.loads(json.dumps(reasoning_gym.create_dataset("word_sorting", size=1, seed=2)[0]))

    def row(answer):
        return {"domain": "reasoning_gym", "task": "word_sorting", "entry": e,
                "response": f"<answer>{answer}</answer>"}

    with _forging_pool(tmp_path, body, load_timeout_s=120) as pool:
        res = pool.score([row(e["answer"]), row("wrong"), row("wrong"), row(e["answer"])])
        assert pool.restarts["tainted"] >= 1
    assert res[0].score == 1.0
    assert res[1].status == "violation" and res[1].score == 0.0  # the patched scorer is caught
    assert res[2].status == "ok" and res[2].score == 0.0  # a fresh worker: the patch is gone
    assert res[3].score == 1.0


@pytest.mark.skipif(os.geteuid() != 0, reason="worker kinds split only when the pool runs as root")
def test_code_rows_get_their_own_root_workers():
    fence = "`" * 3
    code = {"domain": "code", "response": f"{fence}python\nprint(sum(map(int, input().split())))\n{fence}",
            "tests": [{"input": "1 2\n", "output": "3\n"}]}
    cfg = RewardsConfig(num_workers=1, code_sandbox={"allow_unsafe": False})
    with RewardPool(cfg) as pool:
        res = pool.score([math_row(4), code, math_row(5)])
        kinds = {w.kind: pool.worker_uids[w.proc.pid] for w in pool._workers}
    assert [r.score for r in res] == [1.0, 1.0, 1.0], res
    assert kinds["root"] == 0 and set(kinds) == {"root", "user"}
