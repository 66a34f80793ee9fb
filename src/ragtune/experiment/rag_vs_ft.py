"""``ragtune compare``: RAG or fine-tuning? Four arms of one base model answer the same held-out questions.

- **closed-book**: the base model, no retrieval;
- **rag**: the workspace's retrieval + the base model;
- **ft**: the base fine-tuned (SFT) on the training questions' answers (``--demos`` and, with
  ``[compare] learn_documents``, the documents' passages added), no retrieval at question time;
- **ft+rag**: RAFT-style (Zhang et al. 2024): fine-tuned on question + the top-k retrieved chunks (the
  gold passage among distractors, or only distractors when retrieval missed it) -> answer, then served
  with retrieval.

Every arm runs on the same runtime (transformers, fp32, the base converted once), so latency and
quality differ only by what the arm does. The steps, each kept in ``.ragtune/compare/ID/compare.json``
as it finishes (a rerun with ``--id`` goes on; trained models are registered and reused):

1. **split** the questions by a fixed seed, stratified by document: every test question's document
   has another question in training (the fair setting for fine-tuning); the split is written out;
2. **train** both fine-tuned arms (``finetune`` runs: cards with time, tokens and forgetting checks);
3. **evaluate** each arm on the test questions (an ``eval qa`` run each: EM/F1/contains, abstention,
   citations, groundedness, latency, tokens; MLflow experiment "compare");
4. **freshness**: some test answers are changed in edited copies of their documents, the documents are
   re-ingested into a second index (cached embeddings), and every arm answers those questions again:
   the share of answers that follow the new value;
5. **recommend** from the measured numbers (``recommend``: the rule and the figures it used).
"""

from __future__ import annotations

import gzip
import json
import random
import re
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from ragtune.errors import ConfigError, DatasetError, WorkspaceError
from ragtune.files import Journal, sha256_file, utc_now
from ragtune.train.data import unit_hash

COMPARE_DIR = "compare"
ARMS = ("closed-book", "rag", "ft", "ft+rag")
LABELS = {"closed-book": "the base model alone", "rag": "RAG", "ft": "fine-tuning", "ft+rag": "RAG + RAFT-style fine-tuning"}
RETRIEVES = {"closed-book": False, "rag": True, "ft": False, "ft+rag": True}
TRAINED = ("ft", "ft+rag")
TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm")
RECORD_SUFFIXES = (".jsonl", ".jsonl.gz", ".json")


# -- the split --------------------------------------------------------------------------------
@dataclass
class Split:
    train: list
    test: list
    stratified: bool  # by document (every item had doc_ids)
    documents: int

    def record(self) -> dict[str, Any]:
        return {"train": len(self.train), "test": len(self.test), "stratified": self.stratified, "documents": self.documents,
                "test_ids": [it.id for it in self.test]}


def split_questions(items: list, test_fraction: float, seed: int = 0) -> Split:
    """Train/test by a hash of (seed, id), per document: of a document's n questions, round(n x
    test_fraction) go to the test, at least 1 and at most n - 1 (a document's only question stays in
    training). Without doc_ids on every item the whole set is one group (not stratified)."""
    missing = [it.id for it in items if not it.answers]
    if missing:
        raise DatasetError(f"{len(missing)} question(s) have no answers ({', '.join(map(repr, missing[:5]))}"
                           f"{', ...' if len(missing) > 5 else ''}): the arms are scored against answers and the fine-tuned "
                           "arms learn from them; give every row an 'answers' list (retrieval-only sets such as BEIR cannot "
                           "be compared)")
    stratified = all(it.doc_ids for it in items)
    groups: dict[str, list] = defaultdict(list)
    for it in items:
        groups[it.doc_ids[0] if stratified else ""].append(it)
    test_ids = set()
    for group in groups.values():
        if len(group) < 2:
            continue
        n_test = min(max(round(len(group) * test_fraction), 1), len(group) - 1)
        ranked = sorted(group, key=lambda it: unit_hash(it.id, seed))
        test_ids.update(it.id for it in ranked[:n_test])
    split = Split([it for it in items if it.id not in test_ids], [it for it in items if it.id in test_ids], stratified,
                  len(groups) if stratified else 0)
    if not split.test:
        where = f"on {len(groups)} document(s)" if stratified else "without doc_ids"
        raise DatasetError(f"too few questions to split: {len(items)} question(s) {where}; every test question needs another "
                           "question on its document in training: give at least two questions on some document "
                           "(`ragtune data synth-qa` writes more)")
    return split


