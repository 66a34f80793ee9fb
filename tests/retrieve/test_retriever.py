"""The Retriever component: settings as defaults, a ranking memo shared by its configured copies."""

import pytest

from ragtune.config import RetrieveConfig
from ragtune.retrieve import RankingMemo, Retriever
from ragtune.store import Filter


@pytest.fixture
def indexed(ws, handbook_copy):
    ws.ingest([handbook_copy])
    return ws


def test_settings_are_the_defaults_and_arguments_win(indexed):
    r = Retriever(indexed.store, indexed.embedder, RetrieveConfig(k=2, mode="bm25"))
    assert len(r.search("travel per diem hotel")) == 2
    assert len(r.search("travel per diem hotel", k=4, mode="dense")) == 4
    assert all(h.similarity is not None for h in r.search("travel per diem hotel", mode="dense"))  # dense hits know it
    assert all(h.similarity is not None for h in r.search("travel per diem hotel", similarity=True))


def test_filters_as_strings_dicts_or_filters_agree(indexed):
    r = indexed.retriever
    query = "badge office visitor parking"
    as_filters = r.search(query, k=5, filters=(Filter("source", "*.md"),))
    assert as_filters and all(h.source.endswith(".md") for h in as_filters)
    assert [h.chunk_id for h in r.search(query, k=5, filters=["source=*.md"])] == [h.chunk_id for h in as_filters]
    assert [h.chunk_id for h in r.search(query, k=5, filters={"source": "*.md"})] == [h.chunk_id for h in as_filters]


def test_configured_copies_share_the_memo_and_a_smaller_k_is_a_prefix(indexed):
    deep = Retriever(indexed.store, indexed.embedder, RetrieveConfig(k=8, mode="dense"), RankingMemo(depth=20))
    first = deep.search("Who founded the observatory?")
    assert deep.saved_s == 0.0  # nothing reused yet
    shallow = deep.configured(RetrieveConfig(k=3, mode="dense"))
    assert shallow.memo is deep.memo and shallow.config.k == 3
    again = shallow.search("Who founded the observatory?")
    assert [h.chunk_id for h in again] == [h.chunk_id for h in first[:3]]
    assert shallow.saved_s > 0  # the ranking came from the memo, its search time is accounted for
    unshared = Retriever(indexed.store, indexed.embedder, RetrieveConfig(k=3, mode="dense"))
    assert [h.chunk_id for h in unshared.search("Who founded the observatory?")] == [h.chunk_id for h in again]
    assert unshared.saved_s == 0.0
