"""The feedback store: every answer the app served and what its users said about it.

Embedded SQLite in the workspace by default (``.ragtune/feedback.sqlite``); PostgreSQL when
``[serve] feedback_url = "postgresql://..."``, so several server replicas share one store. The same
SQL runs on both (text ids made here, ISO timestamps, JSON as text).

* ``responses``: one row per answer served: its id (what feedback refers to), time, model id and
  weights hash, the exact messages the model was given (the RAG prompt with its sources), the
  user's question, the retrieved sources (ids, titles, spans), the answer and its token usage.
* ``feedback``: one row per judgement: a thumb up or down (with an optional comment and
  correction), a score from 1 to 5, or a ranking of several responses to the same prompt,
  best first (the web page's "show me two answers").

The schema grows by **add-only named migrations**, applied in order when the store opens and
recorded in ``migrations``; a store holding a migration this code does not know was written by a
newer ragtune and is refused. A write returns only once its transaction has committed (SQLite in
WAL mode with ``synchronous=FULL``; PostgreSQL's commit), so an acknowledged feedback survives
``kill -9`` of the server; writes that arrive together share one commit (group commit). A feedback may carry a client ``key``: sending the same key again
returns the first row instead of adding a second, so a client that retries after a lost reply
never duplicates its feedback.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
import time
import uuid
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from ragtune.errors import ConfigError, RagtuneError
from ragtune.files import utc_now

Messages = list[dict[str, str]]
Kind = Literal["thumb", "score", "ranking"]
KINDS = ("thumb", "score", "ranking")
MAX_TEXT = 20_000  # characters in a comment or correction

# (name, SQL): add-only; never edit or reorder a released one, append a new one
MIGRATIONS: list[tuple[str, str]] = [
    ("0001_responses_and_feedback", """
CREATE TABLE responses (
    id TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    model TEXT NOT NULL,
    weights_sha256 TEXT NOT NULL,
    messages TEXT NOT NULL,
    question TEXT NOT NULL,
    sources TEXT NOT NULL,
    answer TEXT NOT NULL,
    usage TEXT NOT NULL
);
CREATE TABLE feedback (
    id TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    kind TEXT NOT NULL,
    response_id TEXT NOT NULL REFERENCES responses(id),
    label INTEGER,
    score INTEGER,
    ranking TEXT,
    comment TEXT,
    correction TEXT,
    client_key TEXT UNIQUE
);
CREATE INDEX feedback_response ON feedback(response_id);
"""),
]


class FeedbackError(RagtuneError):
    """A feedback that cannot be stored as given (unknown response, bad value); nothing was written."""

    exit_code = 2


class UnknownResponse(FeedbackError):
    """The feedback names a response id this store does not hold."""


@dataclass
class Response:
    """One answer as served."""

    id: str
    model: str
    messages: Messages  # exactly what the model was given (system, sources, history, question)
    answer: str
    question: str = ""  # the user's own words
    sources: list[dict[str, Any]] = field(default_factory=list)
    weights_sha256: str = ""
    usage: dict[str, Any] = field(default_factory=dict)
    created: str = ""


@dataclass
class Feedback:
    """One judgement of one response (``ranking``: of several, best first; ``response_id`` is the best)."""

    id: str
    kind: str
    response_id: str
    label: bool | None = None  # thumb: up (True) or down
    score: int | None = None  # 1..5
    ranking: list[str] | None = None  # response ids, best first
    comment: str | None = None
    correction: str | None = None  # the answer the user wanted instead
    key: str | None = None  # the client's idempotency key
    created: str = ""


def open_store(ws) -> "FeedbackStore":
    """The workspace's store: [serve] feedback_url, else .ragtune/feedback.sqlite."""
    return FeedbackStore(ws.config.serve.feedback_url or ws.state_dir / "feedback.sqlite")


def new_id(prefix: str) -> str:
    """A unique id that sorts in creation order: nanoseconds since 1970, then random."""
    return f"{prefix}-{time.time_ns():x}{uuid.uuid4().hex[:12]}"


def now() -> str:
    """UTC time to the microsecond (feedback is read back in arrival order)."""
    return utc_now("microseconds")


