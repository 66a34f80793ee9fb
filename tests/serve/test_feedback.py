"""The feedback store, on SQLite and on a real PostgreSQL server (the same tests), and its export as training data."""
import json
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from ragtune.errors import ConfigError, DatasetError
from ragtune.serve.export import export, rows_for
from ragtune.serve.feedback import MIGRATIONS, FeedbackError, FeedbackStore, Response, new_id


def prompt(q):
    return [{"role": "system", "content": "Answer from the sources."}, {"role": "user", "content": q}]


def served(store, q, answer, model="rag"):
    return store.add_response(Response(new_id("resp"), model, prompt(q), answer, question=q,
                                       sources=[{"id": "handbook/a.md#0", "title": "A"}], weights_sha256="abc",
                                       usage={"prompt_tokens": 10, "completion_tokens": 3})).id


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    url = tmp_path / "feedback.sqlite" if request.param == "sqlite" else request.getfixturevalue("postgres")()
    with FeedbackStore(url) as s:
        yield s


def test_responses_and_feedback_round_trip_and_migrations_apply_once(store):
    path = store.url
    with store as s:
        rid = served(s, "How long is leave?", "25 days [1].")
        fb, new = s.add_feedback("thumb", rid, label=False, comment="too short", correction="25 working days a year [1].")
        assert new and fb.kind == "thumb"
        s.add_feedback("score", rid, score=4)
    with FeedbackStore(path) as s:  # reopening applies nothing twice and loses nothing
        assert s.migrations() == [name for name, _ in MIGRATIONS]
        r = s.response(rid)
        assert r.messages == prompt("How long is leave?") and r.sources[0]["id"] == "handbook/a.md#0"
        assert r.weights_sha256 == "abc" and r.usage["completion_tokens"] == 3 and r.created
        got = s.feedback()
        assert [(f.kind, f.label, f.score, f.correction) for f in got] == [
            ("thumb", False, None, "25 working days a year [1]."), ("score", None, 4, None)]
        assert s.counts() == {"responses": 1, "thumb": 1, "score": 1}


def test_reading_page_by_page_returns_every_row_once_even_when_they_share_a_timestamp(store, monkeypatch):
    import ragtune.serve.feedback as feedback

    monkeypatch.setattr(feedback, "now", lambda: "2026-12-02T00:00:00.000000+00:00")  # one clock tick for all
    with store as s:
        rid = served(s, "Q?", "A.")
        added = [s.add_feedback("score", rid, score=1 + i % 5)[0].id for i in range(23)]
        pages, after = [], None
        while page := s.feedback(after, limit=5):
            pages.append([f.id for f in page])
            after = page[-1].id
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert [i for p in pages for i in p] == sorted(added)  # all, once, in arrival (id) order


def test_a_store_from_a_newer_ragtune_is_refused(tmp_path):
    path = tmp_path / "fb.sqlite"
    FeedbackStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO migrations VALUES ('9999_future', 'x')")
    with pytest.raises(ConfigError, match="9999_future.*newer"):
        FeedbackStore(path)


def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "fb.sqlite"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ConfigError, match="not a SQLite database"):
        FeedbackStore(path)
    assert path.read_bytes() == b"not a database at all" * 100


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="like", response_id="R"), "kind 'like'"),
    (dict(kind="thumb", response_id="R"), "label"),
    (dict(kind="thumb", response_id="R", label="yes"), "label"),
    (dict(kind="score", response_id="R", score=6), "1 to 5"),
    (dict(kind="score", response_id="R", score=True), "1 to 5"),
    (dict(kind="ranking", ranking=["R"]), "at least two"),
    (dict(kind="ranking", ranking=["R", "R"]), "at least two"),
    (dict(kind="thumb", response_id="nope", label=True), "unknown response id 'nope'"),
    (dict(kind="ranking", ranking=["R", "nope"]), "unknown response id 'nope'"),
    (dict(kind="ranking", ranking=["R", "OTHER"]), "same prompt"),
    (dict(kind="thumb", response_id="R", label=True, correction="  "), "correction"),
    (dict(kind="thumb", response_id="R", label=True, comment="x" * 20_001), "comment"),
])
def test_bad_feedback_is_refused_by_name_and_nothing_is_stored(store, kwargs, message):
    ids = {"R": served(store, "q1", "a1"), "OTHER": served(store, "q2", "a2")}
    kwargs = {k: ([ids.get(x, x) for x in v] if k == "ranking" else ids.get(v, v) if k == "response_id" else v)
              for k, v in kwargs.items()}
    with pytest.raises(FeedbackError, match=message):
        store.add_feedback(kwargs.pop("kind"), kwargs.pop("response_id", None), **kwargs)
    assert store.feedback() == []


def test_a_repeated_client_key_returns_the_first_feedback(store):
    rid = served(store, "q", "a")
    first, new1 = store.add_feedback("thumb", rid, label=True, key="click-1")
    again, new2 = store.add_feedback("thumb", rid, label=True, key="click-1")
    assert (new1, new2) == (True, False) and again.id == first.id
    assert len(store.feedback()) == 1


