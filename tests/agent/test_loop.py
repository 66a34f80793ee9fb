"""The agent loop, driven by a scripted generator through every edge case, then by the real SmolLM2
through llama.cpp, whose replies are constrained to the action schema."""

import json

import pytest

from ragtune.agent.loop import LAST_STEP, REMOVED, Agent, repeated_call
from ragtune.agent.tools import as_tool, toolbox
from ragtune.errors import GeneratorError
from tests.agent.scripted import NativeScripted, Scripted, call


def agent(replies, tools=("calculate",), extra=(), max_steps=4, **kw):
    g = Scripted(replies, **kw)
    return Agent(g, lambda sources: toolbox(list(tools), []) + [as_tool(f) for f in extra], max_steps=max_steps), g


def test_a_call_then_an_answer():
    a, g = agent([call("calculate", expression="48 / 2 + 48"), '{"answer": "72"}'])
    answer = a.run("How many clips?")
    assert answer.text == "72" and answer.stopped == "answer" and not answer.abstained
    first, second = answer.steps
    assert (first.tool, first.arguments, first.observation, first.error) == ("calculate", {"expression": "48 / 2 + 48"}, "72", None)
    assert second.tool is None and second.output == '{"answer": "72"}'
    assert second.prompt == g.format(g.sent[1])  # the exact prompt of each step is kept
    assert g.sent[1][-2:] == [{"role": "assistant", "content": call("calculate", expression="48 / 2 + 48")},
                              {"role": "tool", "content": "72"}]
    trace = answer.messages  # OpenAI/TRL shape: arguments as an object, then the tool's message
    assert trace[2]["tool_calls"][0]["function"] == {"name": "calculate", "arguments": {"expression": "48 / 2 + 48"}}
    assert trace[3] == {"role": "tool", "tool_call_id": "call_1", "name": "calculate", "content": "72"}
    assert answer.usage["steps"] == 2 and answer.usage["tool_calls"] == 1 and answer.usage["invalid_actions"] == 0
    assert json.loads(json.dumps(answer.to_dict()))["steps"][0]["observation"] == "72"


def test_a_tool_that_raises_is_an_observation_not_a_crash():
    def lookup(key: str) -> str:
        """Look a key up."""
        raise KeyError(key)

    a, _ = agent([call("lookup", key="x"), call("calculate", expression="1/0"), '{"answer": "unknown"}'], tools=("calculate",), extra=[lookup])
    answer = a.run("q")
    assert [s.error for s in answer.steps] == ["tool", "tool", None]
    assert answer.steps[0].observation == "error: KeyError: 'x'"
    assert answer.steps[1].observation == "error: CalculatorError: division by zero"
    assert answer.text == "unknown"


def test_invalid_replies_are_fed_back_and_counted():
    a, g = agent(["The answer is 4.", call("fly", to="moon"), call("calculate", amount=3), '{"answer": "4"}'], max_steps=5)
    answer = a.run("q")
    assert [s.error for s in answer.steps] == ["parse", "parse", "parse", None]
    assert "not one JSON object" in answer.steps[0].observation
    assert "unknown tool 'fly'; the tools are: calculate" in answer.steps[1].observation
    assert "missing expression" in answer.steps[2].observation
    assert g.sent[1][-2:] == [{"role": "assistant", "content": "The answer is 4."},
                              {"role": "user", "content": answer.steps[0].observation}]
    assert answer.usage["invalid_actions"] == 3 and answer.text == "4" and answer.stopped == "answer"


def test_the_budget_forces_an_answer_at_the_last_step():
    a, g = agent([call("calculate", expression="1+1"), call("calculate", expression="2+2"), '{"answer": "2"}'], max_steps=3)
    answer = a.run("q")
    assert answer.stopped == "budget" and answer.text == "2" and len(answer.steps) == 3
    assert g.sent[2][-1] == {"role": "user", "content": LAST_STEP}
    assert [s.get("required") or [c["properties"].get("tool", {}).get("const") for c in s["oneOf"]] for s in g.schemas] == \
        [["calculate", None], ["calculate", None], ["answer"]]  # only the answer is offered last


def test_a_repeated_call_is_not_run_again_and_the_next_step_must_answer():
    runs = []

    def lookup(key: str) -> str:
        """Look a key up."""
        runs.append(key)
        return key.upper()

    a, g = agent([call("lookup", key="x"), call("lookup", key="y"), call("lookup", key="x"), '{"answer": "X"}'],
                 tools=(), extra=[lookup], max_steps=6)
    answer = a.run("q")
    assert runs == ["x", "y"] and [s.error for s in answer.steps] == [None, None, "repeat", None]
    assert answer.steps[2].observation == repeated_call("lookup", "X") == g.sent[3][-1]["content"]
    assert "it returned: X Give your final answer" in answer.steps[2].observation  # the earlier result, restated
    assert answer.stopped == "repeat" and answer.text == "X" and len(answer.steps) == 4  # not the 6 the budget allows
    assert g.schemas[3]["required"] == ["answer"] and LAST_STEP not in json.dumps(g.sent[3])  # only an answer is offered
    assert answer.usage["tool_calls"] == 3 and answer.usage["invalid_actions"] == 0


