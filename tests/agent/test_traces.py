"""The agent as an evaluation arm, and its successful traces as SFT data rendered exactly as the agent prompts."""

import json

import pytest

from ragtune.agent.loop import Agent
from ragtune.agent.protocol import as_text
from ragtune.agent.tools import toolbox
from ragtune.agent.traces import successful_traces
from ragtune.errors import DatasetError
from ragtune.evaluate.qa_eval import agent_arm, evaluate_qa
from ragtune.train.data import load_examples, write_examples
from ragtune.types import QAItem

from tests.agent.scripted import Scripted, call

ITEMS = [QAItem("clips", "48 clips in April, half as many in May: how many in all?", ["72"]),
         QAItem("loop", "What is 2 + 2?", ["4"]),
         QAItem("fixed", "What is 3 * 5?", ["15"]),
         QAItem("wrong", "What is 9 - 1?", ["8"])]
REPLIES = [call("calculate", expression="48 / 2 + 48"), '{"answer": "72"}',  # clips: right, one call
           *[call("calculate", expression=e) for e in ("2+2", "2*2", "4+0")], '{"answer": "4"}',  # loop: the budget forces the answer
           "15", call("calculate", expression="3*5"), '{"answer": "15"}',  # fixed: an invalid reply first
           '{"answer": "7"}']  # wrong: answered at once, wrongly


@pytest.fixture
def result():
    g = Scripted(REPLIES)
    return evaluate_qa(ITEMS, agent_arm(Agent(g, lambda s: toolbox(["calculate"], []), max_steps=4)))


def test_the_agent_arm_measures_steps_calls_validity_and_the_budget(result):
    m = result.metrics
    assert result.arm == "agent" and m["em"] == 0.75
    assert m["steps_mean"] == (2 + 4 + 3 + 1) / 4 and m["tool_calls_mean"] == (1 + 3 + 1 + 0) / 4
    assert m["tool_call_validity"] == 9 / 10  # one invalid reply in ten
    assert m["stopped_by_budget"] == 0.25 and m["tool_error_rate"] == 0.0
    row = json.loads(json.dumps(result.predictions[0].to_dict()))
    assert [s["tool"] for s in row["steps"]] == ["calculate", None] and row["stopped"] == "answer"
    assert row["trace"][2]["tool_calls"][0]["function"]["arguments"] == {"expression": "48 / 2 + 48"}
    assert "groundedness" not in row  # no documents consulted


def test_only_clean_successful_traces_become_demonstrations(result, tmp_path):
    rows = [json.loads(json.dumps(p.to_dict())) for p in result.predictions]
    export = successful_traces(rows, min_f1=1.0)
    assert [e.id for e in export.examples] == ["clips"] and export.seen == 4
    assert export.left_out == {"stopped by the step budget": 1, "an invalid reply": 1, "F1 below 1": 1}
    path = tmp_path / "traces.jsonl"
    write_examples(export.examples, path)
    written = json.loads(path.read_text().splitlines()[0])
    assert written["messages"][2]["tool_calls"][0]["function"]["name"] == "calculate"  # TRL's format on disk
    (loaded,) = load_examples(path)
    assert loaded.messages == as_text(rows[0]["trace"])  # trained on exactly what the agent sends
    assert loaded.messages[-1] == {"role": "assistant", "content": '{"answer": "72"}'}
    assert loaded.messages[3] == {"role": "tool", "content": "72"}
    assert len(successful_traces(rows, min_f1=0.0).examples) == 2  # the wrong answer too, when asked


def test_a_malformed_trace_is_a_line_numbered_error(tmp_path):
    good = {"messages": [{"role": "user", "content": "q"},
                         {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "calculate", "arguments": "{\"expression\": \"1+1\"}"}}]},
                         {"role": "tool", "content": "2"}, {"role": "assistant", "content": "2"}]}
    bad_args = json.loads(json.dumps(good))
    bad_args["messages"][1]["tool_calls"][0]["function"]["arguments"] = "not json"
    two_calls = json.loads(json.dumps(good))
    two_calls["messages"][1]["tool_calls"] *= 2
    no_result = json.loads(json.dumps(good))
    del no_result["messages"][2]["content"]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [good, bad_args, two_calls, no_result]) + "\n")
    with pytest.raises(DatasetError) as e:
        load_examples(path)
    text = str(e.value)
    assert "3 bad row(s)" in text and "line 2: messages[1]: a tool call needs function.name" in text
    assert "line 3: messages[1]: 'tool_calls' must hold exactly one call" in text
    assert "line 4: messages[2]: a tool turn needs 'content'" in text
