"""The agent loop: model -> tool call -> result -> model, until the model answers or the step budget
is spent. Every step keeps the exact prompt, the model's reply, the call and what came back; a tool
that raises and a reply that is not a valid action are fed back to the model as observations, never
raised. The last step may only answer (a constrained backend cannot do anything else), so every run
ends with an answer, and ``Answer.stopped`` says whether the model chose to stop or the budget did.
A call repeated with the same arguments is not run again (small models loop on one call): the model
is told so, and its next step may only answer (``stopped == "repeat"``).
"""

from __future__ import annotations

import json
import time
from typing import Callable

from ragtune.agent.protocol import (ActionError, action_schema, as_text, call_message, native_action, parse_action,
                                    system_prompt, wire)
from ragtune.agent.tools import Sources, Tool
from ragtune.errors import ConfigError, GeneratorError
from ragtune.rag.chain import attribute, citations, require_question
from ragtune.types import Answer, Source, Step

OBSERVATION_CHARS = 4000
LAST_STEP = "Step budget reached: give your final answer now."
REPEATED = "You already called {tool} with these arguments; it returned: {result} Give your final answer now."
REPEATED_CHARS = 300  # of the earlier result, restated: small models lose track of it (17 * 23 = 391 answered "17 * 23")
INVALID = "Your reply was not a valid action ({error}). Reply with exactly one JSON object."
REMOVED = "[result removed to fit the context window]"


