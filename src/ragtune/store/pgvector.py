"""The PostgreSQL + pgvector store: chunks, vectors and a full-text index in a server's database.

``[store] backend = "pgvector"`` and ``url = "postgresql://user@host:port/db"``; the password comes
from the environment variable named by ``[store] password_env`` (or libpq's PGPASSWORD and
~/.pgpass), never from ragtune.toml. An index is three tables: ``PREFIX_chunks``, one row per chunk
(provenance, text, ``metadata`` jsonb, ``embedding vector(dim)`` under an HNSW index, and ``seq``, a
number for the postings to refer to); ``PREFIX_terms``, the keyword index's postings (one row per
distinct term of a chunk: the term, the chunk's ``seq``, the term's frequency in the chunk and the
chunk's length in terms); and ``PREFIX_meta``, one row (model, model id, dim, format version, version
counter, and the chunk and term counts BM25 needs). The HNSW index and the postings' two btrees are
built at the end of the first ingest. PREFIX is ``[store] table``, or is derived from the index's
absolute path, so several workspaces can share one database.

Writing: ``commit`` and ``delete_sources`` are one transaction each (delete the replaced sources'
rows and their postings, COPY the new rows, write their postings, add one to the version), so a
writer killed mid-stream leaves whole files only: the server rolls back the open transaction of a
connection that drops.

Pinning: ``pin`` ends the reader's transaction and opens a new REPEATABLE READ, read-only one whose
first statement reads the meta row (the version, and the identity a search checks). Every search until
the next ``pin`` runs in that transaction, so it sees exactly the snapshot of that committed version
(PostgreSQL's MVCC: rows carry no version columns, and deleted rows are really gone). The price is a
snapshot held open between searches, which holds back VACUUM and makes ``drop`` wait; ``Retriever``
pins at every search, which keeps it short. A pin is one round trip (the transaction is begun by hand,
with the HNSW settings an unfiltered search needs), and a hybrid search is three: on a busy two-core
machine each round trip cost up to ~0.5 ms. Writes and the reads that are not pinned (``rows``,
``stats``, ``file_keys``, ``version``) go through the other connection, in autocommit, and see the latest commit.

Searching: ``dense`` orders by cosine distance (``<=>``; score = 1 - distance) through the HNSW
index, with ``hnsw.ef_search`` raised to ``n`` (and at least ``EF_SEARCH_MIN``) and iterative scans
under filters; more than 1000 results come from an exact scan. ``bm25`` scores every chunk holding
any of the query's terms (PostgreSQL's 'english' text search configuration: stemmed, stop words
dropped, as LanceDB's index does) with BM25 in SQL over the postings: the query's terms' postings are read through the
``(term)`` index, which holds everything the score needs (an index-only scan), a term's document
frequency is its number of postings, its frequency in a chunk the number of its positions there, a
chunk's length its number of terms (stop words left out, as they are from the index); the corpus
size and average length come from the meta row. PostgreSQL's own ``ts_rank`` has no inverse document
frequency, which cost 0.32 nDCG@10 on SciFact; scoring tsvectors through a GIN index took ~120 ms a
query there, the postings ~8 ms. Filters become SQL with bound parameters only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from ragtune.errors import ConfigError, IndexMismatchError, WorkspaceError
from ragtune.store import COLUMN_FILTERS, Filter, check_identity, chunk_id, required
from ragtune.types import Chunk, Hit, IndexStats

if TYPE_CHECKING:
    from ragtune.config import StoreConfig

FORMAT_VERSION = 2  # 2: postings table for BM25 (1 had a tsvector column under a GIN index)
TS_CONFIG = "english"
EF_SEARCH_MAX = 1000  # pgvector's limit: more results than this come from an exact scan
EF_SEARCH_MIN = 100  # pgvector's default 40 found 0.89-0.95 of the exact top 10 on clustered synthetic vectors
PIN_HNSW = (EF_SEARCH_MIN, "off")  # (ef_search, iterative_scan) set by pin: what an unfiltered search of <= 100 needs
K1, B = 1.2, 0.75  # BM25's usual constants (LanceDB's too)
TABLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,47}")
ROW_COLUMNS = ("id", "doc_id", "source", "file_key", "title", "heading", "page", "start", "end", "n_tokens", "text",
               "search_text", "metadata")
COPY_COLUMNS = ", ".join(f'"{c}"' for c in (*ROW_COLUMNS, "embedding"))
HIT_SELECT = ", ".join(f'"{c}"' for c in ("id", "doc_id", "source", "title", "heading", "page", "start", "end", "text", "metadata"))


def table_prefix(config: StoreConfig, path: Path) -> str:
    """``[store] table``, checked, or a name derived from the index's absolute path."""
    if not config.table:
        return "rt_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    if not TABLE_NAME.fullmatch(config.table):
        raise ConfigError(f"[store] table = {config.table!r}: use lowercase letters, digits and '_' "
                          "(at most 48, not starting with a digit), or leave it empty")
    return config.table


