#!/usr/bin/env python3
"""RL against a reward model on HH-RLHF prompts: ragtune's RLOO and GRPO vs TRL's RLOOTrainer, same base
(SmolLM2-135M), reward model, prompts, LoRA settings, samples and answer length; the win rate of each
tuned policy over the base is judged by a *second* reward model trained on a disjoint split.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/rl.py --data ../shared/data/preferences/hh_rlhf_helpful_base_test.jsonl.gz

Data: ``import_hh``, split by prompt (seed 0, ``--held-fraction``, as benchmarks/reward.py). The
training side is cut in two halves by prompt (seed 1): the first ``--rm-pairs`` pairs of one half
train the reward model the policy maximises (``rm``), of the other half the judge (``judge``). The
held-out side's prompts (HH conversations ending in a user turn that leave ``--max-new-tokens`` of
room within ``--max-length``) are never seen by either: the first ``--prompts`` are the RL prompts, the
next ``--eval-prompts`` are answered by the base and each tuned policy after training (one seeded
sample each, ``train.rl.PolicyCheck``): judge win rate with bootstrap 95% interval and its
length-controlled view, reward-model score, KL to the base, length, end-of-turn rate; plus the
general-prompt score (``train.probe``). Both reward models are trained once (``finetune reward``,
kept in ``--work``). TRL runs with ``use_cpu=True, bf16=False, gradient_checkpointing=False`` and
the same reward model as a Python reward function. Time: wall seconds of training per RL prompt
visit (prompt x step). Writes benchmarks/results/rl-hh-<stamp>.json and rl-hh-latest.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import run_arm, save_results, utc_stamp  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def splits(args):
    """(rm pairs rows, judge pairs rows, RL prompts, eval prompts); prompts as message lists; reward
    model pairs only where both answers fit ``--max-length`` with the chat template."""
    from transformers import AutoTokenizer

    from ragtune.errors import DatasetError
    from ragtune.models.base import materialise_base
    from ragtune.train.preferences import Pair, import_hh, split_pairs
    from ragtune.train.reward import encode_pair
    from ragtune.train.sft import template_ids

    tokenizer = AutoTokenizer.from_pretrained(str(materialise_base("smollm2", workspace(args).root)))

    def fits(p):
        try:
            return bool(encode_pair(p, tokenizer, args.max_length))
        except DatasetError:
            return False

    rows, _ = import_hh(args.data)
    pairs = [Pair(r["id"], r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    train, held = split_pairs(pairs, args.held_fraction, seed=0)
    half_a, half_b = split_pairs(train, 0.5, seed=1)
    as_row = lambda p: {"id": p.id, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}  # noqa: E731
    room = args.max_length - args.max_new_tokens  # prompts (HH's are conversations) that leave room for the answer
    prompts = [p for p in {repr(p.prompt): p.prompt for p in held}.values()
               if len(template_ids(tokenizer, p, generation_prompt=True)) <= room]
    half_a, half_b = [p for p in half_a if fits(p)], [p for p in half_b if fits(p)]
    return ([as_row(p) for p in half_a[: args.rm_pairs]], [as_row(p) for p in half_b[: args.rm_pairs]],
            prompts[: args.prompts], prompts[args.prompts: args.prompts + args.eval_prompts])


def workspace(args):
    from ragtune import Workspace

    root = args.work / "ws"
    if not (root / "ragtune.toml").is_file():
        Workspace.init(root)
        text = (root / "ragtune.toml").read_text().replace('tracking_uri = ""', 'tracking_uri = "none"')
        (root / "ragtune.toml").write_text(text)
    return Workspace(root)


def train_config(ws, args, **kw):
    return ws.config.override("train", method="lora", lora_r=args.lora_r, lora_alpha=2 * args.lora_r, max_length=args.max_length,
                              batch_size=8, eval_fraction=0.0, check_prompts=False, **kw).train


def reward_models(args) -> dict:
    """Train rm and judge once (kept in --work); their figures on the held-out pairs."""
    from ragtune.models.registry import registered
    from ragtune.train.finetune import finetune_reward
    from ragtune.train.preferences import write_jsonl

    ws = workspace(args)
    rm_rows, judge_rows, _, _ = splits(args)
    out = {}
    for name, rows in (("rm", rm_rows), ("judge", judge_rows)):
        if not registered(ws.root, name):
            path = args.work / f"{name}.jsonl"
            write_jsonl(rows, path)
            finetune_reward(ws.root, name, path, train_config(ws, args, learning_rate=1e-4, epochs=1.0, warmup_ratio=0.0), log=print)
        out[name] = {"pairs": len(rows)}
    return out


def rcfg_for(args, algorithm: str):
    from ragtune.config import RLConfig

    return RLConfig(algorithm=algorithm, samples=args.samples, prompts_per_step=args.prompts_per_step, steps=args.steps,
                    max_new_tokens=args.max_new_tokens, kl_coef=args.kl_coef, eval_prompts=args.eval_prompts, temperature=1.0)


def arm_ours(args, algorithm: str) -> dict:
    from ragtune.models.registry import load_card
    from ragtune.train.finetune import finetune_rl
    from ragtune.train.preferences import write_jsonl

    ws = workspace(args)
    _, _, prompts, eval_prompts = splits(args)
    path, held = args.work / "prompts.jsonl", args.work / "eval-prompts.jsonl"
    write_jsonl([{"prompt": p} for p in prompts], path)
    write_jsonl([{"prompt": p} for p in eval_prompts], held)
    name = f"policy-{algorithm}"
    cfg = train_config(ws, args, learning_rate=args.lr, warmup_ratio=0.0, schedule="constant", checkpoint_steps=10_000)
    steps = []
    t = time.perf_counter()
    finetune_rl(ws.root, name, path, cfg, rcfg_for(args, algorithm), "rm", judge="judge", overwrite=True, on_step=steps.append,
                log=print, held_out=held)
    wall = time.perf_counter() - t
    m = load_card(ws.root, name).metrics
    train_s = steps[-1]["seconds"]
    return {"train_s": train_s, "wall_s_in_arm": wall, "s_per_prompt_visit": train_s / (len(steps) * args.prompts_per_step),
            "history": steps, **{k: v for k, v in m.items() if not isinstance(v, (list, dict))}}


def arm_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    from ragtune.models.base import materialise_base
    from ragtune.train.rl import Answer, PolicyCheck, RewardModelScorer
    from ragtune.train.probe import check_prompts

    ws = workspace(args)
    _, _, prompts, eval_prompts = splits(args)
    base = materialise_base("smollm2", ws.root)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    rm, judge = RewardModelScorer.registered(ws.root, "rm"), RewardModelScorer.registered(ws.root, "judge")
    rcfg = rcfg_for(args, "rloo")
    check = PolicyCheck(eval_prompts, rcfg, 0, rm, judge)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    before = check.measure(model, tokenizer, "base")
    general_before = check_prompts(model, tokenizer)["general_score"]

    def reward(prompts, completions, **_):
        answers = [Answer(p, [], c[-1]["content"] if isinstance(c, list) else c, False) for p, c in zip(prompts, completions)]
        return rm(answers)

    cfg = RLOOConfig(output_dir=str(args.work / "trl"), per_device_train_batch_size=args.samples * args.prompts_per_step,
                     num_generations=args.samples, max_completion_length=args.max_new_tokens, beta=args.kl_coef,
                     temperature=1.0, learning_rate=args.lr, lr_scheduler_type="constant", max_steps=args.steps,
                     logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, bf16=False,
                     gradient_checkpointing=False, dataloader_num_workers=0, seed=0)
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, task_type="CAUSAL_LM", target_modules=TARGETS)
    trainer = RLOOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                          processing_class=tokenizer, peft_config=lora)
    logs = []

    class Log(TrainerCallback):
        def on_log(self, args_, state, control, logs_=None, **k):
            logs.append(dict(k.get("logs") or logs_ or {}))

    trainer.add_callback(Log())
    t = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t
    tuned = trainer.model.eval()
    after = check.measure(tuned, tokenizer, "tuned", before)
    return {"train_s": train_s, "s_per_prompt_visit": train_s / (args.steps * args.prompts_per_step), "trl_logs": logs,
            "general_score_before": general_before, "general_score_after": check_prompts(tuned, tokenizer)["general_score"],
            **PolicyCheck.metrics(before, after)}


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads or os.cpu_count())
    if args.arm == "reward-models":
        result = reward_models(args)
    elif args.arm == "trl-rloo":
        result = arm_trl(args)
    else:
        result = arm_ours(args, args.arm.split("-")[1])
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="HH-RLHF JSONL[.gz] with chosen/rejected texts")
    ap.add_argument("--rm-pairs", type=int, default=256, help="pairs for each of the two reward models")
    ap.add_argument("--prompts", type=int, default=200, help="RL prompts (held-out split)")
    ap.add_argument("--eval-prompts", type=int, default=100, help="prompts answered by base and tuned after training")
    ap.add_argument("--held-fraction", type=float, default=0.2)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--prompts-per-step", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--kl-coef", type=float, default=0.05)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--arms", default="reward-models,ours-rloo,ours-grpo,trl-rloo")
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ragtune-rl-bench"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.arm:
        return child(args)
    stamp = utc_stamp()
    res = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("arm", "out")}
    res.update(started_utc=stamp, loadavg_at_start=os.getloadavg(), command=" ".join([sys.executable, *sys.argv]), arms={})
    for arm in args.arms.split(","):
        r = res["arms"][arm] = run_arm(__file__, arm)
        save_results(args.out, "rl-hh", res, stamp)  # after every arm: a stopped run keeps what it measured
        if arm == "reward-models":
            continue
        print(f"{arm:>9}: win rate {r.get('win_rate', float('nan')):.3f} (95% {r.get('win_rate_low', float('nan')):.3f}-"
              f"{r.get('win_rate_high', float('nan')):.3f}; not longer {r.get('win_rate_not_longer') or float('nan'):.3f}) · "
              f"rm score {r.get('reward_score_before', float('nan')):+.3f} -> {r.get('reward_score_after', float('nan')):+.3f} · "
              f"KL {r.get('kl_to_base', float('nan')):.2f} · length {r.get('length_before', float('nan')):.0f} -> "
              f"{r.get('length_after', float('nan')):.0f} · {r['s_per_prompt_visit']:.1f} s per prompt · peak RSS "
              f"{r['peak_rss_mb']:.0f} MB", flush=True)


if __name__ == "__main__":
    main()
