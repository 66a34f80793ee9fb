"""Tools from plain functions: schemas from type hints and docstrings, user modules, one clear error for a bad one."""

import re
import sys
from typing import Annotated, Literal, Optional

import pytest

from ragtune.agent.protocol import ActionError, action_schema, as_text, parse_action, system_prompt
from ragtune.agent.tools import Sources, as_tool, calculate, load_module, toolbox
from ragtune.errors import ConfigError
from ragtune.types import Hit


def convert(amount: float, currency: Literal["EUR", "GBP"] = "EUR", note: Optional[str] = None, tags: list[str] = ()) -> str:
    """Convert US dollars into another currency.

    More text that is not the description.

    amount: dollars to convert
    currency: the target currency
    """
    return f"{amount} {currency}"


def test_the_schema_comes_from_hints_defaults_and_docstring():
    t = as_tool(convert)
    assert t.name == "convert" and t.description == "Convert US dollars into another currency."
    p = t.parameters
    assert p["required"] == ["amount"] and p["additionalProperties"] is False
    assert p["properties"]["amount"] == {"type": "number", "description": "dollars to convert"}
    assert p["properties"]["currency"] == {"enum": ["EUR", "GBP"], "description": "the target currency"}
    assert p["properties"]["note"] == {"type": "string"}
    assert p["properties"]["tags"] == {"type": "array", "items": {"type": "string"}}
    assert t.spec()["function"]["parameters"] is p


def test_annotated_hints_add_schema_keywords_and_calculate_takes_arithmetic_only():
    def pick(code: Annotated[str, {"pattern": "^[A-Z]*$", "maxLength": 3}], n: Annotated[int, "not a dict: ignored"] = 1) -> str:
        """Pick."""
        return code

    props = as_tool(pick).parameters["properties"]
    assert props == {"code": {"type": "string", "pattern": "^[A-Z]*$", "maxLength": 3}, "n": {"type": "integer"}}
    pattern = as_tool(calculate).parameters["properties"]["expression"]["pattern"]
    assert re.fullmatch(pattern, "(12 + 50) * 3 - 1,000 / 2.5") and not re.fullmatch(pattern, '17 * 23 } returns 391')


def test_a_parameter_a_model_cannot_give_is_refused_by_name():
    def bad(when: dict) -> str:
        """x"""

    with pytest.raises(ConfigError, match=r"tool 'bad', parameter 'when'.*use str, int"):
        as_tool(bad)

    def star(*xs: int) -> int:
        """x"""

    with pytest.raises(ConfigError, match=r"\*xs cannot be described"):
        as_tool(star)


