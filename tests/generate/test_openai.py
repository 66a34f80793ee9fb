"""The OpenAI-compatible generator against real HTTP servers on loopback: llama.cpp's own
OpenAI server with the bundled GGUF, and small servers that misbehave on purpose."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ragtune import Workspace
from ragtune.config import GenerateConfig
from ragtune.errors import GeneratorError
from ragtune.generate.openai import OpenAIGenerator
from tests.conftest import HANDBOOK, free_port, run_cli

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "The observatory was founded in 1931 by Cornelius Vantreight.\n\nWho founded the observatory?"}]


def gen(base_url, **kw):
    return OpenAIGenerator(GenerateConfig(backend="openai", model="smollm2", base_url=base_url, max_tokens=48, **kw))


def test_plain_and_streaming_against_llama_cpp_server(llama_server):
    g = gen(llama_server)
    plain = g.generate(QUESTION)
    assert "Vantreight" in plain.text and plain.prompt_tokens > 10 and plain.completion_tokens > 0
    pieces = list(g.stream(QUESTION))
    assert len(pieces) > 3 and "Vantreight" in "".join(pieces)
    assert "".join(pieces).strip() == plain.text.strip()  # temperature 0: the same answer both ways


def test_ask_through_the_endpoint(llama_server, tmp_path):
    ws = Workspace.init(tmp_path / "ws")
    ws.ingest([HANDBOOK / "history.html"])
    ws.config = ws.config.override("generate", backend="openai", model="smollm2", base_url=llama_server)
    answer = ws.ask("Who founded the observatory?")
    assert "Vantreight" in answer.text and answer.generator.startswith("openai:smollm2")
    assert json.loads(answer.prompt)[-1]["role"] == "user"


class _Misbehaving(BaseHTTPRequestHandler):
    hits = 0

    def do_POST(self):
        type(self).hits += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, body = self.reply()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def misbehaving():
    servers = []

    def start(status, body):
        handler = type("H", (_Misbehaving,), {"hits": 0, "reply": lambda self: (status, body)})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/v1", handler

    yield start
    for s in servers:
        s.shutdown()


def test_server_error_is_retried_then_reported(misbehaving):
    url, handler = misbehaving(500, b'{"error": "model crashed"}')
    with pytest.raises(GeneratorError, match="answered HTTP 500: {\"error\": \"model crashed\"}"):
        gen(url, retries=2).generate(QUESTION)
    assert handler.hits == 3


def test_garbage_is_reported(misbehaving):
    url, _ = misbehaving(200, b"<html>definitely not json</html>")
    with pytest.raises(GeneratorError, match="not JSON"):
        gen(url, retries=0).generate(QUESTION)
    url, _ = misbehaving(200, b'{"id": 1}')
    with pytest.raises(GeneratorError, match="without choices"):
        gen(url, retries=0).generate(QUESTION)


def test_unauthorised_names_the_key_variable(misbehaving):
    url, _ = misbehaving(401, b'{"error": "bad key"}')
    with pytest.raises(GeneratorError, match=r"set the key in \$OPENAI_API_KEY"):
        gen(url, retries=0).generate(QUESTION)


def test_unreachable_endpoint_via_cli(tmp_path):
    ws = Workspace.init(tmp_path / "ws")
    ws.ingest([HANDBOOK / "history.html"])
    port = free_port()  # nothing listens there
    toml = ws.root / "ragtune.toml"
    toml.write_text(toml.read_text().replace("http://127.0.0.1:8000/v1", f"http://127.0.0.1:{port}/v1").replace("retries = 2", "retries = 1"))
    r = run_cli("ask", "Who founded the observatory?", "--generator", "openai", "--workspace", ws.root, timeout=120)
    assert r.returncode == 1 and f"cannot reach http://127.0.0.1:{port}/v1/chat/completions" in r.stderr
    assert "after 2 tries" in r.stderr and "Traceback" not in r.stderr
