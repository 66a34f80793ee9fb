"""Two real steps of each preference trainer on SmolLM2-135M: reward model, DPO, KTO, then RL against
the reward model and the DPO model as a base; each registers and the policy answers a question."""

import json

import pytest

from ragtune.config import PreferenceConfig, RLConfig

PAIRS = [("What is the capital of France?", "The capital of France is Paris.", "I don't know, maybe London."),
         ("How many legs does a spider have?", "A spider has eight legs.", "Spiders have six legs."),
         ("What colour is the sky on a clear day?", "It is blue.", "It is green."),
         ("What do bees make?", "Bees make honey.", "Bees make milk.")]


@pytest.mark.slow
def test_two_real_steps_of_reward_dpo_kto_and_rl_on_smollm2(tmp_path, smollm2_base):
    from ragtune import Workspace
    from ragtune.models.registry import load_card
    from ragtune.train.finetune import finetune_direct, finetune_reward, finetune_rl

    _, base, _ = smollm2_base
    ws = Workspace.init(tmp_path / "ws")
    (ws.root / "ragtune.toml").write_text((ws.root / "ragtune.toml").read_text().replace('tracking_uri = ""', 'tracking_uri = "none"'))
    ws = Workspace(ws.root)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in PAIRS))
    cfg = ws.config.override("train", base=str(base), epochs=1.0, batch_size=2, eval_fraction=0.0, max_length=256,
                             check_prompts=False).train
    quiet = dict(log=lambda _: None)
    runs = {}
    for name, train in (("rm", lambda s: finetune_reward(ws.root, "rm", data, cfg, on_step=s.append, **quiet)),
                        ("dpo", lambda s: finetune_direct(ws.root, "dpo", data, cfg, PreferenceConfig(), "dpo", on_step=s.append, **quiet)),
                        ("kto", lambda s: finetune_direct(ws.root, "kto", data, cfg, PreferenceConfig(), "kto", on_step=s.append, **quiet))):
        steps = runs[name] = []
        train(steps)
        assert [s["step"] for s in steps] == ([1, 2] if name != "kto" else [1, 2, 3, 4]), name  # KTO: 8 answers
        assert all(s["loss"] == s["loss"] and s["loss"] < 10 for s in steps), (name, steps)
    # SmolLM2's log-probs are those of a trained model: at step 1 DPO's loss is log 2 (policy = reference)
    assert runs["dpo"][0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert load_card(ws.root, "dpo").metrics["probe_ppl_before"] < 100

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p, _, _ in PAIRS))
    rcfg = RLConfig(steps=2, samples=2, prompts_per_step=2, max_new_tokens=16, eval_prompts=0)
    steps = []
    rl_cfg = ws.config.override("train", base="dpo", max_length=256, eval_fraction=0.0, check_prompts=False).train
    finetune_rl(ws.root, "policy", prompts, rl_cfg, rcfg, "rm", on_step=steps.append, **quiet)
    assert [s["step"] for s in steps] == [1, 2] and all(s["length"] > 0 and s["kl"] == s["kl"] for s in steps)
    card = load_card(ws.root, "policy")
    assert card.task == "rl" and card.config["reward"]["name"] == "rm" and card.base["name"].startswith("dpo-")
    from ragtune.config import GenerateConfig
    from ragtune.generate import get_generator

    generator = get_generator(GenerateConfig(model="policy", max_tokens=12), ws.root)  # `ask --model policy` serves it so
    assert generator.name == "transformers:policy"
    assert generator.generate([{"role": "user", "content": "What do bees make?"}]).text.strip()
