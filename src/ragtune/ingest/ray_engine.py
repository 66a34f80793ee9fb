"""The Ray engine of the ingest pipeline (``[ingest] engine = "ray"``, ``ragtune ingest --ray``).

Loading and chunking run as a Ray Data stage, spread over the cluster's workers; embedding runs on a
pool of Ray actors, each of which builds the embedder once from its name and backend (no loaded model
is pickled). ``pipeline.ingest`` still plans the work (which files, which texts in which embedding
call) and commits every batch from this process through the store, as with the local engine, so the
index gets the same chunks and vectors and a killed run leaves whole files only.

Every node must see the files at the paths this machine gives (one machine, or a shared file system)
and have ragtune and the embedding model installed; the actors' model id (weights hash included) is
checked against this machine's.
"""

from __future__ import annotations

import logging
import re
import socket
import warnings
from typing import Iterator

import numpy as np

from ragtune.config import IngestConfig
from ragtune.errors import ConfigError, EmbedderError
from ragtune.ingest.pipeline import Pending, Prepared, SourceFile, prepare

ADDRESS_HELP = ("set [ingest] ray_address or --ray-address to HOST:PORT, ray://HOST:PORT, auto ($RAY_ADDRESS, else a "
                "cluster `ray start --head` began on this machine) or local (a private Ray for this run)")