class FeedbackStore:
    """Responses and feedback in SQLite or PostgreSQL. Safe to share between threads."""

    def __init__(self, url: str | Path):
        self.url = str(url)
        self._lock = threading.Lock()
        self.postgres = self.url.startswith(("postgresql://", "postgres://"))
        if self.postgres:
            self._conn, self._param = _postgres(self.url), "%s"
        else:
            path = Path(self.url.removeprefix("sqlite:///"))
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn, self._param = _sqlite(path), "?"
        self._migrate()
        self._queue: queue.Queue = queue.Queue()
        self._writer = threading.Thread(target=self._write_batches, name="ragtune-feedback-writer", daemon=True)
        self._writer.start()

    # -- schema -----------------------------------------------------------------------------
    def _migrate(self) -> None:
        """Apply the missing migrations in one transaction; replicas starting together take turns
        (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock)."""
        with self._lock, self._transaction():
            if self.postgres:
                self._run("SELECT pg_advisory_xact_lock(7206135)")  # any fixed number: 'ragtune feedback migrations'
            self._run("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied TEXT NOT NULL)")
            done = [r[0] for r in self._run("SELECT name FROM migrations ORDER BY name").fetchall()]
            unknown = sorted(set(done) - {name for name, _ in MIGRATIONS})
            if unknown:
                raise ConfigError(f"feedback store {self.where}: it has migration(s) {', '.join(unknown)} that this "
                                  "ragtune does not know (written by a newer version); upgrade ragtune")
            for name, sql in MIGRATIONS:
                if name not in done:
                    for statement in filter(str.strip, sql.split(";")):
                        self._run(statement)
                    self._run("INSERT INTO migrations (name, applied) VALUES (?, ?)", (name, now()))

    @property
    def where(self) -> str:
        """The store's address without a password."""
        if "@" in self.url and "://" in self.url:
            scheme, rest = self.url.split("://", 1)
            return f"{scheme}://{rest.rsplit('@', 1)[1]}"
        return self.url

    def migrations(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._run("SELECT name FROM migrations ORDER BY name").fetchall()]

    # -- writing ----------------------------------------------------------------------------
    def add_response(self, r: Response) -> Response:
        """Store one served answer; returns once it is committed."""
        return self.submit_response(r).result()

    def submit_response(self, r: Response) -> Future:
        """``add_response`` without waiting: a Future that is done (with ``r``) once it is committed."""
        r.created = r.created or now()
        row = (r.id, r.created, r.model, r.weights_sha256, canonical_json(r.messages), r.question, canonical_json(r.sources),
               r.answer, canonical_json(r.usage))

        def write() -> Response:
            self._run("INSERT INTO responses (id, created, model, weights_sha256, messages, question, sources, answer, "
                      "usage) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            return r

        return self._submit(write)

    def add_feedback(self, kind: str, response_id: str | None = None, *, label: bool | None = None,
                     score: int | None = None, ranking: list[str] | None = None, comment: str | None = None,
                     correction: str | None = None, key: str | None = None) -> tuple[Feedback, bool]:
        """Check and store one feedback; (the row, True if it is new). A known ``key`` returns the
        first row it stored (False). Raises ``FeedbackError`` naming the problem; nothing is written then."""
        return self.submit_feedback(kind, response_id, label=label, score=score, ranking=ranking, comment=comment,
                                    correction=correction, key=key).result()

    def submit_feedback(self, kind: str, response_id: str | None = None, *, label: bool | None = None,
                        score: int | None = None, ranking: list[str] | None = None, comment: str | None = None,
                        correction: str | None = None, key: str | None = None) -> Future:
        """``add_feedback`` without waiting for the commit: a bad value raises ``FeedbackError`` here;
        the Future holds (row, new) once committed, or the error (an unknown response id)."""
        fb = self._checked(kind, response_id, label, score, ranking, comment, correction, key)

        def write() -> tuple[Feedback, bool]:
            if key is not None and (old := self._by_key(key)) is not None:
                return old, False
            self._check_responses([fb.response_id, *(fb.ranking or [])], fb.kind)
            self._run("INSERT INTO feedback (id, created, kind, response_id, label, score, ranking, comment, correction, "
                      "client_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (fb.id, fb.created, fb.kind, fb.response_id, None if fb.label is None else int(fb.label), fb.score,
                       None if fb.ranking is None else canonical_json(fb.ranking), fb.comment, fb.correction, fb.key))
            return fb, True

        def retried(first: Future) -> None:  # another replica stored the same key a moment ago: now it is found
            error = first.exception()
            if key is not None and isinstance(error, self._integrity_errors):
                again = self._submit(write)
                again.add_done_callback(lambda f: _copy(f, out))
            else:
                _copy(first, out)

        out: Future = Future()
        self._submit(write).add_done_callback(retried)
        return out

    def _checked(self, kind, response_id, label, score, ranking, comment, correction, key) -> Feedback:
        if kind not in KINDS:
            raise FeedbackError(f"feedback kind {kind!r}: use one of {', '.join(KINDS)}")
        if kind == "thumb" and not isinstance(label, bool):
            raise FeedbackError("a thumb needs 'label': true (up) or false (down)")
        if kind == "score" and (isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5):
            raise FeedbackError(f"a score must be a whole number from 1 to 5, not {score!r}")
        if kind == "ranking":
            if (not isinstance(ranking, list) or len(ranking) < 2 or not all(isinstance(x, str) for x in ranking)
                    or len(set(ranking)) != len(ranking)):
                raise FeedbackError("a ranking needs 'ranking': at least two different response ids, best first")
            response_id = ranking[0]
        if not isinstance(response_id, str) or not response_id:
            raise FeedbackError("feedback needs 'response_id': the id of the answer it is about (the response's 'id')")
        for name, text in (("comment", comment), ("correction", correction), ("key", key)):
            if text is not None and (not isinstance(text, str) or len(text) > MAX_TEXT):
                raise FeedbackError(f"'{name}' must be text of at most {MAX_TEXT:,} characters")
        if correction is not None and not correction.strip():
            raise FeedbackError("'correction' is empty: leave it out, or give the answer you wanted")
        return Feedback(new_id("fb"), kind, response_id, label if kind == "thumb" else None,
                        score if kind == "score" else None, ranking if kind == "ranking" else None,
                        comment, correction, key, now())

    def _check_responses(self, ids: list[str], kind: str) -> None:
        ids = list(dict.fromkeys(ids))
        marks = ", ".join("?" * len(ids))
        found = {r[0]: r[1] for r in self._run(f"SELECT id, messages FROM responses WHERE id IN ({marks})", ids).fetchall()}
        missing = [i for i in ids if i not in found]
        if missing:
            raise UnknownResponse(f"unknown response id {missing[0]!r}: feedback must name a response this app served")
        if kind == "ranking" and len(set(found.values())) > 1:
            raise FeedbackError("a ranking compares answers to the same prompt; these responses answered different prompts")

    def _by_key(self, key: str) -> Feedback | None:
        row = self._run(f"SELECT {_FEEDBACK_COLUMNS} FROM feedback WHERE client_key = ?", (key,)).fetchone()
        return None if row is None else _feedback(row)

    # -- reading ----------------------------------------------------------------------------
    def response(self, response_id: str) -> Response | None:
        with self._lock:
            row = self._run(f"SELECT {_RESPONSE_COLUMNS} FROM responses WHERE id = ?", (response_id,)).fetchone()
        return None if row is None else _response(row)

    def responses(self, ids: list[str] | None = None) -> dict[str, Response]:
        with self._lock:
            if ids is None:
                rows = self._run(f"SELECT {_RESPONSE_COLUMNS} FROM responses ORDER BY created, id").fetchall()
            else:
                rows = [] if not ids else self._run(
                    f"SELECT {_RESPONSE_COLUMNS} FROM responses WHERE id IN ({', '.join('?' * len(ids))})", ids).fetchall()
        return {r.id: r for r in map(_response, rows)}

    def feedback(self, after: str | None = None, limit: int | None = None) -> list[Feedback]:
        """Feedback in the order it arrived: by id, which starts with its creation time in
        nanoseconds (``after``: the rows after this feedback id, for reading page by page; a
        timestamp would lose the rows that share one at a page's edge)."""
        sql, params = f"SELECT {_FEEDBACK_COLUMNS} FROM feedback", []
        if after:
            sql, params = sql + " WHERE id > ?", [after]
        sql += " ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            return [_feedback(r) for r in self._run(sql, params).fetchall()]

    def counts(self) -> dict[str, int]:
        with self._lock:
            out = {"responses": self._run("SELECT COUNT(*) FROM responses").fetchone()[0]}
            for kind, n in self._run("SELECT kind, COUNT(*) FROM feedback GROUP BY kind").fetchall():
                out[kind] = n
        return out

    def close(self) -> None:
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join()
        with self._lock:
            self._conn.close()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------
    def _run(self, sql: str, params=()):
        if self._param != "?":
            sql = sql.replace("?", self._param)
        cur = self._conn.cursor()
        cur.execute(sql, tuple(params))
        return cur

    def _submit(self, work: Callable[[], Any]) -> Future:
        """Run ``work`` (statements on this connection) in the writer thread; the Future gets its
        result once its transaction has committed. Writes that arrive together share one transaction
        and one flush to disk (group commit), each in a savepoint of its own: one that fails (a bad
        feedback) is rolled back alone and its Future holds the error; the others commit."""
        done: Future = Future()
        self._queue.put((work, done))
        return done

    def _write_batches(self) -> None:
        while (item := self._queue.get()) is not None:
            batch = [item]
            while len(batch) < 512:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(nxt)
            batch = [(work, done) for work, done in batch if done.set_running_or_notify_cancel()]  # not the cancelled
            if not batch:
                continue
            outcomes: list[tuple[Future, Any, BaseException | None]] = []
            try:
                with self._lock, self._transaction():
                    for work, done in batch:
                        try:
                            with self._savepoint():
                                outcomes.append((done, work(), None))
                        except Exception as e:  # noqa: BLE001 - handed to the caller waiting on it
                            outcomes.append((done, None, e))
            except Exception as e:  # noqa: BLE001 - the commit failed: every write of the batch is lost
                for _, done in batch:
                    done.set_exception(e)
                continue
            for done, result, error in outcomes:
                done.set_exception(error) if error is not None else done.set_result(result)

    @contextmanager
    def _savepoint(self):
        if self.postgres:
            with self._conn.transaction():  # nested in a transaction: a savepoint
                yield
            return
        self._conn.execute("SAVEPOINT write")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK TO SAVEPOINT write")
            self._conn.execute("RELEASE SAVEPOINT write")
            raise
        self._conn.execute("RELEASE SAVEPOINT write")

    @contextmanager
    def _transaction(self):
        """One transaction: committed (durably) when the block ends, rolled back on an error.
        Outside one, every statement commits on its own (both connections are in autocommit mode)."""
        if self.postgres:
            with self._conn.transaction():
                yield
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:  # also when COMMIT itself failed: never leave it open
                self._conn.execute("ROLLBACK")
            raise

    @property
    def _integrity_errors(self) -> tuple[type[Exception], ...]:
        if self.postgres:
            import psycopg

            return (psycopg.IntegrityError,)
        return (sqlite3.IntegrityError,)


