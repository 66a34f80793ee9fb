"""The model registry (.ragtune/models/NAME): register/list/show/remove, atomic and refusing to
clobber; generation with a registered LoRA or full model through ``get_generator``; merging an
adapter into its base gives the same logits as base + adapter."""

import json
import shutil

import pytest

from ragtune.config import GenerateConfig
from ragtune.errors import ConfigError, ModelError
from ragtune.generate import generator_sha256, get_generator, model_path
from ragtune.generate.transformers import TransformersGenerator
from ragtune.models.base import base_identity
from ragtune.models.registry import ModelCard, list_models, load_card, models_dir, register, remove, resolve, staging
from ragtune.train.merge import merge

QUESTION = [{"role": "user", "content": "The observatory was founded in 1931 by Cornelius Vantreight.\n\nWho founded the observatory?"}]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def stage_lora(ws_root, name, base, perturb=0.0, seed=0):
    """A staging folder holding a LoRA adapter on ``base`` (B = 0, the identity, unless perturbed) and the tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    if perturb:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=gen) * perturb)
    folder = staging(ws_root, name)
    model.save_pretrained(str(folder / "adapter"))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(folder / "tokenizer"))
    return folder


def card(base, kind="lora", **extra):
    return {"kind": kind, "base": base_identity(base), "data_sha256": "0" * 64,
            "config": {"method": kind, "lora_r": 4, "epochs": 1.0}, "metrics": {"train_loss": 1.5}, "train_time_s": 2.0, **extra}


def test_register_list_show_remove(ws, tiny_llama_folder):
    staged = stage_lora(ws.root, "handbook-lora", tiny_llama_folder)
    folder = register(ws.root, "handbook-lora", staged, card(tiny_llama_folder))
    assert folder == models_dir(ws.root) / "handbook-lora" and not staged.exists()
    assert {p.name for p in folder.iterdir()} == {"adapter", "tokenizer", "card.json"}
    assert (folder / "adapter" / "adapter_model.safetensors").is_file()
    shown = load_card(ws.root, "handbook-lora")
    assert isinstance(shown, ModelCard) and (shown.name, shown.kind, shown.format_version) == ("handbook-lora", "lora", 1)
    assert shown.base == base_identity(tiny_llama_folder) and shown.metrics == {"train_loss": 1.5}
    assert {"torch", "transformers", "peft"} <= set(shown.packages) and shown.created
    assert json.loads((folder / "card.json").read_text())["config"]["lora_r"] == 4
    assert [c.name for c in list_models(ws.root)] == ["handbook-lora"]
    assert not [p for p in models_dir(ws.root).iterdir() if p.name.startswith(".")]

    remove(ws.root, "handbook-lora")
    assert list_models(ws.root) == [] and not folder.exists()
    with pytest.raises(ModelError, match="no registered model named 'handbook-lora'; registered: none"):
        load_card(ws.root, "handbook-lora")


def test_an_existing_name_is_refused_unless_overwrite(ws, tiny_llama_folder):
    register(ws.root, "m", stage_lora(ws.root, "m", tiny_llama_folder), card(tiny_llama_folder))
    again = stage_lora(ws.root, "m", tiny_llama_folder)
    with pytest.raises(ModelError, match="already registered .*`ragtune models rm m`"):
        register(ws.root, "m", again, card(tiny_llama_folder, metrics={"train_loss": 0.5}))
    assert (again / "adapter").is_dir() and load_card(ws.root, "m").metrics == {"train_loss": 1.5}  # nothing moved
    register(ws.root, "m", again, card(tiny_llama_folder, metrics={"train_loss": 0.5}), overwrite=True)
    assert load_card(ws.root, "m").metrics == {"train_loss": 0.5}
    assert [p.name for p in models_dir(ws.root).iterdir()] == ["m"]  # no staging or swapped-out folders left


def test_an_incomplete_folder_is_skipped_by_list_and_reported_by_show(ws, tiny_llama_folder):
    register(ws.root, "done", stage_lora(ws.root, "done", tiny_llama_folder), card(tiny_llama_folder))
    (models_dir(ws.root) / "half" / "adapter").mkdir(parents=True)
    assert [c.name for c in list_models(ws.root)] == ["done"]
    with pytest.raises(ModelError, match=r"'half' is incomplete .*`ragtune models rm half`"):
        load_card(ws.root, "half")
    with pytest.raises(ModelError, match="incomplete"):
        get_generator(GenerateConfig(model="half"), ws.root)
    remove(ws.root, "half")
    assert not (models_dir(ws.root) / "half").exists()


@pytest.mark.parametrize("name", ["", "../up", ".hidden", "a/b", "white space", "smollm2", "x" * 65])
def test_invalid_names_are_refused(ws, tiny_llama_folder, name):
    with pytest.raises(ModelError, match="name"):
        register(ws.root, name, ws.root, card(tiny_llama_folder))


def test_register_checks_the_staged_parts(ws, tiny_llama_folder):
    staged = stage_lora(ws.root, "m", tiny_llama_folder)
    with pytest.raises(ModelError, match="full model needs model/"):
        register(ws.root, "m", staged, card(tiny_llama_folder, kind="full"))
    shutil.rmtree(staged / "tokenizer")
    with pytest.raises(ModelError, match="no tokenizer/"):
        register(ws.root, "m", staged, card(tiny_llama_folder))
    with pytest.raises(ModelError, match="kind = 'qlora' is not valid; choose one of: lora, full"):
        register(ws.root, "m", staged, card(tiny_llama_folder, kind="qlora"))
    assert list_models(ws.root) == [] and not (models_dir(ws.root) / "m").exists() and (staged / "adapter").is_dir()


def test_generate_with_a_registered_lora_model(ws, tiny_llama_folder):
    from peft import PeftModel

    cfg = GenerateConfig(backend="transformers", model=str(tiny_llama_folder), max_tokens=12)
    base_text = TransformersGenerator(tiny_llama_folder, cfg, threads=2).generate(QUESTION).text
    register(ws.root, "tuned", stage_lora(ws.root, "tuned", tiny_llama_folder, perturb=0.3), card(tiny_llama_folder))
    first = generator_sha256(ws.config.override("generate", model="tuned").generate, ws.root)

    g = get_generator(GenerateConfig(model="tuned", max_tokens=12), ws.root)  # backend left at llamacpp
    assert isinstance(g, TransformersGenerator) and isinstance(g.model, PeftModel) and g.name == "transformers:tuned"
    tuned = g.generate(QUESTION)
    assert tuned.text != base_text and tuned.prompt.startswith("<|im_start|>") and tuned.completion_tokens > 0
    assert model_path("tuned", ws.root) == models_dir(ws.root) / "tuned"

    # registered again under the same name with an identity adapter (B = 0): reloaded, answers like the base
    register(ws.root, "tuned", stage_lora(ws.root, "tuned", tiny_llama_folder), card(tiny_llama_folder), overwrite=True)
    again = get_generator(GenerateConfig(model="tuned", max_tokens=12), ws.root)
    assert again is not g and again.generate(QUESTION).text == base_text
    second = generator_sha256(ws.config.override("generate", model="tuned").generate, ws.root)
    assert len(first) == len(second) == 64 and first != second  # runs record which weights answered

    with pytest.raises(ConfigError, match=r"\[generate\] adapter .* registered model 'tuned'"):
        get_generator(GenerateConfig(model="tuned", adapter="elsewhere"), ws.root)
    remote = get_generator(GenerateConfig(backend="openai", model="tuned"), ws.root)
    assert remote.name.startswith("openai:tuned@")  # an endpoint's model name is passed on, not looked up


def test_generate_with_a_registered_full_model(ws, tiny_llama_folder):
    from transformers import AutoTokenizer

    cfg = GenerateConfig(backend="transformers", model=str(tiny_llama_folder), max_tokens=12)
    base_text = TransformersGenerator(tiny_llama_folder, cfg, threads=2).generate(QUESTION).text
    staged = staging(ws.root, "full-ft")
    (staged / "model").mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):  # weights only: the tokenizer is apart
        shutil.copy(tiny_llama_folder / name, staged / "model" / name)
    AutoTokenizer.from_pretrained(str(tiny_llama_folder)).save_pretrained(str(staged / "tokenizer"))
    register(ws.root, "full-ft", staged, card(tiny_llama_folder, kind="full"))

    assert resolve(ws.root, "full-ft") == (models_dir(ws.root) / "full-ft" / "model", None, models_dir(ws.root) / "full-ft")
    g = get_generator(GenerateConfig(model="full-ft", max_tokens=12), ws.root)
    assert g.name == "transformers:full-ft" and g.generate(QUESTION).text == base_text
    with pytest.raises(ModelError, match="full fine-tune.*nothing to merge"):
        merge(ws.root, "full-ft")


def test_merge_gives_the_logits_of_base_plus_adapter(ws, tiny_llama_folder, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    register(ws.root, "m", stage_lora(ws.root, "m", tiny_llama_folder, perturb=0.3), card(tiny_llama_folder))
    merged = merge(ws.root, "m")
    assert merged == models_dir(ws.root) / "m" / "merged"
    assert {"config.json", "model.safetensors", "tokenizer.json", "ragtune-merged.json"} <= {p.name for p in merged.iterdir()}

    base, adapter, _ = resolve(ws.root, "m")
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32), str(adapter))
    plain = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(merged))
    ids = tok(tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False), return_tensors="pt").input_ids
    untouched = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    with torch.no_grad():
        want, got, before = with_adapter(ids).logits, plain(ids).logits, untouched(ids).logits
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, before, atol=1e-3)

    with pytest.raises(ModelError, match="already exists"):
        merge(ws.root, "m")
    assert merge(ws.root, "m", out=tmp_path / "elsewhere") == tmp_path / "elsewhere"


def test_resolve_checks_the_base(ws, tiny_llama_folder, tmp_path):
    moved = tmp_path / "base-copy"
    shutil.copytree(tiny_llama_folder, moved)
    register(ws.root, "m", stage_lora(ws.root, "m", moved), card(moved))
    assert resolve(ws.root, "m").base == moved
    (moved / "model.safetensors").write_bytes((moved / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ModelError, match="base model of 'm' .* has changed"):
        resolve(ws.root, "m")
    shutil.rmtree(moved)
    with pytest.raises(ModelError, match="base model of 'm' is missing"):
        get_generator(GenerateConfig(model="m"), ws.root)


@pytest.mark.slow
def test_a_lora_model_on_the_converted_smollm2(ws, smollm2_base):
    _, base, _ = smollm2_base
    register(ws.root, "smol-lora", stage_lora(ws.root, "smol-lora", base), card(base))
    assert load_card(ws.root, "smol-lora").base["sha256"] == base_identity("smollm2")["sha256"]
    g = get_generator(GenerateConfig(model="smol-lora", max_tokens=24), ws.root)
    out = g.generate(QUESTION)
    assert "Vantreight" in out.text  # an identity adapter on the real model answers like the model
    assert out.text == TransformersGenerator(base, GenerateConfig(backend="transformers", max_tokens=24), threads=2).generate(QUESTION).text
