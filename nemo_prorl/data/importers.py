r"""Convert public releases of the ProRL blend into training rows (``nemo-prorl data import``).

Contract: a *converter* is a pure function ``(record: dict, key: str) -> dict`` that turns one source
record into one row of ``nemo_prorl.schema`` (``id``, ``domain``, ``prompt``, ground truth) or raises
:class:`SkipRow` naming the source field and the reason. :func:`import_rows` drives a converter over a
source, counts every record (``read = converted + skipped``), and sends the converted rows through the
same :func:`~nemo_prorl.data.preflight.preflight` that training runs, so a row the trainer would refuse is
reported here, as ``source:row:field: reason``, and left out of the output. Nothing is dropped silently.

Sources (:func:`iter_source`), all read without network access:

* data files (``.parquet``, ``.jsonl``, ``.json``, ``.csv``) or a folder of them (a
  ``huggingface-cli download --local-dir`` snapshot), rows numbered from 1 per file;
* a folder written by ``datasets``' ``save_to_disk`` (``state.json`` / ``dataset_dict.json``);
* a ``datasets`` name, read from the local cache only (``HF_DATASETS_OFFLINE=1`` is forced).

Formats (``--format``), one converter each:

===========  ==========================================================================================
``verl``     verl / PRIME parquet: ``prompt`` (chat messages), ``ability``, ``reward_model``
             ``{style, ground_truth}``, ``extra_info``. DeepScaleR (rllm) and Eurus-2-RL-Data ship so.
             ``ability`` math -> ``math`` row (``answer`` = ground truth); code -> ``code`` row, the
             ground truth being a JSON string ``{"inputs": [...], "outputs": [...]}`` (stdin/stdout) or a
             list of assert statements.
``math``     columns ``problem`` and ``answer`` (DeepScaleR-Preview JSON, AIME).
``scp``      SCP-116K: open-ended STEM problems (physics, chemistry, biology) with a textbook solution and
             model solutions; kept when the R1 solution was judged to match the reference, with the last
             ``\boxed{}`` of that solution as the answer. A ``math`` row (see docs/data.md).
``ifeval``   columns ``prompt``, ``instruction_id_list``, ``kwargs`` (IFEval, Llama-Nemotron IF data).
``gpqa``     GPQA CSV columns: the four answers are shuffled with a seed per row id into ``options``.
===========  ==========================================================================================
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from nemo_prorl.data.preflight import DATA_SUFFIXES, expand_paths, iter_records


class SkipRow(Exception):
    """A source record that cannot become a row: ``field`` of the source record and ``reason``."""

    def __init__(self, field: str, reason: str, category: str | None = None) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.category = category or reason


class SourceError(Exception):
    """A source that cannot be opened at all (missing path, dataset not in the local cache)."""


# ------------------------------------------------------------------------------------------ helpers
#: instructions the releases append to the problem; our domain templates add their own, so they go.
_SUFFIXES: tuple[re.Pattern[str], ...] = (
    re.compile(r"\s*Let's think step by step and output the final answer within \\boxed\{\}\.?\s*$"),
    re.compile(r"\s*Present the answer in LaTe[Xx] format: \\boxed\{Your answer\}\.?\s*$"),
    re.compile(r"\s*Write Python code to solve the problem\. Present the code in"
               r"\s*```python\s*Your code\s*```\s*at the end\.?\s*$"),
)


def strip_instruction(text: str) -> str:
    """Remove one known release instruction from the end of a problem statement (pure)."""
    for pat in _SUFFIXES:
        new = pat.sub("", text)
        if new != text:
            return new.rstrip()
    return text.rstrip()


def _need(record: Mapping[str, Any], key: str, kind: type | tuple[type, ...] = str) -> Any:
    if key not in record:
        raise SkipRow(key, "missing", "missing")
    value = record[key]
    if value is None:
        raise SkipRow(key, "null", "null")
    if not isinstance(value, kind):
        raise SkipRow(key, f"expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}",
                      "wrong type")
    if isinstance(value, str) and not value.strip():
        raise SkipRow(key, "empty string", "empty")
    return value


def _scalar_answer(value: Any, where: str) -> str:
    if isinstance(value, bool) or value is None:
        raise SkipRow(where, "no reference answer", "no answer")
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        if not value.strip():
            raise SkipRow(where, "empty answer", "no answer")
        return value.strip()
    if isinstance(value, list) and len(value) == 1:  # some releases wrap the answer in a list
        return _scalar_answer(value[0], where)
    raise SkipRow(where, f"expected a string or number answer, got {type(value).__name__}", "no answer")


def last_user_content(messages: Any, where: str = "prompt") -> str:
    """The content of the last ``user`` message of a chat prompt (a plain string passes through)."""
    if isinstance(messages, str) and messages.strip():
        return messages
    if not isinstance(messages, list) or not messages:
        raise SkipRow(where, "expected a non-empty list of chat messages", "wrong type")
    for msg in reversed(messages):
        if isinstance(msg, Mapping) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str) and content.strip():
                return content
            raise SkipRow(where, "last user message has no text content", "empty")
    raise SkipRow(where, "no user message", "missing")


def cases_from_ground_truth(gt: Any) -> list[dict[str, str]]:
    """Code ground truth of a verl/PRIME row -> our ``tests`` list (pure).

    Accepts a JSON string or the decoded value: ``{"inputs": [...], "outputs": [...]}`` (stdin/stdout;
    a list of lines is joined with newlines), a list of assert statements, or a list already in our
    ``{"input", "output"}`` / ``{"assert"}`` form.

    Raises:
        SkipRow: naming ``reward_model.ground_truth`` and what is wrong.

    """
    where = "reward_model.ground_truth"
    if isinstance(gt, str):
        try:
            gt = json.loads(gt)
        except json.JSONDecodeError as exc:
            raise SkipRow(where, f"not valid JSON ({exc.msg} at char {exc.pos})",
                          "unparsable tests") from None
    if isinstance(gt, Mapping):
        if gt.get("fn_name"):
            raise SkipRow(where, "call-based tests (fn_name) are not stdin/stdout cases; the code reward "
                          "runs stdin/stdout or asserts", "call-based tests")
        inputs, outputs = gt.get("inputs"), gt.get("outputs")
        if not isinstance(inputs, list) or not isinstance(outputs, list):
            raise SkipRow(where, "expected 'inputs' and 'outputs' lists", "unparsable tests")
        if len(inputs) != len(outputs):
            raise SkipRow(where, f"{len(inputs)} inputs but {len(outputs)} outputs", "unparsable tests")
        cases = []
        for i, (a, b) in enumerate(zip(inputs, outputs)):
            a = "\n".join(map(str, a)) if isinstance(a, list) else a
            b = "\n".join(map(str, b)) if isinstance(b, list) else b
            if not isinstance(a, str) or not isinstance(b, str):
                raise SkipRow(where, f"case {i}: input/output are not text", "unparsable tests")
            cases.append({"input": a, "output": b})
        if not cases:
            raise SkipRow(where, "no test cases", "unparsable tests")
        return cases
    if isinstance(gt, list) and gt:
        if all(isinstance(t, str) for t in gt):
            return [{"assert": t} for t in gt]
        if all(isinstance(t, Mapping) and ("assert" in t or {"input", "output"} <= set(t)) for t in gt):
            return [dict(t) for t in gt]
    raise SkipRow(where, f"unrecognised test format ({type(gt).__name__})", "unparsable tests")


def _boxed_contents(text: str) -> list[str]:
    r"""Contents of every ``\boxed{...}`` in ``text`` (balanced braces), in order."""
    out, i = [], 0
    while True:
        start = text.find("\\boxed{", i)
        if start < 0:
            return out
        j, depth = start + len("\\boxed{"), 1
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        if depth:
            return out
        out.append(text[start + len("\\boxed{"): j - 1].strip())
        i = j


def _row_id(prefix: str, key: str) -> str:
    return f"{prefix}-{key}"


# ---------------------------------------------------------------------------------------- converters
def convert_verl(record: Mapping[str, Any], key: str, prefix: str = "verl") -> dict[str, Any]:
    """One verl-style record (DeepScaleR rllm parquet, Eurus-2-RL-Data) -> a math or code row."""
    ability = _need(record, "ability")
    prompt = strip_instruction(last_user_content(_need(record, "prompt", (list, str))))
    rm = _need(record, "reward_model", dict)
    if "ground_truth" not in rm or rm["ground_truth"] is None:
        raise SkipRow("reward_model.ground_truth", "missing", "missing")
    extra = record.get("extra_info") or {}
    index = extra.get("index") if isinstance(extra, Mapping) else None
    rid = _row_id(prefix, f"{index}" if index is not None and str(index) != "" else key)
    ability = ability.lower()
    if ability == "math":
        answer = _scalar_answer(rm["ground_truth"], "reward_model.ground_truth")
        boxed = _boxed_contents(answer)  # some verl-style sets keep the whole solution as ground truth
        return {"id": rid, "domain": "math", "prompt": prompt, "answer": boxed[-1] if boxed else answer}
    if ability == "code":
        return {"id": rid, "domain": "code", "prompt": prompt,
                "tests": cases_from_ground_truth(rm["ground_truth"])}
    raise SkipRow("ability", f"unsupported ability {ability!r} (math or code)", "unsupported ability")


def convert_math(record: Mapping[str, Any], key: str, prefix: str = "math") -> dict[str, Any]:
    """``problem`` + ``answer`` columns (DeepScaleR-Preview, AIME) -> a math row."""
    problem = strip_instruction(_need(record, "problem"))
    if "answer" not in record:
        raise SkipRow("answer", "missing", "missing")
    return {"id": _row_id(prefix, key), "domain": "math", "prompt": problem,
            "answer": _scalar_answer(record["answer"], "answer")}


#: SCP-116K: which model's judged-matching solution gives the reference answer, in order of preference
SCP_SOLVERS: tuple[str, ...] = ("r1", "o1", "qwq")


def convert_scp(record: Mapping[str, Any], key: str, prefix: str = "scp",
                max_answer_chars: int = 100) -> dict[str, Any]:
    r"""One SCP-116K record -> a ``math`` row, or :class:`SkipRow`.

    SCP-116K holds open-ended problems with the textbook solution (``matched_solution``) and model
    solutions (``r1_solution`` ...) each with a judge verdict ``is_<model>_solution_same_with_matched_
    solution``. ProRL kept the problems whose R1 answer the judge found to match the reference; the
    answer we keep is the last ``\boxed{}`` of the first judged-matching solution (``SCP_SOLVERS``
    order), or an ``answer`` / ``extracted_answer`` column when the file already has one. Answers longer
    than ``max_answer_chars`` are not checkable by a rule-based verifier and are skipped.
    """
    problem = _need(record, "problem")
    answer = None
    for col in ("answer", "extracted_answer"):
        if isinstance(record.get(col), str) and record[col].strip():
            answer = record[col].strip()
            break
    if answer is None:
        judged = [m for m in SCP_SOLVERS if f"is_{m}_solution_same_with_matched_solution" in record]
        if not judged:
            raise SkipRow("answer", "no answer column and no judged solution "
                          "(is_r1_solution_same_with_matched_solution)", "missing")
        for m in judged:
            if record.get(f"is_{m}_solution_same_with_matched_solution") is True:
                boxed = _boxed_contents(record.get(f"{m}_solution") or "")
                if boxed and boxed[-1]:
                    answer = boxed[-1]
                    break
        if answer is None:
            raise SkipRow(f"{judged[0]}_solution", "no judged-matching solution with a \\boxed{} answer",
                          "no checkable answer")
    if len(answer) > max_answer_chars:
        raise SkipRow("answer", f"answer longer than {max_answer_chars} chars (not rule-checkable)",
                      "answer too long")
    return {"id": _row_id(prefix, key), "domain": "math", "prompt": problem.strip(), "answer": answer}


def convert_ifeval(record: Mapping[str, Any], key: str, prefix: str = "if") -> dict[str, Any]:
    """``prompt`` + ``instruction_id_list`` + ``kwargs`` -> an ifeval row (null kwargs dropped)."""
    prompt = _need(record, "prompt", (str, list))
    prompt = last_user_content(prompt) if isinstance(prompt, list) else prompt
    ids = _need(record, "instruction_id_list", list)
    kwargs = record.get("kwargs")
    if kwargs is None:
        kwargs = [{}] * len(ids)
    if not isinstance(kwargs, list) or len(kwargs) != len(ids):
        raise SkipRow("kwargs", f"expected a list of {len(ids)} objects (one per instruction)", "wrong type")
    inst = []
    for i, (iid, kw) in enumerate(zip(ids, kwargs)):
        if isinstance(kw, str):
            try:
                kw = json.loads(kw) if kw.strip() else {}
            except json.JSONDecodeError:
                raise SkipRow(f"kwargs[{i}]", "not valid JSON", "wrong type") from None
        if kw is not None and not isinstance(kw, Mapping):
            raise SkipRow(f"kwargs[{i}]", "expected an object", "wrong type")
        if not isinstance(iid, str):
            raise SkipRow(f"instruction_id_list[{i}]", "expected a string", "wrong type")
        inst.append({"id": iid, "kwargs": {a: b for a, b in (kw or {}).items() if b is not None}})
    rid = record.get("key")
    return {"id": _row_id(prefix, str(rid) if rid is not None else key), "domain": "ifeval",
            "prompt": prompt, "instructions": inst}


def convert_gpqa(record: Mapping[str, Any], key: str, prefix: str = "gpqa", seed: int = 0) -> dict[str, Any]:
    """GPQA CSV record -> an mcq row; options shuffled by ``Random(f"{seed}:{id}")`` (order-independent)."""
    question = _need(record, "Question")
    opts = [_need(record, "Correct Answer")] + [_need(record, f"Incorrect Answer {k}") for k in (1, 2, 3)]
    rid = _row_id(prefix, str(record.get("Record ID") or key))
    order = list(range(4))
    random.Random(f"{seed}:{rid}").shuffle(order)
    return {"id": rid, "domain": "mcq", "prompt": question.strip(),
            "options": [opts[j].strip() for j in order], "answer": "ABCD"[order.index(0)]}


CONVERTERS: dict[str, Callable[..., dict[str, Any]]] = {
    "verl": convert_verl, "math": convert_math, "scp": convert_scp, "ifeval": convert_ifeval,
    "gpqa": convert_gpqa,
}


# ------------------------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class SourceRecord:
    """One record of a source: where it is (``origin``, 1-based ``row``) and its value or read problem.

    ``key`` identifies the record within its source for ids when the source has none: ``row - 1`` for a
    single file or dataset, ``<file stem>-<row - 1>`` when a folder holds several files.
    """

    origin: str
    row: int
    value: Any = None
    problem: str | None = None
    key: str = ""


def _is_saved_dataset(path: str) -> bool:
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, n)) for n in ("state.json", "dataset_dict.json"))


def _iter_dataset(ds: Any, origin: str) -> Iterator[SourceRecord]:
    for i, value in enumerate(ds):
        yield SourceRecord(origin, i + 1, value, key=str(i))


def _pick_split(dd: Any, split: str | None, origin: str) -> tuple[Any, str]:
    """A ``DatasetDict`` -> one split (``split`` or the only one), else a usable error."""
    if not hasattr(dd, "keys"):
        return dd, origin
    names = list(dd.keys())
    if split is None:
        if len(names) != 1:
            raise SourceError(f"{origin}: has splits {names}; choose one with --split")
        split = names[0]
    if split not in names:
        raise SourceError(f"{origin}: no split {split!r} (have {names})")
    return dd[split], f"{origin}[{split}]"


def _load_cached(name: str, config: str | None, split: str | None) -> tuple[Any, str]:
    """A dataset from the local ``datasets``/hub cache only; never downloads."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    import datasets

    for attr in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):  # the flags are read at import time
        if hasattr(datasets.config, attr):
            setattr(datasets.config, attr, True)
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # datasets raises many types (ConnectionError, FileNotFoundError, ...)
        raise SourceError(
            f"dataset {name!r} is not a local path and is not in the local cache ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). On a machine with internet run "
            f"`huggingface-cli download --repo-type dataset {name} --local-dir DIR` and import DIR "
            "(docs/reproduce.md)") from None
    return _pick_split(ds, split, name if config is None else f"{name}/{config}")


