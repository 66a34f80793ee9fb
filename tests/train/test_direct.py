"""DPO and KTO on the tiny random Llama: the reference log-probs are cached once and equal a fresh
computation, an interrupted run resumes to the uninterrupted run's weights, held-out pairs end up
ordered, and the result is a registered generator."""

import json

import pytest

from ragtune.config import PreferenceConfig
from ragtune.errors import DatasetError
from tests.conftest import run_cli, toy_pairs


@pytest.fixture
def cfg(ws, tiny_llama_folder):
    return ws.config.override("train", base=str(tiny_llama_folder), method="lora", lora_r=8, epochs=4.0, learning_rate=5e-3,
                              batch_size=8, eval_fraction=0.25, max_length=128, warmup_ratio=0.0, checkpoint_steps=1,
                              check_prompts=False).train


class Stop(Exception):
    pass


def stop_at(step, seen):
    def on_step(record):
        seen.append(record)
        if record["step"] == step:
            raise Stop
    return on_step


def trainable(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


def test_dpo_caches_the_reference_resumes_exactly_and_orders_held_out_pairs(ws, cfg, tmp_path, tiny_llama_folder):
    from transformers import AutoTokenizer

    from ragtune.models.registry import load_card
    from ragtune.train.direct import reference_logprobs
    from ragtune.train.finetune import finetune_direct, prepare_preferences
    from ragtune.train.sft import build_model

    data = toy_pairs(tmp_path / "pairs.jsonl")
    pcfg = PreferenceConfig(beta=0.5)
    steps = []
    with pytest.raises(Stop):
        finetune_direct(ws.root, "dpo", data, cfg, pcfg, "dpo", on_step=stop_at(3, steps), log=lambda _: None)
    cached = json.loads((ws.state_dir / "train" / "dpo" / "reference.json").read_text())
    prepared = prepare_preferences(ws.root, data, cfg, "dpo")
    fresh = reference_logprobs(build_model(tiny_llama_folder, _full(cfg), 1),
                               prepared.train + prepared.eval, AutoTokenizer.from_pretrained(str(tiny_llama_folder)).pad_token_id, 4)
    flat = lambda rows: [v for r in rows for v in r]  # noqa: E731
    assert len(cached) == 48 and flat(cached) == pytest.approx(flat(fresh), abs=1e-4)  # the base's log-probs, whatever the batching

    resumed = finetune_direct(ws.root, "dpo", data, cfg, pcfg, "dpo", resume=True, on_step=steps.append, log=lambda _: None)
    whole = finetune_direct(ws.root, "dpo-whole", data, cfg, pcfg, "dpo", log=lambda _: None)
    a, b = trainable(resumed), trainable(whole)
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-5 for k in a)

    card = load_card(ws.root, "dpo")
    m = card.metrics
    assert card.task == "dpo" and card.config["preference"]["beta"] == 0.5
    assert m["held_out_pairs"] >= 8 and m["reward_accuracy"] >= 0.9 and m["reward_margin"] > 0, m
    assert m["reward_accuracy_low"] <= m["reward_accuracy"] <= m["reward_accuracy_high"]
    assert 0 <= m["reference_logprob_accuracy"] <= 1 and m["probe_ppl_before"] > 0
    early, late = sum(s["loss"] for s in steps[:3]) / 3, sum(s["loss"] for s in steps[-3:]) / 3
    assert late < early, (early, late)

    from ragtune.config import GenerateConfig
    from ragtune.generate import get_generator

    generator = get_generator(GenerateConfig(model="dpo", max_tokens=4), ws.root)  # a generator like any sft model
    assert generator.name == "transformers:dpo"
    r = run_cli("models", "list", "-w", ws.root)
    assert r.returncode == 0 and "dpo" in r.stdout and "probe ppl" in r.stdout


def _full(cfg):
    """``cfg`` for the untouched base: no adapter (what a fresh LoRA adapter computes)."""
    import dataclasses

    return dataclasses.replace(cfg, method="full")


def test_kto_learns_from_likes_and_dislikes_and_from_pairs(ws, cfg, tmp_path):
    from ragtune.models.registry import load_card
    from ragtune.train.finetune import finetune_direct

    pairs = toy_pairs(tmp_path / "pairs.jsonl")
    finetune_direct(ws.root, "kto-pairs", pairs, cfg, PreferenceConfig(beta=0.5), "kto", log=lambda _: None)
    m = load_card(ws.root, "kto-pairs").metrics
    assert m["held_out_pairs"] >= 8 and m["reward_accuracy"] >= 0.9, m  # measured on held-out pairs, like DPO

    thumbs = tmp_path / "thumbs.jsonl"
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    thumbs.write_text("".join(json.dumps({"id": f"{r['id']}{s}", "prompt": r["prompt"], "completion": r[k], "label": s == "+"}) + "\n"
                              for r in rows for s, k in (("+", "chosen"), ("-", "rejected"))))
    finetune_direct(ws.root, "kto", thumbs, cfg, PreferenceConfig(beta=0.5), "kto", log=lambda _: None)
    card = load_card(ws.root, "kto")
    assert card.task == "kto" and card.metrics["held_out_thumbs"] > 0
    assert card.metrics["reward_sign_accuracy"] >= 0.8 and card.metrics["reward_liked"] > card.metrics["reward_disliked"]


def test_kto_loss_reads_the_kl_estimate_from_partner_rows():
    import torch

    from ragtune.train.direct import EncodedAnswer, KtoLoss
    from ragtune.train.sft import Encoded

    class Fixed(torch.nn.Module):  # log p of a row = its first token id, whatever the rest
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

    import ragtune.train.direct as direct

    def fake_logprobs(model, batch):
        return batch["input_ids"][:, 0].float() + model.w

    row = lambda first: Encoded("x", [first, 1], [-100, 1])  # noqa: E731
    items = [EncodedAnswer("a", row(2), True, row(5), ref=0.0, ref_partner=1.0),
             EncodedAnswer("b", row(2), False, row(5), ref=0.0, ref_partner=1.0)]
    original, direct.sequence_logprobs = direct.sequence_logprobs, fake_logprobs
    try:
        out = KtoLoss(pad_id=0, beta=1.0)(Fixed(), items)
    finally:
        direct.sequence_logprobs = original
    kl, ratio = 4.0, 2.0  # partners: 5 - 1; answers: 2 - 0
    expected = (1 - torch.sigmoid(torch.tensor(ratio - kl))) + (1 - torch.sigmoid(torch.tensor(kl - ratio)))
    assert float(out.loss.detach()) == pytest.approx(float(expected), abs=1e-6) and out.units == 2


def test_bad_preference_files_are_refused_before_dpo_trains(ws, cfg, tmp_path):
    from ragtune.train.finetune import finetune_direct

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Q?", "completion": "A.", "label": true}\n')
    with pytest.raises(DatasetError, match=r"holds thumbs .* --task dpo takes pairs"):
        finetune_direct(ws.root, "dpo", bad, cfg, PreferenceConfig(), "dpo", log=lambda _: None)
    bad.write_text('{"prompt": "Q?", "chosen": "A.", "rejected": "B."}\n{"prompt": "R?", "chosen": "C."}\n')
    with pytest.raises(DatasetError, match="line 2: missing 'rejected'"):
        finetune_direct(ws.root, "dpo", bad, cfg, PreferenceConfig(), "dpo", log=lambda _: None)
    assert not (ws.state_dir / "train" / "dpo").exists() and not (ws.state_dir / "models" / "dpo").exists()