# -- freshness: changed facts -----------------------------------------------------------------
SYLLABLES = ["ba", "ce", "di", "fo", "gu", "ka", "le", "mi", "no", "pu", "ra", "se", "ti", "vo", "zu", "lan", "mer", "tos", "vin", "dar"]


def changed_value(answer: str, seed: str, others: list[str] | tuple[str, ...] = (), avoid: str = "",
                  invent: bool = True) -> str | None:
    """A new value for ``answer``, fixed by ``seed``. Numbers get other digits (same length, no leading
    zero added; a year becomes another year 3 to 40 away; the words around them, such as units, stay).
    Other answers become another answer of the same shape from ``others`` (the question set's answers:
    same number of words, same capitals, no digits) that shares no word of four or more letters with it
    and does not occur in ``avoid`` (the document's text), so the new value reads like a real one;
    without one, an invented word of the same case replaces each word of four or more letters (unless
    not ``invent``). None when nothing can change."""
    rng = random.Random(seed)

    def number(m: re.Match) -> str:
        old = m.group()
        if len(old) == 4 and 1000 <= int(old) <= 2099:  # a year: another year a few decades away, not 5617
            return str(int(old) + rng.choice([-1, 1]) * rng.randint(3, 40))
        while True:
            new = "".join(rng.choice("0123456789" if i or len(old) == 1 else "123456789") for i in range(len(old)))
            if new != old:
                return new

    def word(m: re.Match) -> str:
        old = m.group()
        new = ""
        while len(new) < len(old) - 1:
            new += rng.choice(SYLLABLES)
        if old.isupper():
            return new.upper()
        return new.capitalize() if old[0].isupper() else new

    if re.search(r"\d", answer):
        return re.sub(r"\d+", number, answer)
    alike = sorted({o.strip() for o in others if o.strip() and _shape(o.strip()) == _shape(answer)
                    and not _long_words(answer) & _long_words(o) and not _occurrence(o.strip()).search(avoid)})
    if alike:
        return rng.choice(alike)
    if not invent:
        return None
    new = re.sub(r"[^\W\d_]{4,}", word, answer)
    return new if new != answer else None


_WORD = re.compile(r"[^\W_]+")


def _long_words(value: str) -> set[str]:
    return {w.casefold() for w in _WORD.findall(value) if len(w) >= 4}


def _shape(value: str) -> tuple:
    """What makes two answers interchangeable: word count, capitals (none, some, every first letter, all), digits."""
    words = _WORD.findall(value)
    caps = "all" if value.isupper() else "first" if words and all(w[0].isupper() for w in words) else \
        "some" if any(w[0].isupper() for w in words) else "none"
    return len(words), caps, bool(re.search(r"\d", value))


@dataclass
class Edit:
    question: str  # the QA item's id
    doc_id: str
    source: str
    old: str
    new: str


_ASKS = re.compile(r"\b(who|whom|whose|where|when|why|how (?:many|much|long|old|far)|how|which|what)\b", re.IGNORECASE)


def asks(question: str) -> str:
    """How a question asks (its first question word: ``who``, ``where``, ``when``, ``how many`` ...; ``""``
    when none): answers to questions asked alike are the same kind of thing (people, places, dates)."""
    m = _ASKS.search(question)
    word = m.group(1).lower() if m else ""
    return "who" if word in ("whom", "whose") else word


def fact_kind(answer: str) -> str:
    """``number`` (holds a digit: amounts, dates, years), ``name`` (every word capitalised) or ``phrase``.
    The facts that change in real documents are mostly numbers and names, and a new number or name
    still reads as an answer to the question; a phrase swapped for another answer's phrase often does not."""
    _, caps, digits = _shape(answer.strip())
    return "number" if digits else "name" if caps in ("first", "all") else "phrase"