def test_a_repeated_calls_long_result_is_restated_cut():
    long = "word " * 200
    note = repeated_call("search", long)
    assert note.startswith("You already called search with these arguments; it returned: word word")
    assert "… Give your final answer now." in note and len(note) < 400


def test_a_budget_spent_without_a_valid_answer_ends_with_no_answer():
    a, _ = agent([call("calculate", expression="1+1"), "still thinking"], max_steps=2)
    answer = a.run("q")
    assert answer.stopped == "budget" and answer.text == "" and answer.abstained
    assert "no more tool calls" not in answer.steps[1].observation and answer.steps[1].error == "parse"


def test_old_tool_results_give_way_when_the_context_fills():
    def page(n: int) -> str:
        """A long page."""
        return f"page {n} " + "word " * 300

    a, g = agent([call("page", n=1), call("page", n=2), call("page", n=3), '{"answer": "done"}'], tools=(), extra=[page],
                 max_steps=4, context_size=1000)
    answer = a.run("q")
    assert answer.text == "done"
    last = g.sent[-1]
    tool_turns = [m["content"] for m in last if m["role"] == "tool"]
    assert tool_turns[0] == REMOVED and tool_turns[-1].startswith("page 3")
    assert g.count_tokens(g.format(last)) + a.max_tokens <= 1000
    a, _ = agent(['{"answer": "x"}'], context_size=300)
    with pytest.raises(GeneratorError, match="no longer fits"):
        a.run("q " * 400)


def test_citations_are_the_numbers_of_sources_the_tools_returned(ws, handbook_copy):
    ws.ingest([handbook_copy])
    g = Scripted([call("search", query="vacation days"), call("read", source=1), '{"answer": "15 days [1], see [9]"}'])
    from ragtune.agent.tools import toolbox as tb

    a = Agent(g, lambda sources: tb(["search", "read"], [], retriever=ws.retriever, store=ws.store, sources=sources, k=2))
    answer = a.run("How many vacation days?")
    found = answer.steps[0].observation
    assert found.startswith("[1] ") and "\n\n[2] " in found
    assert [s.number for s in answer.sources] == [1, 2] and answer.citations == [1]  # [9] was never returned
    section = answer.steps[1].observation
    assert section.startswith("[1] ") and answer.sources[0].hit.text.strip()[:40] in section
    offered = [[c["properties"].get("tool", {}).get("const") for c in s["oneOf"]] for s in g.schemas]
    assert offered[0] == ["search", None] and offered[1] == ["search", "read", None]  # read once there is a source


@pytest.mark.slow
def test_smollm2_on_llama_cpp_makes_valid_calls_and_finishes():
    from ragtune.config import GenerateConfig
    from ragtune.generate import get_generator

    g = get_generator(GenerateConfig(max_tokens=128))
    assert g.constrained
    a = Agent(g, lambda sources: toolbox(["calculate", "today"], []), max_steps=3, max_tokens=96)
    for question in ["What is 17 times 23? Use the calculator.", "Weng earns $12 an hour. She worked 50 minutes. How much did she earn?"]:
        answer = a.run(question)
        assert answer.usage["invalid_actions"] == 0  # by construction: the grammar allows nothing else
        assert all(json.loads(s.output) for s in answer.steps)
        assert answer.stopped in ("answer", "budget", "repeat") and 1 <= len(answer.steps) <= 3
        assert all(s.prompt.startswith("<|im_start|>system") for s in answer.steps)


def test_native_tool_calls_go_over_the_wire_in_openai_shape():
    g = NativeScripted([("calculate", '{"expression": "2*21"}'), ("calculate", "{not json"), "It is 42."])
    answer = Agent(g, lambda s: toolbox(["calculate"], []), max_steps=4, native=True).run("What is 2 * 21?")
    assert answer.text == "It is 42." and answer.stopped == "answer"
    assert [s.error for s in answer.steps] == [None, "parse", None] and answer.steps[0].observation == "42"
    assert "are not JSON" in answer.steps[1].observation
    assert g.schemas[0] == ["calculate"]  # the tools go in the request
    sent = g.sent[1]
    assert "JSON object" not in sent[0]["content"]  # no JSON-action instructions: the endpoint knows the tools
    assert sent[2] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "calculate", "arguments": '{"expression": "2*21"}'}}]}
    assert sent[3] == {"role": "tool", "tool_call_id": "call_1", "content": "42"}
    with pytest.raises(Exception, match='calls = "native" needs an endpoint with tool calling'):
        Agent(Scripted([]), lambda s: [], native=True)
