"""``ragtune serve``: the workspace as an OpenAI-compatible API (FastAPI), plus feedback.

Routes: ``POST /v1/chat/completions`` (plain, or SSE chunks in OpenAI's format with ``stream``;
``stream_options.include_usage`` honoured; a client that disconnects stops the generation),
``GET /v1/models``, ``POST /v1/embeddings`` (the workspace's embedder), ``POST /v1/feedback`` and
``GET /v1/feedback`` (export), ``GET /health``. Every answer has an ``id`` that feedback refers
to and is stored (``serve.feedback``) before its last byte is sent; a RAG answer carries its
``sources`` (chunk ids, titles, character spans) in an extra field.

Guards, outermost first: CORS only for the origins in ``[serve] cors_origins``; the API key check
(``[serve] api_keys_env`` names the variable holding the keys) on **every** route, unknown ones
included; the body size limit; then the route. Every error is OpenAI's JSON error object
(``{"error": {"message", "type", "param", "code"}}``) with a fitting status, and nothing is
stored for a refused request. One structured access-log line per request (``ragtune.serve``
logger): method, path, status, milliseconds, model, tokens, response id.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import json
import logging
import os
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware

from ragtune.errors import ConfigError, RagtuneError
from ragtune.serve.engine import Engine, Turn, UnknownModel, drain
from ragtune.serve.feedback import FeedbackError, FeedbackStore, Response, UnknownResponse, new_id, open_store

log = logging.getLogger("ragtune.serve")
WEB = Path(__file__).parent / "web"  # the chat page: index.html, app.js, style.css
PAGE_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
KEY_COOKIE = "ragtune_key"
# what GET / answers without a key: a form that keeps the key in the browser, then reloads
LOGIN_PAGE = b"""<!doctype html><meta charset="utf-8"><title>ragtune: API key needed</title>
<p>This ragtune server needs an API key.</p>
<form id="f"><input type="password" id="k" placeholder="API key" autocomplete="off" autofocus> <button>Use key</button></form>
<script>document.getElementById("f").onsubmit=function(e){e.preventDefault();var k=document.getElementById("k").value.trim();
localStorage.setItem("ragtune_key",k);document.cookie="ragtune_key="+encodeURIComponent(k)+"; path=/; SameSite=Strict";
location.reload();};</script>"""
MAX_EMBED_INPUTS = 256
MAX_EMBED_CHARS = 20_000


class ApiError(Exception):
    """A refused request: HTTP ``status`` and OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> bytes:
        return json.dumps({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                     "code": self.code}}).encode()


def api_keys(cfg) -> list[str]:
    """The keys every request must carry one of; [] = no keys (only allowed on loopback)."""
    if not cfg.api_keys_env:
        return []
    keys = [k.strip() for k in os.environ.get(cfg.api_keys_env, "").split(",") if k.strip()]
    if not keys:
        raise ConfigError(f"[serve] api_keys_env = {cfg.api_keys_env!r} but that environment variable is empty; "
                          f"export {cfg.api_keys_env}=KEY1,KEY2 (or clear api_keys_env to serve without keys)")
    return keys


# -- ASGI guards: on every route, before FastAPI sees the request ------------------------------
async def _send_error(send, err: ApiError, headers: list | None = None) -> None:
    body = err.body()
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