def plan_edits(ws, test: list, n: int, seed: int, question_set: list | tuple = ()) -> tuple[list[Edit], dict[str, int]]:
    """Up to ``n`` test questions whose answer occurs in their gold document's text, in a file type that
    can be edited (text, markdown, HTML, JSON records), with the value each gets (``changed_value``: an
    answer in ``question_set`` (QA items) to a question asked the same way (``asks``: a person's name
    for another person's) when one fits, else any of its answers that fits); the test questions that
    cannot be edited, counted by reason.
    Edits of a number or a name come first (``fact_kind`` of the value changed), each kind in a seeded order."""
    from ragtune.evaluate.qa_eval import gold_doc

    sources: dict[str, str] = {}
    for row in ws.store.rows(["doc_id", "source"]):
        sources.setdefault(row["doc_id"], row["source"])
    skipped = dict.fromkeys(["no_document", "file_type", "value_not_in_text", "unchangeable"], 0)
    texts: dict[str, dict[str, str]] = {}
    edits: list[Edit] = []
    every: list[str] = [a for q in question_set for a in q.answers]
    by_ask: dict[str, list[str]] = defaultdict(list)
    for q in question_set:
        by_ask[asks(q.question)] += q.answers
    for it in test:
        doc = next((d for d in sources if it.doc_ids and gold_doc(d, it.doc_ids)), None)
        if doc is None:
            skipped["no_document"] += 1
            continue
        source = sources[doc]
        if not source.lower().endswith(TEXT_SUFFIXES + RECORD_SUFFIXES):
            skipped["file_type"] += 1
            continue
        if source not in texts:
            texts[source] = {d.doc_id: d.text for d in _documents(_source_path(ws, source), source, ws)}
        text = texts[source].get(doc, "")
        old = next((a for a in it.answers if a.strip() and _occurrence(a).search(text)), None)
        if old is None:
            skipped["value_not_in_text"] += 1
            continue
        new = (changed_value(old, f"{seed}\0{it.id}", by_ask[asks(it.question)], text, invent=False)
               or changed_value(old, f"{seed}\0{it.id}", every, text))
        if new is None:
            skipped["unchangeable"] += 1
            continue
        edits.append(Edit(it.id, doc, source, old, new))
    edits.sort(key=lambda e: (fact_kind(e.old) == "phrase", unit_hash(f"fresh\0{e.question}", seed)))
    return edits[:n], skipped


def _occurrence(value: str) -> re.Pattern:
    """``value`` as a whole token sequence (so "27" does not match inside "2027")."""
    return re.compile(r"(?<!\w)" + re.escape(value) + r"(?!\w)")


def _source_path(ws, source: str) -> Path:
    path = Path(source)
    return path if path.is_absolute() else (ws.root / path).resolve()


def write_edited(ws, edits: list[Edit], folder: Path) -> tuple[dict[str, Path], list[Edit]]:
    """Edited copies of the files the edits touch, under ``folder``: ({source: edited file}, the edits
    whose new value the loaded copy shows in place of the old one)."""
    by_source: dict[str, list[Edit]] = defaultdict(list)
    for e in edits:
        by_source[e.source].append(e)
    files, kept = {}, []
    for source, group in by_source.items():
        original = _source_path(ws, source)
        dest = folder / f"{len(files):03d}-{original.name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        if original.name.lower().endswith(RECORD_SUFFIXES):
            _edit_records(original, dest, group, ws.config.ingest)
        else:
            from ragtune.ingest.loaders import read_text

            text, _ = read_text(original)
            for e in group:
                text = _occurrence(e.old).sub(e.new, text)
            dest.write_text(text, encoding="utf-8")
        docs = _documents(dest, dest.name, ws)
        files[source] = dest
        for e in group:  # a records file: the edited record; any other file is one document
            text = next((d.text for d in docs if d.doc_id == e.doc_id), docs[0].text if len(docs) == 1 else "")
            if e.new in text and e.old not in text:
                kept.append(e)
    return files, kept


