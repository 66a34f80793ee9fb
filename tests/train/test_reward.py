"""Reward models on the tiny random Llama: the loss falls, separable pairs end up ordered, the reward
is read at the last real token whatever the pad id, and the registered model scores as trained."""

import json

import pytest

from ragtune.errors import ConfigError, DatasetError, ModelError
from ragtune.train.reward import (EncodedPair, bootstrap_interval, conversation_ids, encode_pair, length_balanced,
                                  score_rows)
from ragtune.train.preferences import load_preferences
from tests.conftest import run_cli, toy_pairs

@pytest.fixture
def cfg(ws, tiny_llama_folder):
    return ws.config.override("train", base=str(tiny_llama_folder), method="full", epochs=6.0, learning_rate=2e-3,
                              batch_size=8, eval_fraction=0.25, max_length=128, warmup_ratio=0.0, checkpoint_steps=1000).train


def test_the_reward_is_read_at_the_last_real_token_whatever_the_pad_id(tiny_llama_folder):
    from transformers import AutoTokenizer

    from ragtune.train.reward import _module
    from ragtune.train.sft import build_model

    tok = AutoTokenizer.from_pretrained(str(tiny_llama_folder))
    cfg = type("C", (), {"activation_checkpointing": False, "method": "full"})()
    model = _module()(build_model(tiny_llama_folder, cfg, 0)).eval()
    short = conversation_ids(tok, [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue."}])
    long = conversation_ids(tok, [{"role": "user", "content": "What colour is the sky on a clear day?"},
                                  {"role": "assistant", "content": "It is blue, mostly."}])
    alone = score_rows(model, [short], pad_id=0)[0]
    for pad in (tok.eos_token_id, short[-1], short[-2]):  # pad ids that occur inside the conversation itself
        assert score_rows(model, [short, long], pad_id=pad, batch_size=2)[0] == pytest.approx(alone, abs=1e-5)


def test_reward_loss_falls_and_separable_pairs_end_up_ordered(ws, cfg, tmp_path):
    from ragtune.models.registry import load_card
    from ragtune.train.finetune import finetune_reward
    from ragtune.train.reward import load_registered

    steps = []
    folder = finetune_reward(ws.root, "rm", toy_pairs(tmp_path / "pairs.jsonl"), cfg, on_step=steps.append, log=lambda _: None)
    card = load_card(ws.root, "rm")
    m = card.metrics
    assert card.task == "reward" and (folder / "score.safetensors").is_file()
    early, late = sum(s["loss"] for s in steps[:3]) / 3, sum(s["loss"] for s in steps[-3:]) / 3
    assert late < early * 0.5, (early, late)
    assert m["accuracy_after"] == 1.0 and m["held_out_pairs"] >= 8
    assert m["length_baseline_accuracy"] < 1.0 and m["balanced_accuracy"] == 1.0  # not a length rule
    assert m["accuracy_low"] <= m["accuracy_after"] <= m["accuracy_high"]
    model, tok = load_registered(ws.root, "rm")  # the registered model scores as the trained one did
    pair = load_preferences(tmp_path / "pairs.jsonl").pairs[0]
    enc = encode_pair(pair, tok, 128)
    chosen, rejected = score_rows(model, [enc.chosen, enc.rejected], tok.pad_token_id)
    assert chosen > rejected
    from ragtune.config import GenerateConfig
    from ragtune.generate import get_generator

    with pytest.raises(ConfigError, match="'rm' is a reward model"):
        get_generator(GenerateConfig(model="rm"), ws.root)
    r = run_cli("eval", "reward", "--data", tmp_path / "pairs.jsonl", "--model", "rm", "--json", tmp_path / "rm.json", "-w", ws.root)
    assert r.returncode == 0, r.stderr
    figures = json.loads((tmp_path / "rm.json").read_text())
    assert figures["pairs"] == 48 and figures["accuracy"] >= 0.9 and len(figures["rewards_chosen"]) == 48
    assert "longer answer wins 0.500" in r.stdout
    r = run_cli("models", "list", "-w", ws.root)
    assert "reward" in r.stdout and "accuracy" in r.stdout
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"id": "good", "prompt": "What colour is the lamp number 99?", "completion": "Blue."}) + "\n"
                       + json.dumps({"id": "bad", "messages": [{"role": "user", "content": "What colour is the lamp number 99?"},
                                                               {"role": "assistant", "content": "Red."}]}) + "\n")
    r = run_cli("score", answers, "--model", "rm", "-o", tmp_path / "scored.jsonl", "-w", ws.root)
    assert r.returncode == 0, r.stderr
    good, bad = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert good["id"] == "good" and good["reward"] > bad["reward"]
    answers.write_text('{"prompt": "Q?"}\n')
    r = run_cli("score", answers, "--model", "rm", "-w", ws.root)
    assert r.returncode != 0 and "line 1: missing 'completion'" in r.stderr


