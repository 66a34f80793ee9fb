#!/usr/bin/env python3
"""`ragtune serve` under load on loopback, each server in a process of its own, clients in this one.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve.py [--seconds 60] [--clients 16]

Three parts, each with a baseline measured in the same run:

1. **Generation**: ``--clients`` concurrent streaming clients for ``--seconds`` against the bundled
   model (closed-book, ``--max-tokens`` each): requests/s, time to first token p50/p95/p99, errors.
   Baseline: llama.cpp's own OpenAI server (``llama_cpp.server``) with the same GGUF, clients and
   requests. Generation on 2 cores serialises: the time to first token is mostly queueing, reported
   as it is.
2. **The HTTP layer alone**: the same app with a stub engine that answers instantly (every request
   still goes through the key check, validation and the durable store of the response), one uvicorn
   worker, non-streaming requests on keep-alive connections: requests/s and latency p50/p99.
   Baseline: a bare FastAPI route returning the same JSON (no guard, no store).
3. **Feedback writes**: ``POST /v1/feedback`` thumbs from concurrent clients for ``--seconds``:
   acknowledged writes/s, then every acknowledged id looked up in the store (lost = acknowledged
   but missing).

Writes benchmarks/results/serve-<stamp>.json and serve-latest.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402

from common import save_results, utc_stamp  # noqa: E402

KEY = "bench-key"
QUESTION = [{"role": "user", "content": "Give three tips for staying warm in winter."}]


# -- servers, each in its own process ------------------------------------------------------------
def stub_app(root: Path, bare: bool):
    """The real app with an engine that answers at once (or, ``bare``, one FastAPI route)."""
    from fastapi import FastAPI

    from ragtune.serve.engine import Engine, Turn
    from ragtune.workspace import Workspace

    if bare:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat():
            return {"id": "x", "object": "chat.completion", "created": 0, "model": "closed-book",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Stay dry."}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}, "sources": []}

        return app

    class Instant(Engine):
        def answer(self, model, messages, max_tokens, temperature=None, seed=None):
            yield "Stay dry."
            return Turn(model, "Stay dry.", messages, messages[-1]["content"], [], 9, 3)

        def weights(self, model):
            return "0" * 64

    from ragtune.serve.app import create_app

    ws = Workspace(root)
    return create_app(ws, engine=Instant(ws))


def serve_child(args) -> None:
    import uvicorn

    if args.server in ("stub", "bare"):
        app = stub_app(args.root, bare=args.server == "bare")
    else:
        from ragtune.serve.app import create_app
        from ragtune.workspace import Workspace

        app = create_app(Workspace(args.root))
    from ragtune.serve.app import settle_heap

    settle_heap()  # as `ragtune serve` does
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="error", access_log=False)


class Process:
    def __init__(self, argv: list[str], url: str, env: dict | None = None):
        self.log = tempfile.TemporaryFile()  # not a pipe: a chatty server would block once a pipe is full
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self.log, env={**os.environ, **(env or {})})
        deadline = time.time() + 120
        while True:
            try:
                req = urllib.request.Request(url, headers={"authorization": f"Bearer {KEY}"})
                urllib.request.urlopen(req, timeout=1)
                return
            except urllib.error.HTTPError:
                return  # it answers
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.proc.kill()
                    self.log.seek(0)
                    sys.exit(f"server did not start: {' '.join(argv)}\n{self.log.read().decode()[-2000:]}")
                time.sleep(0.2)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def ragtune_server(args, kind: str, port: int) -> Process:
    return Process([sys.executable, __file__, "--server", kind, "--root", str(args.root), "--port", str(port)],
                   f"http://127.0.0.1:{port}/v1/models", {"BENCH_KEYS": KEY})


def llama_server(args, port: int) -> Process:
    """llama.cpp's server on our terms: the workspace's context size and all cores (its default
    takes half), and ``--interrupt_requests False`` (its default ends a stream early, with [DONE],
    whenever another request waits, which would count cut answers as served ones)."""
    from ragtune.models.bundled import smollm2_gguf
    from ragtune.workspace import Workspace

    cfg = Workspace(args.root).config.generate
    threads = str(cfg.threads or os.cpu_count())
    return Process([sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--host", "127.0.0.1",
                    "--port", str(port), "--n_ctx", str(cfg.context_size), "--n_threads", threads,
                    "--n_threads_batch", threads, "--model_alias", "closed-book", "--interrupt_requests", "False"],
                   f"http://127.0.0.1:{port}/v1/models")


# -- a small keep-alive HTTP/1.1 client on asyncio -------------------------------------------------
async def request(conn, method: str, path: str, body: dict | None) -> tuple[int, bytes, float | None]:
    """(status, body, seconds to the first streamed content) over an open keep-alive connection."""
    reader, writer = conn
    data = json.dumps(body).encode() if body is not None else b""
    writer.write(f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {KEY}\r\n"
                 f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n".encode() + data)
    t0 = time.perf_counter()
    await writer.drain()
    line = await reader.readline()
    if not line:
        raise ConnectionResetError("the server closed the connection")  # e.g. no keep-alive after a stream
    status = int(line.split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        k, _, v = line.decode().partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"])), None
    out, first = bytearray(), None  # chunked (a stream)
    while True:
        size = int((await reader.readline()).strip(), 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, bytes(out), first
        if first is None and b'"content":"' in chunk.replace(b" ", b"") and b'"content":""' not in chunk.replace(b" ", b""):
            first = time.perf_counter() - t0
        out += chunk[:-2]


async def load(port: int, clients: int, seconds: float, make_body, path: str, stream: bool) -> dict:
    """``clients`` connections sending back to back for ``seconds``; latency and errors."""
    deadline = time.perf_counter() + seconds
    latencies, firsts, errors, results = [], [], [], []

    async def client(i: int):
        conn = await asyncio.open_connection("127.0.0.1", port)
        n = 0
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            try:
                status, body, first = await request(conn, "POST", path, make_body(i, n))
            except ConnectionResetError:  # closed between requests: reconnect and send again
                conn = await asyncio.open_connection("127.0.0.1", port)
                continue
            except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                errors.append(repr(e))
                conn = await asyncio.open_connection("127.0.0.1", port)
                continue
            n += 1
            if status != 200 or (stream and b"[DONE]" not in body):
                errors.append(f"HTTP {status}: {body[:200]!r}")
                continue
            latencies.append(time.perf_counter() - t)
            if first is not None:
                firsts.append(first)
            results.append(body)
        conn[1].close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.perf_counter() - t0
    out = {"clients": clients, "seconds": wall, "requests": len(latencies), "requests_per_s": len(latencies) / wall,
           "errors": len(errors), "error_examples": errors[:3], **pct("latency_ms", latencies)}
    if stream:
        out.update(pct("first_token_ms", firsts))
    out["_bodies"] = results
    return out


def pct(name: str, xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    a = np.asarray(xs) * 1000
    return {f"{name}_p50": float(np.percentile(a, 50)), f"{name}_p95": float(np.percentile(a, 95)),
            f"{name}_p99": float(np.percentile(a, 99))}


# -- the parts ---------------------------------------------------------------------------------------
def streamed_pieces(body: bytes) -> int:
    """How many chunks of an SSE answer carried text."""
    n = 0
    for line in body.decode("utf-8", "replace").splitlines():
        if line.startswith("data: {"):
            try:
                choices = json.loads(line[6:]).get("choices") or [{}]
            except json.JSONDecodeError:  # a chunk split across HTTP chunks: counted by neither server
                continue
            n += bool((choices[0].get("delta") or {}).get("content"))
    return n


def part_generation(args, port: int) -> dict:
    body = lambda i, n: {"model": "closed-book", "messages": QUESTION, "max_tokens": args.max_tokens, "stream": True,  # noqa: E731
                         "temperature": 0}  # greedy on both: the same answers, so the same work
    out = {}
    for name, start in (("ragtune", lambda: ragtune_server(args, "ragtune", port)), ("llama_cpp.server", lambda: llama_server(args, port))):
        server = start()
        try:
            r = asyncio.run(load(port, args.clients, args.seconds, body, "/v1/chat/completions", stream=True))
        finally:
            server.stop()
        pieces = [streamed_pieces(b) for b in r.pop("_bodies")]  # ~ tokens: both servers send one per chunk
        r.update(pieces_per_answer=float(np.mean(pieces)) if pieces else 0.0, pieces_per_s=sum(pieces) / r["seconds"])
        out[name] = r
        print(f"generation  {name:>16}: {r['requests_per_s']:.2f} req/s · {r['pieces_per_answer']:.0f} pieces per answer, "
              f"{r['pieces_per_s']:.1f}/s · first token p50 {r.get('first_token_ms_p50', 0):.0f} "
              f"p95 {r.get('first_token_ms_p95', 0):.0f} p99 {r.get('first_token_ms_p99', 0):.0f} ms · {r['errors']} errors",
              flush=True)
    return out


def part_http(args, port: int) -> dict:
    body = lambda i, n: {"model": "closed-book", "messages": QUESTION, "max_tokens": 8}  # noqa: E731
    out = {}
    for kind in ("stub", "bare"):
        server = ragtune_server(args, kind, port)
        try:
            asyncio.run(load(port, args.http_clients, 2, body, "/v1/chat/completions", stream=False))  # warm-up
            r = asyncio.run(load(port, args.http_clients, args.http_seconds, body, "/v1/chat/completions", stream=False))
        finally:
            server.stop()
        r.pop("_bodies")
        out["ragtune app, instant engine" if kind == "stub" else "bare FastAPI route"] = r
        print(f"http {kind:>5}: {r['requests_per_s']:.0f} req/s · p50 {r['latency_ms_p50']:.1f} ms · p99 "
              f"{r['latency_ms_p99']:.1f} ms · {r['errors']} errors", flush=True)
    return out


def part_feedback(args, port: int) -> dict:
    from ragtune.serve.feedback import FeedbackStore

    server = ragtune_server(args, "stub", port)
    try:
        reply = asyncio.run(load(port, 1, 0.01, lambda i, n: {"model": "closed-book", "messages": QUESTION}, "/v1/chat/completions",
                                 stream=False))["_bodies"][0]
        rid = json.loads(reply)["id"]
        body = lambda i, n: {"response_id": rid, "thumb": "up" if n % 2 else "down", "key": f"c{i}-{n}"}  # noqa: E731
        r = asyncio.run(load(port, args.http_clients, args.seconds, body, "/v1/feedback", stream=False))
    finally:
        server.stop()
    acked = [json.loads(b)["id"] for b in r.pop("_bodies")]
    with FeedbackStore(args.root / ".ragtune" / "feedback.sqlite") as store:
        stored = {fb.id for fb in store.feedback()}
    r.update(acknowledged=len(acked), lost=len(set(acked) - stored), duplicated=len(acked) - len(set(acked)))
    print(f"feedback: {r['requests_per_s']:.0f} writes/s acknowledged · p99 {r['latency_ms_p99']:.1f} ms · "
          f"{r['lost']} lost of {r['acknowledged']} · {r['errors']} errors", flush=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60, help="length of the generation and feedback runs")
    ap.add_argument("--clients", type=int, default=16, help="concurrent streaming clients (generation)")
    ap.add_argument("--http-clients", type=int, default=32, help="concurrent clients (HTTP layer, feedback)")
    ap.add_argument("--http-seconds", type=float, default=20)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--parts", default="generation,http,feedback")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--server", help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.server:
        return serve_child(args)
    import socket

    from ragtune.workspace import Workspace

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args.root = Path(tempfile.mkdtemp(prefix="ragtune-serve-bench-")) / "ws"
    ws = Workspace.init(args.root)
    text = (args.root / "ragtune.toml").read_text().replace('api_keys_env = ""', 'api_keys_env = "BENCH_KEYS"')
    (args.root / "ragtune.toml").write_text(text)
    stamp = utc_stamp()
    res = {"started_utc": stamp, "cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg(),
           "command": " ".join([sys.executable, *sys.argv]), "settings": {k: v for k, v in vars(args).items()
                                                                         if k in ("seconds", "clients", "http_clients",
                                                                                  "http_seconds", "max_tokens")}}
    parts = {"generation": part_generation, "http": part_http, "feedback": part_feedback}
    for name in args.parts.split(","):
        res[name] = parts[name](args, port)
        save_results(args.out, "serve", res, stamp)
    del ws


if __name__ == "__main__":
    main()
