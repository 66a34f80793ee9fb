"""`ragtune serve`'s API on a real uvicorn server on loopback, with the bundled models and the
handbook ingested; the official `openai` client talks to it unchanged."""
import http.client
import json
import logging
import time
import urllib.request

import pytest

from tests.serve.conftest import KEY, Server, call, store_of
from ragtune import Workspace
from ragtune.serve.app import create_app

def test_the_openai_client_lists_models_and_gets_a_cited_rag_answer_that_is_stored(served, client):
    ids = [m.id for m in client.models.list().data]
    assert ids[:2] == ["rag", "closed-book"]
    r = client.chat.completions.create(model="rag", messages=[{"role": "user", "content": "Who founded the observatory?"}],
                                       max_tokens=64)
    text = r.choices[0].message.content
    assert "Vantreight" in text and r.usage.completion_tokens > 0
    sources = r.model_extra["sources"]
    assert sources and all({"id", "title", "source", "start", "end"} <= set(s) for s in sources)
    stored = store_of(served).response(r.id)
    assert stored.answer == text and stored.question == "Who founded the observatory?"
    assert stored.sources == sources and len(stored.weights_sha256) == 64
    assert any("Vantreight" in m["content"] for m in stored.messages)  # the exact prompt, with its sources


def test_streaming_in_openai_chunks_with_usage_equals_the_stored_answer(served, client):
    stream = client.chat.completions.create(model="closed-book", stream=True, stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "Name three colours."}], max_tokens=32)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3  # really streamed
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    assert store_of(served).response(chunks[0].id).answer == text.strip()


def test_embeddings_are_the_workspace_embedders(served, client):
    r = client.embeddings.create(model="any", input=["annual leave", "observatory"])
    vectors = [d.embedding for d in r.data]
    expected = served.ws.embedder.embed(["annual leave", "observatory"])
    assert len(vectors) == 2 and len(vectors[0]) == expected.shape[1]
    assert max(abs(a - b) for v, e in zip(vectors, expected) for a, b in zip(v, e)) < 1e-5
    assert r.usage.prompt_tokens > 0


def test_feedback_on_a_served_answer_lands_in_the_store_and_is_exported(served, client):
    r = client.chat.completions.create(model="closed-book", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8)
    status, fb = call(served, "POST", "/v1/feedback", {"response_id": r.id, "thumb": "down", "comment": "rude",
                                                       "correction": "Hello! How can I help?", "key": "k-1"})
    assert status == 200 and fb["kind"] == "thumb" and not fb["duplicate"]
    status, again = call(served, "POST", "/v1/feedback", {"response_id": r.id, "thumb": "down", "key": "k-1"})
    assert status == 200 and again["duplicate"] and again["id"] == fb["id"]
    status, export = call(served, "GET", "/v1/feedback")
    mine = [f for f in export["data"] if f["id"] == fb["id"]]
    assert len(mine) == 1 and mine[0]["label"] is False and mine[0]["correction"] == "Hello! How can I help?"
    assert export["responses"][r.id]["answer"] == r.choices[0].message.content
    status, rest = call(served, "GET", f"/v1/feedback?after={export['next_after']}")
    assert status == 200 and rest["data"] == [] and rest["next_after"] == export["next_after"]


