"""JSON schema -> GBNF: llama.cpp compiles every grammar, and what SmolLM2 samples under it is JSON
that fits the schema (strings without raw control characters, within their maxLength)."""

import json
import re

import pytest

from ragtune.agent.protocol import _fits
from ragtune.errors import GeneratorError
from ragtune.generate.gbnf import literal, to_gbnf

SCHEMAS = [
    {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 40}}, "required": ["answer"]},
    {"type": "object", "properties": {"n": {"type": "integer"}, "x": {"type": "number"}, "ok": {"type": "boolean"}},
     "required": ["n", "x", "ok"]},
    {"type": "object", "properties": {"unit": {"enum": ["km", "mile"]}, "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3}},
     "required": ["unit", "tags"]},
    {"type": "object", "properties": {"a": {"type": "string", "maxLength": 10}, "b": {"type": "integer"}}, "required": []},
    {"oneOf": [{"type": "object", "properties": {"tool": {"const": "calculate"}, "arguments": {"type": "object", "properties": {"expression": {"type": "string", "maxLength": 30}}, "required": ["expression"]}},
                "required": ["tool", "arguments"]},
               {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 30}}, "required": ["answer"]}]},
    {"type": "object", "properties": {"expression": {"type": "string", "pattern": "^[0-9 +*/()-]*$", "maxLength": 40}},
     "required": ["expression"]},
]


def fits(value, schema) -> bool:
    if "oneOf" in schema:
        return any(fits(value, s) for s in schema["oneOf"])
    if "const" in schema:
        return value == schema["const"]
    if schema.get("type") == "object":
        props = schema.get("properties", {})
        return (isinstance(value, dict) and set(value) <= set(props) and set(schema.get("required", [])) <= set(value)
                and all(fits(v, props[k]) for k, v in value.items()))
    if schema.get("type") == "string":
        return (isinstance(value, str) and len(value) <= schema.get("maxLength", 10**9)
                and re.fullmatch(schema.get("pattern", ".*"), value, flags=re.S) is not None)
    if schema.get("type") == "array":
        return isinstance(value, list) and len(value) <= schema.get("maxItems", 10**9) and all(fits(v, schema["items"]) for v in value)
    return _fits(value, schema)


def test_literals_escape_quotes_and_backslashes():
    assert literal('"a\\b"') == '"\\"a\\\\b\\""'


def test_unsupported_schemas_are_refused_by_path():
    with pytest.raises(GeneratorError, match=r"at #/when .*not supported"):
        to_gbnf({"type": "object", "properties": {"when": {"type": "null"}}, "required": ["when"]})


def test_a_pattern_names_the_characters_of_a_string_or_is_refused():
    grammar = to_gbnf({"type": "string", "pattern": "^[0-9 +*/().-]*$", "maxLength": 12})
    assert 'root ::= "\\"" [0-9 +*/().-]{0,12} "\\"" ws' in grammar
    for pattern in ("^[^a]*$", '^[a"]*$', "^[a\\\\]*$", "^[0-9]+$", "[0-9]*", "^(ab|cd)*$"):  # negation, quote, backslash, other forms
        with pytest.raises(GeneratorError, match=r"at #/e .*\^\[characters\]\*\$"):
            to_gbnf({"type": "object", "properties": {"e": {"type": "string", "pattern": pattern}}, "required": ["e"]})


@pytest.mark.slow
@pytest.mark.parametrize("schema", SCHEMAS, ids=["string", "numbers", "enum-array", "all-optional", "action", "pattern"])
def test_what_llama_cpp_samples_under_the_grammar_fits_the_schema(schema):
    from ragtune.config import GenerateConfig
    from ragtune.generate import Sampling, get_generator

    g = get_generator(GenerateConfig(max_tokens=96))
    ask = [{"role": "user", "content": "Write a JSON object with a long story in it.\nLine two."}]
    out = g.generate(ask, max_tokens=96, sampling=Sampling(temperature=1.0, seed=0), schema=schema)
    value = json.loads(out.text)  # strict: raw newlines in strings would fail here
    assert fits(value, schema), out.text
