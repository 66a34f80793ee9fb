"""Small file helpers every stage uses: atomic JSON writes and folders, file and weights hashes,
the per-user cache folder, JSONL reading, timestamps, versions. Standard library only (imported by light modules)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import secrets
import shutil
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from ragtune.errors import DatasetError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # a model folder's single weights file


def write_json(path: Path, data: Any) -> None:
    """Write atomically (a temp file, then rename): a reader sees the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class Journal:
    """A JSON record of a job's finished steps, rewritten (atomically) after each one, so a rerun goes on
    from the first unfinished step: ``journal.step("train", work)`` runs ``work()`` once and keeps what
    it returned under ``state["steps"]["train"]``."""

    def __init__(self, path: Path, start: dict[str, Any]) -> None:
        self.path = Path(path)
        self.state: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {**start, "steps": {}}

    def step(self, name: str, work, log=None) -> Any:
        if name in self.state["steps"]:
            if log:
                log(f"{name}: done in an earlier run, skipped")
            return self.state["steps"][name]
        self.state["steps"][name] = result = work()
        self.save()
        return result

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, self.state)


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    """Per-user cache for derived files (ONNX exports, weights hashes, wheels); ``RAGTUNE_CACHE_DIR`` overrides."""
    base = os.environ.get("RAGTUNE_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ragtune")
    return Path(base)


def weights_sha256(path: Path) -> str:
    """The identity of model weights: the sha256 of a weights file, or of a model folder's
    ``model.safetensors`` (or ``pytorch_model.bin``), or for sharded weights of the shards' names
    and hashes. Memoised on (path, size, mtime) in the cache folder: weights are large."""
    path = Path(path)
    if path.is_file():
        return _memoised_sha256(path)
    single = next((path / n for n in WEIGHT_FILES if (path / n).is_file()), None)
    if single is not None:
        return _memoised_sha256(single)
    shards = sorted(path.glob("model-*.safetensors")) or sorted(path.glob("pytorch_model-*.bin"))
    if not shards:
        from ragtune.errors import ModelError

        raise ModelError(f"no weights in {path}: a model folder needs model.safetensors, pytorch_model.bin or shards of them")
    h = hashlib.sha256()
    for shard in shards:
        h.update(f"{shard.name}:{_memoised_sha256(shard)}\n".encode())
    return h.hexdigest()


def _memoised_sha256(path: Path) -> str:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    memo = cache_dir() / "weights-hashes.json"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = sha256_file(path)
        memo.parent.mkdir(parents=True, exist_ok=True)
        write_json(memo, known)
    return known[key]


def utc_now(timespec: str = "seconds") -> str:
    return datetime.now(timezone.utc).isoformat(timespec=timespec)


def package_version(package: str) -> str:
    """The installed version of ``package``, or "" when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return ""


# -- writing folders atomically ---------------------------------------------------------------
@contextmanager
def staged(final: Path, replace: bool = False) -> Iterator[Path]:
    """A fresh hidden sibling folder of ``final`` to write into. When the block ends without
    error it is renamed to ``final`` (one ``os.replace``); when it raises it is removed. A killed
    writer leaves only the hidden ``.tmp-*`` folder, which the next writer of ``final`` deletes.
    With ``replace``, an existing ``final`` is swapped out and removed; without, a non-empty
    ``final`` makes the rename fail (``OSError``)."""
    tmp = new_staging(final)
    try:
        yield tmp
        move_into_place(tmp, final, replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def new_staging(final: Path) -> Path:
    """An empty ``.tmp-<name>-<pid>-<random>`` folder beside ``final`` (same file system, so the
    rename is atomic); leftovers of dead processes for the same ``final`` are removed first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for old in final.parent.glob(f".tmp-{final.name}-*"):
        pid = old.name[len(f".tmp-{final.name}-"):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    return tmp


def move_into_place(tmp: Path, final: Path, replace: bool = False) -> None:
    """Rename ``tmp`` to ``final``; with ``replace``, an existing ``final`` is moved aside first
    and deleted after (put back if the rename fails)."""
    if not (replace and final.exists()):
        os.replace(tmp, final)
        return
    old = new_staging(final)
    os.replace(final, old / final.name)
    try:
        os.replace(tmp, final)
    except OSError:
        os.replace(old / final.name, final)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_jsonl(path: Path, strict: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) for every non-blank line of a .jsonl or .jsonl.gz file. A line that
    is not JSON raises ``DatasetError`` with ``strict``; else it gives a ``ValueError`` naming the
    line in place of its value, so callers can list every bad line. A file that cannot be read as
    UTF-8 text raises ``DatasetError``."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield n, json.loads(line)
                    except json.JSONDecodeError as e:
                        if strict:
                            raise DatasetError(f"{path}: line {n} is not valid JSON ({e.msg}); fix or remove that line") from None
                        yield n, ValueError(f"line {n}: not valid JSON ({e.msg})")
    except (OSError, UnicodeDecodeError, EOFError) as e:  # a bad gzip stream, a binary file
        raise DatasetError(f"{path}: cannot be read as UTF-8 JSONL ({e}); give a .jsonl or .jsonl.gz file") from None