def test_every_route_refuses_a_missing_or_wrong_key(served):
    from starlette.routing import Route  # FastAPI's APIRoute and the plain POST routes alike

    routes = [(m, r.path) for r in served.app.routes if isinstance(r, Route) for m in r.methods]
    assert {p for _, p in routes} >= {"/v1/chat/completions", "/v1/models", "/v1/embeddings", "/v1/feedback", "/health"}
    before = store_of(served).counts()
    extra = [("GET", "/no/such/route"), ("POST", "/v1/completions"), ("HEAD", "/v1/models"), ("OPTIONS", "/v1/models"),
             ("PUT", "/v1/feedback"), ("DELETE", "/v1/feedback"), ("GET", "/static/..%2Fapp.py"),
             ("GET", "/static/%2e%2e/%2e%2e/ragtune.toml"), ("GET", "//v1/models"), ("GET", "/v1/models/../feedback")]
    for method, path in routes + extra:
        for key in (None, "wrong-key", ""):
            status, body = call(served, method, path, {"model": "rag", "messages": [{"role": "user", "content": "hi"}],
                                                        "input": "x", "thumb": "up"}, key=key)
            assert status == 401, (method, path, key, status)
            if path == "/":  # the page: a form for the key, nothing else
                assert b"API key needed" in body and b"/static/app.js" not in body
            elif method == "HEAD":
                assert not body
            else:
                assert body["error"]["code"] == "invalid_api_key"
    assert store_of(served).counts() == before


BAD = [
    ("malformed JSON", "POST", "/v1/chat/completions", b"{not json", 400, "not valid JSON"),
    ("unknown model", "POST", "/v1/chat/completions", {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]},
     404, "model 'gpt-9' does not exist"),
    ("empty messages", "POST", "/v1/chat/completions", {"model": "rag", "messages": []}, 400, "'messages' must be"),
    ("negative max_tokens", "POST", "/v1/chat/completions",
     {"model": "rag", "messages": [{"role": "user", "content": "x"}], "max_tokens": -5}, 400, "'max_tokens' must be"),
    ("max_tokens over the limit", "POST", "/v1/chat/completions",
     {"model": "rag", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5000}, 400, "from 1 to 256"),
    ("last turn not the user's", "POST", "/v1/chat/completions",
     {"model": "rag", "messages": [{"role": "assistant", "content": "x"}]}, 400, "last message"),
    ("oversized body", "POST", "/v1/chat/completions", b'{"model": "rag", "pad": "' + b"x" * 70_000 + b'"}', 413, "64 KiB"),
    ("feedback for an unknown response", "POST", "/v1/feedback", {"response_id": "chatcmpl-nope", "thumb": "up"}, 404,
     "unknown response id"),
    ("feedback with two judgements", "POST", "/v1/feedback", {"response_id": "x", "thumb": "up", "score": 3}, 400,
     "exactly one of"),
    ("feedback score out of range", "POST", "/v1/feedback", {"response_id": "x", "score": 9}, 400, "1 to 5"),
    ("embeddings without input", "POST", "/v1/embeddings", {"model": "x"}, 400, "'input' must be"),
]