def _iter_csv(path: str) -> Iterator[SourceRecord]:
    with open(path, newline="", encoding="utf-8") as fh:
        for i, rec in enumerate(csv.DictReader(fh)):
            yield SourceRecord(path, i + 1, dict(rec), key=str(i))


def iter_source(source: str, split: str | None = None, config: str | None = None) -> Iterator[SourceRecord]:
    """Records of a local file / folder / ``save_to_disk`` folder, or of a cached ``datasets`` name.

    Raises:
        SourceError: a dataset name that is not cached, a folder with no data, an unknown split.

    """
    if _is_saved_dataset(source):
        import datasets

        ds, origin = _pick_split(datasets.load_from_disk(source), split, source)
        yield from _iter_dataset(ds, origin)
        return
    if os.path.exists(source):
        try:
            files = expand_paths([source]) if not source.endswith(".csv") else [source]
        except FileNotFoundError as exc:
            raise SourceError(str(exc)) from None
        if os.path.isdir(source):
            files += sorted(os.path.join(r, n) for r, _, ns in os.walk(source) for n in ns
                            if n.endswith(".csv") and not n.startswith("."))
        for path in files:
            stem = f"{os.path.splitext(os.path.basename(path))[0]}-" if len(files) > 1 else ""
            if path.endswith(".csv"):
                for rec in _iter_csv(path):
                    yield SourceRecord(rec.origin, rec.row, rec.value, key=stem + rec.key)
                continue
            for rec in iter_records(path):
                if rec.issue is not None:
                    yield SourceRecord(path, rec.row, problem=f"{rec.issue.field}: {rec.issue.reason}")
                else:
                    yield SourceRecord(path, rec.row, rec.value, key=f"{stem}{rec.row - 1}")
        return
    if source.endswith(DATA_SUFFIXES + (".csv",)) or source.startswith(("/", "./", "../", "~")):
        raise SourceError(f"{source}: no such file or directory")
    ds, origin = _load_cached(source, config, split)
    yield from _iter_dataset(ds, origin)


