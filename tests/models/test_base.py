"""Base models for fine-tuning: the bundled GGUF converted once to a plain, un-quantized Hugging
Face folder (same logits as transformers' own GGUF load), atomic conversion, and the tiny
random Llama used by fast training tests."""

import json
import time
from pathlib import Path

import pytest

from ragtune.config import GenerateConfig
from ragtune.files import weights_sha256
from ragtune.errors import ModelError
from ragtune.generate import model_path
from ragtune.models.base import MARKER, base_identity, is_quantized, materialise_base, tiny_llama

QUESTION = [{"role": "user", "content": "The observatory was founded in 1931 by Cornelius Vantreight.\n\nWho founded the observatory?"}]


@pytest.mark.slow
def test_the_bundled_gguf_is_converted_once(smollm2_base):
    root, folder, first_s = smollm2_base
    sha = weights_sha256(model_path("smollm2"))
    assert folder == root / ".ragtune" / "base" / sha[:16]
    t0 = time.perf_counter()
    assert materialise_base("smollm2", root) == folder
    again_s = time.perf_counter() - t0
    assert again_s < 0.5 < first_s  # no second model load
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json", MARKER} <= files
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32" and config["architectures"] == ["LlamaForCausalLM"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".tmp-")]
    assert base_identity(folder) == {"name": "smollm2", "path": str(folder), "sha256": sha}
    assert base_identity("smollm2")["sha256"] == sha


@pytest.mark.slow
def test_the_converted_folder_is_the_gguf_model_unquantized(smollm2_base):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, folder, _ = smollm2_base
    gguf = model_path("smollm2")
    plain = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    packed = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    assert not is_quantized(plain) and getattr(plain, "hf_quantizer", None) is None and plain.dtype == torch.float32
    assert is_quantized(packed)  # why the conversion exists: transformers refuses to save this one
    with pytest.raises(ValueError, match="quantized"):
        packed.save_pretrained(str(folder.parent / "refused"))

    tok, tok_gguf = AutoTokenizer.from_pretrained(str(folder)), AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    prompt = tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert prompt == tok_gguf.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    assert torch.equal(ids, tok_gguf(prompt, add_special_tokens=False, return_tensors="pt").input_ids)
    with torch.no_grad():
        a, b = plain(ids).logits[0, -1], packed(ids).logits[0, -1]
    assert torch.allclose(a, b, atol=1e-4) and a.argmax() == b.argmax()


@pytest.mark.slow
def test_a_failed_conversion_leaves_no_folder(tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    def save_half_then_fail(self, directory, *args, **kwargs):
        (Path(directory) / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    sha16 = weights_sha256(model_path("smollm2"))[:16]
    stale = tmp_path / ".ragtune" / "base" / f".tmp-{sha16}-999999999-dead"  # left by a killed process
    stale.mkdir(parents=True)
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_half_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        materialise_base("smollm2", tmp_path)
    assert list((tmp_path / ".ragtune" / "base").iterdir()) == []  # no final folder, no half one, stale one gone


def test_a_hugging_face_folder_is_used_as_it_is(tiny_llama_folder, tmp_path):
    import shutil

    assert materialise_base(str(tiny_llama_folder), tmp_path) == tiny_llama_folder
    assert base_identity(tiny_llama_folder) == {"name": "tiny-llama", "path": str(tiny_llama_folder),
                                                "sha256": weights_sha256(tiny_llama_folder / "model.safetensors")}
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama_folder, broken)
    (broken / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match=r"not a complete .* no tokenizer"):
        materialise_base(str(broken), tmp_path)
    with pytest.raises(ModelError, match="smollm2, a .gguf file, or a Hugging Face model folder"):
        materialise_base("no-such-model", tmp_path)


def test_tiny_llama_is_seeded_and_generates(tiny_llama_folder, tmp_path):
    import torch
    from safetensors.torch import load_file

    from ragtune.generate.transformers import TransformersGenerator

    config = json.loads((tiny_llama_folder / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (2, 64, 49152)
    same = tiny_llama(tmp_path / "same", tokenizer_from=tiny_llama_folder)
    other = tiny_llama(tmp_path / "other", tokenizer_from=tiny_llama_folder, seed=1)
    weights = [load_file(f / "model.safetensors") for f in (tiny_llama_folder, same, other)]
    key = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(weights[0][key], weights[1][key]) and not torch.equal(weights[0][key], weights[2][key])

    g = TransformersGenerator(tiny_llama_folder, GenerateConfig(backend="transformers", max_tokens=8), threads=2)
    out = g.generate(QUESTION)
    assert out.prompt.startswith("<|im_start|>") and out.prompt_tokens == g.count_tokens(out.prompt)
    assert 0 < out.completion_tokens <= 8
