"""A served workspace for the serve tests: the handbook ingested, API keys on, a real uvicorn
server on loopback in a thread."""
import http.client
import json
import os
import threading
import time

import pytest

from tests.conftest import HANDBOOK, free_port
from ragtune import Workspace
from ragtune.serve.app import create_app

KEY = "test-key-0123456789"


class Server:
    """A uvicorn server in a thread of this process (its loop is its own)."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def call(server, method, path, body=None, key=KEY, raw=None, headers=None):
    """(status, JSON body) of one request; ``raw`` bytes are sent as they are."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    h = {"content-type": "application/json", **(headers or {})}
    if key is not None:
        h["authorization"] = f"Bearer {key}"
    conn.request(method, path, body=data, headers=h)
    r = conn.getresponse()
    payload = r.read()
    conn.close()
    return r.status, json.loads(payload) if payload and r.getheader("content-type", "").startswith("application/json") else payload


@pytest.fixture(scope="package")
def served(tmp_path_factory):
    before = os.environ.get("RAGTUNE_TEST_KEYS")
    os.environ["RAGTUNE_TEST_KEYS"] = f"other-key,{KEY}"
    ws = Workspace.init(tmp_path_factory.mktemp("serve") / "ws")
    ws.ingest([HANDBOOK])
    ws = ws.with_config(ws.config.override("serve", api_keys_env="RAGTUNE_TEST_KEYS", max_body_kb=64, max_tokens=256))
    app = create_app(ws)
    server = Server(app)
    server.ws, server.app = ws, app
    yield server
    server.stop()
    os.environ.pop("RAGTUNE_TEST_KEYS") if before is None else os.environ.update(RAGTUNE_TEST_KEYS=before)


@pytest.fixture(scope="package")
def client(served):
    from openai import OpenAI

    return OpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0)


def store_of(served):
    return served.app.state.store
