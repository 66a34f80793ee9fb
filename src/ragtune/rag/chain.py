"""The RAG chain: retrieve the top-k chunks, pack them into the prompt within the token budget,
generate, and return an ``Answer`` with citations, the exact prompt, usage and timings.

``Chain`` is built from components (a retriever and a generator); it knows no workspace."""

from __future__ import annotations

import re
import time
from typing import Generator as Gen

from ragtune.config import RagConfig
from ragtune.errors import ConfigError
from ragtune.rag.prompt import load_template, pack, render
from ragtune.text import content_words
from ragtune.types import Answer

DONT_KNOW = "I don't know: nothing in the indexed documents matches the question closely enough."
_CITATION = re.compile(r"\[(\d+)\]")


def require_question(question: str) -> None:
    if not question.strip():
        raise ConfigError("the question is empty: ask something, e.g. ragtune ask \"what is the travel per diem?\"")


class Chain:
    """Retrieve, augment, generate: ``Chain(retriever, generator, rag_config).ask(question)``.

    ``template`` is a loaded Jinja2 template (``rag.prompt.load_template``; default: the built-in
    one); ``load_s``, the time it took to get the generator, is reported in the first answer's timings."""

    def __init__(self, retriever, generator, config: RagConfig | None = None, template=None, load_s: float = 0.0) -> None:
        self.retriever, self.generator = retriever, generator
        self.config = config or RagConfig()
        self.template = template if template is not None else load_template("default")
        self.load_s = load_s

    def ask(self, question: str, **kwargs) -> Answer:
        """The whole ``Answer`` (see ``run`` for the keyword arguments)."""
        stream = self.stream(question, **kwargs)
        for _ in stream:
            pass
        return stream.answer

    def stream(self, question: str, **kwargs) -> "AnswerStream":
        """Iterate for the answer's text as it is generated; ``.answer`` is set at the end."""
        return AnswerStream(self.run(question, **kwargs))

    def run(self, question: str, *, k: int | None = None, mode: str | None = None, filters=None,
            history: list[dict[str, str]] | None = None, max_tokens: int | None = None,
            sampling=None) -> Gen[str, None, Answer]:
        """The chain as a generator: yields answer text as it is produced, returns the ``Answer``
        (``max_tokens``, ``sampling``: this answer's; default [generate]'s)."""
        require_question(question)
        generator, cfg = self.generator, self.config
        t0 = time.perf_counter()
        hits = self.retriever.search(question, k=k, mode=mode, filters=filters, similarity=True)
        sims = [h.similarity for h in hits if h.similarity is not None]
        t_retrieve = time.perf_counter() - t0
        timings = {"load_s": self.load_s, "retrieve_s": t_retrieve}
        self.load_s = 0.0  # the generator was loaded once: later answers of this chain did not wait for it
        if not hits or (sims and max(sims) < cfg.min_similarity):
            return Answer(question, DONT_KNOW, [], [], hits, [], "", True, generator.name, {}, {**timings, "total_s": t_retrieve})
        overhead = generator.count_tokens(generator.format(render(self.template, question, [], history)))
        max_tokens = max_tokens or generator.max_tokens
        budget = min(cfg.context_tokens, generator.context_size - max_tokens - overhead - 8)
        if budget <= 0:
            raise ConfigError(f"[generate] context_size = {generator.context_size} leaves no room for sources after "
                              f"max_tokens = {max_tokens} and the {overhead}-token prompt; raise context_size")
        sources, dropped = pack(hits, generator.count_tokens, budget)
        messages = render(self.template, question, sources, history)
        t1 = time.perf_counter()
        yield from generator.stream(messages, max_tokens, sampling)
        g = generator.last
        cited = citations(g.text, len(sources))
        method = "model"
        if not cited:  # small models often cite nothing: attribute by shared words, and say so
            cited, method = attribute(g.text, sources), "overlap"
        timings.update(augment_s=t1 - t0 - t_retrieve, generate_s=g.total_s,
                       first_token_s=(t1 - t0) + (g.first_token_s or g.total_s), total_s=time.perf_counter() - t0)
        usage = {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens, "context_budget": budget,
                 "context_tokens": sum(s.tokens for s in sources)}
        return Answer(question, g.text.strip(), cited, sources, dropped, messages, g.prompt, False, generator.name,
                      usage, timings, citation_method=method)


def citations(text: str, count: int) -> list[int]:
    """Source numbers cited as [n] in ``text`` (1 to ``count``), in order of first mention."""
    return list(dict.fromkeys(int(n) for n in _CITATION.findall(text) if 1 <= int(n) <= count))


def attribute(text: str, sources) -> list[int]:
    """Sources that share most of the answer's content words (at least 30%; at most two)."""
    words = set(content_words(text))
    if not words:
        return []
    scores = sorted(((len(words & set(content_words(s.hit.text))) / len(words), s.number) for s in sources), reverse=True)
    best = scores[0][0] if scores else 0
    return [n for score, n in scores[:2] if best >= 0.3 and score >= 0.8 * best]


class AnswerStream:
    """Iterate for the answer's text pieces; ``.answer`` holds the full ``Answer`` afterwards."""

    def __init__(self, steps) -> None:
        self._steps = steps
        self.answer: Answer | None = None
        self.query: str | None = None  # set by ``Conversation``: the standalone query searched for

    def __iter__(self):
        self.answer = yield from self._steps


REWRITE = ("Rewrite the last question of this conversation as one standalone question that can be understood "
           "without the conversation. Reply with the question only.")


def standalone_question(generator, history: list[dict[str, str]], question: str) -> str:
    """Follow-up -> standalone query for retrieval (``ragtune chat``); the first question is used as is."""
    if not history:
        return question
    convo = "\n".join(f"{m['role']}: {m['content']}" for m in history[-6:])
    messages = [{"role": "system", "content": REWRITE}, {"role": "user", "content": f"{convo}\nuser: {question}"}]
    rewritten = generator.generate(messages, max_tokens=48).text.strip().splitlines()
    return (rewritten[0].strip() if rewritten and rewritten[0].strip() else question)[:500]


class Conversation:
    """Multi-turn RAG over one chain: each follow-up is rewritten into a standalone query for
    retrieval (``standalone_question``) and the last ``keep`` messages go into the prompt."""

    def __init__(self, chain: Chain, keep: int = 4) -> None:
        self.chain, self.keep = chain, keep
        self.history: list[dict[str, str]] = []

    def stream(self, question: str, **kwargs) -> AnswerStream:
        """The answer to ``question`` as an ``AnswerStream``; ``.query`` is what was searched for.
        The turn joins the history once the stream is read to the end."""
        query = standalone_question(self.chain.generator, self.history, question)
        stream = AnswerStream(self._turn(question, query, kwargs))
        stream.query = query
        return stream

    def _turn(self, question: str, query: str, kwargs) -> Gen[str, None, Answer]:
        answer = yield from self.chain.run(query, history=self.history[-self.keep:] if self.keep else [], **kwargs)
        self.history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer.text}]
        return answer
