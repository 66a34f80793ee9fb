"""The generator conformance suite: what every backend in ``ragtune.generate.BACKENDS`` must do,
run on the bundled SmolLM2 through each of them (llama.cpp, transformers on the same GGUF, and
llama.cpp's OpenAI-compatible server on loopback for ``openai``).

Streamed text is the plain answer piece by piece; ``max_tokens`` bounds the answer; usage and
timings are counted; the answer ends at the end of the turn (no template tokens leak); every
failure is a ``GeneratorError``. A new backend is added to the fixture below and must pass.
"""

import pytest

from ragtune.config import GenerateConfig
from ragtune.errors import GeneratorError
from ragtune.generate import BACKENDS, get_generator

pytestmark = pytest.mark.slow
QUESTION = [{"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "The observatory was founded in 1931 by Cornelius Vantreight.\n\nWho founded the observatory?"}]
ESSAY = [{"role": "user", "content": "Write a long essay about the history of astronomy."}]
TEMPLATE_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


@pytest.fixture(scope="module", params=BACKENDS)
def generator(request, llama_server_url):
    backend = request.param
    cfg = GenerateConfig(backend=backend, model="smollm2", max_tokens=48, context_size=2048,
                         **({"base_url": llama_server_url(), "retries": 0} if backend == "openai" else {}))
    return get_generator(cfg)


@pytest.fixture(scope="module")
def llama_server_url(request):
    """The OpenAI backend's server, started only when that backend's tests run."""
    return lambda: request.getfixturevalue("llama_server")


def test_the_stream_is_the_plain_answer_piece_by_piece(generator):
    plain = generator.generate(QUESTION)
    pieces = list(generator.stream(QUESTION))
    assert len(pieces) >= 2 and all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces).strip() == plain.text.strip()  # temperature 0: the same answer both ways
    assert "Vantreight" in plain.text
    assert generator.last.text == "".join(pieces)  # after a stream, `last` holds the whole Generation


def test_max_tokens_bounds_the_answer(generator):
    out = generator.generate(ESSAY, max_tokens=5)
    assert 0 < out.completion_tokens <= 5 and len(out.text.split()) <= 5
    streamed = "".join(generator.stream(ESSAY, max_tokens=5))
    assert 0 < generator.last.completion_tokens <= 5 and streamed.strip() == out.text.strip()


def test_usage_and_timings_are_counted(generator):
    out = generator.generate(QUESTION)
    assert out.prompt_tokens > 20 and out.completion_tokens > 0
    assert 0 < out.first_token_s <= out.total_s
    if not generator.name.startswith("openai:"):  # local backends count with their own tokenizer
        assert out.prompt_tokens == generator.count_tokens(out.prompt) and out.prompt.startswith("<|im_start|>")
    list(generator.stream(QUESTION))
    streamed = generator.last
    if generator.name.startswith("openai:"):  # a server may send no usage when streaming: counted, or estimated
        assert streamed.prompt_tokens > 20 and abs(streamed.completion_tokens - out.completion_tokens) <= 2
    else:
        assert (streamed.prompt_tokens, streamed.completion_tokens) == (out.prompt_tokens, out.completion_tokens)


def test_the_answer_stops_at_the_end_of_the_turn(generator):
    out = generator.generate(QUESTION)
    assert out.completion_tokens < 48, "the answer ran to max_tokens instead of ending its turn"
    assert not any(t in out.text for t in TEMPLATE_TOKENS)


def test_a_prompt_beyond_the_context_is_a_generator_error(generator):
    too_long = [{"role": "user", "content": "word " * 4000}]
    with pytest.raises(GeneratorError, match=r"context|tokens|HTTP 400"):
        generator.generate(too_long)


def test_an_unknown_backend_lists_the_valid_ones():
    with pytest.raises(GeneratorError, match="choose one of: llamacpp, transformers, openai"):
        get_generator(GenerateConfig(backend="vllm"))  # type: ignore[arg-type]
