"""What the served app answers with: the workspace's models under OpenAI model ids, one answer at a
time (generation on a CPU serialises anyway; queued requests wait their turn, honestly).

Model ids: ``rag`` (the workspace's retrieval + its generator: ``ragtune ask``), ``closed-book``
(the generator alone), and for every registered generator NAME (sft, dpo, kto, rl) ``NAME`` and
``rag:NAME``. Reward models score, they do not generate, and are not listed.

``Engine.answer`` is a generator: it yields the answer's text as it is produced and returns a
``Turn``: everything the feedback store keeps about the answer. Closing it early (a client that
went away) stops the generation at the next token.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Generator

from ragtune.errors import ConfigError

Messages = list[dict[str, str]]
RAG, CLOSED_BOOK = "rag", "closed-book"


@dataclass
class Turn:
    """One answer as produced: what the model was given, what it said, from which sources."""

    model: str
    text: str
    messages: Messages  # exactly what the model was given
    question: str
    sources: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"  # stop | length | tool_calls
    weights_sha256: str = ""
    seconds: float = 0.0
    tool_calls: list[dict[str, Any]] | None = None  # a reply that calls the request's tools (OpenAI shape)


class UnknownModel(ConfigError):
    pass


def drain(job: Generator[str, None, Turn]) -> Turn:
    """Run an ``Engine.answer`` generator to its end (a non-streamed answer); its ``Turn``."""
    while True:
        try:
            next(job)
        except StopIteration as done:
            return done.value


def source_of(source) -> dict[str, Any]:
    """A prompt source ([n]) as the API shows it: its number, chunk id, file, title and character span."""
    h = source.hit
    return {"number": source.number, "id": h.chunk_id, "doc_id": h.doc_id, "source": h.source, "title": h.title,
            "heading": h.heading, "page": h.page, "start": h.start, "end": h.end}


class Engine:
    """The workspace's models behind the app. Their work runs in one worker thread, in arrival order
    (``submit``); ``lock`` is held while a model works."""

    def __init__(self, ws) -> None:
        from ragtune.models.registry import models_dir

        self.ws = ws
        self.lock = threading.Lock()
        self._weights: dict[str, str] = {}
        self._jobs: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._ids: tuple[int | None, list[str]] = (None, [])  # (registry folder's mtime, model ids)
        self._models_dir = str(models_dir(ws.root))  # a str: model_ids stats it on every chat request

    def submit(self, work: Callable[[], Any]) -> Future:
        """Run ``work`` in the worker thread after the work queued before it; a Future of its result."""
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="ragtune-models", daemon=True)
            self._worker.start()
        done: Future = Future()
        self._jobs.put((work, done))
        return done

    def _work(self) -> None:
        while True:
            work, done = self._jobs.get()
            if not done.set_running_or_notify_cancel():  # its caller gave up before it started
                continue
            with self.lock:
                try:
                    done.set_result(work())
                except BaseException as e:  # noqa: BLE001 - handed to whoever waits on it
                    done.set_exception(e)

    def model_ids(self) -> list[str]:
        """Read again only when the registry folder changed (a model registered or removed)."""
        from ragtune.models.registry import list_models

        try:
            stamp = os.stat(self._models_dir).st_mtime_ns
        except FileNotFoundError:
            stamp = 0
        if self._ids[0] != stamp:
            names = [card.name for card in list_models(self.ws.root) if card.task != "reward"]
            self._ids = (stamp, [RAG, CLOSED_BOOK, *names, *(f"rag:{n}" for n in names)])
        return self._ids[1]

    def check_model(self, model: str) -> None:
        if model not in self.model_ids():
            raise UnknownModel(f"model {model!r} does not exist here; GET /v1/models lists them "
                               f"({', '.join(self.model_ids())})")

    def _workspace(self, model: str):
        name = model.removeprefix("rag:") if model.startswith("rag:") else (None if model in (RAG, CLOSED_BOOK) else model)
        return self.ws if name is None else self.ws.with_config(self.ws.config.override("generate", model=name))

    def weights(self, model: str) -> str:
        """The sha256 of the weights that answer as ``model`` (memoised; "" when it cannot be known)."""
        from ragtune.generate import generator_sha256

        if model not in self._weights:
            ws = self._workspace(model)
            self._weights[model] = generator_sha256(ws.config.generate, ws.root) or ""
        return self._weights[model]

    def answer(self, model: str, messages: Messages, max_tokens: int, temperature: float | None = None,
               seed: int | None = None, tools=None, tool_choice: Any = "auto") -> Generator[str, None, Turn]:
        """Yield the answer to the conversation ``messages`` (its last turn is the user's question)
        as it is generated; return the ``Turn``. ``temperature``/``seed``: this answer's sampling
        (default [generate]'s: greedy). With ``tools`` (``agent.tools.Tool``s the client runs) the reply
        is a call of one of them or the answer (``tool_reply``). Drive it from the worker (``submit``)."""
        from ragtune.generate import Sampling

        t0 = time.perf_counter()
        ws = self._workspace(model)
        sampling = Sampling.of(ws.config.generate, temperature, seed)
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        if tools:
            turn = tool_reply(ws.generator, model, messages, tools, tool_choice, max_tokens, sampling)
            turn.question = question
            if not turn.tool_calls:
                yield turn.text
        elif model == RAG or model.startswith("rag:"):
            history = [m for m in messages[:-1] if m["role"] != "system"]
            answer = yield from ws.chain().run(question, history=history or None, max_tokens=max_tokens, sampling=sampling)
            if answer.abstained:  # no model was called: the refusal is the whole answer
                yield answer.text
            turn = Turn(model, answer.text, answer.messages or messages, question, [source_of(s) for s in answer.sources],
                        answer.usage.get("prompt_tokens", 0), answer.usage.get("completion_tokens", 0))
        else:
            generator = ws.generator
            yield from generator.stream(messages, max_tokens, sampling)
            g = generator.last
            turn = Turn(model, g.text.strip(), messages, question, [], g.prompt_tokens, g.completion_tokens)
        if not turn.tool_calls:
            turn.finish_reason = "length" if turn.completion_tokens >= max_tokens else "stop"
        turn.weights_sha256 = self.weights(model)
        turn.seconds = time.perf_counter() - t0
        return turn

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int, str]:
        """(vectors, tokens, embedder id) for ``texts``. Run it through ``submit``."""
        embedder = self.ws.embedder
        before = embedder.tokens_seen
        vectors = embedder.embed(texts)
        return vectors.tolist(), embedder.tokens_seen - before, embedder.model_id


def tool_reply(generator, model: str, messages: list[dict], tools, tool_choice, max_tokens: int, sampling) -> Turn:
    """One reply to a conversation with the request's ``tools``: the agent's JSON action format
    (``agent.protocol``) behind OpenAI's tool calling. Its instructions go first in the system turn; the
    reply is constrained to the schema where the backend can (llama.cpp: "auto" = a call or the answer,
    "required" = a call, {"function": NAME} = that call, "none" = the answer); a reply that is not a valid
    action comes back as plain content."""
    from ragtune.agent.protocol import ActionError, action_schema, as_text, parse_action, system_prompt

    choice = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, dict) else tool_choice
    offered = [t for t in tools if t.name == choice] or tools
    calls, answer = choice != "none", choice in ("auto", "none")
    ours = system_prompt(offered)
    system = [{"role": "system", "content": ours + ("\n\n" + messages[0]["content"] if messages[0]["role"] == "system" else "")}]
    given = as_text(system + [m for m in messages if m["role"] != "system"])
    g = generator.generate(given, max_tokens, sampling, schema=action_schema(offered, calls, max(16, max_tokens - 64), answer))
    turn = Turn(model, g.text.strip(), given, "", [], g.prompt_tokens, g.completion_tokens)
    try:
        action = parse_action(g.text, offered, calls)
    except ActionError:
        return turn  # unconstrained backends: the text as it came
    if action.tool is None:
        turn.text = action.answer
        return turn
    turn.tool_calls = [{"id": "call_" + os.urandom(6).hex(), "type": "function",
                        "function": {"name": action.tool, "arguments": json.dumps(action.arguments, ensure_ascii=False)}}]
    turn.finish_reason = "tool_calls"
    return turn
