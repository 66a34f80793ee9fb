"""What the pgvector backend does beyond the conformance suite: table names, shared databases,
LIKE escaping, the password's way in, connection errors, and the HNSW index at work."""

import numpy as np
import pytest

from ragtune.config import StoreConfig
from ragtune.errors import ConfigError, IndexMismatchError, WorkspaceError
from ragtune.store import Filter, open_store, parse_filters
from ragtune.store.pgvector import compile_filters, connect
from tests.store.test_store_conformance import DIM, MODEL, MODEL_ID, chunks, commit, sources, vector


@pytest.fixture
def config(pgvector_url):
    return StoreConfig(backend="pgvector", url=pgvector_url)


def test_two_indexes_share_a_database_without_seeing_each_other(config, tmp_path):
    a, b = open_store(config, tmp_path / "a" / "index"), open_store(config, tmp_path / "b" / "index")
    assert a.prefix != b.prefix and a.prefix == open_store(config, tmp_path / "a" / "index").prefix
    for store, name in [(a, "alpha"), (b, "beta")]:
        store.ensure(MODEL, MODEL_ID, DIM)
        commit(store, [(f"{name}.txt", "k1", chunks(f"{name}.txt", [f"The {name} file."]))])
    assert sources(a.dense(vector("x"), 10)) == ["alpha.txt"] and sources(b.bm25("beta file", 10)) == ["beta.txt"]
    named = StoreConfig(backend="pgvector", url=config.url, table="team_docs")
    assert open_store(named, tmp_path / "c").prefix == open_store(named, tmp_path / "d").prefix == "team_docs"


@pytest.mark.parametrize("table", ["Docs", "1docs", "docs; drop", "a" * 49])
def test_a_table_name_outside_lowercase_identifiers_is_refused(table, tmp_path):
    with pytest.raises(ConfigError, match=r"\[store\] table"):
        open_store(StoreConfig(backend="pgvector", url="postgresql://u@h/db", table=table), tmp_path)


def test_wildcards_are_the_only_pattern_characters(config, tmp_path):
    store = open_store(config, tmp_path / "index")
    store.ensure(MODEL, MODEL_ID, DIM)
    files = [(s, "k", chunks(s, [f"Notes kept in {s}."])) for s in ["docs/a_b.md", "docs/axb.md", "docs/100%.md", "docs/1000.md"]]
    commit(store, files)

    def found(item):
        return sorted(sources(store.dense(vector("x"), 10, parse_filters([item]))))

    assert found("source=docs/a_b*") == ["docs/a_b.md"] and found("source=docs/100%*") == ["docs/100%.md"]
    assert found("source=*%*") == ["docs/100%.md"] and found("source=docs/*") == sorted(s for s, _, _ in files)


def test_filters_compile_to_bound_parameters_and_known_columns_only():
    clauses, params = compile_filters((Filter("source", "docs/*"), Filter("page", "3"), Filter("meta.x'y", "1' OR '1'='1")))
    assert clauses == ['"source" LIKE %(v0)s', '"page" = %(v1)s', "metadata ->> %(k2)s = %(v2)s"]
    assert params == {"v0": "docs/%", "v1": 3, "k2": "x'y", "v2": "1' OR '1'='1"}
    with pytest.raises(ConfigError, match="cannot filter on"):
        compile_filters((Filter('source" OR 1=1 --', "x"),))


@pytest.mark.parametrize("query, found", [("G-114", True), ("O'Brien's badge", True), ("badge & !office | (zebra", True),
                                          ("office:* <-> '", True), ("\\ ( ! :", False), ("the of and", False)])
def test_keyword_queries_are_words_never_tsquery_syntax(config, tmp_path, query, found):
    store = open_store(config, tmp_path / "index")
    store.ensure(MODEL, MODEL_ID, DIM)
    commit(store, [("badge.md", "k", chunks("badge.md", ["The Badge Office is in room G-114; ask O'Brien."]))])
    assert sources(store.bm25(query, 5)) == (["badge.md"] if found else [])  # stop words alone match nothing


def test_an_index_that_does_not_exist_says_how_to_make_one(config, tmp_path):
    with pytest.raises(WorkspaceError, match=r"ragtune ingest.*named from this workspace's index path.*\[store\] table"):
        open_store(config, tmp_path / "none").pin()  # e.g. a replica without [store] table: not the shared tables
    named = StoreConfig(backend="pgvector", url=config.url, table="nobody_here")
    with pytest.raises(WorkspaceError, match="ragtune ingest") as e:
        open_store(named, tmp_path / "none").stats()
    assert "[store] table" not in str(e.value)


