"""The store conformance suite: what every backend in ``ragtune.store.BACKENDS`` must do.

A new backend is added to ``BACKENDS`` and must pass this file unchanged (one that needs a server
names the fixture that starts it in ``SERVERS``; LanceDB on S3 runs it too, from ``PLACES``). The tests use small
synthetic chunks and unit vectors (no embedding model): round trip, dense and keyword search,
filters given as data, incremental re-ingest (a file's chunks replaced in one commit), deletion,
model identity, a writer killed with SIGKILL mid-stream (only whole files survive, and writing
goes on), and a reader searching while another process writes (it sees one version at a time).
"""

import dataclasses
import hashlib
import json
import signal
import subprocess
import sys
import textwrap
import time
import typing

import numpy as np
import pytest

from ragtune.config import StoreBackend, StoreConfig
from ragtune.errors import ConfigError, IndexMismatchError
from ragtune.store import BACKENDS, Filter, open_store, parse_filters
from ragtune.types import Chunk

DIM = 16
MODEL, MODEL_ID = "test-model", "test-model/onnx@0123456789abcdef"


def vector(text: str) -> np.ndarray:
    """A unit vector fixed by the text: the same text, the same vector."""
    rng = np.random.default_rng(int(hashlib.sha256(text.encode()).hexdigest()[:8], 16))
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def chunks(source: str, texts: list[str], page: int | None = None, **metadata) -> list[Chunk]:
    out, at = [], 0
    for i, text in enumerate(texts):
        out.append(Chunk(doc_id=source, source=source, title=f"Title of {source}", headings=(f"Part {i}",), page=page,
                         start=at, end=at + len(text), text=text, n_tokens=len(text.split()), metadata=dict(metadata)))
        at += len(text) + 1
    return out


def commit(store, files: list[tuple[str, str, list[Chunk]]], replace: set[str] = frozenset()) -> int:
    vectors = np.stack([vector(c.text) for _, _, cs in files for c in cs])
    version = store.commit(files, vectors, set(replace))
    store.finalize()
    return version


HANDBOOK = [
    ("docs/travel.md", "k-travel-1", chunks("docs/travel.md", ["Hotels in capital cities cost at most 240 credits a night.",
                                                              "Mileage is refunded at 0.3 credits per kilometre."], lang="en")),
    ("docs/badge.md", "k-badge-1", chunks("docs/badge.md", ["The Badge Office is in room G-114 of the Halvorsen building."], lang="en")),
    ("notes/zebra.txt", "k-zebra-1", chunks("notes/zebra.txt", ["A zebra crossing marks where walkers cross the road."], page=3,
                                            lang="de", year=2024)),
]


SERVERS = {"pgvector": "pgvector_url"}  # backend -> the fixture giving its server's [store] url
PLACES = {"lancedb-s3": "s3_config"}  # a backend elsewhere -> the fixture giving its [store] settings (a fresh place)


@pytest.fixture(params=[*sorted(BACKENDS), *PLACES])
def config(request) -> StoreConfig:
    if request.param in PLACES:
        return request.getfixturevalue(PLACES[request.param])
    url = request.getfixturevalue(SERVERS[request.param]) if request.param in SERVERS else ""
    return StoreConfig(backend=request.param, url=url)


@pytest.fixture
def store(config, tmp_path):
    s = open_store(config, tmp_path / "index")
    s.ensure(MODEL, MODEL_ID, DIM)
    commit(s, HANDBOOK)
    return s


def sources(hits) -> list[str]:
    return [h.source for h in hits]


def test_round_trip_rows_stats_and_file_keys(store):
    rows = store.rows(["id", "source", "text", "start", "end"])
    assert sorted(r["text"] for r in rows) == sorted(c.text for _, _, cs in HANDBOOK for c in cs)
    assert len({r["id"] for r in rows}) == 4
    stats = store.stats()
    assert (stats.chunks, stats.sources, stats.documents, stats.dim, stats.model_id) == (4, 3, 3, DIM, MODEL_ID)
    assert store.file_keys() == {"docs/travel.md": "k-travel-1", "docs/badge.md": "k-badge-1", "notes/zebra.txt": "k-zebra-1"}
    assert store.exists() and stats.index_version == store.version()


def test_dense_search_ranks_by_cosine_and_carries_provenance(store):
    text = "The Badge Office is in room G-114 of the Halvorsen building."
    hits = store.dense(vector(text), 4)
    assert [h.rank for h in hits] == [1, 2, 3, 4] and hits[0].text == text
    assert hits[0].similarity == pytest.approx(1.0, abs=1e-5) and hits[0].score == hits[0].similarity
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    assert (hits[0].source, hits[0].title, hits[0].heading, hits[0].metadata) == ("docs/badge.md", "Title of docs/badge.md",
                                                                                  "Part 0", {"lang": "en"})
    sims = store.similarities(vector(text), [h.chunk_id for h in hits])
    assert set(sims) == {h.chunk_id for h in hits} and sims[hits[0].chunk_id] == pytest.approx(1.0, abs=1e-5)


