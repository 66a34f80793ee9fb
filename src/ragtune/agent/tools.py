"""Tools are plain Python functions. ``as_tool(fn)`` reads the JSON schema of its arguments from the
type hints and the descriptions from the docstring, so a user's tool module needs no framework:

    def convert(amount: float, currency: str = "EUR") -> str:
        \"\"\"Convert an amount of US dollars into another currency.

        amount: dollars to convert
        currency: ISO code of the target currency
        \"\"\"

A module named in ``[agent] tools`` contributes every public function it defines (or the names in
its ``TOOLS`` list). The built-ins: ``search`` (the workspace retriever; returns numbered sources),
``read`` (the whole section a numbered source comes from), ``calculate`` (``agent.calculator``) and
``today``. ``search`` and ``read`` belong to one agent run: they share its ``Sources`` numbering, so
``[2]`` means the same passage in every step and in the final answer.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal

from ragtune.agent.calculator import calculate as _calculate
from ragtune.errors import ConfigError
from ragtune.types import Hit

READ_CHARS = 4000  # a section longer than this is cut (the tool result says so)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object
    fn: Callable[..., Any] | None  # None: the caller runs it (the tools of a served request)
    ready: Callable[[], bool] | None = None  # None: always callable; else offered only while it returns True

    def available(self) -> bool:
        return self.ready is None or self.ready()

    def spec(self) -> dict:
        """The OpenAI ``tools`` entry."""
        return {"type": "function", "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


def as_tool(fn: Callable[..., Any], name: str | None = None) -> Tool:
    """A tool from a function: its name, the docstring's first paragraph as the description, each
    parameter's type hint as JSON schema (a default makes it optional), ``param: text`` docstring lines as
    parameter descriptions."""
    name = name or fn.__name__
    doc = inspect.getdoc(fn) or ""
    description = " ".join(doc.split("\n\n")[0].split()) or name
    notes = dict(re.findall(r"^\s*(\w+)\s*(?:\([^)]*\))?:\s*(.+)$", doc, flags=re.M))
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as e:  # noqa: BLE001 - an unresolvable annotation: say which tool
        raise ConfigError(f"tool {name!r}: cannot read its type hints ({e})") from None
    props, required = {}, []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ConfigError(f"tool {name!r}: *{p.name} cannot be described to a model; name every parameter")
        schema = json_type(hints.get(p.name, str), f"tool {name!r}, parameter {p.name!r}")
        if p.name in notes:
            schema["description"] = notes[p.name].strip()
        props[p.name] = schema
        if p.default is p.empty:
            required.append(p.name)
    parameters = {"type": "object", "properties": props, "required": required, "additionalProperties": False}
    return Tool(name, description, parameters, fn)


def json_type(hint: Any, where: str) -> dict:
    """The JSON schema of a type hint: str, int, float, bool, Literal[...], list[X], X | None;
    ``Annotated[X, {...}]`` adds the dict's JSON schema keywords (``{"pattern": "^[0-9 +*/().-]*$"}``)."""
    simple = {str: "string", int: "integer", float: "number", bool: "boolean"}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        schema = json_type(args[0], where)
        for extra in args[1:]:
            schema.update(extra if isinstance(extra, dict) else {})
        return schema
    if hint in simple:
        return {"type": simple[hint]}
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (list, tuple) and args:
        return {"type": "array", "items": json_type(args[0], where)}
    if origin in (typing.Union, types.UnionType) and type(None) in args and len(args) == 2:
        return json_type(next(a for a in args if a is not type(None)), where)
    raise ConfigError(f"{where}: type {hint!r} cannot be given by a model; use str, int, float, bool, Literal[...] or list[...]")


@dataclass
class Sources:
    """The passages one agent run has seen, numbered in order of first appearance."""

    hits: list[Hit] = field(default_factory=list)

    def add(self, hits: list[Hit]) -> list[int]:
        numbers = []
        for hit in hits:
            known = next((i for i, h in enumerate(self.hits) if h.chunk_id == hit.chunk_id), None)
            if known is None:
                self.hits.append(hit)
                known = len(self.hits) - 1
            numbers.append(known + 1)
        return numbers

    def get(self, number: int) -> Hit:
        if not 1 <= number <= len(self.hits):
            seen = f"1 to {len(self.hits)}" if self.hits else "none yet: call search first"
            raise ValueError(f"there is no source [{number}]; the sources so far are {seen}")
        return self.hits[number - 1]