def _documents(path: Path, source: str, ws) -> list:
    from ragtune.ingest.loaders import load_file

    return load_file(path, source, ws.config.ingest).documents


def _edit_records(original: Path, dest: Path, edits: list[Edit], cfg) -> None:
    """JSON/JSONL records: the text field of the edited records only (other records keep the value)."""
    from ragtune.files import read_jsonl

    def edit(rec: Any, line: int, source_id: str) -> Any:
        if not isinstance(rec, dict) or not isinstance(rec.get(cfg.record_text_field), str):
            return rec
        rid = rec.get(cfg.record_id_field, rec.get("_id"))
        doc_id = str(rid) if rid is not None else f"{source_id}#{line}"
        for e in edits:
            if e.doc_id == doc_id:
                rec = {**rec, cfg.record_text_field: _occurrence(e.old).sub(e.new, rec[cfg.record_text_field])}
        return rec

    source_id = edits[0].source
    if original.name.lower().endswith(".json"):
        rows = json.loads(original.read_text(encoding="utf-8"))
        rows = [edit(r, i, source_id) for i, r in enumerate(rows, start=1)] if isinstance(rows, list) else rows
        dest.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
        return
    opener = gzip.open if dest.name.endswith(".gz") else open
    with opener(dest, "wt", encoding="utf-8") as f:
        for line, rec in read_jsonl(original):
            f.write(json.dumps(edit(rec, line, source_id), ensure_ascii=False) + "\n")


def fresh_index(ws, folder: Path, files: dict[str, Path], progress=None):
    """A workspace view on a second index: every ingested file, the edited ones replaced by their copies
    (embeddings of unchanged chunks come from the cache). Returns (view, ingest report)."""
    from ragtune.ingest.pipeline import ingest

    index = folder / "index"
    view = ws.with_config(ws.config.override("store", path=str(index.relative_to(ws.root) if index.is_relative_to(ws.root) else index)))
    paths = [_source_path(ws, s) for s in sorted(ws.store.file_keys()) if s not in files] + list(files.values())
    report = ingest(paths, store=view.store, embedder=view.embedder, cache=view.cache, cfg=ws.config.ingest, root=ws.root,
                    progress=progress)
    return view, report


# -- the recommendation -------------------------------------------------------------------------
COMPLEXITY = {"closed-book": 0, "rag": 1, "ft": 2, "ft+rag": 3}  # components to build and keep running
RULE = ("highest F1; arms within the margin of it count as equally good; of those, arms the forgetting checks "
        "flagged are dropped (unless all were), then the one that follows changed documents best wins, then the one "
        "with fewer prompt tokens per question, then the one with fewer parts (no index, no training)")


def recommend(arms: dict[str, dict[str, Any]], margin: float) -> dict[str, Any]:
    """The arm to use, from each arm's figures (``f1``, ``prompt_tokens``, ``freshness`` (share, or None
    when not measured), ``fresh_questions``, ``forgetting_flagged``), by ``RULE``; the text says the
    numbers that drove it."""
    if not arms:
        raise ConfigError("no evaluated arms to recommend from")
    best = max(a["f1"] for a in arms.values())
    tied = [name for name, a in arms.items() if a["f1"] >= best - margin]
    unflagged = [name for name in tied if not arms[name].get("forgetting_flagged")]
    tied = unflagged or tied

    def key(name: str) -> tuple:
        a = arms[name]
        return (-(a.get("freshness") or 0.0), a.get("prompt_tokens") or 0.0, COMPLEXITY[name])

    choice = min(tied, key=key)
    return {"choice": choice, "rule": RULE, "margin": margin, "text": _advice(choice, arms, margin)}


