"""Synthetic QA: the strict pair parser, the keep/reject rules, and real runs over an index."""

from types import SimpleNamespace

import pytest

from ragtune import Workspace
from ragtune.errors import ConfigError, WorkspaceError
from ragtune.evaluate.qa import load_qa, write_qa
from ragtune.evaluate.synth import ATTEMPTS_PER_ITEM, STAT_KEYS, check_pair, parse_pair, supported, synth_qa
from ragtune.text import normalize
from tests.conftest import HANDBOOK, chunk_rows


@pytest.mark.parametrize("raw, pair", [
    ("Question: Who founded it?\nAnswer: Cornelius Vantreight", ("Who founded it?", "Cornelius Vantreight")),
    ("question:who founded it?\nANSWER:  Cornelius ", ("who founded it?", "Cornelius")),
    ("\n  Question: Who founded it?  \n\n  Answer: Cornelius\n", ("Who founded it?", "Cornelius")),
    ("Question: Who founded it?\nAnswer: Cornelius\nQuestion: When?\nAnswer: 1890", ("Who founded it?", "Cornelius")),
])
def test_pairs_in_the_format_parse(raw, pair):
    assert parse_pair(raw) == pair


@pytest.mark.parametrize("raw", [
    "",
    "Question: Who founded it?",
    "Question: Who founded it?\nAnswer:",
    "Question: Who founded it?\nAnswer:   ",
    "Question: Who founded it\nAnswer: Cornelius",  # not a question
    "Question: ?\nAnswer: Cornelius",
    "Answer: Cornelius\nQuestion: Who founded it?",
    "Q: Who founded it?\nA: Cornelius",
    "Question: Who founded it? Answer: Cornelius",
    "Here is a question.\nQuestion: Who founded it?\nAnswer: Cornelius",
    "The passage is about an observatory.",
])
def test_anything_else_is_not_a_pair(raw):
    assert parse_pair(raw) is None


PASSAGE = "Kestrel Ridge Observatory was founded in 1891 by Cornelius Vantreight, an amateur astronomer, on Mount Tavish."


@pytest.mark.parametrize("answer, ok", [
    ("Cornelius Vantreight", True),
    ("cornelius vantreight.", True),
    ("In 1891", True),
    ("Vantreight, astronomer on Tavish", True),  # not contiguous, but every content word is in the passage
    ("Vantreight on Mount Everest", False),  # 2 of its 3 content words: under MIN_SUPPORT
    ("Marie Curie", False),
    ("the", False),
    ("1 8 9 1", False),
])
def test_support_is_lexical(answer, ok):
    assert supported(answer, PASSAGE) is ok


def test_checks_run_in_order():
    assert check_pair("Who?", "one two three four five six seven eight nine ten eleven twelve thirteen", PASSAGE, set()) == "rejected_long"
    assert check_pair("Who founded it?", "Marie Curie", PASSAGE, set()) == "rejected_unsupported"
    assert check_pair("Did Cornelius Vantreight found it?", "Cornelius Vantreight", PASSAGE, set()) == "rejected_in_question"
    assert check_pair("Who founded it?", "Cornelius Vantreight", PASSAGE, {"who founded it"}) == "duplicates"
    assert check_pair("Who founded it?", "Cornelius Vantreight", PASSAGE, {"when"}) == "kept"


class ScriptedGenerator:
    """Returns the given outputs in turn; records the passages it was shown."""

    name = "scripted"

    def __init__(self, outputs):
        self.outputs, self.passages = list(outputs), []

    def generate(self, messages, max_tokens=None):
        self.passages.append(messages[-1]["content"])
        return SimpleNamespace(text=self.outputs.pop(0) if self.outputs else "no more")


@pytest.fixture(scope="module")
def notes(tmp_path_factory):
    """Nine one-chunk documents that all hold the same fact."""
    root = tmp_path_factory.mktemp("synth")
    docs = root / "docs"
    docs.mkdir()
    for i in range(9):
        (docs / f"note{i}.md").write_text(
            f"# Note {i}\n\nThe secret word is marmalade. It is kept by the archive team in room {i}, and it opens "
            "the cupboard of old maps and letters for visitors on weekdays between nine and noon.\n")
    ws = Workspace.init(root / "ws")
    ws.ingest([docs])
    return ws


