"""JSON schema -> GBNF, llama.cpp's grammar format, for the schemas replies are constrained to (an
agent's actions: objects, strings, numbers, booleans, enums, consts, arrays, ``oneOf``/``anyOf``).

Why not llama-cpp-python's own converter: it lets raw newlines into strings (invalid JSON that
``json.loads`` rejects) and spells ``maxLength`` as hundreds of nested optionals, which made one
150-character answer take 12x longer to sample. Here every string is valid JSON and bounded with
GBNF's ``{0,N}`` repetition (``maxLength``, else ``MAX_STRING``), so a reply that completes the
grammar fits a known number of tokens. Whitespace is at most one space between tokens. A string's
``pattern`` may name the characters it is made of (``^[0-9 +*/().-]*$``): a tool's argument the model
cannot fill with prose or JSON.

>>> print(to_gbnf({"type": "object", "properties": {"answer": {"type": "string", "maxLength": 20}},
...                "required": ["answer"]}))
root ::= "{" ws "\\"answer\\"" ws ":" ws "\\"" char{0,20} "\\"" ws "}" ws
char ::= [^"\\\\\\x7F\\x00-\\x1F] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F]{4})
ws ::= " "?
"""

from __future__ import annotations

import json
import re

from ragtune.errors import GeneratorError

MAX_STRING = 256  # characters of a string without maxLength
MAX_ITEMS = 32  # items of an array without maxItems
INTEGER = '"-"? ("0" | [1-9] [0-9]{0,15})'
NUMBER = INTEGER + ' ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?'
RULES = ('char ::= [^"\\\\\\x7F\\x00-\\x1F] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F]{4})', 'ws ::= " "?')


def to_gbnf(schema: dict) -> str:
    """The grammar of the JSON texts that fit ``schema`` (the subset above; anything else is refused)."""
    return "\n".join([f"root ::= {_value(schema, '#')} ws", *RULES])


def literal(text: str) -> str:
    """A GBNF string literal matching ``text`` exactly."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _value(s: dict, where: str) -> str:
    if "const" in s:
        return literal(json.dumps(s["const"]))
    if "enum" in s:
        return "(" + " | ".join(literal(json.dumps(v)) for v in s["enum"]) + ")"
    for key in ("oneOf", "anyOf"):
        if key in s:
            return "(" + " | ".join(_value(c, f"{where}/{key}/{i}") for i, c in enumerate(s[key])) + ")"
    kind = s.get("type")
    if kind == "string":
        char = _char_class(s["pattern"], where) if "pattern" in s else "char"
        return f'"\\"" {char}{{0,{int(s.get("maxLength", MAX_STRING))}}} "\\""'
    if kind == "integer":
        return f"({INTEGER})"
    if kind == "number":
        return f"({NUMBER})"
    if kind == "boolean":
        return '("true" | "false")'
    if kind == "array":
        item = _value(s.get("items", {"type": "string"}), f"{where}/items")
        more = int(s.get("maxItems", MAX_ITEMS)) - 1
        return f'"[" ws ({item} ("," ws {item}){{0,{more}}})? ws "]"' if more > 0 else f'"[" ws ({item})? ws "]"'
    if kind == "object":
        return _object(s, where)
    raise GeneratorError(f"the reply schema at {where} ({json.dumps(s)[:80]}) is not supported by the llama.cpp grammar; "
                         "use objects, strings, integers, numbers, booleans, enums, consts, arrays and oneOf")


def _char_class(pattern: str, where: str) -> str:
    """The one ``pattern`` form strings may have here: ``^[CHARACTERS]*$`` (a set of characters, ranges
    allowed, that JSON writes as themselves: no quote, backslash, control character or negation)."""
    m = re.fullmatch(r'\^\[([^\]\\"^\x00-\x1f][^\]\\"\x00-\x1f]*)\]\*\$', pattern)
    if not m:
        raise GeneratorError(f"the pattern at {where} ({pattern!r}) is not supported by the llama.cpp grammar: "
                             "use ^[characters]*$ without quotes, backslashes or negation")
    return f"[{m.group(1)}]"


def _object(s: dict, where: str) -> str:
    """Properties in the schema's order; required ones always, optional ones (after them) may be left out."""
    props, required = s.get("properties", {}), s.get("required", [])
    pairs = [(name, f'{literal(json.dumps(name))} ws ":" ws {_value(p, f"{where}/{name}")}') for name, p in props.items()]
    must = [kv for name, kv in pairs if name in required]
    may = [kv for name, kv in pairs if name not in required]
    def rest(kvs: list[str]) -> str:
        return " ".join(f'("," ws {kv})?' for kv in kvs)

    if must:
        body = " ".join([' "," ws '.join(must), rest(may)]).strip()
    elif may:  # all optional: the first one present starts the list
        body = "(" + " | ".join(f"{kv} {rest(may[i + 1:])}".strip() for i, kv in enumerate(may)) + ")?"
    else:
        body = ""
    return f'"{{" ws {body} ws "}}"' if body else '"{" ws "}"'