def test_the_password_comes_from_the_environment_never_the_url(config, monkeypatch):
    monkeypatch.setenv("RAGTUNE_PG_PASSWORD", "s3cret")
    with connect(config) as conn:
        assert conn.info.password == "s3cret"
    with_password = StoreConfig(backend="pgvector", url=config.url.replace("ragtune@", "ragtune:hunter2@"))
    with pytest.raises(ConfigError, match="RAGTUNE_PG_PASSWORD") as e:
        connect(with_password)
    assert "hunter2" not in str(e.value)


def test_an_unreachable_server_is_one_clear_error(tmp_path):
    store = open_store(StoreConfig(backend="pgvector", url="postgresql://ragtune@127.0.0.1:1/docs"), tmp_path)
    with pytest.raises(ConfigError, match=r"127\.0\.0\.1:1/docs.*\[store\] url"):
        store.exists()
    with pytest.raises(ConfigError, match="needs .store. url"):
        open_store(StoreConfig(backend="pgvector"), tmp_path).exists()


def test_dense_search_uses_the_hnsw_index_and_finds_the_exact_neighbours(config, tmp_path):
    store = open_store(config, tmp_path / "index")
    store.ensure(MODEL, MODEL_ID, DIM)
    texts = [f"Line {i} of the long file." for i in range(300)]
    commit(store, [("long.txt", "k", chunks("long.txt", texts))])
    query = vector("a query").astype(np.float64)  # the server computes in double precision too
    exact = sorted(texts, key=lambda t: -float(vector(t).astype(np.float64) @ query))
    assert [h.text for h in store.dense(query, 5)] == exact[:5]
    assert [h.text for h in store.dense(query, 2000)] == exact  # past ef_search's limit: an exact scan
    with connect(config) as conn:
        conn.execute("SET enable_seqscan = off")  # 300 rows: the planner would rather scan them all
        plan = conn.execute(f"EXPLAIN SELECT id FROM {store.prefix}_chunks ORDER BY embedding <=> %s::vector LIMIT 5",
                            ["[" + ",".join(["1"] * DIM) + "]"]).fetchall()
    assert f"{store.prefix}_hnsw" in " ".join(r["QUERY PLAN"] for r in plan)


def indexes(config, store, table: str, like: str = "%") -> list[str]:
    """Names of the indexes on the store's table ``table`` whose definition is LIKE ``like``."""
    with connect(config) as conn:
        rows = conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s AND indexdef LIKE %s ORDER BY 1",
                            [f"{store.prefix}_{table}", like]).fetchall()
    return [r["indexname"] for r in rows]


def hnsw_indexes(config, store) -> list[str]:
    return indexes(config, store, "chunks", "%USING hnsw%")


def terms_indexes(config, store) -> list[str]:
    return indexes(config, store, "terms")


def test_the_hnsw_index_is_built_once_after_the_first_ingest_or_by_the_next_one(config, tmp_path):
    """Rows go in without the graph or the postings' btrees (each insert would otherwise update them); finalize
    builds them once; an ingest that stopped before its finalize leaves none, and the next ingest's ensure builds them."""
    store = open_store(config, tmp_path / "index")
    store.ensure(MODEL, MODEL_ID, DIM)
    texts = [f"Line {i} of the file." for i in range(50)]
    store.commit([("a.txt", "k", chunks("a.txt", texts))], np.stack([vector(t) for t in texts]), set())
    assert hnsw_indexes(config, store) == [] and terms_indexes(config, store) == []
    query = vector("a query")
    exact = sorted(texts, key=lambda t: -float(vector(t) @ query))
    assert [h.text for h in store.dense(query, 3)] == exact[:3]  # an exact scan meanwhile
    assert [h.text for h in store.bm25("line 7", 1)] == ["Line 7 of the file."]  # and the postings read whole
    store.ensure(MODEL, MODEL_ID, DIM)  # the next ingest begins: the killed one's rows get their indexes
    assert hnsw_indexes(config, store) == [f"{store.prefix}_hnsw"]
    assert terms_indexes(config, store) == [f"{store.prefix}_terms_chunk", f"{store.prefix}_terms_term"]
    store.finalize()
    assert hnsw_indexes(config, store) == [f"{store.prefix}_hnsw"]  # one, not two
    assert terms_indexes(config, store) == [f"{store.prefix}_terms_chunk", f"{store.prefix}_terms_term"]