def test_keyword_search_finds_the_rare_word(store):
    hits = store.bm25("zebra", 3)
    assert sources(hits) == ["notes/zebra.txt"] and hits[0].score > 0 and hits[0].page == 3
    assert store.bm25("kilometre mileage", 1)[0].text.startswith("Mileage")
    assert store.bm25("nonexistentword", 3) == []


def test_keyword_scores_weigh_rare_words_and_repeats_like_bm25(config, tmp_path):
    """Inverse document frequency: a chunk with the query's rare word outranks one with its common word
    (said three times, so a ranking without IDF would put it first); term frequency: of two chunks with the
    same words, the one saying the rare word twice ranks higher."""
    store = open_store(config, tmp_path / "index")
    store.ensure(MODEL, MODEL_ID, DIM)
    filler = [f"The office report number {i} covers the office budget." for i in range(8)]
    texts = ["Office office office hours change on Monday.", "The walrus visited on Monday.",
             "A walrus and a walrus met on Monday.", *filler]
    commit(store, [("notes/words.txt", "k-words-1", chunks("notes/words.txt", texts))])
    ranked = [h.text for h in store.bm25("office walrus", 4)]
    assert ranked[:2] == [texts[2], texts[1]], ranked
    assert ranked.index(texts[0]) == 2


@pytest.mark.parametrize("items, expected", [
    (["source=docs/badge.md"], {"docs/badge.md"}),
    (["source=docs/*"], {"docs/travel.md", "docs/badge.md"}),
    (["page=3"], {"notes/zebra.txt"}),
    (["lang=en"], {"docs/travel.md", "docs/badge.md"}),
    (["meta.year=2024"], {"notes/zebra.txt"}),
    (["lang=en", "source=*badge*"], {"docs/badge.md"}),
    (["lang=fr"], set()),
])
def test_filters_given_as_data_hold_in_both_searches(store, items, expected):
    filters = parse_filters(items)
    assert all(isinstance(f, Filter) for f in filters)
    assert set(sources(store.dense(vector("anything"), 10, filters))) == expected
    everything = "hotels mileage badge office zebra crossing"
    assert set(sources(store.bm25(everything, 10, filters))) == expected


@pytest.mark.parametrize("items", [["source=x' OR '1'='1"], ["source=*' OR '1'='1"], ["lang=x' OR '1'='1"],
                                   ["title=Title of docs/badge.md'; DROP TABLE chunks; --"]])
def test_a_filter_value_is_data_never_query_text(store, items):
    filters = parse_filters(items)
    assert store.dense(vector("anything"), 10, filters) == [] and store.bm25("hotels zebra badge", 10, filters) == []
    store.delete_sources(["x' OR '1'='1", "*"])
    store.finalize()
    store.pin()
    assert store.stats().chunks == 4 and len(store.dense(vector("anything"), 10)) == 4


def test_bad_filters_name_the_problem():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_filters(["source"])
    with pytest.raises(ConfigError, match="whole number"):
        parse_filters(["page=three"])
    with pytest.raises(ConfigError, match="metadata field names"):
        parse_filters(["meta.a b=1"])


def test_reingest_replaces_a_files_chunks_in_one_commit(store):
    before = store.version()
    new = chunks("docs/travel.md", ["Hotels now cost at most 260 credits a night.", "Mileage: 0.35 credits per km.",
                                    "Per diem is 45 credits."], lang="en")
    version = commit(store, [("docs/travel.md", "k-travel-2", new)], replace={"docs/travel.md"})
    assert version > before
    rows = store.rows(["source", "text", "file_key"])
    travel = sorted(r["text"] for r in rows if r["source"] == "docs/travel.md")
    assert travel == sorted(c.text for c in new) and {r["file_key"] for r in rows if r["source"] == "docs/travel.md"} == {"k-travel-2"}
    assert store.file_keys()["docs/travel.md"] == "k-travel-2" and store.stats().chunks == 5
    store.pin()
    assert "240" not in " ".join(h.text for h in store.bm25("hotels credits night", 5))


def test_deleted_sources_leave_every_search(store):
    store.delete_sources(["notes/zebra.txt"])
    store.finalize()
    store.pin()
    assert "notes/zebra.txt" not in store.file_keys() and store.stats().chunks == 3
    assert store.bm25("zebra", 3) == []
    assert "notes/zebra.txt" not in sources(store.dense(vector("A zebra crossing marks where walkers cross the road."), 10))