def redacted(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=f"{parts.username or ''}@{parts.netloc.rpartition('@')[2]}").geturl()


def connect(config: StoreConfig, **options: Any):
    """A psycopg connection (rows as dicts) to ``[store] url``, or a ``ConfigError`` saying what to fix."""
    url, env = config.url, config.password_env
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError('[store] backend = "pgvector" needs [store] url = "postgresql://user@host:port/db"'
                          f" (it is {redacted(url)!r})")
    if urlsplit(url).password is not None:
        raise ConfigError(f"[store] url {redacted(url)} holds a password: remove it from ragtune.toml and set the "
                          f"environment variable {env or 'RAGTUNE_PG_PASSWORD'} (named by [store] password_env) instead")
    try:
        import psycopg
        from psycopg.rows import dict_row
    except ImportError:
        raise ConfigError("""[store] backend = "pgvector" needs psycopg: pip install 'ragtune[postgres]'""") from None
    if env and os.environ.get(env):
        options["password"] = os.environ[env]
    try:
        return psycopg.connect(url, connect_timeout=10, row_factory=dict_row, **options)
    except psycopg.OperationalError as e:
        raise ConfigError(f"cannot connect to the pgvector store at {url}: {' '.join(str(e).split())}. Check [store] url, "
                          f"that the server is running, and the password in ${env or 'PGPASSWORD'}") from None


def compile_filters(filters: tuple[Filter, ...]) -> tuple[list[str], dict[str, Any]]:
    """SQL conditions for ``filters`` (all must hold), their values as bound parameters only."""
    clauses, params = [], {}
    for i, f in enumerate(filters):
        column, op, value = f'"{f.column}"', "=", f.value  # a column name comes from COLUMN_FILTERS only
        if f.column is None:  # ->> gives numbers and booleans as text too: year=2024 matches 2024 and "2024"
            column, params[f"k{i}"] = f"metadata ->> %(k{i})s", f.field
        elif f.column not in COLUMN_FILTERS:
            raise ConfigError(f"cannot filter on {f.key!r}: use one of {', '.join(COLUMN_FILTERS)} or meta.FIELD")
        elif COLUMN_FILTERS[f.column] == "int":
            value = int(f.value)
        elif "*" in f.value:
            op, value = "LIKE", like_pattern(f.value)
        clauses.append(f"{column} {op} %(v{i})s")
        params[f"v{i}"] = value
    return clauses, params


