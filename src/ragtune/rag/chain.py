"""``ask``: retrieve the top-k chunks, pack them into the prompt within the token budget,
generate, and return an ``Answer`` with citations, the exact prompt, usage and timings."""

from __future__ import annotations

import re
import time
from typing import Generator as Gen

from ragtune.errors import ConfigError
from ragtune.rag.prompt import load_template, pack, render
from ragtune.text import content_words
from ragtune.types import Answer

DONT_KNOW = "I don't know: nothing in the indexed documents matches the question closely enough."
_CITATION = re.compile(r"\[(\d+)\]")


def run(ws, question: str, *, k: int | None = None, mode: str | None = None, filters=None,
        history: list[dict[str, str]] | None = None) -> Gen[str, None, Answer]:
    """The chain as a generator: yields answer text as it is produced, returns the ``Answer``."""
    if not question.strip():
        raise ConfigError("the question is empty: ask something, e.g. ragtune ask \"what is the travel per diem?\"")
    cfg = ws.config
    t_load = time.perf_counter()
    generator = ws.generator  # loaded once per process; reported apart from the answer's own time
    t0 = time.perf_counter()
    hits = ws.search(question, k=k, mode=mode, filters=filters, similarity=True)
    sims = [h.similarity for h in hits if h.similarity is not None]
    t_retrieve = time.perf_counter() - t0
    timings = {"load_s": t0 - t_load, "retrieve_s": t_retrieve}
    if not hits or (sims and max(sims) < cfg.rag.min_similarity):
        return Answer(question, DONT_KNOW, [], [], hits, [], "", True, generator.name, {}, {**timings, "total_s": t_retrieve})
    template = load_template(cfg.rag.template, ws.root)
    overhead = generator.count_tokens(generator.format(render(template, question, [], history)))
    budget = min(cfg.rag.context_tokens, generator.context_size - generator.max_tokens - overhead - 8)
    if budget <= 0:
        raise ConfigError(f"[generate] context_size = {generator.context_size} leaves no room for sources after "
                          f"max_tokens = {generator.max_tokens} and the {overhead}-token prompt; raise context_size")
    sources, dropped = pack(hits, generator.count_tokens, budget)
    messages = render(template, question, sources, history)
    t1 = time.perf_counter()
    yield from generator.stream(messages)
    g = generator.last
    cited = list(dict.fromkeys(int(n) for n in _CITATION.findall(g.text) if 1 <= int(n) <= len(sources)))
    method = "model"
    if not cited:  # small models often cite nothing: attribute by shared words, and say so
        cited, method = attribute(g.text, sources), "overlap"
    timings.update(augment_s=t1 - t0 - t_retrieve, generate_s=g.total_s,
                   first_token_s=(t1 - t0) + (g.first_token_s or g.total_s), total_s=time.perf_counter() - t0)
    usage = {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens, "context_budget": budget,
             "context_tokens": sum(s.tokens for s in sources)}
    return Answer(question, g.text.strip(), cited, sources, dropped, messages, g.prompt, False, generator.name,
                  usage, timings, citation_method=method)


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

    def __iter__(self):
        self.answer = yield from self._steps


def ask(ws, question: str, **kwargs) -> Answer:
    stream = AnswerStream(run(ws, question, **kwargs))
    for _ in stream:
        pass
    return stream.answer


REWRITE = ("Rewrite the last question of this conversation as one standalone question that can be understood "
           "without the conversation. Reply with the question only.")


def standalone_question(ws, history: list[dict[str, str]], question: str) -> str:
    """Follow-up -> standalone query for retrieval (``ragtune chat``); the first question is used as is."""
    if not history:
        return question
    convo = "\n".join(f"{m['role']}: {m['content']}" for m in history[-6:])
    messages = [{"role": "system", "content": REWRITE}, {"role": "user", "content": f"{convo}\nuser: {question}"}]
    rewritten = ws.generator.generate(messages, max_tokens=48).text.strip().splitlines()
    return (rewritten[0].strip() if rewritten and rewritten[0].strip() else question)[:500]