def test_the_embedding_model_is_part_of_the_index(store, config):
    store.check(MODEL_ID)
    store.pin(MODEL_ID)  # a search's pin checks the version it pins
    with pytest.raises(IndexMismatchError, match="rebuild"):
        store.check("other-model/onnx@ffffffffffffffff")
    with pytest.raises(IndexMismatchError, match="rebuild"):
        store.pin("other-model/onnx@ffffffffffffffff")
    with pytest.raises(IndexMismatchError):
        store.ensure("other-model", "other-model/onnx@ffffffffffffffff", DIM)
    again = open_store(config, store.path)  # a second handle reads the same identity
    again.check(MODEL_ID)
    again.drop()
    assert not open_store(config, store.path).exists()


def test_a_pinned_reader_sees_one_version_until_it_pins_again(store, config):
    reader = open_store(config, store.path)
    reader.pin()
    pinned = reader.pinned_version
    writer = open_store(config, store.path)
    commit(writer, [("notes/quartz.txt", "k-quartz-1", chunks("notes/quartz.txt", ["Quartz clocks keep time with a crystal."]))])
    assert reader.pinned_version == pinned and reader.bm25("quartz crystal", 3) == []
    reader.pin()
    assert reader.pinned_version > pinned and sources(reader.bm25("quartz crystal", 3)) == ["notes/quartz.txt"]


WRITER = textwrap.dedent("""
    import sys
    sys.path[:0] = {paths!r}
    from tests.store.test_store_conformance import chunks, commit
    from ragtune.config import StoreConfig
    from ragtune.store import open_store
    store = open_store(StoreConfig(**{config!r}), __import__("pathlib").Path({path!r}))
    for i in range(400):
        texts = [f"Batch {{i}} line {{j}} about topic{{i}} and word{{j}}." for j in range(6)]
        commit(store, [(f"gen/f{{i:03d}}.txt", f"key-{{i}}", chunks(f"gen/f{{i:03d}}.txt", texts))])
        print(i, flush=True)
""")


def _writer(config, path) -> subprocess.Popen:
    code = WRITER.format(paths=sys.path, config=dataclasses.asdict(config), path=str(path))
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _whole_files(store) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in store.rows(["source"]):
        counts[r["source"]] = counts.get(r["source"], 0) + 1
    generated = {s: n for s, n in counts.items() if s.startswith("gen/")}
    assert all(n == 6 for n in generated.values()), f"a file is in the index in part: {generated}"
    return generated


@pytest.mark.slow
@pytest.mark.parametrize("after", [2, 9])
def test_a_writer_killed_mid_stream_leaves_whole_files_and_writing_goes_on(store, config, after):
    proc = _writer(config, store.path)
    done = -1
    while done < after:
        line = proc.stdout.readline()
        assert line, f"the writer stopped early: {proc.stderr.read()[-2000:]}"
        done = int(line)
    time.sleep(0.01 * after)  # somewhere inside the next commits
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    survivor = open_store(config, store.path)
    survivor.check(MODEL_ID)
    generated = _whole_files(survivor)
    assert len(generated) >= after + 1  # every file reported as committed is there
    assert survivor.stats().chunks == 4 + 6 * len(generated)
    commit(survivor, [("notes/after.txt", "k-after", chunks("notes/after.txt", ["Written after the crash."]))])
    survivor.pin()
    assert sources(survivor.bm25("crash written", 3))[:1] == ["notes/after.txt"]


@pytest.mark.slow
def test_a_reader_searching_while_another_process_writes_sees_whole_versions(store, config):
    proc = _writer(config, store.path)
    reader = open_store(config, store.path)
    seen, deadline = set(), time.time() + 60
    try:
        while len(seen) < 5 and time.time() < deadline and proc.poll() is None:
            reader.pin()
            everything = reader.dense(vector("anything"), 10_000)  # the whole pinned version
            counts: dict[str, int] = {}
            for h in everything:
                counts[h.source] = counts.get(h.source, 0) + 1
            generated = {s: n for s, n in counts.items() if s.startswith("gen/")}
            assert all(n == 6 for n in generated.values()), f"a search saw a file in part: {generated}"
            assert len(everything) == 4 + 6 * len(generated)
            seen.add(reader.pinned_version)
    finally:
        proc.kill()
        proc.wait()
    assert len(seen) >= 2, "the reader never saw the writer's commits"


def test_unknown_backend_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match="choose one of: lancedb, pgvector"):
        open_store(StoreConfig(backend="qdrant-ish"), tmp_path)
    assert list(BACKENDS) == list(typing.get_args(StoreBackend))  # what ragtune.toml accepts


def test_filters_are_plain_hashable_data():
    a, b = parse_filters({"source": "docs/*.md", "lang": "en"}), parse_filters(["source=docs/*.md", "meta.lang=en"])
    assert a == b and hash(a) == hash(b) and json.dumps([f.__dict__ for f in a])