def like_pattern(value: str) -> str:
    """``docs/*_v2.md`` -> ``docs/%\\_v2.md``: ``*`` matches anything, every other character itself."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_").replace("*", "%")


class PgVectorStore:
    def __init__(self, config: StoreConfig, path: Path) -> None:
        self.config, self.path = config, path
        self.prefix = table_prefix(config, path)
        self._chunks, self._meta, self._terms = (f'"{self.prefix}_{t}"' for t in ("chunks", "meta", "terms"))
        self._conn = None  # autocommit: writes (a transaction each) and the reads of the latest commit
        self._reader = None  # the pinned snapshot: one REPEATABLE READ transaction per pin (begun by hand)
        self._pinned: dict[str, Any] | None = None  # the meta row the pin read
        self._hnsw = PIN_HNSW  # the HNSW scan settings of the pinned transaction

    @property
    def location(self) -> str:
        return f"{redacted(self.config.url)} (tables {self.prefix}_*)"

    def _db(self):
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.config, autocommit=True)
        return self._conn

    # -- identity ---------------------------------------------------------------------------
    def meta(self) -> dict[str, Any] | None:
        db = self._db()
        if db.execute("SELECT to_regclass(%s) AS t", [f"{self.prefix}_meta"]).fetchone()["t"] is None:
            return None
        return db.execute(f"SELECT * FROM {self._meta}").fetchone()

    def exists(self) -> bool:
        return self.meta() is not None

    def ensure(self, model: str, model_id: str, dim: int) -> None:
        """Create an empty index for this embedder, or check the existing one was built with it."""
        db = self._db()
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [self.prefix])  # of two first ingests, one creates
            if self.meta() is not None:
                self.check(model_id)
                self._build_indexes(db)  # when an ingest stopped between its last commit and finalize
                return
            self._create_extension(db)
            db.execute(f"""CREATE TABLE {self._chunks} (
                id text PRIMARY KEY, doc_id text NOT NULL, source text NOT NULL, file_key text NOT NULL,
                title text NOT NULL, heading text NOT NULL, page integer, start integer NOT NULL, "end" integer NOT NULL,
                n_tokens integer NOT NULL, text text NOT NULL, search_text text NOT NULL, metadata jsonb NOT NULL,
                embedding vector({int(dim)}) NOT NULL, seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE)""")
            db.execute(f"CREATE INDEX ON {self._chunks} (source)")
            db.execute(f"CREATE TABLE {self._terms} (term text NOT NULL, chunk bigint NOT NULL, tf smallint NOT NULL, "
                       "len integer NOT NULL)")
            db.execute(f"""CREATE TABLE {self._meta} (format_version integer NOT NULL, embed_model text NOT NULL,
                model_id text NOT NULL, dim integer NOT NULL, version bigint NOT NULL, created text NOT NULL,
                chunks bigint NOT NULL DEFAULT 0, terms bigint NOT NULL DEFAULT 0)""")
            db.execute(f"INSERT INTO {self._meta} VALUES (%s, %s, %s, %s, 0, %s)",
                       [FORMAT_VERSION, model, model_id, dim, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())])

    def _create_extension(self, db) -> None:
        import psycopg

        try:
            db.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except psycopg.Error as e:
            raise ConfigError(f"the database {redacted(self.config.url)} has no pgvector extension and ragtune cannot create it "
                              f"({' '.join(str(e).split())}): install pgvector on the server and run `CREATE EXTENSION vector` "
                              "in that database as its owner") from None

    def check(self, model_id: str) -> None:
        check_identity(self.require_meta(), f"in {self.location}", FORMAT_VERSION, model_id)

    def require_meta(self) -> dict[str, Any]:
        return required(self.meta(), self._named_from_path)

    @property
    def _named_from_path(self) -> str:
        """What a missing index's error adds when the tables are named from this workspace's path (a replica
        without [store] table looks for tables of its own, not the shared ones)."""
        return "" if self.config.table else (f" (tables {self.prefix}_* are named from this workspace's index path; "
                                             "replicas that share one index set the same [store] table)")

    def drop(self) -> None:
        import psycopg

        self._unpin()  # our own snapshot would make the DROP wait for ever
        db = self._db()
        try:
            with db.transaction():
                db.execute("SET LOCAL lock_timeout = '30s'")
                db.execute(f"DROP TABLE IF EXISTS {self._chunks}, {self._meta}, {self._terms}")
        except psycopg.errors.LockNotAvailable:
            raise WorkspaceError(f"the index in {self.location} is in use by another process (a server?): "
                                 "stop it and try again") from None

    # -- writing ----------------------------------------------------------------------------
    def file_keys(self) -> dict[str, str]:
        """{source: file_key} of everything committed."""
        if not self.exists():
            return {}
        rows = self._db().execute(f"SELECT DISTINCT source, file_key FROM {self._chunks}").fetchall()
        return {r["source"]: r["file_key"] for r in rows}

    def commit(self, files: list[tuple[str, str, list[Chunk]]], vectors: np.ndarray, replace_sources: set[str]) -> int:
        """Add the chunks of ``files`` ((source, file key, chunks), vectors in the same order);
        the old chunks of ``replace_sources`` go in the same transaction. Postings are written for every
        chunk of ``files``' sources, so a source already stored must be in ``replace_sources`` (ingest's rule)."""
        db = self._db()
        with db.transaction():
            chunks, terms = self._delete(db, sorted(replace_sources))
            with db.cursor() as cur, cur.copy(f"COPY {self._chunks} ({COPY_COLUMNS}) FROM STDIN") as copy:
                for row in _rows(files, vectors):
                    copy.write_row(row)
            added = db.execute(f"""
                WITH new AS MATERIALIZED (SELECT seq, to_tsvector('{TS_CONFIG}', search_text) AS tsv FROM {self._chunks}
                                          WHERE source = ANY(%s)),
                postings AS MATERIALIZED (SELECT new.seq, u.lexeme, greatest(cardinality(u.positions), 1) AS tf FROM new, unnest(new.tsv) u),
                added AS (INSERT INTO {self._terms} (term, chunk, tf, len)
                          SELECT lexeme, seq, tf, sum(tf) OVER (PARTITION BY seq) FROM postings RETURNING tf)
                SELECT coalesce(sum(tf), 0) AS terms FROM added""", [sorted({source for source, _, _ in files})]).fetchone()["terms"]
            return self._bump(db, len(vectors) - chunks, added - terms)

    def delete_sources(self, sources: list[str]) -> int:
        db = self._db()
        with db.transaction():
            chunks, terms = self._delete(db, list(sources))
            return self._bump(db, -chunks, -terms)

    def _delete(self, db, sources: list[str]) -> tuple[int, int]:
        """Delete the chunks of ``sources`` and their postings; (chunks, terms) deleted."""
        if not sources:
            return 0, 0
        terms = db.execute(f"""WITH gone AS (DELETE FROM {self._terms} WHERE chunk IN (SELECT seq FROM {self._chunks}
                                                                                   WHERE source = ANY(%s)) RETURNING tf)
                               SELECT coalesce(sum(tf), 0) AS terms FROM gone""", [sources]).fetchone()["terms"]
        return db.execute(f"DELETE FROM {self._chunks} WHERE source = ANY(%s)", [sources]).rowcount, terms

    def _bump(self, db, chunks: int = 0, terms: int = 0) -> int:
        """Add one to the version (and the counts BM25 reads); the new version."""
        return db.execute(f"UPDATE {self._meta} SET version = version + 1, chunks = chunks + %s, terms = terms + %s "
                          "RETURNING version", [chunks, terms]).fetchone()["version"]

    def finalize(self) -> int:
        """Build the HNSW and postings indexes after an index's first ingest (later writes update them row by
        row), and refresh the planner's statistics of both tables; the version."""
        db = self._db()
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [self.prefix])
            self._build_indexes(db)
        # the planner's statistics, and the postings' visibility map: BM25 reads them by index-only scans
        db.execute(f"VACUUM (ANALYZE) {self._terms}")
        db.execute(f"ANALYZE {self._chunks}")
        return self.version()

    def _build_indexes(self, db) -> None:
        """The HNSW index and the postings' two btrees, when the chunks table has rows and they are missing:
        built once over the rows of the first ingest, they are many times faster than updated row by row
        (HNSW here ~2,400 against ~290 rows/s); until then dense search is an exact scan and BM25 reads the
        whole postings table."""
        if not db.execute(f"SELECT EXISTS (SELECT 1 FROM {self._chunks}) AS rows").fetchone()["rows"]:
            return
        have = {r["indexname"] for r in db.execute("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
                                                    "AND tablename = ANY(%s)", [[f"{self.prefix}_chunks", f"{self.prefix}_terms"]])}
        for name, sql in [("hnsw", f"{self._chunks} USING hnsw (embedding vector_cosine_ops)"),
                          ("terms_term", f"{self._terms} (term) INCLUDE (chunk, tf, len)"),  # a query's postings, index only
                          ("terms_chunk", f"{self._terms} (chunk)")]:  # a replaced file's postings
            if f"{self.prefix}_{name}" not in have:
                db.execute(f'CREATE INDEX "{self.prefix}_{name}" ON {sql}')

    # -- reading ----------------------------------------------------------------------------
    def version(self) -> int:
        return self.require_meta()["version"]

    @property
    def pinned_version(self) -> int | None:
        """The version searches read (set by ``pin``)."""
        return None if self._pinned is None else self._pinned["version"]

    def pin(self, model_id: str | None = None) -> None:
        """End the previous snapshot and take one of the latest committed version (checked against
        ``model_id`` when given), in one round trip: the transaction is begun by hand on an autocommit
        connection, and its first statement reads the meta row and sets the HNSW scan settings most searches use."""
        import psycopg

        if self._reader is None or self._reader.closed:
            self._reader = connect(self.config, autocommit=True)
        end = "" if self._reader.info.transaction_status == psycopg.pq.TransactionStatus.IDLE else "ROLLBACK; "
        ef, iterative = PIN_HNSW
        try:  # the first statement of a REPEATABLE READ transaction fixes its snapshot
            cur = self._reader.execute(f"{end}BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT *, "
                                       f"set_config('hnsw.ef_search', '{ef}', true) AS ef_search, "
                                       f"set_config('hnsw.iterative_scan', '{iterative}', true) AS iterative_scan "
                                       f"FROM {self._meta}")
            while cur.nextset():  # the SELECT's result is the last
                pass
            self._pinned, self._hnsw = cur.fetchone(), PIN_HNSW
        except psycopg.errors.UndefinedTable:
            self._unpin()
            required(None, self._named_from_path)  # raises: there is no index
        if model_id is not None:
            try:
                check_identity(self._pinned, f"in {self.location}", FORMAT_VERSION, model_id)
            except IndexMismatchError:
                self._unpin()  # nothing to search: hold no snapshot (it would make a rebuild's DROP wait)
                raise

    def _unpin(self) -> None:
        """End the pinned snapshot, if any (also one a failed statement aborted)."""
        from psycopg.pq import TransactionStatus

        self._pinned = None
        if self._reader is not None and not self._reader.closed and self._reader.info.transaction_status != TransactionStatus.IDLE:
            self._reader.execute("ROLLBACK")

    def _read(self, query: str, params: dict[str, Any] | list[Any]) -> list[dict[str, Any]]:
        """``query`` in the pinned snapshot (pinning the latest version first if there is none)."""
        if self._pinned is None:
            self.pin()
        return self._reader.execute(query, params).fetchall()

    def dense(self, vector: np.ndarray, n: int, filters: tuple[Filter, ...] = ()) -> list[Hit]:
        clauses, params = compile_filters(filters)
        # ef_search bounds what one HNSW scan returns; iterative scans go on past rows that a filter drops
        hnsw = (min(max(n, EF_SEARCH_MIN), EF_SEARCH_MAX), "strict_order" if filters else "off")
        if self._pinned is None:
            self.pin()
        if hnsw != self._hnsw:  # pin set the common case
            self._read("SELECT set_config('hnsw.ef_search', %s, true), set_config('hnsw.iterative_scan', %s, true)",
                       [str(hnsw[0]), hnsw[1]])
            self._hnsw = hnsw
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        # the HNSW index serves only ORDER BY embedding <=> q: ordering by the similarity is an exact scan
        order = "embedding <=> %(q)s::vector" if n <= EF_SEARCH_MAX else "similarity DESC"
        rows = self._read(f"SELECT {HIT_SELECT}, 1 - (embedding <=> %(q)s::vector) AS similarity FROM {self._chunks}{where} "
                          f"ORDER BY {order} LIMIT %(n)s", {"q": _vector(vector), "n": n, **params})
        return [_hit(r, rank, r["similarity"], r["similarity"]) for rank, r in enumerate(rows, 1)]

    def similarities(self, vector: np.ndarray, chunk_ids: list[str]) -> dict[str, float]:
        """Cosine similarity of ``vector`` to each chunk still in the pinned version."""
        rows = self._read(f"SELECT id, 1 - (embedding <=> %(q)s::vector) AS similarity FROM {self._chunks} WHERE id = ANY(%(ids)s)",
                          {"q": _vector(vector), "ids": list(chunk_ids)})
        return {r["id"]: float(r["similarity"]) for r in rows}

    def bm25(self, query: str, n: int, filters: tuple[Filter, ...] = ()) -> list[Hit]:
        clauses, params = compile_filters(filters)
        # each query term's weight (its document frequency counted through the index), then its postings
        # scored: two index-only reads of each posting list, no intermediate table
        rows = self._read(f"""
            WITH terms AS (SELECT DISTINCT lexeme AS term FROM unnest(to_tsvector('{TS_CONFIG}', %(query)s))),
            weights AS (  -- idf * (k1 + 1), and k1 * b / average length: a posting's score is a * tf / (tf + k1 (1 - b) + d len)
                SELECT t.term, ln(1 + (c.n - d.df + 0.5) / (d.df + 0.5)) * {K1 + 1:g} AS a, {K1 * B:g} / c.avg AS d
                FROM terms t, LATERAL (SELECT count(*)::float8 AS df FROM {self._terms} WHERE term = t.term) d,
                     (SELECT chunks::float8 AS n, greatest(terms::float8 / greatest(chunks, 1), 1) AS avg FROM {self._meta}) c
                WHERE d.df > 0),
            scored AS (
                SELECT p.chunk, sum(w.a * p.tf / (p.tf + {K1 * (1 - B):g} + w.d * p.len)) AS score
                FROM weights w, LATERAL (SELECT chunk, tf::float8 AS tf, len::float8 AS len FROM {self._terms} WHERE term = w.term) p
                GROUP BY p.chunk),
            top AS (SELECT s.chunk, s.score FROM scored s{f" JOIN {self._chunks} ON seq = s.chunk WHERE {' AND '.join(clauses)}" if clauses else ""}
                    ORDER BY s.score DESC, s.chunk LIMIT %(n)s)
            SELECT {HIT_SELECT}, top.score FROM top JOIN {self._chunks} ON seq = top.chunk ORDER BY top.score DESC, top.chunk""",
                          {"query": query, "n": n, **params})
        return [_hit(r, rank, r["score"]) for rank, r in enumerate(rows, 1)]

    def rows(self, columns: list[str]) -> list[dict[str, Any]]:
        """Every committed chunk, only ``columns`` (``metadata`` as JSON text, as LanceStore gives it)."""
        self.require_meta()
        unknown = [c for c in columns if c not in ROW_COLUMNS]
        if unknown:
            raise ValueError(f"no column {', '.join(unknown)} in the pgvector store; columns: {', '.join(ROW_COLUMNS)}")
        select = ", ".join('metadata::text AS metadata' if c == "metadata" else f'"{c}"' for c in columns)
        return self._db().execute(f"SELECT {select} FROM {self._chunks}").fetchall()

    def stats(self) -> IndexStats:
        meta = self.require_meta()
        row = self._db().execute(f"""SELECT (SELECT version FROM {self._meta}) AS version, count(*) AS chunks,
            count(DISTINCT source) AS sources, count(DISTINCT (source, doc_id)) AS documents FROM {self._chunks}""").fetchone()
        return IndexStats(documents=row["documents"], sources=row["sources"], chunks=row["chunks"], model=meta["embed_model"],
                          model_id=meta["model_id"], dim=meta["dim"], index_version=row["version"],
                          format_version=meta["format_version"], path=self.location)