def test_postings_and_counts_follow_every_replace_and_delete(config, tmp_path):
    """BM25 reads its postings table and the chunk and term counts in the meta row: after commits, a
    replaced file and a deleted one they equal what a recount from the chunks' texts gives."""
    store = open_store(config, tmp_path / "index")
    store.ensure(MODEL, MODEL_ID, DIM)
    commit(store, [("a.txt", "k1", chunks("a.txt", ["Owls hunt mice at night.", "Owls sleep by day, owls rest."])),
                   ("b.txt", "k1", chunks("b.txt", ["Bats hunt moths at night."]))])
    commit(store, [("a.txt", "k2", chunks("a.txt", ["Hawks hunt by day."]))], replace={"a.txt"})
    commit(store, [("c.txt", "k1", chunks("c.txt", ["Moles dig tunnels.", "Moles eat worms."]))])
    store.delete_sources(["c.txt"])
    with connect(config) as conn:
        recount = conn.execute(f"""SELECT count(*) AS chunks, (SELECT sum(cardinality(u.positions)) FROM {store.prefix}_chunks c,
            unnest(to_tsvector('english', c.search_text)) u) AS terms FROM {store.prefix}_chunks""").fetchone()
        meta = conn.execute(f"SELECT chunks, terms FROM {store.prefix}_meta").fetchone()
        orphans = conn.execute(f"SELECT count(*) AS n FROM {store.prefix}_terms t WHERE NOT EXISTS "
                               f"(SELECT 1 FROM {store.prefix}_chunks c WHERE c.seq = t.chunk)").fetchone()["n"]
        owl = conn.execute(f"SELECT tf, len FROM {store.prefix}_terms WHERE term = 'owl'").fetchall()
    assert dict(meta) == dict(recount) and meta["chunks"] == 2 and orphans == 0 and owl == []
    hawk = store.bm25("hawks hunting", 5)
    assert sources(hawk) == ["a.txt", "b.txt"] and hawk[0].score > hawk[1].score > 0  # 'hawk' is rarer than 'hunt'
    assert sources(store.bm25("hunt", 5, parse_filters(["source=b.txt"]))) == ["b.txt"]


def test_an_index_of_the_first_format_asks_for_a_rebuild(config, tmp_path):
    store = open_store(config, tmp_path / "index")
    store.ensure(MODEL, MODEL_ID, DIM)
    with connect(config) as conn:
        conn.execute(f"UPDATE {store.prefix}_meta SET format_version = 1")
        conn.commit()
    with pytest.raises(IndexMismatchError, match=r"format 1, this ragtune reads 2: rebuild it with `ragtune index rebuild`"):
        store.ensure(MODEL, MODEL_ID, DIM)
    with pytest.raises(IndexMismatchError, match=r"format 1, this ragtune reads 2"):
        store.pin(MODEL_ID)  # a search's pin reads the same row



def test_each_search_runs_under_the_hnsw_settings_it_needs_within_one_pin(config, tmp_path):
    """pin sets the settings of an unfiltered search of <= 100 results; a filtered search in the same
    snapshot needs iterative scans (else the filter thins HNSW's candidates to too few), a deeper one a
    larger ef_search, and a search after those the pin's settings back."""
    store = open_store(config, tmp_path / "index")
    store.ensure(MODEL, MODEL_ID, DIM)
    commit(store, [("a.txt", "k", chunks("a.txt", [f"Line {i}." for i in range(50)]))])
    query = vector("Line 7.")

    def settings() -> tuple[str, str]:  # read inside the pinned transaction, as the searches run
        row = store._read("SELECT current_setting('hnsw.ef_search') AS ef, current_setting('hnsw.iterative_scan') AS it", [])[0]
        return row["ef"], row["it"]

    store.pin(MODEL_ID)
    assert settings() == ("100", "off")
    store.dense(query, 10, parse_filters(["source=a.txt"]))
    assert settings() == ("100", "strict_order")
    store.dense(query, 300)
    assert settings() == ("300", "off")
    store.dense(query, 10)
    assert settings() == ("100", "off")
    store.pin(MODEL_ID)  # a new snapshot starts from the pin's settings
    assert settings() == ("100", "off")
