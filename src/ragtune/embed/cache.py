"""Embedding cache keyed by (model id, sha256 of the text), in SQLite.

Re-ingesting, re-chunking or sweeping settings never embeds the same text with the same model
twice. Rows are written in one transaction per batch, before the index commit that uses them,
so a killed ingest leaves its finished embeddings here for the rerun.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np

_SCHEMA = "CREATE TABLE IF NOT EXISTS embeddings (model TEXT NOT NULL, sha BLOB NOT NULL, vec BLOB NOT NULL, PRIMARY KEY (model, sha)) WITHOUT ROWID"


class EmbeddingCache:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(_SCHEMA)

    def get(self, model_id: str, keys: list[bytes]) -> dict[bytes, np.ndarray]:
        found: dict[bytes, np.ndarray] = {}
        for i in range(0, len(keys), 500):
            part = keys[i:i + 500]
            rows = self.db.execute(f"SELECT sha, vec FROM embeddings WHERE model = ? AND sha IN ({','.join('?' * len(part))})",
                                   [model_id, *part])
            found.update((sha, np.frombuffer(vec, np.float32)) for sha, vec in rows)
        return found

    def put(self, model_id: str, items: dict[bytes, np.ndarray]) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)",
                                [(model_id, k, np.ascontiguousarray(v, np.float32).tobytes()) for k, v in items.items()])

    def count(self, model_id: str | None = None) -> int:
        if model_id is None:
            return self.db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
        return self.db.execute("SELECT COUNT(*) FROM embeddings WHERE model = ?", (model_id,)).fetchone()[0]

    def close(self) -> None:
        self.db.close()


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def embed_cached(embedder, cache: EmbeddingCache | None, texts: list[str]) -> tuple[np.ndarray, int]:
    """Vectors for ``texts``, computing only those not cached. Returns (vectors, number computed)."""
    if cache is None:
        return embedder.embed(texts), len(texts)
    keys = [text_key(t) for t in texts]
    known = cache.get(embedder.model_id, list(set(keys)))
    missing = list({k: t for k, t in zip(keys, texts) if k not in known}.items())
    if missing:
        vectors = embedder.embed([t for _, t in missing])
        fresh = {k: v for (k, _), v in zip(missing, vectors)}
        cache.put(embedder.model_id, fresh)
        known.update(fresh)
    out = np.stack([known[k] for k in keys]) if keys else np.zeros((0, embedder.dim), np.float32)
    return out, len(missing)