class Guard:
    """API keys, body size and the access log, as one ASGI middleware around every route (unknown
    ones included). Without keys (loopback only) it answers only requests addressed to a loopback
    name: a web page that rebinds its own DNS name to 127.0.0.1 gets nothing."""

    def __init__(self, app, keys: list[str], max_body: int) -> None:
        self.app, self.keys, self.max_body = app, [k.encode() for k in keys], max_body

    def _host_allowed(self, headers: dict) -> bool:
        if self.keys:
            return True
        host = headers.get(b"host", b"").decode("latin-1")
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
        return name in LOOPBACK

    def _authorised(self, scope, headers: dict) -> bool:
        """A key from 'Authorization: Bearer KEY'; for the page itself (GET / and /static/...), which a
        browser loads without headers, also from the ``ragtune_key`` cookie the page sets. The API
        never takes the cookie (no request forged from another site can use it)."""
        if not self.keys:
            return True
        auth = headers.get(b"authorization", b"")
        token = auth[7:].strip() if auth[:7].lower() == b"bearer " else b""
        if not token and _is_page(scope):
            try:
                morsel = SimpleCookie(headers.get(b"cookie", b"").decode("latin-1")).get(KEY_COOKIE)
            except CookieError:
                morsel = None
            token = urllib.parse.unquote(morsel.value).encode() if morsel else b""
        return any(hmac.compare_digest(token, k) for k in self.keys)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, seen = time.perf_counter(), {"status": 0}
        scope.setdefault("state", {})

        async def logged_send(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body") and log.isEnabledFor(logging.INFO):
                st = scope["state"]
                log.info(json.dumps({"method": scope["method"], "path": scope["path"], "status": seen["status"],
                                     "ms": round(1000 * (time.perf_counter() - t0), 1), "model": st.get("model"),
                                     "prompt_tokens": st.get("prompt_tokens"), "completion_tokens": st.get("completion_tokens"),
                                     "response_id": st.get("response_id")}))

        headers = dict(scope["headers"])
        if not self._host_allowed(headers):
            return await _send_error(logged_send, ApiError(403, "this server runs without API keys and answers only "
                                                                "requests to 127.0.0.1 or localhost; set [serve] "
                                                                "api_keys_env to serve other names", code="host_not_allowed",
                                                           kind="permission_error"))
        if not self._authorised(scope, headers):
            if _is_page(scope) and scope["path"] == "/":
                return await _send_page(logged_send, 401, LOGIN_PAGE)
            return await _send_error(logged_send, ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY' "
                                                                "with one of the keys in the variable [serve] api_keys_env names",
                                                           code="invalid_api_key", kind="authentication_error"),
                                     [(b"www-authenticate", b"Bearer")])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await _send_error(logged_send, _too_large(self.max_body))
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _too_large(self.max_body)  # while the route reads the body: its error handler answers
            return message

        await self.app(scope, limited_receive, logged_send)


def _is_page(scope) -> bool:
    return scope["method"] == "GET" and (scope["path"] == "/" or scope["path"].startswith("/static/"))