def _advice(choice: str, arms: dict[str, dict[str, Any]], margin: float) -> str:
    base = arms.get("closed-book")
    head = {"closed-book": f"neither helps by more than {margin:.2f} F1 here: use the base model alone",
            "rag": "use RAG", "ft": "fine-tune (no retrieval at question time)",
            "ft+rag": "use RAG, and add RAFT-style fine-tuning (question + retrieved passages -> answer)"}[choice]
    parts = []
    for name in ARMS:
        a = arms.get(name)
        if a is None:
            continue
        part = f"{LABELS[name]} F1 {a['f1']:.3f}"
        if base is not None and name != "closed-book":
            part += f" ({a['f1'] - base['f1']:+.3f} over closed-book"
            if base.get("prompt_tokens") and a.get("prompt_tokens"):
                part += f", {a['prompt_tokens'] / base['prompt_tokens']:.1f}x the prompt tokens"
            part += ")"
        if a.get("freshness") is not None:
            part += f", {round(a['freshness'] * a['fresh_questions'])}/{a['fresh_questions']} fresh answers"
        if a.get("forgetting_flagged"):
            part += ", flagged by the forgetting checks"
        parts.append(part)
    if choice == "ft+rag" and "rag" in arms:
        head += f" ({arms['ft+rag']['f1'] - arms['rag']['f1']:+.3f} F1 over RAG alone)"
    return f"{head} — " + "; ".join(parts)


# -- the comparison -----------------------------------------------------------------------------
def run_compare(ws, qa: Path | None = None, *, docs: Path | None = None, demos: Path | None = None, compare_id: str | None = None,
                synth_questions: int = 60, limit: int | None = None, log: Callable[[str], None] = print, progress=None,
                track: bool = True) -> dict[str, Any]:
    """The whole comparison (see the module's text); returns its record (also ``compare.json``)."""
    from ragtune.evaluate.qa import load_qa

    for path, flag in ((qa, "--qa"), (docs, "--docs"), (demos, "--demos")):
        if path is not None and not Path(path).exists():
            raise DatasetError(f"{flag} {path}: no such file or folder")
    items = load_qa(qa)[:limit] if qa else None  # a bad question set stops here, before anything is written
    if demos is not None:
        from ragtune.train.data import load_examples

        load_examples(demos)  # bad demonstrations too
    cfg = ws.config.compare
    compare_id = compare_id or utc_now().replace(":", "").replace("-", "").replace("+0000", "Z")
    folder = ws.state_dir / COMPARE_DIR / compare_id
    resumed = (folder / "compare.json").is_file()
    if items is not None and not resumed:
        split_questions(items, cfg.test_fraction, cfg.seed)  # too few questions stops here too
    index_s = None
    if docs is not None:
        report = ws.ingest([docs], progress=progress)
        index_s = report.seconds
        log(f"ingested {docs}: {report.chunks_written} chunks written in {report.seconds:.1f} s")
    if not ws.store.exists() or not ws.stats().chunks:
        raise WorkspaceError(f"the index in {ws.root} is empty: give the documents with --docs PATH "
                             "(or run `ragtune ingest PATH` first)")
    if items is None and not resumed:
        qa, items = _synthesise(ws, folder, synth_questions, progress, log)
    elif items is None:
        qa = Path(json.loads((folder / "compare.json").read_text())["qa"]["path"])
        items = load_qa(qa)[:limit]

    journal = Journal(folder / "compare.json", {
        "id": compare_id, "started": utc_now(), "base": ws.config.train.base, "settings": _settings(ws, limit),
        "qa": {"path": str(qa), "sha256": sha256_file(qa), "questions": len(items),
               "synthetic": qa.parent == folder and qa.name == "synthetic-qa.jsonl"},
        "demos": {"path": str(demos), "sha256": sha256_file(demos)} if demos else None, "index_s": index_s})
    state = journal.state
    if state["qa"]["sha256"] != sha256_file(qa):
        raise DatasetError(f"comparison {compare_id} was started with another version of {qa}; start a new one (no --id) "
                           "or restore the file")
    step = lambda name, work: journal.step(name, work, log)  # noqa: E731

    split = split_questions(items, cfg.test_fraction, cfg.seed)
    paths = step("split", lambda: _write_split(folder, split))
    test_path = Path(paths["test_path"])
    base_view = _arm_view(ws, _base_model(ws))
    trained = step("train", lambda: _train(ws, state, folder, split, base_view, demos, log))
    views = {arm: _arm_view(ws, trained[arm]["model"] if arm in TRAINED else _base_model(ws)) for arm in ARMS}
    for arm in ARMS:
        step(f"evaluate {arm}", lambda arm=arm: _evaluate(views[arm], arm, split.test, test_path, compare_id, progress, track))
    step("freshness", lambda: _freshness(ws, folder, split.test, items, views, {
        arm: _answered_right(ws, state["steps"][f"evaluate {arm}"]["run"]) for arm in ARMS}, progress, log))
    figures = arm_figures(state)
    state["recommendation"] = recommend(figures, cfg.margin)
    state["finished"] = state.get("finished") or utc_now()
    journal.save()
    log(state["recommendation"]["text"])
    return state