SCRIPT = [
    "Question: What is the secret word?\nAnswer: marmalade",  # kept
    "Question: what is the SECRET word ?\nAnswer: Marmalade.",  # same question once normalised
    "Question: What colour is the sky?\nAnswer: bright purple",  # not in the passage
    "I cannot write a question about this passage.",  # not the format
    "Question: What opens the cupboard?\nAnswer: the secret word kept by the archive team opens the cupboard of old maps",
    "Question: Is the secret word marmalade?\nAnswer: marmalade",  # the answer is in the question
    "Question: Which room is the word kept in?\nAnswer: Question: Which room?",  # unsupported
    "Question: Who keeps the secret word?\nAnswer: the archive team",  # kept
    "Question: When can visitors open the cupboard?\nAnswer: on weekdays between nine and noon",  # kept
]


def test_duplicates_and_unsupported_answers_are_rejected_and_counted(notes):
    gen = ScriptedGenerator(SCRIPT)
    items, stats = synth_qa(notes.store, gen, n=3, seed=7)
    assert stats == {"attempted": 9, "parsed": 8, "parse_failures": 1, "rejected_long": 1, "rejected_unsupported": 2,
                     "rejected_in_question": 1, "duplicates": 1, "kept": 3}
    assert [i.question for i in items] == ["What is the secret word?", "Who keeps the secret word?",
                                           "When can visitors open the cupboard?"]
    rows = {r["id"]: r for r in chunk_rows(notes)}
    for item in items:
        row = rows[item.metadata["chunk_id"]]
        assert item.doc_ids == [row["doc_id"]] and item.context == row["text"]
        assert item.metadata == {"chunk_id": row["id"], "source": row["source"], "generator": "scripted", "synthetic": True}
        assert item.id.startswith("synth-")
    assert len(set(gen.passages)) == 9  # every attempt was a different chunk


def test_same_seed_same_items_and_ids(notes):
    first, _ = synth_qa(notes.store, ScriptedGenerator(SCRIPT), n=3, seed=7)
    again, _ = synth_qa(notes.store, ScriptedGenerator(SCRIPT), n=3, seed=7)
    other, _ = synth_qa(notes.store, ScriptedGenerator(SCRIPT), n=3, seed=8)
    assert first == again
    assert [i.id for i in first] != [i.id for i in other]  # another seed samples other chunks


def test_gives_up_after_a_few_chunks_per_question(notes):
    gen = ScriptedGenerator([])  # never in the format
    items, stats = synth_qa(notes.store, gen, n=2)
    assert items == [] and stats["attempted"] == stats["parse_failures"] == ATTEMPTS_PER_ITEM * 2 == len(gen.passages)
    items, stats = synth_qa(notes.store, ScriptedGenerator([]), n=5)
    assert stats["attempted"] == 9  # only nine chunks to try


def test_mistakes_say_what_to_do(notes, tmp_path):
    with pytest.raises(ConfigError, match="at least 1"):
        synth_qa(notes.store, ScriptedGenerator([]), n=0)
    with pytest.raises(WorkspaceError, match="ragtune ingest"):
        synth_qa(Workspace.init(tmp_path / "empty").store, ScriptedGenerator([]), n=1)


@pytest.mark.slow
def test_real_run_on_the_handbook_with_smollm2(tmp_path):
    ws = Workspace.init(tmp_path / "ws")
    ws.ingest([HANDBOOK])
    items, stats = synth_qa(ws.store, ws.generator, n=3, seed=0)
    assert set(stats) == set(STAT_KEYS)
    assert stats["attempted"] == stats["parse_failures"] + sum(v for k, v in stats.items() if k.startswith("rejected_")) \
        + stats["duplicates"] + stats["kept"]
    assert stats["parsed"] == stats["attempted"] - stats["parse_failures"]
    assert stats["kept"] == len(items) and 1 <= len(items) <= 3 and stats["attempted"] <= ATTEMPTS_PER_ITEM * 3
    rows = {r["id"]: r for r in chunk_rows(ws)}
    for item in items:
        assert item.doc_ids[0] in {r["doc_id"] for r in rows.values()}
        assert item.context == rows[item.metadata["chunk_id"]]["text"]
        assert supported(item.answers[0], item.context) and len(item.answers[0].split()) <= 12
        assert item.metadata["generator"] == ws.generator.name and item.metadata["synthetic"] is True
    assert len({normalize(i.question) for i in items}) == len(items)
    write_qa(items, tmp_path / "synth.jsonl")
    assert load_qa(tmp_path / "synth.jsonl") == items  # a valid QA file, ready for `ragtune eval qa`
