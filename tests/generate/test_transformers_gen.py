"""The transformers generator on the bundled GGUF (de-quantised by transformers), with and
without a PEFT adapter made here."""

import copy

import pytest

from ragtune.config import GenerateConfig
from ragtune.errors import GeneratorError
from ragtune.models.bundled import smollm2_gguf
from ragtune.generate.transformers import TransformersGenerator

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "The observatory was founded in 1931 by Cornelius Vantreight.\n\nWho founded the observatory?"}]
CFG = GenerateConfig(backend="transformers", max_tokens=24)


@pytest.fixture(scope="module")
def base():
    return TransformersGenerator(smollm2_gguf(), CFG, threads=2)


def test_gguf_through_transformers_answers(base):
    out = base.generate(QUESTION)
    assert "Vantreight" in out.text
    assert out.prompt.startswith("<|im_start|>") and out.prompt_tokens == base.count_tokens(out.prompt)
    assert 0 < out.completion_tokens <= 24 and 0 < out.first_token_s <= out.total_s
    assert "".join(base.stream(QUESTION)) == out.text


def test_with_a_peft_adapter(base, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    tuned = get_peft_model(copy.deepcopy(base.model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    tuned.save_pretrained(tmp_path / "adapter")
    g = TransformersGenerator(smollm2_gguf(), CFG, threads=2, adapter=tmp_path / "adapter")
    assert isinstance(g.model, PeftModel) and g.name.endswith("+adapter")
    # a fresh LoRA adapter starts as the identity (B = 0): the answer is the base model's
    assert g.generate(QUESTION).text == base.generate(QUESTION).text


def test_bad_model_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(GeneratorError, match="cannot load"):
        TransformersGenerator(tmp_path, CFG, threads=1)


def test_closing_the_stream_stops_the_generation(base):
    """A reader that goes away (a client that hung up) ends generate() at the next token: no
    thread goes on generating up to max_tokens behind the next request's back."""
    import threading
    import time

    before = threading.active_count()
    pieces = base.stream([{"role": "user", "content": "Write a long story about the sea."}], max_tokens=400)
    next(pieces), next(pieces)
    t = time.perf_counter()
    pieces.close()
    assert time.perf_counter() - t < 5  # 400 tokens would take far longer on 2 cores
    assert threading.active_count() == before


def test_sampling_per_call(base):
    from ragtune.generate import Sampling

    greedy = base.generate(QUESTION).text
    sampled = {base.generate(QUESTION, sampling=Sampling(temperature=1.5, seed=s)).text for s in range(4)}
    assert base.generate(QUESTION, sampling=Sampling(temperature=1.5, seed=1)).text in sampled  # seeded: reproducible
    assert sampled != {greedy}