class RayEngine:
    """Connects on first use (an ingest with nothing to do never does); ``close`` disconnects and ends
    the actors, the cluster keeps running. ``actors``: embedding actors, 0 = as many as the cluster's
    CPUs allow; each takes ``threads`` CPUs (at least 1) and runs the model on that many threads."""

    def __init__(self, embedder, address: str = "auto", actors: int = 0, threads: int = 0) -> None:
        self.embedder, self.address, self.want = embedder, address, actors
        self.threads = max(1, threads)
        self.capacity = 0  # embedding calls outstanding before the oldest batch is waited for: set on connecting
        self.description = f"ray at {address}: not connected, nothing to load"
        self._ray = None
        self._owned = False  # this engine called ray.init (and so calls ray.shutdown)
        self._actors: list = []
        self._checked = False
        self._turn = 0
        self._cpus = 1

    def __enter__(self) -> "RayEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def prepare(self, files: list[SourceFile], cfg: IngestConfig, tokenizer, max_tokens: int) -> Iterator[Prepared]:
        if not files:
            return iter(())
        self._connect()
        import ray.data

        ds = ray.data.from_items([{"file": f} for f in files])
        # num_cpus=0: the loaders never wait for CPUs the embedding actors hold; the pool size bounds them instead
        ds = ds.map(_prepare_row, fn_kwargs={"cfg": cfg, "tokenizer": tokenizer, "max_tokens": max_tokens},
                    num_cpus=0, compute=ray.data.TaskPoolStrategy(size=max(1, min(len(files), int(self._cpus)))))
        return (row["prepared"] for row in ds.iter_rows())

    def embed(self, calls: list[list[str]]) -> Pending:
        if calls and not self._checked:
            self._check_actors()
        refs = []
        for texts in calls:  # round robin: every call is about EMBED_STEP texts
            refs.append(self._actors[self._turn % len(self._actors)].embed.remote(texts))
            self._turn += 1
        return _Remote(self._ray, refs)

    def close(self) -> None:
        if self._ray is None:
            return
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors = []
        if self._owned:
            self._ray.shutdown()
        self._ray = None

    def _connect(self) -> None:
        if self._ray is not None:
            return
        ray, address = connect(self.address)
        self._ray, self._owned = ray, not ray.is_initialized()
        if self._owned:  # `auto` as such: Ray then also turns on token authentication when this machine has a token
            _init(ray, "auto" if self.address == "auto" else address)
        with warnings.catch_warnings():  # Ray Data's context warns about its own deprecated fields
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # files come back in the order given: the same batches as locally
        ctx.enable_progress_bars = False
        self._cpus = ray.cluster_resources().get("CPU", 0)
        n = self.want or max(1, int(self._cpus // self.threads))
        if n * self.threads > self._cpus:
            raise ConfigError(f"[ingest] ray_actors = {n} with {self.threads} thread(s) each needs {n * self.threads} CPUs; "
                              f"the cluster at {self.address} has {self._cpus:g}: lower ray_actors or [embed] threads")
        e = self.embedder
        actor = ray.remote(num_cpus=self.threads, max_restarts=2, max_task_retries=2, scheduling_strategy="SPREAD")(_EmbedActor)
        self._actors = [actor.remote(e.name, e.backend, e.batch_size, self.threads) for _ in range(n)]
        self.capacity = 2 * n  # a call running on each actor and one waiting
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        self.description = f"ray at {address}: {nodes} node(s), {self._cpus:g} CPUs, {n} embedding actor(s)"

    def _check_actors(self) -> None:
        """Every actor built the model this machine has (its weights hash included)."""
        try:
            ids = self._ray.get([a.model_id.remote() for a in self._actors])
        except Exception as e:  # the actor's own error (the model missing on a node) is inside Ray's
            raise EmbedderError(f"the embedding actors on the Ray cluster could not load {self.embedder.name!r}: "
                                f"{_last_line(e)}") from None
        other = sorted(set(ids) - {self.embedder.model_id})
        if other:
            raise EmbedderError(f"the Ray cluster's embedding model {other[0]} differs from this machine's "
                                f"{self.embedder.model_id}: install the same model (and ragtune) on every node")
        self._checked = True


class _Remote:
    def __init__(self, ray, refs: list) -> None:
        self.ray, self.refs = ray, refs

    def ready(self) -> bool:
        return not self.refs or len(self.ray.wait(self.refs, num_returns=len(self.refs), timeout=0)[0]) == len(self.refs)

    def result(self) -> list[np.ndarray]:
        return self.ray.get(self.refs)


class _EmbedActor:
    """On a worker: the embedder, built once from its registry name (or folder) and backend."""

    def __init__(self, name: str, backend: str, batch_size: int, threads: int) -> None:
        from ragtune.embed import get_embedder

        self.embedder = get_embedder(name, backend, batch_size, threads)

    def model_id(self) -> str:
        return self.embedder.model_id

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embedder.embed(texts)


def _prepare_row(row: dict, cfg: IngestConfig, tokenizer, max_tokens: int) -> dict:
    """The Ray Data stage: one file loaded and chunked on a worker (a bad file becomes a Problem, as locally)."""
    return {"prepared": prepare(row["file"], cfg, tokenizer, max_tokens)}


def connect(address: str):
    """(the ``ray`` module, the address to pass to ``ray.init``) once the cluster at ``address`` answers;
    else an error that says what to do (``ray.init`` retries an address that does not answer for minutes)."""
    try:
        import ray
        import ray.data  # noqa: F401  (ray[data]: pyarrow, pandas)
    except ImportError as e:
        raise ConfigError(f"[ingest] engine = \"ray\" needs Ray Data ({e}): pip install 'ragtune[ray]'") from None
    if address == "auto":  # where Ray's own `auto` leads: $RAY_ADDRESS, else a cluster started on this machine
        from ray._private.services import get_ray_address_from_environment

        try:
            address = get_ray_address_from_environment("auto", None)
        except ConnectionError:
            raise ConfigError(f"no running Ray cluster found on this machine (ray_address = auto); start one with "
                              f"`ray start --head`, or {ADDRESS_HELP}") from None
    if address != "local":
        match = re.fullmatch(r"(?:ray://)?\[?([^\]]+?)\]?:(\d+)", address)
        if not match:
            raise ConfigError(f"ray_address = {address!r} is not an address; {ADDRESS_HELP}")
        try:
            socket.create_connection((match[1], int(match[2])), timeout=5).close()
        except OSError as e:
            raise ConfigError(f"cannot reach a Ray cluster at {address} ({e.strerror or e}); start one there "
                              f"(`ray start --head --port={match[2]}`) or {ADDRESS_HELP}") from None
    return ray, address


def _init(ray, address: str) -> None:
    try:
        with warnings.catch_warnings():  # `local` forks Ray's processes, which exec at once: no lancedb state in them
            warnings.filterwarnings("ignore", "lancedb fork support", RuntimeWarning)
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    except Exception as e:  # no Ray there, another Ray version, ...: Ray's own words, last line
        raise ConfigError(f"cannot connect to a Ray cluster at {address} ({_last_line(e)}): is it a Ray {ray.__version__} head? "
                          "One with token authentication also needs RAY_AUTH_MODE=token here (and its token in "
                          f"RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token). Or {ADDRESS_HELP}") from None
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def _last_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__
