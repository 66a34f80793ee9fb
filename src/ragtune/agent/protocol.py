"""How a model calls tools when its endpoint has no native tool calling: it replies with one JSON
object, either a call or the answer,

    {"tool": "calculate", "arguments": {"expression": "12 * 7"}}
    {"answer": "84"}

``action_schema`` is that choice as JSON schema: llama.cpp turns it into a grammar (the model cannot
write anything else), an OpenAI-compatible endpoint gets it as ``response_format``. ``parse_action``
reads a reply strictly (one object, a known tool, arguments of the declared types and nothing more).

A conversation is kept in OpenAI's shape (assistant ``tool_calls`` with ``arguments`` as an object, as
TRL's ``messages`` format has them, then ``tool`` messages). ``as_text`` renders it for a chat template
that knows no tools: each assistant turn becomes its JSON action. Inference and fine-tuning on traces
(``train.data``) use the same rendering, so a model is trained on exactly what it will see.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ragtune.agent.tools import Tool

SYSTEM = """You answer the user's question. You may call tools first. Reply with exactly one JSON object and nothing else:
{{"tool": "<tool name>", "arguments": {{...}}}} calls a tool; its result comes back in the next message.
{{"answer": "<your answer>"}} gives the final answer{cite}.
Example: {example}

Tools:
{tools}"""
CITE = "; cite the sources you used as [1], [2]"
NATIVE = "You answer the user's question. Call the tools when they help, one at a time, then give the final answer{cite}."


@dataclass
class Action:
    """A parsed reply: a tool call (``tool`` and ``arguments``) or the final ``answer``."""

    tool: str | None = None
    arguments: dict = field(default_factory=dict)
    answer: str | None = None


class ActionError(ValueError):
    """A reply that is not one valid action; the message (fed back to the model) says what is wrong."""


def action_schema(tools: list[Tool], calls: bool = True, chars: int = 256, answer: bool = True) -> dict:
    """One of: a call of each tool (its name and its arguments' schema), or (``answer``) the answer. Strings
    are at most ``chars`` characters, so a constrained reply always ends within the step's tokens."""
    choices = [{"type": "object", "properties": {"tool": {"const": t.name}, "arguments": _bounded(t.parameters, chars)},
                "required": ["tool", "arguments"], "additionalProperties": False} for t in (tools if calls else [])]
    if answer or not choices:
        choices.append({"type": "object", "properties": {"answer": {"type": "string", "maxLength": chars}},
                        "required": ["answer"], "additionalProperties": False})
    return choices[0] if len(choices) == 1 else {"oneOf": choices}


def _bounded(schema: dict, chars: int) -> dict:
    """``schema`` with ``maxLength`` (at most ``chars``) on every string in it."""
    if schema.get("type") == "string":
        return {**schema, "maxLength": min(schema.get("maxLength", chars), chars)}
    if schema.get("type") == "object":
        return {**schema, "properties": {k: _bounded(v, chars) for k, v in schema.get("properties", {}).items()}}
    if schema.get("type") == "array":
        return {**schema, "items": _bounded(schema.get("items", {}), chars)}
    return schema


def system_prompt(tools: list[Tool], cite: bool = False, native: bool = False) -> str:
    """The instructions: with ``native`` (the endpoint's tool calling) only the task, the endpoint shows the tools."""
    if native:
        return NATIVE.format(cite=CITE if cite else "")
    first = tools[0] if tools else None
    if first is not None:
        args = {p: _placeholder(s) for p, s in first.parameters["properties"].items() if p in first.parameters["required"]}
        example = json.dumps({"tool": first.name, "arguments": args})
    else:
        example = json.dumps({"answer": "..."})
    lines = "\n".join(f"- {t.name}({_signature(t)}): {t.description}" for t in tools) or "(none)"
    return SYSTEM.format(cite=CITE if cite else "", example=example, tools=lines)


def _signature(tool: Tool) -> str:
    props, required = tool.parameters["properties"], tool.parameters["required"]
    return ", ".join(f"{p}: {s.get('type', 'enum ' + json.dumps(s.get('enum')))}" + ("" if p in required else " (optional)")
                     for p, s in props.items())


def _placeholder(schema: dict):
    return {"string": "...", "integer": 1, "number": 1, "boolean": True, "array": []}.get(schema.get("type"), (schema.get("enum") or ["..."])[0])


def parse_action(text: str, tools: list[Tool], calls: bool = True) -> Action:
    """The action in a reply, strictly; ``ActionError`` says what is wrong. Raw line breaks and tabs inside
    strings are taken as written (``strict=False``): grammars other than ours (llama-cpp-python's, behind
    ``llama_cpp.server``) let them through, and they are unambiguous."""
    try:
        data = json.loads(text.strip(), strict=False)
    except ValueError:
        raise ActionError(f"the reply is not one JSON object: {text.strip()[:80]!r}") from None
    if not isinstance(data, dict):
        raise ActionError("the reply must be a JSON object with \"tool\" and \"arguments\", or \"answer\"")
    if set(data) == {"answer"}:
        if not isinstance(data["answer"], str):
            raise ActionError("\"answer\" must be a string")
        return Action(answer=data["answer"])
    if set(data) != {"tool", "arguments"}:
        raise ActionError(f"unexpected keys {sorted(data)}: give {{\"tool\", \"arguments\"}} or {{\"answer\"}}")
    if not calls:
        raise ActionError("no more tool calls: give the answer now as {\"answer\": \"...\"}")
    by_name = {t.name: t for t in tools}
    if data["tool"] not in by_name:
        raise ActionError(f"unknown tool {data['tool']!r}; the tools are: {', '.join(by_name) or 'none'}")
    check_arguments(data["arguments"], by_name[data["tool"]])
    return Action(tool=data["tool"], arguments=data["arguments"])


def check_arguments(arguments, tool: Tool) -> None:
    if not isinstance(arguments, dict):
        raise ActionError(f"the arguments of {tool.name} must be a JSON object")
    props, required = tool.parameters["properties"], tool.parameters["required"]
    missing = [p for p in required if p not in arguments]
    extra = [p for p in arguments if p not in props]
    if missing or extra:
        raise ActionError(f"{tool.name}: " + "; ".join(filter(None, [missing and f"missing {', '.join(missing)}",
                                                                     extra and f"unknown {', '.join(extra)}"])))
    for name, value in arguments.items():
        if not _fits(value, props[name]):
            raise ActionError(f"{tool.name}: {name} = {json.dumps(value)[:40]} is not {_signature_of(props[name])}")


def _fits(value, schema: dict) -> bool:
    if "enum" in schema:
        return value in schema["enum"]
    kind = schema.get("type")
    if kind == "array":
        return isinstance(value, list) and all(_fits(v, schema.get("items", {})) for v in value)
    checks = {"string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
              "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}
    return checks.get(kind, lambda v: True)(value)


def _signature_of(schema: dict) -> str:
    return f"one of {schema['enum']}" if "enum" in schema else f"a {schema.get('type', 'value')}"


def call_arguments(value) -> dict:
    """A tool call's ``function.arguments`` as an object: OpenAI sends JSON text, TRL's format an object.
    ``ValueError`` when it is neither valid JSON nor an object."""
    if isinstance(value, str):
        try:
            value = json.loads(value or "{}")
        except ValueError:
            raise ValueError(f"the arguments are not JSON: {value[:80]!r}") from None
    if not isinstance(value, dict):
        raise ValueError("the arguments must be a JSON object")
    return value


def call_message(call_id: str, action: Action) -> dict:
    """The assistant turn of a tool call, in OpenAI's shape with the arguments as an object (TRL's)."""
    return {"role": "assistant", "content": "",
            "tool_calls": [{"id": call_id, "type": "function", "function": {"name": action.tool, "arguments": action.arguments}}]}


def as_text(messages: list[dict]) -> list[dict[str, str]]:
    """Messages for a chat template without tools: assistant turns as their JSON action, tool results as
    ``tool`` turns."""
    out = []
    for m in messages:
        if m["role"] == "assistant" and m.get("invalid"):  # a reply that was not an action: as the model wrote it
            out.append({"role": "assistant", "content": m.get("content") or ""})
        elif m["role"] == "assistant":
            calls = m.get("tool_calls") or []
            if calls:
                f = calls[0]["function"]
                args = call_arguments(f["arguments"])
                out.append({"role": "assistant", "content": json.dumps({"tool": f["name"], "arguments": args}, ensure_ascii=False)})
            else:
                out.append({"role": "assistant", "content": json.dumps({"answer": m.get("content") or ""}, ensure_ascii=False)})
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    return out


def native_action(tool_calls: list[dict] | None, text: str, tools: list[Tool], calls: bool = True) -> Action:
    """The action in a native reply: its first tool call (checked like ``parse_action``), else its text as the answer."""
    if not tool_calls:
        return Action(answer=text)
    f = tool_calls[0].get("function") or {}
    try:
        args = call_arguments(f.get("arguments"))
    except ValueError as e:
        raise ActionError(f"{f.get('name')!r}: {e}") from None
    return parse_action(json.dumps({"tool": f.get("name"), "arguments": args}), tools, calls)


def wire(messages: list[dict]) -> list[dict]:
    """A conversation as an OpenAI endpoint takes it: tool-call arguments as JSON text, nothing of ours."""
    out = []
    for m in messages:
        if m.get("tool_calls"):
            calls = [{**c, "function": {**c["function"], "arguments": c["function"]["arguments"] if isinstance(c["function"]["arguments"], str)
                                        else json.dumps(c["function"]["arguments"])}} for c in m["tool_calls"]]
            out.append({"role": "assistant", "content": m.get("content") or None, "tool_calls": calls})
        elif m["role"] == "tool":
            out.append({"role": "tool", "tool_call_id": m.get("tool_call_id"), "content": m["content"]})
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    return out


def tools_from_openai(specs) -> list[Tool]:
    """OpenAI ``tools`` entries (a request's) as ``Tool``s without functions (the caller runs them);
    ``ValueError`` names the entry that is not ``{"type": "function", "function": {"name", "parameters"}}``."""
    if not isinstance(specs, list):
        raise ValueError("'tools' must be a list of {\"type\": \"function\", \"function\": {...}} objects")
    tools = []
    for i, spec in enumerate(specs):
        f = spec.get("function") if isinstance(spec, dict) and spec.get("type") == "function" else None
        name = f.get("name") if isinstance(f, dict) else None
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
            raise ValueError(f"tools[{i}]: needs type \"function\" and function.name (letters, digits, _ or -, at most 64)")
        params = f.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, dict) or params.get("type") != "object":
            raise ValueError(f"tools[{i}].function.parameters must be a JSON schema of type object")
        params = {"required": [], **params, "properties": params.get("properties") or {}}
        tools.append(Tool(name, str(f.get("description") or ""), params, None))
    if len({t.name for t in tools}) != len(tools):
        raise ValueError("two tools have the same name")
    return tools
