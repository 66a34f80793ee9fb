"""RL against a reward on the tiny random Llama: a scripted reward rises within a few steps while the
KL stays bounded, a resumed run ends with the uninterrupted run's weights, GRPO refuses to run
without a KL term, the KL stop rule acts, and a run against registered reward models is judged by
a second one."""

import json

import pytest

from ragtune.config import RLConfig
from ragtune.errors import ConfigError, DatasetError
from tests.conftest import toy_pairs


def even_tokens(answers):
    """The scripted reward: the share of an answer's tokens whose id is even."""
    return [sum(t % 2 == 0 for t in a.ids) / max(len(a.ids), 1) for a in answers]


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Say something about item {i}."}) + "\n" for i in range(40)))
    return path


@pytest.fixture
def cfg(ws, tiny_llama_folder):
    return ws.config.override("train", base=str(tiny_llama_folder), method="lora", learning_rate=2e-2, eval_fraction=0.2,
                              max_length=128, warmup_ratio=0.0, schedule="constant", checkpoint_steps=1,
                              check_prompts=False).train


# top-k 4 keeps the random model's choices few, so which of them are even can be learnt in a few steps
RCFG = dict(samples=4, prompts_per_step=4, max_new_tokens=8, top_k=4, kl_coef=0.2, eval_prompts=8)


def test_rloo_raises_a_scripted_reward_and_the_kl_stays_bounded(ws, cfg, prompts):
    from ragtune.config import GenerateConfig
    from ragtune.generate import get_generator
    from ragtune.models.registry import load_card
    from ragtune.train.finetune import finetune_rl

    steps = []
    folder = finetune_rl(ws.root, "policy", prompts, cfg, RLConfig(steps=10, **RCFG), None, scorer=even_tokens,
                         on_step=steps.append, log=lambda _: None)
    card = load_card(ws.root, "policy")
    m = card.metrics
    assert card.task == "rl" and card.config["rl"]["algorithm"] == "rloo"
    assert m["train_reward_last"] > m["train_reward_first"] + 0.15, m
    assert m["reward_score_after"] > m["reward_score_before"] + 0.15, m  # on held-out prompts, not the trained ones
    assert max(s["kl"] for s in steps) < 6 and m["kl_to_base"] > 0 and not m["stopped_by_kl"]
    assert {"reward", "kl", "length", "entropy", "truncated"} <= set(steps[-1]) and steps[-1]["truncated"] == 1.0
    assert m["eos_rate_after"] == 0.0 and m["length_after"] == 8.0 and 0 < m["distinct_2_after"] <= 1
    held = json.loads((folder / "checks.json").read_text())["held_out"]
    assert len(held) == 8 and {"prompt", "base", "tuned", "base_score", "tuned_score"} <= set(held[0])
    assert get_generator(GenerateConfig(model="policy"), ws.root).name == "transformers:policy"


def test_a_resumed_run_ends_with_the_uninterrupted_runs_weights(ws, cfg, prompts):
    from safetensors.torch import load_file

    from ragtune.train.finetune import finetune_rl

    class Stop(Exception):
        pass

    def stop_at_3(record):
        if record["step"] == 3:
            raise Stop

    rcfg = RLConfig(steps=5, **RCFG)
    with pytest.raises(Stop):
        finetune_rl(ws.root, "a", prompts, cfg, rcfg, None, scorer=even_tokens, on_step=stop_at_3, log=lambda _: None)
    resumed = finetune_rl(ws.root, "a", prompts, cfg, rcfg, None, scorer=even_tokens, resume=True, log=lambda _: None)
    whole = finetune_rl(ws.root, "b", prompts, cfg, rcfg, None, scorer=even_tokens, log=lambda _: None)
    a, b = (load_file(str(f / "adapter" / "adapter_model.safetensors")) for f in (resumed, whole))
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-5 for k in a)