@pytest.mark.parametrize("what, method, path, body, status, message", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_a_clear_json_error_and_store_nothing(served, what, method, path, body, status, message):
    before = store_of(served).counts()
    got, payload = call(served, method, path, raw=body if isinstance(body, bytes) else None,
                        body=None if isinstance(body, bytes) else body)
    assert got == status, payload
    assert message in payload["error"]["message"] and payload["error"]["type"]
    assert store_of(served).counts() == before


def test_a_client_that_disconnects_stops_the_generation(served, caplog):
    """Read two chunks of a long answer, hang up: the worker stops before the next token, frees
    the model for the next request, and no answer is stored."""
    before = store_of(served).counts()["responses"]
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    body = {"model": "closed-book", "stream": True, "max_tokens": 256,
            "messages": [{"role": "user", "content": "Write a very long story about a lighthouse keeper."}]}
    with caplog.at_level(logging.INFO, logger="ragtune.serve"):
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"authorization": f"Bearer {KEY}",
                                                                         "content-type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200
        for _ in range(3):
            r.fp.readline()
        conn.sock.shutdown(2)
        conn.close()
        deadline = time.time() + 30
        while not any("generation stopped" in rec.getMessage() for rec in caplog.records):
            assert time.time() < deadline, "the generation was not stopped"
            time.sleep(0.1)
    assert served.app.state.engine.lock.acquire(timeout=10)
    served.app.state.engine.lock.release()
    assert store_of(served).counts()["responses"] == before


def test_health_and_the_access_log(served, caplog):
    with caplog.at_level(logging.INFO, logger="ragtune.serve"):
        status, body = call(served, "GET", "/health")
        assert status == 200 and body["status"] == "ok" and "rag" in body["models"]
        deadline = time.time() + 10  # the line is written once the last byte is sent: the client may be first
        while not (found := [r.getMessage() for r in caplog.records if '"path": "/health"' in r.getMessage()]):
            assert time.time() < deadline, "no access-log line for GET /health"
            time.sleep(0.05)
    line = json.loads(found[0])
    assert line["status"] == 200 and line["ms"] >= 0


def test_without_keys_on_loopback_no_key_is_needed(tmp_path):
    ws = Workspace.init(tmp_path / "ws")
    server = Server(create_app(ws))
    try:
        with urllib.request.urlopen(server.url + "/v1/models", timeout=10) as r:
            assert [m["id"] for m in json.load(r)["data"]] == ["rag", "closed-book"]
    finally:
        server.stop()


def test_two_servers_share_a_postgresql_feedback_store(tmp_path, postgres):
    """[serve] feedback_url: an answer served by one replica takes feedback through the other, and
    both export it once."""
    ws = Workspace.init(tmp_path / "ws")
    ws = ws.with_config(ws.config.override("serve", feedback_url=postgres()))
    servers = [Server(create_app(ws)), Server(create_app(ws))]
    try:
        status, answer = call(servers[0], "POST", "/v1/chat/completions", {
            "model": "closed-book", "max_tokens": 4, "messages": [{"role": "user", "content": "Say yes."}]}, key=None)
        assert status == 200
        status, fb = call(servers[1], "POST", "/v1/feedback", {"response_id": answer["id"], "thumb": "up"}, key=None)
        assert status == 200
        for server in servers:
            status, export = call(server, "GET", "/v1/feedback", key=None)
            assert [f["id"] for f in export["data"]] == [fb["id"]]
            assert export["responses"][answer["id"]]["answer"] == answer["choices"][0]["message"]["content"]
    finally:
        for server in servers:
            server.stop()


def test_a_chunked_body_over_the_limit_is_refused_with_413(served):
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    parts = (b"x" * 8192 for _ in range(20))  # 160 KiB, no Content-Length
    conn.request("POST", "/v1/chat/completions", body=parts, encode_chunked=True,
                 headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"})
    r = conn.getresponse()
    assert r.status == 413 and "64 KiB" in json.loads(r.read())["error"]["message"]


def test_a_post_that_is_not_json_is_refused(served):
    status, body = call(served, "POST", "/v1/feedback", raw=b"thumb=up", headers={"content-type": "text/plain"})
    assert status == 415 and "application/json" in body["error"]["message"]


def test_without_keys_only_loopback_names_are_answered(tmp_path):
    """A page on another site that rebinds its DNS name to 127.0.0.1 sends its own name as Host."""
    server = Server(create_app(Workspace.init(tmp_path / "ws")))
    try:
        status, body = call(server, "GET", "/v1/feedback", key=None, headers={"host": "attacker.example"})
        assert status == 403 and body["error"]["code"] == "host_not_allowed"
        assert call(server, "GET", "/v1/feedback", key=None, headers={"host": f"localhost:{server.port}"})[0] == 200
    finally:
        server.stop()


def test_cors_answers_preflights_of_configured_origins_only(tmp_path):
    ws = Workspace.init(tmp_path / "ws")
    ws = ws.with_config(ws.config.override("serve", cors_origins=["https://app.example"]))
    app = create_app(ws)
    assert app.state.store  # the app is the FastAPI app, whatever wraps it
    server = Server(app)
    try:
        for origin, allowed in (("https://app.example", True), ("https://evil.example", False)):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request("OPTIONS", "/v1/chat/completions", headers={
                "origin": origin, "access-control-request-method": "POST", "access-control-request-headers": "authorization"})
            r = conn.getresponse()
            r.read()
            assert (r.getheader("access-control-allow-origin") == origin) is allowed
    finally:
        server.stop()
