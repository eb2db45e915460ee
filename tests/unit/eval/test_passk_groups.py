"""Per-difficulty-group pass@k (``pass@K/group:G``) against hand-computed values, through every reporter.

pass@k of one problem is 1 - C(n - c, k) / C(n, k); a group's value is the mean over its own problems.
"""

from __future__ import annotations

import json

import pytest

from nemo_prorl.eval.cli import passk_main
from nemo_prorl.eval.passk import group_counts, grouped_pass_at_k, groups_in, pass_at_k_by_group
from nemo_prorl.eval.sampling import summarize
from nemo_prorl.trainer.plotting import passk_series, plot_passk

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rec(correct, group=None, domain="reasoning_gym"):
    rec = {"id": "x", "domain": domain, "rewards": [float(c) for c in correct], "correct": correct,
           "lengths": [1] * len(correct), "statuses": ["ok"] * len(correct),
           "finish_reasons": ["stop"] * len(correct), "responses": [""] * len(correct)}
    if group is not None:
        rec["group"] = group
    return rec


# hard: (n=4, c=1) and (4, 0); easy: (4, 2); one record without a group
RECORDS = [
    _rec([True, False, False, False], "hard"),
    _rec([False] * 4, "hard"),
    _rec([True, True, False, False], "easy"),
    _rec([True, True, True, True]),
]


def test_group_counts_splits_by_group_and_skips_ungrouped():
    assert group_counts(RECORDS) == {"hard": [(4, 1), (4, 0)], "easy": [(4, 2)]}


def test_pass_at_k_by_group_hand_computed():
    out = pass_at_k_by_group(RECORDS, ks=(1, 2, 4))
    # hard: pass@1 = (1/4 + 0) / 2; pass@2 = (1 - C(3,2)/C(4,2) + 0) / 2 = (1 - 3/6) / 2; pass@4 = (1 + 0) / 2
    assert out["pass@1/group:hard"] == pytest.approx(0.125)
    assert out["pass@2/group:hard"] == pytest.approx(0.25)
    assert out["pass@4/group:hard"] == pytest.approx(0.5)
    # easy: pass@1 = 2/4; pass@2 = 1 - C(2,2)/C(4,2) = 5/6; pass@4 = 1 (n - c < k)
    assert out["pass@1/group:easy"] == pytest.approx(0.5)
    assert out["pass@2/group:easy"] == pytest.approx(5 / 6)
    assert out["pass@4/group:easy"] == 1.0
    assert out["problems/group:hard"] == 2.0 and out["problems/group:easy"] == 1.0
    assert len(out) == 8  # 2 groups x (3 ks + count): the ungrouped record makes no key


def test_group_skips_problems_with_fewer_than_k_samples():
    # (2, 1) has no pass@4; the group's pass@4 is the (4, 0) problem's alone, its pass@1 the mean of both
    out = grouped_pass_at_k({"g": [(2, 1), (4, 0)]}, ks=(1, 4))
    assert out["pass@1/group:g"] == pytest.approx(0.25)
    assert out["pass@4/group:g"] == 0.0
    assert grouped_pass_at_k({"g": [(2, 1)]}, ks=(4,)) == {"problems/group:g": 1.0}


def test_bad_group_is_an_error_naming_the_record():
    with pytest.raises(ValueError, match="record 1 .*group must be a non-empty string"):
        group_counts([_rec([True], "a"), _rec([True], "")])
    with pytest.raises(ValueError, match="no 'correct'"):
        group_counts([{"id": "y", "group": "a"}])


def test_summarize_adds_group_keys_next_to_domains():
    out = summarize(RECORDS, ks=(1, 2), prefix="val/")
    assert out["val/pass@1/group:hard"] == pytest.approx(0.125)
    assert out["val/pass@2/group:easy"] == pytest.approx(5 / 6)
    # the overall number still averages all four problems: (1/4 + 0 + 1/2 + 1) / 4
    assert out["val/pass@1"] == pytest.approx(1.75 / 4)
    assert out["val/pass@1/reasoning_gym"] == pytest.approx(1.75 / 4)
    assert groups_in({k[len("val/"):]: v for k, v in out.items()}) == ["easy", "hard"]


def test_summarize_without_groups_has_no_group_keys():
    out = summarize([_rec([True, False])], ks=(1,))
    assert not any("group:" in k for k in out)


def test_passk_cli_reports_groups(tmp_path, capsys):
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "correct": [True, False, False, False], "group": "hard"},
        {"id": "b", "n": 4, "c": 0, "group": "hard"},
        {"id": "c", "n": 4, "c": 2, "group": "easy"},
        {"id": "d", "n": 4, "c": 4},
    ]) + "\n")
    assert passk_main(["--input", str(path), "--k", "1,2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pass@2/group:hard"] == pytest.approx(0.25)
    assert out["pass@2/group:easy"] == pytest.approx(5 / 6)
    assert out["pass@1"] == pytest.approx(1.75 / 4)
    path.write_text(json.dumps({"id": "a", "n": 4, "c": 1, "group": 3}) + "\n")
    assert passk_main(["--input", str(path)]) == 2
    assert ":1:group: expected a non-empty string" in capsys.readouterr().err


def test_passk_series_and_per_group_plot(tmp_path):
    curves = {
        "base": {"pass@1": 0.3, "pass@2": 0.4, "pass@1/group:hard": 0.0, "pass@2/group:hard": 0.01,
                 "pass@1/group:easy": 0.5, "pass@2/group:easy": 0.7, "pass@1/reasoning_gym": 0.3},
        "final": {"pass@1": 0.6, "pass@2": 0.7, "pass@1/group:hard": 0.2, "pass@2/group:hard": 0.3,
                  "pass@1/group:easy": 0.9, "pass@2/group:easy": 0.95},
    }
    assert passk_series(curves["base"]) == ([1, 2], [0.3, 0.4])
    assert passk_series(curves["final"], "hard") == ([1, 2], [0.2, 0.3])
    assert passk_series(curves["final"], "nope") == ([], [])
    path = tmp_path / "passk.png"
    # one line per (group, checkpoint); the base dashed, the final solid, in the group's colour
    assert plot_passk(curves, path) == ["easy base", "easy final", "hard base", "hard final"]
    assert path.read_bytes()[:8] == PNG_MAGIC
    # without group keys: one line per checkpoint
    assert plot_passk({k: {m: v for m, v in c.items() if "group" not in m} for k, c in curves.items()},
                      tmp_path / "plain.png") == ["base", "final"]


def test_eval_markdown_has_one_row_per_group():
    from nemo_prorl.eval.runner import markdown

    metrics = summarize(RECORDS, ks=(1, 2))
    table = markdown({"base": metrics}, [1, 2])
    rows = {line.split(" | ")[1]: line for line in table.splitlines()[2:]}
    assert set(rows) == {"all", "domain reasoning_gym", "group easy", "group hard"}
    # the group row: no reward column, then pass@1 and pass@2 of the hard group (1/8 and 1/4)
    assert rows["group hard"].endswith("| - | 0.1250 | 0.2500 |")
