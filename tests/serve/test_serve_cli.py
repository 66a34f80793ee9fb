"""`ragtune serve` as a process: acknowledged feedback survives kill -9; `ragtune feedback export`
turns it into training data that `data validate` accepts."""
import json
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import RAGTUNE, free_port, run_cli
from ragtune import Workspace

pytestmark = pytest.mark.slow


def post(url, body, timeout=30):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


class Served:
    def __init__(self, root):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([*RAGTUNE, "serve", "--port", str(self.port), "-w", str(root)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=1)
                return
            except OSError:
                if self.proc.poll() is not None:
                    pytest.fail(f"ragtune serve exited: {self.proc.stderr.read()[-2000:]}")
                assert time.time() < deadline, "ragtune serve did not start in 90 s"
                time.sleep(0.2)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def root(tmp_path):
    return Workspace.init(tmp_path / "ws").root


def test_acknowledged_feedback_survives_kill_9_of_the_server_and_retries_do_not_duplicate(root):
    server = Served(root)
    answers = [post(server.url + "/v1/chat/completions", {"model": "closed-book", "max_tokens": 4,
                                                          "messages": [{"role": "user", "content": f"Say {w}."}]})["id"]
               for w in ("yes", "no")]
    acked, stop = {}, threading.Event()

    def client():
        i = 0
        while not stop.is_set():
            try:
                fb = post(server.url + "/v1/feedback", {"response_id": answers[i % 2], "thumb": "up" if i % 3 else "down",
                                                        "key": f"click-{i}"}, timeout=5)
                acked[f"click-{i}"] = fb["id"]
                i += 1
            except (OSError, urllib.error.URLError):
                return  # the server is gone: click-i was sent but not acknowledged

    t = threading.Thread(target=client)
    t.start()
    while len(acked) < 150:
        time.sleep(0.01)
    server.kill9()
    stop.set()
    t.join(timeout=30)
    in_flight = f"click-{len(acked)}"

    server = Served(root)
    try:
        retried = post(server.url + "/v1/feedback", {"response_id": answers[0], "thumb": "up", "key": in_flight})
        req = urllib.request.Request(server.url + "/v1/feedback?limit=10000")
        stored = json.load(urllib.request.urlopen(req, timeout=30))["data"]
    finally:
        server.kill9()
    by_key = {}
    for fb in stored:
        by_key.setdefault(fb["key"], []).append(fb["id"])
    assert all(len(ids) == 1 for ids in by_key.values())  # nothing twice, not even the retried one
    assert all(by_key.get(k) == [fid] for k, fid in acked.items())  # every acknowledged one, unchanged
    assert by_key[in_flight] == [retried["id"]]


def test_feedback_export_writes_validated_training_data(root, smollm2_base):
    from ragtune.config import set_config_value

    set_config_value(root, "train", "base", str(smollm2_base[1]))  # the converted base: no conversion per workspace
    server = Served(root)
    try:
        answers = {}  # two different answers to one prompt: sampled, as the page's "show me two answers" does
        for seed in range(8):
            r = post(server.url + "/v1/chat/completions", {"model": "closed-book", "max_tokens": 8, "temperature": 1.0,
                                                          "seed": seed, "messages": [{"role": "user", "content": "Name a fruit."}]})
            answers.setdefault(r["choices"][0]["message"]["content"], r["id"])
            if len(answers) == 2:
                break
        ids = list(answers.values())
        assert len(ids) == 2
        post(server.url + "/v1/feedback", {"response_id": ids[0], "thumb": "up"})
        post(server.url + "/v1/feedback", {"response_id": ids[1], "thumb": "down", "correction": "An apple."})
        post(server.url + "/v1/feedback", {"ranking": [ids[0], ids[1]]})
    finally:
        server.kill9()
    for fmt, rows in (("kto", 2), ("sft", 1), ("dpo", 1)):
        out = run_cli("feedback", "export", "--format", fmt, "-o", str(root / f"{fmt}.jsonl"), "-w", str(root))
        assert out.returncode == 0, out.stderr
        assert f"wrote {rows} {fmt} rows" in out.stdout and "— OK" in out.stdout
        assert len((root / f"{fmt}.jsonl").read_text().splitlines()) == rows
    stats = run_cli("feedback", "stats", "-w", str(root))
    assert "answers served" in stats.stdout and "2 thumb" in stats.stdout and "1 ranking" in stats.stdout


def test_serving_the_network_without_keys_is_refused(root):
    out = run_cli("serve", "--host", "0.0.0.0", "--port", str(free_port()), "-w", str(root), timeout=60)
    assert out.returncode == 2 and "without API keys" in out.stderr and "api_keys_env" in out.stderr