def _settings(ws, limit: int | None) -> dict[str, Any]:
    import dataclasses

    return {"compare": dataclasses.asdict(ws.config.compare), "limit": limit, "k": ws.config.retrieve.k,
            "mode": ws.config.retrieve.mode, "max_tokens": ws.config.generate.max_tokens}


def _synthesise(ws, folder: Path, n: int, progress, log) -> tuple[Path, list]:
    from ragtune.evaluate.qa import write_qa
    from ragtune.evaluate.synth import synth_qa

    items, stats = synth_qa(ws.store, ws.generator, n, progress=progress)
    try:
        split_questions(items, ws.config.compare.test_fraction, ws.config.compare.seed)
    except DatasetError as e:
        raise DatasetError(f"no --qa, and the {len(items)} synthetic question(s) {ws.generator.name} wrote from "
                           f"{stats['attempted']} passages cannot be split ({e}); give a question set with --qa, "
                           "or ask for more with --synth N") from None
    path = folder / "synthetic-qa.jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    write_qa(items, path)
    log(f"no --qa: wrote {len(items)} synthetic questions to {path} ({stats['attempted']} passages tried)")
    return path, items


def _write_split(folder: Path, split: Split) -> dict[str, Any]:
    from ragtune.evaluate.qa import write_qa

    folder.mkdir(parents=True, exist_ok=True)
    write_qa(split.train, folder / "train.jsonl")
    write_qa(split.test, folder / "test.jsonl")
    return {**split.record(), "train_path": str(folder / "train.jsonl"), "test_path": str(folder / "test.jsonl")}


def _base_model(ws) -> str:
    """The base every arm starts from ([train] base), as the Hugging Face folder the fine-tunes train from."""
    from ragtune.train.finetune import base_folder

    return str(base_folder(ws.config.train.base, ws.root))


def _arm_view(ws, model: str):
    """The workspace with ``model`` answering through transformers (the same runtime for every arm)."""
    return ws.with_config(ws.config.override("generate", backend="transformers", model=model, adapter=""))


def _train(ws, state: dict[str, Any], folder: Path, split: Split, base_view, demos: Path | None, log) -> dict[str, Any]:
    from ragtune.experiment.tracking import training_tracker
    from ragtune.models.registry import load_card
    from ragtune.train.data import from_qa, load_examples, write_examples
    from ragtune.train.finetune import finetune, training_state

    extra = load_examples(demos) if demos else []
    count = base_view.generator.count_tokens
    data = {"ft": from_qa(split.train, log=log) + extra + (_passages(ws) if ws.config.compare.learn_documents else []),
            "ft+rag": from_qa(split.train, base_view.chain(), ws.config.retrieve.k, count_tokens=count, log=log) + extra}
    longest = max(count(json.dumps(ex.messages)) for examples in data.values() for ex in examples)
    cfg = ws.config.override("train", base=ws.config.train.base, epochs=ws.config.compare.epochs,
                             max_length=max(ws.config.train.max_length, longest + 64)).train
    out = {}
    for arm, examples in data.items():
        name = f"compare-{state['id']}-{arm.replace('+', '-')}"
        path = folder / f"{arm.replace('+', '-')}.jsonl"
        write_examples(examples, path)
        if (resume := training_state(ws.root, name, log)) is not None:
            log(f"training {name} on {len(examples)} examples ({path.name})")
            finetune(ws.root, name, path, cfg, resume=resume, log=log, track=training_tracker(ws))
        card = load_card(ws.root, name)
        m = card.metrics
        out[arm] = {"model": name, "examples": len(examples), "train_s": card.train_time_s,
                    "trained_tokens": m.get("trained_tokens"), "tokens_per_s": m.get("tokens_per_s"),
                    "forgetting_flagged": bool(m.get("forgetting_flagged")),
                    "forgetting": {k: v for k, v in m.items() if k.startswith(("probe_ppl", "general_score"))}}
        if arm == "ft+rag":
            shares = [ex.metadata.get("gold_retrieved") for ex in examples if "gold_retrieved" in ex.metadata]
            out[arm]["gold_in_context"] = sum(shares) / len(shares) if shares else None
    return out