def test_a_user_module_contributes_its_public_functions(tmp_path, monkeypatch):
    (tmp_path / "mytools.py").write_text(
        "import math\n\ndef shout(text: str) -> str:\n    \"\"\"Upper-case a text.\"\"\"\n    return text.upper()\n\n"
        "def _private(x: int) -> int:\n    return x\n")
    (tmp_path / "listed.py").write_text("def a(x: int) -> int:\n    return x\n\ndef b(y: int) -> int:\n    return y\n\nTOOLS = [b]\n")
    (tmp_path / "broken.py").write_text("import no_such_module_here\n")
    (tmp_path / "empty.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert [t.name for t in load_module("mytools")] == ["shout"]  # imported names and _private are not tools
    assert [t.name for t in load_module("listed")] == ["b"]
    with pytest.raises(ConfigError, match=r"cannot import 'broken' \(ModuleNotFoundError.*Python path"):
        load_module("broken")
    with pytest.raises(ConfigError, match="defines no public functions"):
        load_module("empty")
    with pytest.raises(ConfigError, match="cannot import 'nowhere_at_all'"):
        toolbox(["calculate"], ["nowhere_at_all"])
    tools = toolbox(["calculate", "today"], ["mytools"])
    assert [t.name for t in tools] == ["calculate", "today", "shout"]
    with pytest.raises(ConfigError, match="two tools are named 'shout'"):
        toolbox([], ["mytools", "mytools"])
    with pytest.raises(ConfigError, match="unknown tool 'web'; valid: search, read, calculate, today"):
        toolbox(["web"], [])
    with pytest.raises(ConfigError, match="needs a workspace index"):
        toolbox(["search"], [])
    sys.modules.pop("mytools", None)


def _hit(i: int) -> Hit:
    return Hit(i, 1.0, f"c{i}", "d", "a.md", "A", "", None, 0, 1, f"text {i}")


def test_sources_are_numbered_once_per_run():
    s = Sources()
    assert s.add([_hit(1), _hit(2)]) == [1, 2]
    assert s.add([_hit(2), _hit(3)]) == [2, 3]  # a passage seen before keeps its number
    assert s.get(3).chunk_id == "c3"
    with pytest.raises(ValueError, match=r"no source \[4\]; the sources so far are 1 to 3"):
        s.get(4)


def test_actions_are_parsed_strictly():
    tools = [as_tool(convert)]
    assert parse_action('{"tool": "convert", "arguments": {"amount": 3}}', tools).arguments == {"amount": 3}
    assert parse_action(' {"answer": "12 EUR [1]"} ', tools).answer == "12 EUR [1]"
    assert parse_action('{"answer": "12 EUR\nin cash"}', tools).answer == "12 EUR\nin cash"  # a raw line break, as written
    for reply, says in [("12 EUR", "not one JSON object"), ('["a"]', "must be a JSON object"),
                        ('{"tool": "fly", "arguments": {}}', "unknown tool 'fly'; the tools are: convert"),
                        ('{"tool": "convert", "arguments": {}}', "missing amount"),
                        ('{"tool": "convert", "arguments": {"amount": 1, "rate": 2}}', "unknown rate"),
                        ('{"tool": "convert", "arguments": {"amount": "ten"}}', 'amount = "ten" is not a number'),
                        ('{"tool": "convert", "arguments": {"amount": 1, "currency": "JPY"}}', "is not one of"),
                        ('{"tool": "convert", "arguments": {"amount": true}}', "is not a number"),
                        ('{"answer": 12}', "must be a string"), ('{"answer": "x", "tool": "convert"}', "unexpected keys")]:
        with pytest.raises(ActionError, match=None) as e:
            parse_action(reply, tools)
        assert says in str(e.value), (reply, str(e.value))
    with pytest.raises(ActionError, match="no more tool calls"):
        parse_action('{"tool": "convert", "arguments": {"amount": 3}}', tools, calls=False)


def test_the_schema_offers_each_tool_or_the_answer_with_bounded_strings():
    tools = toolbox(["calculate", "today"], [])
    schema = action_schema(tools, chars=100)
    assert [c["properties"].get("tool", {}).get("const") for c in schema["oneOf"]] == ["calculate", "today", None]
    assert schema["oneOf"][0]["properties"]["arguments"]["properties"]["expression"]["maxLength"] == 100
    assert schema["oneOf"][2]["properties"]["answer"]["maxLength"] == 100
    assert action_schema(tools, calls=False)["required"] == ["answer"]  # the last step may only answer
    prompt = system_prompt(tools)
    assert "- calculate(expression: string):" in prompt and '{"tool": "calculate", "arguments": {"expression": "..."}}' in prompt


def test_a_conversation_renders_for_templates_without_tools():
    messages = [{"role": "user", "content": "q"},
                {"role": "assistant", "content": "", "tool_calls": [{"id": "1", "type": "function", "function": {"name": "calculate", "arguments": '{"expression": "1+1"}'}}]},
                {"role": "tool", "tool_call_id": "1", "name": "calculate", "content": "2"},
                {"role": "assistant", "content": "oops", "invalid": True},
                {"role": "assistant", "content": "It is 2."}]
    assert as_text(messages) == [{"role": "user", "content": "q"},
                                 {"role": "assistant", "content": '{"tool": "calculate", "arguments": {"expression": "1+1"}}'},
                                 {"role": "tool", "content": "2"}, {"role": "assistant", "content": "oops"},
                                 {"role": "assistant", "content": '{"answer": "It is 2."}'}]