# -------------------------------------------------------------------------------------------- driver
@dataclass
class ImportReport:
    """What an import did: counts, the kept rows and every problem as ``origin:row:field: reason``."""

    read: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    skipped_by_reason: Counter = field(default_factory=Counter)
    kept_by_domain: Counter = field(default_factory=Counter)

    @property
    def skipped(self) -> int:
        """Records read but not written, all reasons together."""
        return sum(self.skipped_by_reason.values())

    def summary(self) -> dict[str, Any]:
        """The JSON summary printed by the CLI."""
        return {"read": self.read, "written": len(self.rows), "skipped": self.skipped,
                "skipped_by_reason": dict(self.skipped_by_reason), "by_domain": dict(self.kept_by_domain)}


def import_rows(records: Iterator[SourceRecord], convert: Callable[[Mapping[str, Any], str], dict[str, Any]],
                check_rewards: bool = True, limit: int | None = None) -> ImportReport:
    """Convert records and validate the rows with preflight; ``read == len(rows) + skipped``.

    Records are streamed (only the converted rows are held); the converter gets ``record.key``
    (:class:`SourceRecord`) for ids when the source has none.
    """
    import itertools
    import tempfile

    from nemo_prorl.data.preflight import preflight
    from nemo_prorl.data.reasoning_gym_gen import write_jsonl_atomic

    report = ImportReport()
    converted: list[dict[str, Any]] = []
    where: list[str] = []
    for rec in records if limit is None else itertools.islice(records, limit):
        report.read += 1
        loc = f"{rec.origin}:{rec.row}"
        if rec.problem is not None:
            report.problems.append(f"{loc}:{rec.problem}")
            report.skipped_by_reason["unreadable record"] += 1
            continue
        if not isinstance(rec.value, Mapping):
            report.problems.append(f"{loc}:<row>: expected an object, got {type(rec.value).__name__}")
            report.skipped_by_reason["wrong type"] += 1
            continue
        try:
            row = convert(rec.value, rec.key or str(rec.row - 1))
        except SkipRow as skip:
            report.problems.append(f"{loc}:{skip.field}: {skip.reason}")
            report.skipped_by_reason[skip.category] += 1
            continue
        converted.append(row)
        where.append(loc)
    if not converted:
        return report
    # the trainer's own checks, on the rows as they will be written
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rows.jsonl")
        write_jsonl_atomic(converted, path)
        pf = preflight([path], policy="skip", check_rewards=check_rewards)
    bad: dict[int, list] = {}
    for issue in pf.issues:
        bad.setdefault(issue.row, []).append(issue)
    for i, row in enumerate(converted, start=1):
        if i in bad:
            for issue in bad[i]:
                report.problems.append(f"{where[i - 1]}:{issue.field}: {issue.reason} (converted row)")
            report.skipped_by_reason[f"preflight: {bad[i][0].category}"] += 1
        else:
            report.rows.append(row)
            report.kept_by_domain[row["domain"]] += 1
    return report