def _passages(ws) -> list:
    """The documents as training text: one chat turn per chunk (its title and heading -> its text)."""
    from ragtune.train.data import Example

    out = []
    for row in ws.store.rows(["id", "title", "heading", "text"]):
        about = " / ".join(p for p in (row["title"], row["heading"]) if p) or "this document"
        out.append(Example(f"passage:{row['id']}", [{"role": "user", "content": f"What does the passage on {about} say?"},
                                                     {"role": "assistant", "content": row["text"]}], {}))
    return out


def _evaluate(view, arm: str, test: list, test_path: Path, compare_id: str, progress, track: bool) -> dict[str, Any]:
    from ragtune.evaluate.qa_eval import evaluate_qa, workspace_answerer
    from ragtune.experiment.runs import RUNS_DIR, eval_run_id, record_run
    from ragtune.experiment.tracking import tracker_for

    result = evaluate_qa(test, workspace_answerer(view, "rag" if RETRIEVES[arm] else "closed-book"), progress=progress)
    out: dict[str, Any] = {"metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))},
                           "footprint_mb": _footprint_mb(view, arm), "run": None}
    rid = eval_run_id(view.config, test_path, f"compare:{arm}", 0, False, result.started)
    run = record_run(view, view.state_dir / RUNS_DIR / rid, f"compare {compare_id} {arm}", result, test_path,
                     params={"compare": compare_id, "compare_arm": arm})
    out["run"] = run.id
    if track and (tracker := tracker_for(view)):
        tracker.log(run, "compare")
    return out


def _footprint_mb(view, arm: str) -> float:
    """What the arm keeps on disk to answer: the model's weights (base + adapter), plus the index when it retrieves."""
    from ragtune.models.registry import registered, resolve

    model = view.config.generate.model
    folders = list(resolve(view.root, model)[:2]) if registered(view.root, model) else [Path(model)]
    if RETRIEVES[arm]:
        folders.append(view.root / view.config.store.path)
    size = sum(f.stat().st_size for folder in folders if folder for f in Path(folder).rglob("*") if f.is_file())
    return size / 2**20


def _answered_right(ws, run_id: str | None) -> set[str]:
    """Ids of the test questions an arm's evaluation run answered right (the answer holds a gold answer)."""
    from ragtune.experiment.runs import RUNS_DIR
    from ragtune.files import read_jsonl

    path = ws.state_dir / RUNS_DIR / run_id / "predictions.jsonl" if run_id else None
    if path is None or not path.is_file():
        return set()
    return {row["id"] for _, row in read_jsonl(path) if row.get("contains")}


