"""Extract math-verify's parametrised (gold, prediction, expected) test cases as data.

Reads the test modules of a Math-Verify checkout (``git show <commit>:tests/<file>``), walks their
syntax trees (nothing is imported or executed) and, for every ``pytest.mark.parametrize`` whose
argument names include ``gold``, ``pred`` and ``expected``, writes one JSON line per literal case:
``{"file", "test", "gold", "pred", "expected", "extra"}`` (``extra``: the case's other parameters,
e.g. a ``precision``). Only cases whose gold and prediction are both in answer form are kept
(see :func:`answer_form`).

Usage: python tests/data/extract_math_verify_cases.py <git dir of Math-Verify> <commit> > out.jsonl
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys

FILES = ("test_all.py", "test_boxed.py", "test_numina_cases.py", "test_open_thoughts.py", "test_strict.py",
         "test_yujianll.py")


def _cases(tree: ast.AST):
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef):
            continue
        for deco in fn.decorator_list:
            if not (isinstance(deco, ast.Call) and ast.unparse(deco.func).endswith("parametrize")):
                continue
            names = [n.strip() for n in ast.literal_eval(deco.args[0]).split(",")] \
                if isinstance(deco.args[0], ast.Constant) else list(ast.literal_eval(deco.args[0]))
            names = ["expected" if n == "result" else n for n in names]  # test_yujianll says "result"
            if not {"gold", "pred", "expected"} <= set(names):
                continue
            for elt in deco.args[1].elts:
                try:
                    values = ast.literal_eval(elt)
                except ValueError:
                    print(f"skipped a non-literal case in {fn.name}", file=sys.stderr)
                    continue  # a case built by code (pytest.param(...)): not plain data
                row = dict(zip(names, values))
                extra = {k: v for k, v in row.items() if k not in ("gold", "pred", "expected")}
                yield fn.name, row["gold"], row["pred"], row["expected"], extra


_BOX = re.compile(r"\\boxed|\\fbox")


def answer_form(pred: str) -> bool:
    r"""True when the prediction is an answer, not prose: it holds a ``\boxed{}``, is one ``$...$`` /
    ``\(...\)`` / ``\[...\]`` span, or is a bare expression without words (no run of 4+ letters
    outside LaTeX commands, no sentence punctuation)."""
    s = pred.strip()
    if _BOX.search(s):
        return True
    for a, b in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(a) and s.endswith(b) and len(s) > len(a) + len(b):
            inner = s[len(a):-len(b)]
            if "$" not in inner and "\\(" not in inner and "\\[" not in inner:
                return True
    if "$" in s or "\n" in s:
        return False
    bare = re.sub(r"\\[A-Za-z]+", "", s)
    return not re.search(r"[A-Za-z]{4,}", bare) and not re.search(r"[.!?:]\s+\S", bare)


def main() -> int:
    git_dir, commit = sys.argv[1], sys.argv[2]
    for name in FILES:
        src = subprocess.run(["git", "--git-dir", git_dir, "show", f"{commit}:tests/{name}"],
                             capture_output=True, text=True, check=True).stdout
        for test, gold, pred, expected, extra in _cases(ast.parse(src)):
            if not isinstance(gold, str) or not isinstance(pred, str):
                continue
            if not (answer_form(gold) and answer_form(pred)):
                continue  # prose on either side: a test of math-verify's extraction, not of grading
            row = {"file": f"tests/{name}", "test": test, "gold": gold, "pred": pred,
                   "expected": int(bool(expected)), "extra": extra}
            print(json.dumps(row, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
