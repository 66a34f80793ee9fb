"""BEIR folders: corpus.jsonl[.gz] (``_id``, ``title``, ``text``), queries.jsonl (``_id``,
``text``) and qrels/SPLIT.tsv (``query-id``, ``corpus-id``, ``score``, with a header)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ragtune.errors import DatasetError
from ragtune.files import read_jsonl


@dataclass
class BeirSet:
    name: str
    corpus: Path
    queries: dict[str, str]  # only the queries that have qrels in the split
    qrels: dict[str, dict[str, int]]


def load_beir(folder: Path, split: str = "test") -> BeirSet:
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder: --beir takes a BEIR dataset folder (corpus.jsonl, queries.jsonl, qrels/)")
    corpus = next((folder / n for n in ("corpus.jsonl", "corpus.jsonl.gz") if (folder / n).exists()), None)
    if corpus is None:
        raise DatasetError(f"{folder} has no corpus.jsonl or corpus.jsonl.gz")
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.exists():
        splits = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
        raise DatasetError(f"no qrels for split {split!r} ({qrels_path}); available splits: {', '.join(splits) or 'none'}")
    qrels = _read_qrels(qrels_path)
    queries = _read_queries(folder / "queries.jsonl", set(qrels))
    missing = set(qrels) - set(queries)
    if missing:
        raise DatasetError(f"{len(missing)} query ids in {qrels_path.name} are not in queries.jsonl (e.g. {sorted(missing)[0]!r})")
    return BeirSet(folder.resolve().name, corpus, queries, qrels)


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f, delimiter="\t"), start=1):
            if n == 1 and row and row[0] == "query-id":
                continue
            if len(row) < 3 or not row[2].lstrip("-").isdigit():
                raise DatasetError(f"{path}:{n}: expected 'query-id<TAB>corpus-id<TAB>score', got {row!r}")
            qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    return qrels


def _read_queries(path: Path, wanted: set[str]) -> dict[str, str]:
    if not path.exists():
        raise DatasetError(f"{path} is missing")
    queries = {}
    for n, row in read_jsonl(path):
        try:
            qid, text = str(row["_id"]), row["text"]
        except (KeyError, TypeError):
            raise DatasetError(f"{path}:{n}: expected a JSON object with '_id' and 'text'") from None
        if qid in wanted:
            queries[qid] = text
    return queries