def _freshness(ws, folder: Path, test: list, question_set: list, views: dict, right: dict[str, set[str]], progress,
               log) -> dict[str, Any]:
    from ragtune.evaluate.answers import contains
    from ragtune.evaluate.qa_eval import evaluate_qa, workspace_answerer

    n = ws.config.compare.fresh_questions
    if n == 0:
        return {"questions": 0, "reason": "[compare] fresh_questions = 0"}
    edits, skipped = plan_edits(ws, test, n, ws.config.compare.seed, question_set)
    files, edits = write_edited(ws, edits, folder / "edited")
    if not edits:
        log(f"freshness: no test answer could be changed in its document ({skipped}); not measured")
        return {"questions": 0, "skipped": skipped, "reason": "no test answer could be changed in an editable document"}
    fresh, report = fresh_index(ws, folder / "fresh", files, progress)
    log(f"freshness: {len(edits)} answers changed in {len(files)} edited file(s), re-ingested in {report.seconds:.1f} s")
    by_id = {it.id: it for it in test}
    items = [replace(by_id[e.question], answers=[e.new]) for e in edits]
    kinds = [fact_kind(e.old) for e in edits]
    out: dict[str, Any] = {"questions": len(edits), "skipped": skipped, "reingest_s": report.seconds,
                           "edits": [e.__dict__ for e in edits], "arms": {}}
    for arm, view in views.items():
        if RETRIEVES[arm]:
            view = fresh.with_config(fresh.config.override("generate", model=view.config.generate.model,
                                                           backend=view.config.generate.backend))
        result = evaluate_qa(items, workspace_answerer(view, "rag" if RETRIEVES[arm] else "closed-book"), progress=progress)
        answers = [p.prediction or "" for p in result.predictions]
        new = [contains(a, e.new) for a, e in zip(answers, edits)]
        knew = [e.question in right.get(arm, ()) for e in edits]  # answered right before the change
        shown = [e.new in (p.prompt or "") for p, e in zip(result.predictions, edits)]  # the edited passage was retrieved
        out["arms"][arm] = {"freshness": sum(new) / len(edits),
                            "old_value": sum(contains(a, e.old) for a, e in zip(answers, edits)) / len(edits),
                            "right_before": sum(knew),
                            "freshness_of_right": sum(n for n, k in zip(new, knew) if k) / sum(knew) if any(knew) else None,
                            "shown": sum(shown) if RETRIEVES[arm] else None,
                            "freshness_of_shown": sum(n for n, s in zip(new, shown) if s) / sum(shown) if RETRIEVES[arm] and any(shown) else None,
                            "by_kind": {kind: [sum(bool(n) for n, k in zip(new, kinds) if k == kind), kinds.count(kind)]
                                        for kind in sorted(set(kinds))},  # {kind of fact changed: [new values given, edits]}
                            "answers": answers}
    return out


def load_comparison(ws, compare_id: str) -> dict[str, Any]:
    """A comparison's record (``compare.json``); an unknown id names the ones there are."""
    path = ws.state_dir / COMPARE_DIR / compare_id / "compare.json"
    if not path.is_file():
        known = sorted(p.parent.name for p in (ws.state_dir / COMPARE_DIR).glob("*/compare.json"))
        raise WorkspaceError(f"no comparison {compare_id!r} in {ws.root}; "
                             + (f"known: {', '.join(known)}" if known else "run `ragtune compare --qa QUESTIONS` first"))
    return json.loads(path.read_text())


def arm_figures(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per arm, the figures the recommendation and the report use, from a comparison's record."""
    steps = state["steps"]
    fresh = steps.get("freshness", {})
    out = {}
    for arm in ARMS:
        ev = steps.get(f"evaluate {arm}")
        if ev is None:
            continue
        m = ev["metrics"]
        f = fresh.get("arms", {}).get(arm)
        trained = steps.get("train", {}).get(arm, {})
        out[arm] = {"f1": m.get("f1", 0.0), "em": m.get("em"), "contains": m.get("contains"),
                    "prompt_tokens": m.get("prompt_tokens_mean"), "completion_tokens": m.get("completion_tokens_mean"),
                    "latency_p50_ms": m.get("total_p50_ms"), "latency_p95_ms": m.get("total_p95_ms"),
                    "freshness": f["freshness"] if f else None, "old_value": f["old_value"] if f else None,
                    "right_before": f.get("right_before") if f else None, "freshness_of_right": f.get("freshness_of_right") if f else None,
                    "shown": f.get("shown") if f else None, "freshness_of_shown": f.get("freshness_of_shown") if f else None,
                    "fresh_by_kind": f.get("by_kind") if f else None, "fresh_questions": fresh.get("questions", 0),
                    "forgetting_flagged": trained.get("forgetting_flagged"), "train_s": trained.get("train_s"),
                    "footprint_mb": ev.get("footprint_mb"), "run": ev.get("run")}
    return out
