"""Question sets: a QA JSONL format, validated with row-numbered errors, and importers.

One JSON object per line::

    {"id": "q1", "question": "...", "answers": ["...", "..."],
     "doc_ids": ["..."], "context": "...", "metadata": {...}}     # the last three optional

``doc_ids`` name the gold documents (their ``doc_id`` in the index); ``context`` is the gold
evidence text. A question without ``answers`` but with ``doc_ids`` is retrieval-only (BEIR sets):
it is scored on its evidence; graded relevance, when known, is in ``metadata["qrels"]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from ragtune.errors import DatasetError
from ragtune.files import read_jsonl
from ragtune.types import QAItem

MAX_ERRORS = 10


def load_qa(path: Path) -> list[QAItem]:
    """Read and validate a QA JSONL file; all problems are reported together, by line."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file (a QA JSONL file: one {{\"id\", \"question\", \"answers\"}} object per line)")
    items, errors, seen = [], [], set()
    for n, row in read_jsonl(path):
        try:
            if isinstance(row, ValueError):
                raise row
            item = _item(row, n)
        except ValueError as e:
            errors.append(str(e))
            continue
        if item.id in seen:
            errors.append(f"line {n}: duplicate id {item.id!r}")
        seen.add(item.id)
        items.append(item)
    if errors:
        more = f" (and {len(errors) - MAX_ERRORS} more)" if len(errors) > MAX_ERRORS else ""
        raise DatasetError(f"{path}: {len(errors)} bad row(s){more}:\n  " + "\n  ".join(errors[:MAX_ERRORS]))
    if not items:
        raise DatasetError(f"{path}: no questions in the file")
    return items


def _item(row: Any, n: int) -> QAItem:
    if not isinstance(row, dict):
        raise ValueError(f"line {n}: expected a JSON object, got {type(row).__name__}")
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"line {n}: missing or empty 'question'")
    doc_ids = row.get("doc_ids", [])
    if not isinstance(doc_ids, list) or not all(isinstance(d, (str, int)) for d in doc_ids):
        raise ValueError(f"line {n}: 'doc_ids' must be a list of ids")
    answers = row.get("answers")
    if answers is None and doc_ids:
        answers = []  # a retrieval-only question: scored on its gold documents
    elif not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise ValueError(f"line {n}: 'answers' must be a non-empty list of non-empty strings "
                         "(or leave 'answers' out and give 'doc_ids' for a retrieval-only question)")
    context = row.get("context")
    if context is not None and not isinstance(context, str):
        raise ValueError(f"line {n}: 'context' must be a string")
    metadata = row.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ValueError(f"line {n}: 'metadata' must be an object")
    return QAItem(str(row.get("id", n)), question.strip(), answers, [str(d) for d in doc_ids], context, metadata)


def write_qa(items: Iterable[QAItem], path: Path) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for it in items:
            row = {"id": it.id, "question": it.question, **({"answers": it.answers} if it.answers else {})}
            row.update({k: v for k, v in (("doc_ids", it.doc_ids), ("context", it.context), ("metadata", it.metadata)) if v})
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def from_squad(source: Path) -> list[QAItem]:
    """SQuAD v1.1 JSON (``data`` -> ``paragraphs`` -> ``qas``) or the split folder with
    ``questions.jsonl.gz`` + ``contexts.jsonl.gz``. Gold doc ids are paragraph ids
    (``<title>#p<index>``, as in ``contexts.jsonl.gz``), so the paragraphs can be ingested as records."""
    source = Path(source)
    if source.is_dir():
        questions = source / "questions.jsonl.gz"
        if not questions.exists():
            raise DatasetError(f"{source} has no questions.jsonl.gz (expected the SQuAD split folder)")
        rows = [r for _, r in read_jsonl(questions, strict=True)]
        return [QAItem(r["id"], r["question"], _dedupe(a["text"] for a in r["answers"]), [r["context_id"]], r["context"],
                       {"title": r["title"]}) for r in rows]
    try:
        data = json.loads(source.read_text(encoding="utf-8"))["data"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DatasetError(f"{source}: not a SQuAD JSON file (expected {{\"data\": [{{\"title\", \"paragraphs\"}}]}})") from None
    items = []
    for article in data:
        for p, para in enumerate(article["paragraphs"]):
            for qa in para["qas"]:
                items.append(QAItem(qa["id"], qa["question"], _dedupe(a["text"] for a in qa["answers"]),
                                    [f"{article['title']}#p{p}"], para["context"], {"title": article["title"]}))
    return items


def from_beir(folder: Path, split: str = "test") -> list[QAItem]:
    """A BEIR folder's queries with qrels in ``split`` as retrieval-only questions (gold docs = qrels > 0)."""
    from ragtune.evaluate.beir import load_beir

    data = load_beir(folder, split)
    items = []
    for qid, text in data.queries.items():
        rels = data.qrels[qid]
        gold = [d for d, r in rels.items() if r > 0]
        if gold:
            graded = {"qrels": rels} if set(rels.values()) - {0, 1} else {}
            items.append(QAItem(qid, text, [], gold, None, {"dataset": data.name, **graded}))
    return items


def squad_contexts(source: Path, out: Path) -> int:
    """The SQuAD split folder's paragraphs as an ingestable JSONL (``id``, ``title``, ``text``)."""
    n = 0
    with open(out, "w", encoding="utf-8") as o:
        for _, r in read_jsonl(Path(source) / "contexts.jsonl.gz", strict=True):
            o.write(json.dumps({"id": r["context_id"], "title": r["title"], "text": r["context"]}, ensure_ascii=False) + "\n")
            n += 1
    return n


def _dedupe(answers: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(a for a in answers if a.strip()))