_RESPONSE_COLUMNS = "id, created, model, weights_sha256, messages, question, sources, answer, usage"
_FEEDBACK_COLUMNS = "id, created, kind, response_id, label, score, ranking, comment, correction, client_key"


def _copy(source: Future, target: Future) -> None:
    error = source.exception()
    target.set_exception(error) if error is not None else target.set_result(source.result())


def canonical_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _response(row) -> Response:
    rid, created, model, weights, messages, question, sources, answer, usage = row
    return Response(rid, model, json.loads(messages), answer, question, json.loads(sources), weights, json.loads(usage), created)


def _feedback(row) -> Feedback:
    fid, created, kind, response_id, label, score, ranking, comment, correction, key = row
    return Feedback(fid, kind, response_id, None if label is None else bool(label), score,
                    None if ranking is None else json.loads(ranking), comment, correction, key, created)


def _sqlite(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # committed = on disk, not only in the OS's cache
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.DatabaseError as e:
        raise ConfigError(f"feedback store {path}: {e}; it is not a SQLite database ragtune can open "
                          "(move it aside, or set [serve] feedback_url)") from e
    return conn


def _postgres(url: str):
    try:
        import psycopg
    except ImportError as e:
        raise ConfigError("[serve] feedback_url is a PostgreSQL URL but psycopg is not installed: "
                          "pip install 'ragtune[postgres]'") from e
    try:
        return psycopg.connect(url, autocommit=True)
    except psycopg.Error as e:
        raise ConfigError(f"feedback store: cannot connect to PostgreSQL ({e}); check [serve] feedback_url") from e