def _vector(v: np.ndarray) -> str:
    """pgvector's text form; 9 significant digits give back the same float32."""
    return "[" + ",".join(f"{x:.9g}" for x in np.asarray(v, np.float32).tolist()) + "]"


def _text(s: str) -> str:
    """PostgreSQL text cannot hold NUL; U+FFFD keeps the offsets (start, end) right."""
    return s.replace("\x00", "\ufffd")


def _rows(files: list[tuple[str, str, list[Chunk]]], vectors: np.ndarray):
    """COPY rows in ``COPY_COLUMNS`` order."""
    chunks = ((source, key, i, c) for source, key, cs in files for i, c in enumerate(cs))
    for (source, key, i, c), v in zip(chunks, vectors, strict=True):
        metadata = json.dumps(c.metadata, sort_keys=True).replace("\\u0000", "\\ufffd")  # jsonb refuses \u0000 too
        yield (chunk_id(source, key, i), c.doc_id, source, key, _text(c.title), _text(c.heading), c.page, c.start, c.end,
               c.n_tokens, _text(c.text), _text(c.embed_text), metadata, _vector(v))


def _hit(row: dict[str, Any], rank: int, score: float, similarity: float | None = None) -> Hit:
    return Hit(rank=rank, score=float(score), chunk_id=row["id"], doc_id=row["doc_id"], source=row["source"],
               title=row["title"], heading=row["heading"], page=row["page"], start=row["start"], end=row["end"],
               text=row["text"], metadata=row["metadata"], similarity=None if similarity is None else float(similarity))