def test_acknowledged_feedback_survives_kill_9(tmp_path):
    """A writer process prints each id once add_feedback returned; SIGKILL it mid-stream: every
    printed id is in the store afterwards, and none twice."""
    path = tmp_path / "fb.sqlite"
    with FeedbackStore(path) as s:
        rid = served(s, "q", "a")
    code = textwrap.dedent(f"""
        import sys
        from ragtune.serve.feedback import FeedbackStore
        s = FeedbackStore({str(path)!r})
        for i in range(100000):
            fb, _ = s.add_feedback("thumb", {rid!r}, label=i % 2 == 0, key=f"k{{i}}")
            print(fb.id, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    acked = [proc.stdout.readline().strip() for _ in range(200)]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    acked += [line.strip() for line in proc.stdout if line.strip()]
    with FeedbackStore(path) as s:
        stored = [f.id for f in s.feedback()]
    assert len(acked) >= 200 and set(acked) <= set(stored)  # every acknowledged write is there
    assert len(stored) - len(acked) <= 1  # and at most the one in flight besides (committed, not yet printed)


def feedback_fixture(store):
    """Three prompts: q1 has a liked and a disliked answer (and a correction), q2 a side-by-side
    choice, q3 an answer judged both ways once each (a conflict), plus a neutral score."""
    up, down = served(store, "q1", "good answer"), served(store, "q1", "bad answer")
    store.add_feedback("thumb", up, label=True)
    store.add_feedback("thumb", up, label=True)  # the same judgement twice: one row
    store.add_feedback("score", down, score=1)
    store.add_feedback("thumb", down, label=False, correction="the right answer")
    a, b = served(store, "q2", "left"), served(store, "q2", "right")
    store.add_feedback("ranking", ranking=[b, a])
    c = served(store, "q3", "disputed")
    store.add_feedback("thumb", c, label=True)
    store.add_feedback("thumb", c, label=False)
    store.add_feedback("score", served(store, "q4", "meh"), score=3)


@pytest.mark.parametrize("fmt", ["kto", "dpo", "sft", "reward"])
def test_export_writes_rows_that_data_validate_accepts(store, tmp_path, fmt):
    feedback_fixture(store)
    path = tmp_path / f"{fmt}.jsonl"
    report = export(store, fmt, path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert report.rows == len(rows) and report.feedback == {"thumb": 5, "score": 2, "ranking": 1}
    assert report.left_out["answers judged both ways as often (conflict)"] == 1
    assert report.left_out["score of 3 (neither liked nor disliked)"] == 1
    answer = lambda turns: turns[-1]["content"]  # noqa: E731
    if fmt == "kto":
        assert sorted((answer(r["completion"]), r["label"]) for r in rows) == [("bad answer", False), ("good answer", True)]
        assert rows[0]["prompt"] == prompt("q1")
    elif fmt in ("dpo", "reward"):
        assert sorted((answer(r["chosen"]), answer(r["rejected"])) for r in rows) == [
            ("good answer", "bad answer"), ("right", "left")]
        assert report.used == {"rankings": 1, "a liked and a disliked answer": 1}
    elif fmt == "sft":
        assert [answer(r["messages"]) for r in rows] == ["the right answer"]  # one per prompt: the correction first
        assert rows[0]["messages"][:2] == prompt("q1")
        assert report.left_out["other answers to a prompt that has a demonstration (a correction comes first)"] == 1


def test_export_settles_contradicting_preferences_by_majority_and_skips_empty_answers(store, tmp_path):
    a, b, c = served(store, "q", "alpha"), served(store, "q", "beta"), served(store, "q", "gamma")
    store.add_feedback("ranking", ranking=[a, b, c])  # a > b > c
    store.add_feedback("ranking", ranking=[b, a])  # b > a once: a tie on (a, b)
    store.add_feedback("ranking", ranking=[c, b])  # c > b once against b > c once: a tie too
    store.add_feedback("ranking", ranking=[a, c])  # a > c twice now
    empty = served(store, "q", "   ")
    store.add_feedback("thumb", empty, label=False)
    rows, report = rows_for("dpo", store)
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [("alpha", "gamma")]
    assert report.left_out["answer pairs preferred both ways as often (conflict)"] == 2
    assert report.left_out["answers or prompts with an empty text"] == 1
    path = tmp_path / "pairs.jsonl"
    export(store, "reward", path)  # rankings of three that overlap: no duplicate pair for the loader to refuse
    assert len(path.read_text().splitlines()) == 1 and not list(tmp_path.glob(".*partial"))


def test_export_with_nothing_to_export_says_what_it_needs_and_writes_nothing(store, tmp_path):
    rid = served(store, "q", "a")
    store.add_feedback("thumb", rid, label=True)
    with pytest.raises(DatasetError, match="no dpo rows.*1 thumb.*side-by-side"):
        export(store, "dpo", tmp_path / "dpo.jsonl")
    assert not (tmp_path / "dpo.jsonl").exists()
    with pytest.raises(DatasetError, match="--format 'csv'"):
        rows_for("csv", store)


def test_two_replicas_share_one_postgresql_store_and_a_key_lands_once(postgres):
    """Two stores (as two server replicas would have) on one database, opened together (migrations
    take turns), each told the same client key at the same moment: one row, the same answer to both."""
    import threading

    url = postgres()
    stores = [None, None]

    def open_store(i):
        stores[i] = FeedbackStore(url)

    threads = [threading.Thread(target=open_store, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    a, b = stores
    rid = served(a, "q", "answer from replica a")
    assert b.response(rid).answer == "answer from replica a"
    results = [None, None]
    barrier = threading.Barrier(2)

    def send(i, s):
        barrier.wait()
        results[i] = s.add_feedback("thumb", rid, label=True, key="same-click")

    threads = [threading.Thread(target=send, args=(i, s)) for i, s in enumerate(stores)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert results[0][0].id == results[1][0].id and sorted(new for _, new in results) == [False, True]
    assert len(a.feedback()) == len(b.feedback()) == 1
    a.close()
    b.close()
