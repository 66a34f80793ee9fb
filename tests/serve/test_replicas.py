"""Replicas: two `ragtune serve` processes, as on two machines, with one ragtune.toml that puts the
index in pgvector (`[store] table` set) and the feedback in PostgreSQL. A document ingested through
one workspace while both serve is retrieved by the other; feedback posted to both is exported once each."""
import json
import shutil
import urllib.request

import pytest

from tests.conftest import run_cli
from tests.serve.test_serve_cli import Served, post
from ragtune import Workspace
from ragtune.config import set_config_value

pytestmark = pytest.mark.slow

FACT = "The Zephyr lighthouse keeper's radio call sign is QX-4471, assigned by the harbour office in 2019.\n"
NEW_QUESTION = "What is the radio call sign of the Zephyr lighthouse keeper?"


def replicas(tmp_path, url: str, base) -> list:
    """Two workspace folders with the same ragtune.toml: the shared index and feedback store, per-replica state."""
    a = Workspace.init(tmp_path / "replica-a").root
    for section, key, value in [("store", "backend", "pgvector"), ("store", "url", url), ("store", "table", "handbook"),
                                ("serve", "feedback_url", url), ("train", "base", str(base))]:
        set_config_value(a, section, key, value)
    b = Workspace.init(tmp_path / "replica-b").root
    shutil.copy(a / "ragtune.toml", b / "ragtune.toml")
    return [a, b]


def ask(server, question: str) -> dict:
    return post(server.url + "/v1/chat/completions", {"model": "rag", "max_tokens": 8,
                                                      "messages": [{"role": "user", "content": question}]}, timeout=300)


def test_two_replicas_answer_from_one_index_and_export_their_feedback_once(postgres, smollm2_base, handbook_copy, tmp_path):
    a, b = replicas(tmp_path, postgres(), smollm2_base[1])
    docs = tmp_path / "docs"
    shutil.copytree(handbook_copy, docs)
    out = run_cli("ingest", docs, "-w", a)
    assert out.returncode == 0, out.stderr
    servers = []
    try:
        servers += [Served(a), Served(b)]
        served_a = ask(servers[0], "Who founded the observatory?")
        ask(servers[1], "How many days of annual leave do employees get?")  # B has searched: a snapshot before the fact

        (docs / "zephyr.md").write_text(FACT, encoding="utf-8")
        out = run_cli("ingest", docs, "-w", a)  # through replica A's workspace, while both serve
        assert out.returncode == 0 and "added 1" in out.stdout, out.stdout + out.stderr
        answered = ask(servers[1], NEW_QUESTION)
        assert "../docs/zephyr.md" in [s["source"] for s in answered["sources"]]

        fb_a = post(servers[0].url + "/v1/feedback", {"response_id": served_a["id"], "thumb": "down", "key": "a-1"})
        fb_b = post(servers[1].url + "/v1/feedback", {"response_id": answered["id"], "thumb": "up", "key": "b-1"})
        with urllib.request.urlopen(servers[0].url + "/v1/feedback?limit=10000", timeout=30) as r:
            seen_by_a = [fb["id"] for fb in json.load(r)["data"]]
        assert sorted(seen_by_a) == sorted([fb_a["id"], fb_b["id"]])  # B's feedback too: one store
    finally:
        for server in servers:
            server.kill9()

    exports = []
    for root in (a, b):  # once from each replica's workspace: the same rows, each feedback once
        path = root / "kto.jsonl"
        out = run_cli("feedback", "export", "--format", "kto", "-o", path, "--max-length", "4096", "-w", root)
        assert out.returncode == 0 and "wrote 2 kto rows" in out.stdout, out.stdout + out.stderr
        exports.append(path.read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in exports[0].splitlines()]
    labels = sorted((NEW_QUESTION in r["prompt"][-1]["content"], r["label"]) for r in rows)
    assert labels == [(False, False), (True, True)]  # A's answer disliked, B's (about the new fact) liked
    assert [r["completion"][0]["content"] for r in rows if r["label"]] == [answered["choices"][0]["message"]["content"]]
    assert exports[1] == exports[0]  # the second export adds nothing