ARITHMETIC = "^[0-9 .,+*/%^()=-]*$"  # what calculate's expression may hold: a constrained model cannot write prose there


def calculate(expression: Annotated[str, {"pattern": ARITHMETIC}]) -> str:
    """Evaluate arithmetic exactly (numbers, + - * / % ^, brackets); use it for every calculation.

    expression: the arithmetic to evaluate
    """
    return _calculate(expression)


def today() -> str:
    """Today's date (ISO format, YYYY-MM-DD) and weekday."""
    now = datetime.date.today()
    return f"{now.isoformat()} ({now.strftime('%A')})"


def search_tool(retriever, sources: Sources, k: int) -> Tool:
    def search(query: str) -> str:
        """Search the documents; returns numbered passages to cite as [n].

        query: what to look for, in a few words
        """
        hits = retriever.search(query, k=k)
        if not hits:
            return "no passages found"
        return "\n\n".join(f"[{n}] {_where(h)}\n{h.text}" for n, h in zip(sources.add(hits), hits))

    return as_tool(search)


def read_tool(store, sources: Sources) -> Tool:
    def read(source: int) -> str:
        """Read the whole section a numbered source comes from.

        source: the number of a source returned by search
        """
        hit = sources.get(source)
        rows = [r for r in store.rows(["source", "doc_id", "heading", "start", "text"])
                if r["source"] == hit.source and r["doc_id"] == hit.doc_id and r["heading"] == hit.heading]
        text = _join(sorted(rows, key=lambda r: r["start"]))
        cut = f"\n[cut at {READ_CHARS} characters]" if len(text) > READ_CHARS else ""
        return f"[{source}] {_where(hit)}\n{text[:READ_CHARS]}{cut}"

    return dataclasses.replace(as_tool(read), ready=lambda: bool(sources.hits))  # offered once search found something


def _where(hit: Hit) -> str:
    return " › ".join(p for p in (hit.title or hit.source, hit.heading) if p)


def _join(rows: list[dict]) -> str:
    """Chunks of one section in order; overlapping chunks share text, which is kept once."""
    text, end = "", -1
    for r in rows:
        skip = max(0, end - r["start"])
        text += r["text"][skip:] if end >= 0 else r["text"]
        end = max(end, r["start"] + len(r["text"]))
    return text


BUILTINS = ("search", "read", "calculate", "today")


def toolbox(names: list[str], modules: list[str], retriever=None, store=None, sources: Sources | None = None, k: int = 4) -> list[Tool]:
    """The tools of one run: the built-ins named (``search``/``read`` need the retriever/store), then
    every module's tools. Names must be unique."""
    sources = sources if sources is not None else Sources()
    made = {"calculate": lambda: as_tool(calculate), "today": lambda: as_tool(today),
            "search": lambda: search_tool(_need(retriever, "search"), sources, k),
            "read": lambda: read_tool(_need(store, "read"), sources)}
    tools = []
    for name in names:
        if name not in made:
            raise ConfigError(f"[agent] builtins: unknown tool {name!r}; valid: {', '.join(BUILTINS)}")
        tools.append(made[name]())
    for module in modules:
        tools.extend(load_module(module))
    seen: set[str] = set()
    for t in tools:
        if t.name in seen:
            raise ConfigError(f"two tools are named {t.name!r}; rename one (tool names must be unique)")
        seen.add(t.name)
    return tools


def _need(part, tool: str):
    if part is None:
        raise ConfigError(f"the {tool!r} tool needs a workspace index; ingest documents first or leave {tool!r} out of [agent] builtins")
    return part


def load_module(name: str) -> list[Tool]:
    """The tools a module offers: its ``TOOLS`` list, else every public function defined in it."""
    try:
        module = importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - any import failure of a user module is a config problem
        raise ConfigError(f"[agent] tools: cannot import {name!r} ({type(e).__name__}: {e}); "
                          "is the module on the Python path (pip install -e, or PYTHONPATH)?") from None
    fns = getattr(module, "TOOLS", None)
    if fns is None:
        fns = [f for n, f in vars(module).items()
               if inspect.isfunction(f) and f.__module__ == module.__name__ and not n.startswith("_")]
    if not fns:
        raise ConfigError(f"[agent] tools: module {name!r} defines no public functions (or an empty TOOLS list)")
    bad = [repr(f) for f in fns if not callable(f)]
    if bad:
        raise ConfigError(f"[agent] tools: {name}.TOOLS holds something that is not a function: {', '.join(bad)}")
    return [f if isinstance(f, Tool) else as_tool(f) for f in fns]