class Agent:
    """``Agent(generator, make_tools, max_steps, max_tokens).run(question) -> Answer`` (with ``steps``).

    ``make_tools(sources)`` builds one run's tools around its ``Sources`` (``agent.tools.toolbox``), so
    passages are numbered per run. ``native``: the endpoint's own tool calling (``generator.call_tools``)
    instead of JSON actions."""

    def __init__(self, generator, make_tools: Callable[[Sources], list[Tool]], max_steps: int = 6, max_tokens: int = 320,
                 native: bool = False) -> None:
        if max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        if native and not generator.native_tools:
            raise ConfigError(f"[agent] calls = \"native\" needs an endpoint with tool calling (the openai backend); "
                              f"{generator.name} has none: use calls = \"json\"")
        self.generator, self.make_tools = generator, make_tools
        self.max_steps, self.max_tokens, self.native = max_steps, max_tokens, native

    def run(self, question: str, sampling=None) -> Answer:
        require_question(question)
        t0, sources = time.perf_counter(), Sources()
        tools = self.make_tools(sources)
        cite = any(t.name == "search" for t in tools)
        messages: list[dict] = [{"role": "system", "content": system_prompt(tools, cite, self.native)},
                                {"role": "user", "content": question}]
        steps: list[Step] = []
        made: dict[tuple, str] = {}  # the calls made (tool, arguments) -> what they returned
        repeated = False  # a call was repeated
        for number in range(1, self.max_steps + 1):
            calls = number < self.max_steps and bool(tools) and not repeated
            if not calls and tools and not repeated:
                messages.append({"role": "user", "content": LAST_STEP})
            step, action = self._step(number, messages, tools, calls, sampling)
            steps.append(step)
            if action is None:  # not a valid action: the error goes back to the model
                messages += [{"role": "assistant", "content": step.output, "invalid": True},
                             {"role": "user", "content": step.observation}]
            elif action.answer is not None:
                messages.append({"role": "assistant", "content": action.answer})
                stopped = "answer" if calls or not tools else "repeat" if repeated else "budget"
                return self._answer(question, action.answer, sources, steps, messages, stopped, t0)
            else:
                key = (action.tool, json.dumps(action.arguments, sort_keys=True))
                if key in made:
                    step.observation, step.error, repeated = repeated_call(action.tool, made[key]), "repeat", True
                else:
                    step.observation, step.error = _call(tools, action)
                    made[key] = step.observation
                call_id = f"call_{number}"
                messages += [call_message(call_id, action),
                             {"role": "tool", "tool_call_id": call_id, "name": action.tool, "content": step.observation}]
        return self._answer(question, "", sources, steps, messages, "repeat" if repeated else "budget", t0)

    def _step(self, number: int, messages: list[dict], tools: list[Tool], calls: bool, sampling):
        self._fit(messages)
        offered = [t for t in tools if t.available()]  # e.g. read only once search has numbered some sources
        if self.native:
            g = self.generator.call_tools(wire(messages), [t.spec() for t in offered] if calls else [], self.max_tokens, sampling)
            output = json.dumps(g.tool_calls[0].get("function"), ensure_ascii=False) if g.tool_calls else g.text
        else:
            schema = action_schema(offered, calls, chars=max(16, self.max_tokens - 64))  # a whole action fits max_tokens
            g = self.generator.generate(as_text(messages), self.max_tokens, sampling, schema=schema)
            output = g.text
        step = Step(number, g.prompt, output, prompt_tokens=g.prompt_tokens, completion_tokens=g.completion_tokens, seconds=g.total_s)
        try:
            action = native_action(g.tool_calls, g.text, tools, calls) if self.native else parse_action(g.text, tools, calls)
        except ActionError as e:
            step.error, step.observation = "parse", INVALID.format(error=e)
            return step, None
        step.tool, step.arguments = action.tool, action.arguments if action.tool else None
        return step, action

    def _fit(self, messages: list[dict]) -> None:
        """Room for the next reply: the oldest tool results are replaced by a note until the prompt fits."""
        g = self.generator
        while g.count_tokens(g.format(wire(messages) if self.native else as_text(messages))) + self.max_tokens > g.context_size:
            old = next((m for m in messages if m["role"] == "tool" and m["content"] != REMOVED), None)
            if old is None:
                raise GeneratorError(f"the agent's prompt no longer fits [generate] context_size = {g.context_size} "
                                     f"with {self.max_tokens} tokens for the reply; raise context_size or lower [agent] max_steps")
            old["content"] = REMOVED

    def _answer(self, question: str, text: str, sources: Sources, steps: list[Step], messages: list[dict],
                stopped: str, t0: float) -> Answer:
        numbered = [Source(i + 1, h, self.generator.count_tokens(h.text)) for i, h in enumerate(sources.hits)]
        cited, method = citations(text, len(numbered)), "model"
        if not cited and numbered:
            cited, method = attribute(text, numbered), "overlap"
        usage = {"prompt_tokens": sum(s.prompt_tokens for s in steps), "completion_tokens": sum(s.completion_tokens for s in steps),
                 "steps": len(steps), "tool_calls": sum(s.tool is not None for s in steps),
                 "invalid_actions": sum(s.error == "parse" for s in steps)}
        total = time.perf_counter() - t0
        timings = {"generate_s": sum(s.seconds for s in steps), "total_s": total}
        return Answer(question, text.strip(), cited, numbered, [], messages, steps[-1].prompt if steps else "", not text.strip(),
                      self.generator.name, usage, timings, citation_method=method, steps=steps, stopped=stopped)


def _call(tools: list[Tool], action) -> tuple[str, str | None]:
    """(observation, error kind): the tool's result as text, or the error it raised."""
    tool = next(t for t in tools if t.name == action.tool)
    try:
        result = tool.fn(**action.arguments)
    except Exception as e:  # noqa: BLE001 - a failing tool is an observation for the model, never a crash
        return f"error: {type(e).__name__}: {e}"[:OBSERVATION_CHARS], "tool"
    text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)
    return text[:OBSERVATION_CHARS], None


def repeated_call(tool: str, result: str) -> str:
    """What a repeated call gets back: the earlier result restated (cut to ``REPEATED_CHARS``), and the order to answer."""
    brief = result if len(result) <= REPEATED_CHARS else result[:REPEATED_CHARS].rstrip() + " …"
    return REPEATED.format(tool=tool, result=brief.strip())