def test_grpo_needs_a_kl_term_and_the_kl_stop_rule_ends_a_drifting_run(ws, cfg, prompts):
    import dataclasses

    from ragtune.models.registry import load_card
    from ragtune.train.finetune import finetune_rl

    with pytest.raises(ConfigError, match="grpo.*needs kl_coef > 0"):
        finetune_rl(ws.root, "g", prompts, cfg, RLConfig(algorithm="grpo", **{**RCFG, "kl_coef": 0.0}), None, scorer=even_tokens)
    with pytest.raises(ConfigError, match="at least 2 answers per prompt"):
        finetune_rl(ws.root, "g", prompts, cfg, RLConfig(**{**RCFG, "samples": 1}), None, scorer=even_tokens)
    with pytest.raises(ConfigError, match="needs a reward"):
        finetune_rl(ws.root, "g", prompts, cfg, RLConfig(**RCFG), None)
    steps = []
    finetune_rl(ws.root, "g", prompts, cfg, RLConfig(algorithm="grpo", steps=10, **{**RCFG, "kl_coef": 0.05}), None,
                scorer=even_tokens, on_step=steps.append, log=lambda _: None)
    assert load_card(ws.root, "g").metrics["train_reward_last"] > load_card(ws.root, "g").metrics["train_reward_first"] + 0.1
    lines = []
    full = dataclasses.replace(cfg, method="full", learning_rate=1e-2)
    finetune_rl(ws.root, "drift", prompts, full, RLConfig(steps=12, kl_stop=1.0, **{**RCFG, "kl_coef": 0.0}), None,
                scorer=even_tokens, log=lines.append)
    m = load_card(ws.root, "drift").metrics
    assert m["stopped_by_kl"] and m["steps"] < 12 and any("stayed above [rl] kl_stop" in line for line in lines)


def test_rl_against_a_reward_model_is_judged_by_a_second_one(ws, cfg, prompts, tmp_path):
    import dataclasses

    from ragtune.models.registry import load_card, model_sha256
    from ragtune.train.finetune import finetune_reward, finetune_rl

    rm_cfg = dataclasses.replace(cfg, method="full", epochs=2.0, learning_rate=2e-3, batch_size=8, eval_fraction=0.25)
    pairs = toy_pairs(tmp_path / "pairs.jsonl")
    finetune_reward(ws.root, "rm", pairs, rm_cfg, log=lambda _: None)
    finetune_reward(ws.root, "judge", pairs, dataclasses.replace(rm_cfg, seed=1), log=lambda _: None)
    with pytest.raises(ConfigError, match="its scores prove nothing"):
        finetune_rl(ws.root, "p", pairs, cfg, RLConfig(steps=2, **RCFG), "rm", judge="rm")
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"prompt": f"What colour is the {t} number {i}?"}) + "\n"
                            for i, t in enumerate(["ball", "cup", "kite"])))  # prompts of the pair file: they will not train
    folder = finetune_rl(ws.root, "p", pairs, cfg, RLConfig(steps=2, **RCFG), "rm", judge="judge", held_out=held,
                         log=lambda _: None)  # the prompts of a pair file
    with pytest.raises(ConfigError, match="'p' is not a reward model"):
        finetune_rl(ws.root, "q", pairs, cfg, RLConfig(steps=2, **RCFG), "p")
    card = load_card(ws.root, "p")
    m = card.metrics
    assert card.config["reward"] == {"name": "rm", "sha256": model_sha256(ws.root, "rm")}
    assert card.config["judge"]["name"] == "judge"
    assert m["win_rate_prompts"] == 3 and m["win_rate_low"] <= m["win_rate"] <= m["win_rate_high"]
    assert [row["prompt"] for row in json.loads((folder / "checks.json").read_text())["held_out"]] == [
        json.loads(line)["prompt"] for line in held.read_text().splitlines()]
    assert m["examples_seen"] == 2 * 4 * 4 and card.config["held_out_sha256"]
    assert "reward_score_before" in m and "length_flagged" in m


def test_prompt_files_are_checked_by_line(tmp_path):
    from ragtune.train.rl import advantages, load_prompts

    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "Hi?"}\n{"messages": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}]}\n'
                   '{"question": "x"}\n{"prompt": "Hi?"}\n')
    with pytest.raises(DatasetError) as e:
        load_prompts(bad)
    assert "line 2: 'messages' must end with a user turn" in str(e.value) and "line 3: no 'prompt'" in str(e.value)
    bad.write_text('{"prompt": "Hi?"}\n{"prompt": "Hi?"}\n{"prompt": [{"role": "user", "content": "Yo"}]}\n')
    assert len(load_prompts(bad)) == 2  # each prompt once

    import torch

    scores = torch.tensor([1.0, 0.0, 0.0, 3.0, 3.0, 3.0])
    out = advantages(scores, torch.zeros(6), groups=2, samples=3, rcfg=RLConfig())
    assert out.tolist() == pytest.approx([1.0, -0.5, -0.5, 0.0, 0.0, 0.0])  # minus the mean of the *other* answers
