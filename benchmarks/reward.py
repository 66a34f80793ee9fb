#!/usr/bin/env python3
"""Reward models on HH-RLHF: ragtune's reward model vs TRL's RewardTrainer, same base (SmolLM2-135M),
data, LoRA settings, batch size and learning rate; each arm in its own process (peak RSS is per process).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/reward.py --data ../shared/data/preferences/hh_rlhf_helpful_base_test.jsonl.gz

The file is converted with ``ragtune.train.preferences.import_hh`` and split by prompt (seed 0,
``--held-fraction``): the held-out pairs are fixed for every arm and never trained on. Each arm
trains one epoch on the first ``--train`` training pairs that fit ``--max-length`` with the chat
template, then scores the first ``--held`` held-out pairs that fit. Figures: pairwise accuracy with a
bootstrap 95% interval, the length-only baseline ("the longer answer wins") on the same held-out
pairs, accuracy on a length-balanced subset, real (non-padding) tokens per second over the steps
after the first, peak RSS. TRL runs with ``use_cpu=True, bf16=False, gradient_checkpointing=False``
(its defaults would turn on bf16, about 6x slower on these CPUs, and checkpointing); ours keeps its
default activation checkpointing. Writes benchmarks/results/reward-hh-<stamp>.json and reward-hh-latest.json.
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

from common import hh_pairs, run_arm, save_results, utc_stamp  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def data(args, tokenizer):
    """(train pairs, held-out pairs), the same for every arm."""
    from ragtune.train.reward import encode_pair

    return hh_pairs(args, encode_pair, tokenizer)


def arm_ours(args, base, tokenizer) -> dict:
    from ragtune.config import Config
    from ragtune.train.reward import PairLoss, build_reward_model, evaluate_pairs
    from ragtune.train.sft import train_loop

    train, held = data(args, tokenizer)
    cfg = Config().override("train", method="lora", batch_size=args.batch, lora_r=args.lora_r, lora_alpha=2 * args.lora_r,
                            learning_rate=args.lr, epochs=1.0, warmup_ratio=0.0, max_length=args.max_length,
                            activation_checkpointing=not args.no_checkpointing).train
    model = build_reward_model(base, cfg, 0)
    marks = []
    pad = tokenizer.pad_token_id
    train_loop(model, [e for _, e in train], cfg, PairLoss(pad), on_step=lambda r: marks.append((r["tokens"], r["seconds"])))
    model.eval()
    t = time.perf_counter()
    result = evaluate_pairs(model, [e for _, e in held], pad, args.batch)
    (t0, s0), (t1, s1) = marks[0], marks[-1]
    return {"tokens_per_s": (t1 - t0) / (s1 - s0), "steps": len(marks), "tokens": t1, "score_s": time.perf_counter() - t,
            **result.metrics()}


def arm_trl(args, base, tokenizer) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from ragtune.train.reward import RewardEval, bootstrap_interval, length_balanced

    train, held = data(args, tokenizer)
    rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p, _ in train]
    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    cfg = RewardConfig(output_dir=str(args.work / "trl"), per_device_train_batch_size=args.batch, max_length=args.max_length,
                       num_train_epochs=1, learning_rate=args.lr, logging_steps=1, report_to=[], save_strategy="no",
                       use_cpu=True, bf16=False, gradient_checkpointing=False, dataloader_num_workers=0, seed=0,
                       lr_scheduler_type="cosine", warmup_steps=0)
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, task_type="SEQ_CLS", target_modules=TARGETS)
    trainer = RewardTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=lora)
    fetched = []  # real tokens of each batch, in the order the data loader built them (it fetches one ahead)
    collate = trainer.data_collator

    def counting(features):
        batch = collate(features)
        fetched.append(int(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counting
    marks = []

    class Clock(TrainerCallback):
        def on_step_end(self, args_, state, *a, **k):
            marks.append((sum(fetched[: state.global_step]), time.perf_counter()))

    trainer.add_callback(Clock())
    trainer.train()
    scorer = trainer.model.eval()
    t = time.perf_counter()
    with torch.no_grad():  # one conversation at a time: no padding, so no pad-position question
        def reward(ids):
            x = torch.tensor([ids])
            return float(scorer(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, 0])

        rc = [reward(e.chosen) for _, e in held]
        rr = [reward(e.rejected) for _, e in held]
    right = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(rc, rr)]
    encoded = [e for _, e in held]
    balanced = length_balanced(encoded)
    longer = [1.0 if e.chosen_chars > e.rejected_chars else 0.5 if e.chosen_chars == e.rejected_chars else 0.0 for e in encoded]
    low, high = bootstrap_interval(right)
    result = RewardEval(len(right), sum(right) / len(right), low, high, sum(a - b for a, b in zip(rc, rr)) / len(rc),
                        sum(longer) / len(longer), len(balanced), sum(right[i] for i in balanced) / len(balanced) if balanced else None,
                        rc, rr)
    (t0, s0), (t1, s1) = marks[0], marks[-1]
    return {"tokens_per_s": (t1 - t0) / (s1 - s0), "steps": len(marks), "tokens": t1, "score_s": time.perf_counter() - t,
            **result.metrics()}


def child(args) -> None:
    import torch
    from transformers import AutoTokenizer

    from ragtune.models.base import materialise_base

    base = materialise_base("smollm2", args.work)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    torch.set_num_threads(args.threads or os.cpu_count())
    result = arm_trl(args, base, tokenizer) if args.arm == "trl-lora" else arm_ours(args, base, tokenizer)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="HH-RLHF JSONL[.gz] with chosen/rejected texts")
    ap.add_argument("--train", type=int, default=256, help="training pairs (one epoch)")
    ap.add_argument("--held", type=int, default=200, help="held-out pairs scored")
    ap.add_argument("--held-fraction", type=float, default=0.2, help="share of prompts held out (fixed by seed 0)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-checkpointing", action="store_true", help="ours without activation checkpointing (as TRL runs here)")
    ap.add_argument("--arms", default="ours-lora,trl-lora")
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ragtune-reward-bench"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.arm:
        return child(args)
    stamp = utc_stamp()
    res = {"data": str(args.data), "train_pairs": args.train, "held_pairs": args.held, "batch": args.batch,
           "max_length": args.max_length, "lora_r": args.lora_r, "lr": args.lr, "started_utc": stamp,
           "loadavg_at_start": os.getloadavg(), "command": " ".join([sys.executable, *sys.argv]), "arms": {}}
    for arm in args.arms.split(","):
        r = res["arms"][arm] = run_arm(__file__, arm)
        print(f"{arm:>9}: accuracy {r['accuracy']:.3f} (95% {r['accuracy_low']:.3f}-{r['accuracy_high']:.3f}) on {r['pairs']} held-out "
              f"pairs · balanced {r['balanced_accuracy']:.3f} · longer-wins {r['length_baseline_accuracy']:.3f} · "
              f"{r['tokens_per_s']:.1f} tokens/s · peak RSS {r['peak_rss_mb']:.0f} MB · {r['steps']} steps", flush=True)
    if {"ours-lora", "trl-lora"} <= set(res["arms"]):
        ours, trl = res["arms"]["ours-lora"], res["arms"]["trl-lora"]
        res["accuracy_vs_trl"] = ours["accuracy"] - trl["accuracy"]
        res["speedup_vs_trl"] = ours["tokens_per_s"] / trl["tokens_per_s"]
        res["memory_vs_trl"] = ours["peak_rss_mb"] / trl["peak_rss_mb"]
        print(f"ours vs TRL: accuracy {res['accuracy_vs_trl']:+.3f} (target >= -0.01), {res['speedup_vs_trl']:.2f}x tokens/s "
              f"(target >= 1.5x), {res['memory_vs_trl']:.2f}x peak RSS (target <= 0.5x)")
    res["ours_activation_checkpointing"] = not args.no_checkpointing
    save_results(args.out, "reward-hh" + ("-no-checkpointing" if args.no_checkpointing else ""), res, stamp)


if __name__ == "__main__":
    main()