def test_bad_preferences_are_refused_before_anything_trains(ws, cfg, tmp_path):
    from ragtune.train.finetune import finetune_reward

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Q?", "chosen": "A.", "rejected": "A."}\n{"prompt": "Q?", "chosen": "' + "word " * 400 + '", "rejected": "B."}\n')
    with pytest.raises(DatasetError, match="line 1: 'chosen' and 'rejected' are the same answer"):
        finetune_reward(ws.root, "rm", bad, cfg, log=lambda _: None)
    bad.write_text('{"prompt": "Q?", "chosen": "' + "word " * 400 + '", "rejected": "B."}\n{"prompt": "R?", "chosen": "A.", "rejected": "B."}\n')
    with pytest.raises(DatasetError, match="more than max_length = 128"):
        finetune_reward(ws.root, "rm", bad, cfg, log=lambda _: None)
    assert not (ws.state_dir / "models").exists() or not list((ws.state_dir / "models").iterdir())
    with pytest.raises(ModelError, match="no registered model"):
        from ragtune.train.reward import load_registered

        load_registered(ws.root, "rm")


def test_data_validate_checks_preferences_with_the_base_tokenizer(ws, tiny_llama_folder, tmp_path):
    (ws.root / "ragtune.toml").write_text((ws.root / "ragtune.toml").read_text().replace('base = "smollm2"', f'base = "{tiny_llama_folder}"'))
    r = run_cli("data", "validate", toy_pairs(tmp_path / "pairs.jsonl"), "--task", "reward", "-w", ws.root)
    assert r.returncode == 0, r.stderr
    assert "train +" in r.stdout and "pairs" in r.stdout and "OK" in r.stdout
    r = run_cli("data", "validate", tmp_path / "pairs.jsonl", "--task", "kto", "-w", ws.root)
    assert r.returncode == 0, r.stderr  # KTO also takes pairs (split into a liked and a disliked answer)
    thumbs = tmp_path / "thumbs.jsonl"
    thumbs.write_text('{"prompt": "Q?", "completion": "A.", "label": "yes"}\n')
    r = run_cli("data", "validate", thumbs, "--task", "kto", "-w", ws.root)
    assert r.returncode != 0 and "line 1: 'label' must be true (liked) or false (disliked)" in r.stderr


def test_accuracy_interval_and_length_balanced_subset():
    low, high = bootstrap_interval([1.0] * 70 + [0.0] * 30, seed=3)
    assert 0.6 < low < 0.7 < high < 0.8
    pairs = [EncodedPair(str(i), [1], [2], chosen_chars=10 if i < 7 else 2, rejected_chars=5) for i in range(10)]
    subset = length_balanced(pairs, seed=1)
    assert len(subset) == 6 and sum(pairs[i].chosen_chars > pairs[i].rejected_chars for i in subset) == 3


def test_a_merged_reward_model_scores_as_the_registered_one(ws, tiny_llama_folder):
    import dataclasses

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ragtune.models.base import base_identity
    from ragtune.models.registry import ModelCard, register, staging
    from ragtune.train.merge import merge
    from ragtune.train.reward import HEAD_FILE, _module, build_reward_model, load_registered, save_reward_model

    cfg = ws.config.override("train", base=str(tiny_llama_folder), method="lora").train
    model = build_reward_model(tiny_llama_folder, cfg, 0)
    with torch.no_grad():  # a LoRA adapter that changes something (B starts at zero)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    stage = staging(ws.root, "rm")
    save_reward_model(model, stage, "lora")
    AutoTokenizer.from_pretrained(str(tiny_llama_folder)).save_pretrained(str(stage / "tokenizer"))
    register(ws.root, "rm", stage, ModelCard(name="rm", kind="lora", base=base_identity(tiny_llama_folder), task="reward",
                                             config=dataclasses.asdict(cfg)))
    merged = merge(ws.root, "rm")
    assert (merged / HEAD_FILE).is_file() and '"task": "reward"' in (merged / "ragtune-merged.json").read_text()
    plain = _module()(AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32))
    plain.score.load_state_dict(load_file(str(merged / HEAD_FILE)))
    registered, tok = load_registered(ws.root, "rm")
    ids = conversation_ids(tok, [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue."}])
    assert score_rows(plain, [ids], 0)[0] == pytest.approx(score_rows(registered, [ids], 0)[0], abs=1e-4)