async def _send_page(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body over {limit // 1024} KiB; send less, or raise [serve] max_body_kb", code="body_too_large")


# -- requests ----------------------------------------------------------------------------------
@dataclass
class ChatRequest:
    model: str
    messages: list[dict[str, str]]
    max_tokens: int
    stream: bool
    include_usage: bool
    temperature: float | None = None
    seed: int | None = None
    tools: list | None = None  # agent.tools.Tool specs the client runs
    tool_choice: Any = "auto"


def chat_request(body: Any, engine: Engine, cfg, default_max_tokens: int) -> ChatRequest:
    """Check a /v1/chat/completions body; every problem is an ``ApiError`` naming the field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object with 'model' and 'messages'")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required: one of the ids GET /v1/models lists (e.g. 'rag')", "model")
    try:
        engine.check_model(model)
    except UnknownModel as e:
        raise ApiError(404, str(e), "model", "model_not_found") from None
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {\"role\", \"content\"} objects", "messages")
    tools, tool_choice = request_tools(body, model)
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant", "tool"):
            raise ApiError(400, f"messages[{i}]: needs 'role' system (or developer), user, assistant or tool", f"messages[{i}].role")
        if m["role"] == "assistant" and m.get("tool_calls"):
            clean.append(_tool_call_turn(m, i))
            continue
        content = m.get("content")
        if isinstance(content, list):  # OpenAI's content parts: text parts only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported", f"messages[{i}].content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be text", f"messages[{i}].content")
        clean.append({"role": "system" if m["role"] == "developer" else m["role"], "content": content})
    last = clean[-1]
    if not (last["role"] == "user" or (tools and last["role"] == "tool")) or not last["content"].strip():
        raise ApiError(400, "the last message must be the user's question (or, with tools, a tool's result), and not empty", "messages")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = min(default_max_tokens, cfg.max_tokens)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= cfg.max_tokens:
        raise ApiError(400, f"'max_tokens' must be a whole number from 1 to {cfg.max_tokens} ([serve] max_tokens), "
                            f"not {max_tokens!r}", "max_tokens")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object", "stream_options")
    temperature, seed = body.get("temperature"), body.get("seed")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                    or not 0 <= temperature <= 2):
        raise ApiError(400, f"'temperature' must be a number from 0 to 2, not {temperature!r}", "temperature")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, f"'seed' must be a whole number, not {seed!r}", "seed")
    return ChatRequest(model, clean, max_tokens, stream, bool(options.get("include_usage")),
                       None if temperature is None else float(temperature), seed, tools, tool_choice)


def request_tools(body: dict, model: str) -> tuple[list | None, Any]:
    """A request's ``tools`` and ``tool_choice``, checked (each tool's parameters must be a schema the
    llama.cpp grammar can express)."""
    from ragtune.agent.protocol import action_schema, tools_from_openai
    from ragtune.errors import GeneratorError
    from ragtune.generate.gbnf import to_gbnf

    if not body.get("tools"):
        return None, "auto"
    if model == "rag" or model.startswith("rag:"):
        raise ApiError(400, f"'tools' work with closed-book and registered models; {model!r} retrieves by itself "
                            "(give the model a search tool instead)", "tools")
    try:
        tools = tools_from_openai(body["tools"])
        to_gbnf(action_schema(tools))
    except (ValueError, GeneratorError) as e:
        raise ApiError(400, str(e), "tools") from None
    choice = body.get("tool_choice", "auto")
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) and isinstance(choice.get("function"), dict) else None
    if choice not in ("auto", "none", "required") and name not in {t.name for t in tools}:
        raise ApiError(400, "'tool_choice' must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", "
                            "\"function\": {\"name\": ...}} naming one of the tools", "tool_choice")
    return tools, choice


def _tool_call_turn(m: dict, i: int) -> dict:
    """An assistant turn that called tools, as the agent keeps it (arguments as an object)."""
    from ragtune.agent.protocol import call_arguments

    calls = m["tool_calls"]
    try:
        f = calls[0]["function"]
        args = call_arguments(f["arguments"])
        if not isinstance(f["name"], str):
            raise TypeError
    except (KeyError, IndexError, TypeError, ValueError):
        raise ApiError(400, f"messages[{i}].tool_calls: each call needs function.name and function.arguments (a JSON object)",
                       f"messages[{i}].tool_calls") from None
    return {"role": "assistant", "content": m.get("content") or "",
            "tool_calls": [{"id": c.get("id"), "type": "function", "function": {"name": c["function"]["name"], "arguments": args}}
                           for c in calls[:1]]}


def feedback_args(body: Any) -> dict[str, Any]:
    """A /v1/feedback body → ``FeedbackStore.add_feedback`` arguments. Exactly one of ``thumb``
    ("up"/"down"), ``score`` (1-5) or ``ranking`` (response ids, best first)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    given = [k for k in ("thumb", "score", "ranking") if k in body]
    if len(given) != 1:
        raise ApiError(400, "give exactly one of 'thumb' (\"up\" or \"down\"), 'score' (1-5) or 'ranking' "
                            "(response ids, best first)", given[1] if len(given) > 1 else "thumb")
    extra = set(body) - {"thumb", "score", "ranking", "response_id", "comment", "correction", "key"}
    if extra:
        raise ApiError(400, f"unknown field(s) {', '.join(sorted(extra))}", sorted(extra)[0])
    args = {k: body.get(k) for k in ("comment", "correction", "key")}
    kind = given[0]
    if kind == "thumb":
        if body["thumb"] not in ("up", "down"):
            raise ApiError(400, "'thumb' must be \"up\" or \"down\"", "thumb")
        return {"kind": "thumb", "response_id": body.get("response_id"), "label": body["thumb"] == "up", **args}
    if kind == "score":
        return {"kind": "score", "response_id": body.get("response_id"), "score": body["score"], **args}
    return {"kind": "ranking", "ranking": body["ranking"], **args}


# -- streaming a model's answer from its worker thread -------------------------------------------
async def run_answer(engine: Engine, job) -> AsyncIterator[tuple[str, Any]]:
    """Drive the ``engine.answer`` generator ``job`` in the engine's worker thread and yield
    ("piece", text) as it comes, then ("done", Turn). Leaving early (the client went away) tells the
    worker to stop: it closes ``job`` before the next token and takes the next request."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def put(item) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (server shutting down)
            pass

    def drive() -> None:
        try:
            while not stop.is_set():
                try:
                    piece = next(job)
                except StopIteration as done:
                    put(("done", done.value))
                    return
                put(("piece", piece))
            job.close()
            log.info(json.dumps({"event": "generation stopped", "reason": "client disconnected"}))
        except Exception as e:  # noqa: BLE001 - handed to the request, which answers with it
            put(("error", e))

    engine.submit(drive)
    try:
        while True:
            kind, value = await queue.get()
            if kind == "error":
                raise value
            yield kind, value
            if kind == "done":
                return
    finally:
        stop.set()


def reply_message(turn: Turn) -> dict[str, Any]:
    """The assistant message of a non-streamed answer: its text, or the tool calls it makes."""
    if turn.tool_calls:
        return {"role": "assistant", "content": None, "tool_calls": turn.tool_calls}
    return {"role": "assistant", "content": turn.text}


def completion_usage(turn: Turn) -> dict[str, int]:
    return {"prompt_tokens": turn.prompt_tokens, "completion_tokens": turn.completion_tokens,
            "total_tokens": turn.prompt_tokens + turn.completion_tokens}


async def record(store: FeedbackStore, rid: str, turn: Turn) -> None:
    """Store the answer; returns once it is committed (feedback may refer to it from then on)."""
    done = store.submit_response(Response(rid, turn.model, turn.messages, turn.text, turn.question, turn.sources,
                                          turn.weights_sha256, {**completion_usage(turn), "seconds": round(turn.seconds, 3)}))
    await asyncio.shield(asyncio.wrap_future(done))  # a client leaving now does not cancel the write


def settle_heap() -> None:
    """Call once the app is built, before serving: everything alive then (torch, transformers,
    FastAPI: hundreds of thousands of objects that live as long as the process) is moved out of
    the garbage collector's sight, so its full collections stop walking them every few thousand
    requests (benchmarks/serve.py, HTTP layer: p99 112 -> 41 ms, 1,050 -> 1,250 requests/s)."""
    gc.collect()
    gc.freeze()


# -- the app -----------------------------------------------------------------------------------
def create_app(ws, store: FeedbackStore | None = None, engine: Engine | None = None):
    """The FastAPI app for workspace ``ws`` under its [serve] settings, with its guards."""
    cfg = ws.config.serve
    keys = api_keys(cfg)
    store = store or open_store(ws)
    engine = engine or Engine(ws)
    default_max_tokens = ws.config.generate.max_tokens
    app = FastAPI(title="ragtune", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store, app.state.engine = store, engine

    def error_response(err: ApiError) -> JSONResponse:
        return JSONResponse(json.loads(err.body()), status_code=err.status)

    @app.exception_handler(ApiError)
    async def _api_error(request, err: ApiError):
        return error_response(err)

    @app.exception_handler(404)
    async def _not_found(request, exc):
        return error_response(ApiError(404, f"no route {request.method} {request.url.path}; see GET /v1/models, "
                                            "POST /v1/chat/completions, POST /v1/embeddings, POST|GET /v1/feedback",
                                       code="not_found"))

    @app.exception_handler(405)
    async def _wrong_method(request, exc):
        return error_response(ApiError(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed"))

    @app.exception_handler(RequestValidationError)
    async def _bad_parameter(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
        return error_response(ApiError(400, f"{where or 'request'}: {first.get('msg', 'invalid')}", where))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(ApiError(500, f"internal error ({type(exc).__name__}); see the server's log",
                                       kind="server_error"))

    @app.exception_handler(RagtuneError)
    async def _ragtune_error(request, err: RagtuneError):
        return error_response(ApiError(400 if isinstance(err, ConfigError) else 500, str(err),
                                       kind="invalid_request_error" if isinstance(err, ConfigError) else "server_error"))

    async def json_body(request: Request) -> Any:
        kind = request.headers.get("content-type", "")
        if not kind.startswith("application/json"):  # a form or text/plain post from another site: refused
            raise ApiError(415, f"send the body as JSON with 'Content-Type: application/json' (got {kind or 'none'!r})",
                           code="unsupported_media_type")
        raw = await request.body()
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the body is not valid JSON ({e})", code="invalid_json") from None

    def post(path: str):
        """A POST route as a plain Starlette route: these read and check their own JSON body, so
        FastAPI's parameter solving would only add work (a fifth of a stub chat request's CPU)."""
        def register(endpoint):
            app.router.add_route(path, endpoint, methods=["POST"])
            return endpoint
        return register

    @app.get("/")
    async def page():
        return FileResponse(WEB / "index.html", media_type="text/html")

    @app.get("/static/{name}")
    async def page_file(name: str):
        if name not in PAGE_FILES:
            raise ApiError(404, f"no file {name!r}; the page has {', '.join(PAGE_FILES)}", code="not_found")
        return FileResponse(WEB / name, media_type=PAGE_FILES[name])

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": engine.model_ids(), "feedback_store": store.where}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "ragtune"}
                                           for m in engine.model_ids()]}

    @post("/v1/chat/completions")
    async def chat(request: Request):
        req = chat_request(await json_body(request), engine, cfg, default_max_tokens)
        rid, created = new_id("chatcmpl"), int(time.time())
        request.state.model, request.state.response_id = req.model, rid
        job = engine.answer(req.model, req.messages, req.max_tokens, req.temperature, req.seed, req.tools, req.tool_choice)
        if not req.stream:  # the whole answer in one hand-off to the worker (no per-token messages)
            turn = await asyncio.wrap_future(engine.submit(lambda: drain(job)))
            await record(store, rid, turn)
            request.state.prompt_tokens, request.state.completion_tokens = turn.prompt_tokens, turn.completion_tokens
            return JSONResponse({"id": rid, "object": "chat.completion", "created": created, "model": req.model,
                                 "choices": [{"index": 0, "message": reply_message(turn), "finish_reason": turn.finish_reason}],
                                 "usage": completion_usage(turn), "sources": turn.sources})

        def chunk(delta: dict, finish: str | None = None, **extra) -> str:
            body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        answer = run_answer(engine, job)
        first = await answer.__anext__()  # a prompt too long, a model that fails: an error status, not a 200

        async def events():
            yield chunk({"role": "assistant", "content": ""})
            try:
                kind, value = first
                while True:
                    if kind == "piece":
                        yield chunk({"content": value})
                    else:
                        turn = value
                        if turn.tool_calls:
                            yield chunk({"tool_calls": [{"index": 0, **turn.tool_calls[0]}]})
                        await record(store, rid, turn)
                        request.state.prompt_tokens, request.state.completion_tokens = turn.prompt_tokens, turn.completion_tokens
                        yield chunk({}, turn.finish_reason, sources=turn.sources)
                        if req.include_usage:
                            usage = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                                     "choices": [], "usage": completion_usage(turn)}
                            yield f"data: {json.dumps(usage)}\n\n"
                        break
                    kind, value = await answer.__anext__()
            except Exception as e:  # noqa: BLE001 - the status is sent already: the error goes in the stream
                err = e if isinstance(e, ApiError) else ApiError(500, str(e), kind="server_error")
                if not isinstance(e, RagtuneError):
                    log.exception("answer failed")
                yield f"data: {err.body().decode()}\n\n"
            finally:
                await answer.aclose()
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-cache"})

    @post("/v1/embeddings")
    async def embeddings(request: Request):
        body = await json_body(request)
        texts = body.get("input") if isinstance(body, dict) else None
        if isinstance(texts, str):
            texts = [texts]
        if (not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts)
                or len(texts) > MAX_EMBED_INPUTS or any(len(t) > MAX_EMBED_CHARS for t in texts)):
            raise ApiError(400, f"'input' must be a non-empty text or a list of 1-{MAX_EMBED_INPUTS} non-empty texts "
                                f"of at most {MAX_EMBED_CHARS:,} characters (token ids are not accepted)", "input")

        vectors, tokens, model_id = await asyncio.wrap_future(engine.submit(lambda: engine.embed(texts)))
        request.state.prompt_tokens = tokens
        return JSONResponse({"object": "list", "model": model_id, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                             "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]})

    @post("/v1/feedback")
    async def post_feedback(request: Request):
        args = feedback_args(await json_body(request))
        try:
            fb, new = await asyncio.wrap_future(store.submit_feedback(**args))
        except FeedbackError as e:
            raise ApiError(404 if isinstance(e, UnknownResponse) else 400, str(e), code="invalid_feedback") from None
        request.state.response_id = fb.response_id
        return JSONResponse({"id": fb.id, "object": "feedback", "created": fb.created, "kind": fb.kind,
                             "response_id": fb.response_id, "duplicate": not new})

    @app.get("/v1/feedback")
    async def get_feedback(after: str | None = None, limit: int = 1000):
        if not 1 <= limit <= 10_000:
            raise ApiError(400, "'limit' must be from 1 to 10000", "limit")

        def read():
            rows = store.feedback(after, limit)
            responses = store.responses(list({r for fb in rows for r in [fb.response_id, *(fb.ranking or [])]}))
            return rows, responses

        rows, responses = await run_in_threadpool(read)
        return {"object": "list", "data": [{**fb.__dict__, "object": "feedback"} for fb in rows],
                "responses": {rid: r.__dict__ for rid, r in responses.items()},
                "next_after": rows[-1].id if rows else after}

    app.add_middleware(Guard, keys=keys, max_body=cfg.max_body_kb * 1024)
    if cfg.cors_origins:  # added last = outermost: a browser's preflight is answered without a key
        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"])
    return app
