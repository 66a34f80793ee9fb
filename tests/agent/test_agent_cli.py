"""`ragtune agent`, `eval qa --arm agent` and `data traces-to-sft` as a user runs them: the real SmolLM2
through llama.cpp on the ingested handbook, real subprocesses."""

import json

import pytest

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kb(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("agent") / "kb"
    assert run_cli("init", root).returncode == 0
    assert run_cli("ingest", REPO / "examples" / "handbook", cwd=root).returncode in (0, 1)
    return root


def test_agent_answers_and_shows_its_steps(kb):
    r = run_cli("agent", "How much does a cup of coffee cost in the canteen?", "--json", "--max-steps", "3", cwd=kb)
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    assert answer["stopped"] in ("answer", "budget", "repeat") and 1 <= len(answer["steps"]) <= 3
    for step in answer["steps"]:
        assert step["prompt"].startswith("<|im_start|>system\nYou answer the user's question.")
        assert step["error"] != "parse"  # constrained: every reply is a valid action
    called = [s["tool"] for s in answer["steps"] if s["tool"]]
    assert set(called) <= {"search", "read", "calculate", "today"}
    r = run_cli("agent", "What is 12 * 7?", "--show-steps", "--max-steps", "2", cwd=kb)
    assert r.returncode == 0, r.stderr
    assert "step 1" in r.stdout and "model {" in r.stdout and " steps, " in r.stdout


def test_eval_arm_agent_then_its_traces_as_sft_data(kb, tmp_path):
    out = tmp_path / "agent.json"
    r = run_cli("eval", "qa", "--qa", REPO / "examples" / "handbook-multihop.jsonl", "--arm", "agent", "--limit", "2",
                "--json", out, cwd=kb)
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["arm"] == "agent" and result["metrics"]["tool_call_validity"] == 1.0
    assert all(p["steps"] and p["trace"][0]["role"] == "system" for p in result["predictions"])
    run_id = r.stdout.split(" run ")[1].split()[0]
    qualifying = [p for p in result["predictions"] if p["stopped"] == "answer" and all(s["error"] is None for s in p["steps"])]
    r = run_cli("data", "traces-to-sft", run_id, "--out", tmp_path / "traces.jsonl", "--min-f1", "0", cwd=kb)
    if qualifying:
        assert r.returncode == 0, r.stderr
        rows = [json.loads(line) for line in (tmp_path / "traces.jsonl").read_text().splitlines()]
        assert [row["id"] for row in rows] == [p["id"] for p in qualifying]
    else:
        assert r.returncode != 0 and "none of the 2 traces" in r.stderr


def test_a_bad_tool_module_is_one_clear_error(kb):
    toml = (kb / "ragtune.toml").read_text()
    (kb / "ragtune.toml").write_text(toml.replace("tools = []", 'tools = ["no_such_tools_module"]'))
    try:
        r = run_cli("agent", "hello", cwd=kb)
    finally:
        (kb / "ragtune.toml").write_text(toml)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "cannot import 'no_such_tools_module'" in r.stderr and len(r.stderr.strip().splitlines()) <= 2
    r = run_cli("eval", "qa", "--qa", REPO / "examples" / "handbook-multihop.jsonl", "--arm", "sideways", cwd=kb)
    assert r.returncode != 0 and "choose one of: rag, closed-book, retrieval, agent" in r.stderr
