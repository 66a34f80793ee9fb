"""OpenAI tool calling on the served app: the client's tools offered to the model under the agent's
grammar-constrained action format, answered in OpenAI's shape (plain and streamed), bad tools refused;
and ragtune's own agent, in native mode, driving the served model over HTTP."""

import json

import pytest

from tests.serve.conftest import KEY, call

pytestmark = pytest.mark.slow
CALCULATE = {"type": "function", "function": {"name": "calculate", "description": "Evaluate arithmetic exactly.",
                                              "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                                                             "required": ["expression"]}}}
ASK = [{"role": "user", "content": "What is 17 * 23? Use the calculator."}]


def test_a_required_tool_call_then_the_answer_from_its_result(served, client):
    r = client.chat.completions.create(model="closed-book", messages=ASK, tools=[CALCULATE], tool_choice="required", max_tokens=96)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (tc,) = choice.message.tool_calls
    args = json.loads(tc.function.arguments)  # constrained: always JSON with the declared argument
    assert tc.function.name == "calculate" and set(args) == {"expression"} and isinstance(args["expression"], str)
    followed = [*ASK, {"role": "assistant", "content": None, "tool_calls": [tc.model_dump()]},
                {"role": "tool", "tool_call_id": tc.id, "content": "391"}]
    r = client.chat.completions.create(model="closed-book", messages=followed, tools=[CALCULATE], tool_choice="none", max_tokens=64)
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content.strip()
    stored = served.app.state.store.responses([r.id])[r.id]
    assert stored.model == "closed-book" and '"role": "tool"' in json.dumps(stored.messages)


def test_a_streamed_tool_call_arrives_as_a_tool_calls_delta(client):
    stream = client.chat.completions.create(model="closed-book", messages=ASK, tools=[CALCULATE],
                                            tool_choice={"type": "function", "function": {"name": "calculate"}}, stream=True, max_tokens=96)
    chunks = list(stream)
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.name == "calculate" and json.loads(calls[0].function.arguments)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


@pytest.mark.parametrize("body, param, says", [
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools", "function.name"),
    ({"tools": [CALCULATE], "tool_choice": {"type": "function", "function": {"name": "fly"}}}, "tool_choice", "naming one of the tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "null"}}}}}]},
     "tools", "not supported"),
    ({"model": "rag", "tools": [CALCULATE]}, "tools", "retrieves by itself"),
])
def test_bad_tools_are_refused_by_field(served, body, param, says):
    status, answer = call(served, "POST", "/v1/chat/completions", {"model": "closed-book", "messages": ASK, **body})
    assert status == 400 and answer["error"]["param"] == param and says in answer["error"]["message"]


def test_ragtunes_agent_drives_the_served_model_with_native_tool_calls(served, monkeypatch):
    from ragtune.agent.loop import Agent
    from ragtune.agent.tools import toolbox
    from ragtune.config import GenerateConfig
    from ragtune.generate.openai import OpenAIGenerator

    monkeypatch.setenv("RAGTUNE_AGENT_KEY", KEY)
    g = OpenAIGenerator(GenerateConfig(backend="openai", model="closed-book", base_url=served.url + "/v1",
                                       api_key_env="RAGTUNE_AGENT_KEY", retries=0, max_tokens=96))
    answer = Agent(g, lambda s: toolbox(["calculate"], []), max_steps=3, max_tokens=96, native=True).run("What is 17 * 23?")
    assert answer.usage["invalid_actions"] == 0 and answer.stopped in ("answer", "budget", "repeat")
    assert all(s.tool in (None, "calculate") for s in answer.steps)
    assert json.loads(answer.steps[0].prompt)[0]["role"] == "system"  # the exact messages sent are kept
