#!/usr/bin/env python3
"""SFT throughput and memory: ragtune's loop vs plain TRL SFTTrainer + PEFT, same model, data,
LoRA config and batch size; each arm in its own process (peak RSS is per process).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sft.py --data ../shared/data/sft/gsm8k_train_subset.jsonl

Arms: ``ours-lora`` (ragtune.train.sft), ``trl-lora`` (trl.SFTTrainer with its defaults for
prompt-completion data: completion-only loss, per-batch padding), ``ours-full`` (every weight,
for reference). Tokens/s counts real (non-padding) tokens over the steps after the first;
examples are the first ones of the file that fit ``--max-length`` with the chat template, the
same for every arm. Writes benchmarks/results/sft-gsm8k-<stamp>.json and sft-gsm8k-latest.json.
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


def examples(args, tokenizer):
    """The first examples that fit max_length, as (Example, Encoded)."""
    from ragtune.errors import DatasetError
    from ragtune.train.data import load_examples
    from ragtune.train.sft import encode

    out = []
    for ex in load_examples(args.data, "question", "answer"):
        try:
            out.append((ex, encode(ex, tokenizer, args.max_length)))
        except DatasetError:
            continue
        if len(out) == args.steps * args.batch:
            break
    return out


def arm_ours(args, base, tokenizer, method: str) -> dict:
    from ragtune.config import Config
    from ragtune.train.sft import CompletionLoss, build_model, train_loop

    data = [e for _, e in examples(args, tokenizer)]
    cfg = Config().override("train", method=method, batch_size=args.batch, lora_r=args.lora_r, lora_alpha=2 * args.lora_r,
                            learning_rate=2e-4 if method == "lora" else 2e-5, epochs=1.0, warmup_ratio=0.0).train
    model = build_model(base, cfg, 0)
    marks = []
    train_loop(model, data, cfg, CompletionLoss(tokenizer.pad_token_id), on_step=lambda r: marks.append((r["tokens"], r["seconds"])))
    (t0, s0), (t1, s1) = marks[0], marks[-1]
    return {"tokens_per_s": (t1 - t0) / (s1 - s0), "steps": len(marks), "tokens": t1, "padding": None}


def arm_trl(args, base, tokenizer) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = [{"prompt": ex.messages[:-1], "completion": ex.messages[-1:]} for ex, _ in examples(args, tokenizer)]
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    cfg = SFTConfig(output_dir=str(args.work / "trl"), per_device_train_batch_size=args.batch, max_length=args.max_length,
                    max_steps=args.steps, learning_rate=2e-4, logging_steps=1, report_to=[], save_strategy="no",
                    use_cpu=True, bf16=False, dataloader_num_workers=0, seed=0, lr_scheduler_type="cosine")
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=lora)
    seen = {"real": 0, "padded": 0}
    collate = trainer.data_collator

    def counting(features):
        batch = collate(features)
        seen["real"] += int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].numel())
        seen["padded"] += int(batch["input_ids"].numel())
        return batch

    trainer.data_collator = counting
    marks = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            marks.append((seen["real"], time.perf_counter()))

    trainer.add_callback(Clock())
    trainer.train()
    (t0, s0), (t1, s1) = marks[0], marks[-1]
    return {"tokens_per_s": (t1 - t0) / (s1 - s0), "steps": len(marks), "tokens": t1, "padding": 1 - seen["real"] / seen["padded"]}


def child(args) -> None:
    from transformers import AutoTokenizer

    from ragtune.models.base import materialise_base

    base = materialise_base("smollm2", args.work)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    import torch

    torch.set_num_threads(args.threads or os.cpu_count())
    result = arm_trl(args, base, tokenizer) if args.arm == "trl-lora" else arm_ours(args, base, tokenizer, args.arm.split("-")[1])
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=8, help="optimiser steps per arm")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--arms", default="ours-lora,trl-lora,ours-full")
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ragtune-sft-bench"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.arm:
        return child(args)
    stamp = utc_stamp()
    res = {"data": str(args.data), "steps": args.steps, "batch": args.batch, "max_length": args.max_length, "lora_r": args.lora_r,
           "started_utc": stamp, "loadavg_at_start": os.getloadavg(), "command": " ".join([sys.executable, *sys.argv]), "arms": {}}
    for arm in args.arms.split(","):
        r = res["arms"][arm] = run_arm(__file__, arm)
        print(f"{arm:>10}: {r['tokens_per_s']:7.1f} real tokens/s · peak RSS {r['peak_rss_mb']:7.0f} MB · {r['steps']} steps"
              + (f" · padding {r['padding']:.1%}" if r.get("padding") is not None else ""), flush=True)
    if "ours-lora" in res["arms"] and "trl-lora" in res["arms"]:
        ours, trl = res["arms"]["ours-lora"], res["arms"]["trl-lora"]
        res["speedup_vs_trl"] = ours["tokens_per_s"] / trl["tokens_per_s"]
        res["memory_vs_trl"] = ours["peak_rss_mb"] / trl["peak_rss_mb"]
        print(f"ours vs TRL: {res['speedup_vs_trl']:.2f}x tokens/s (target >= 1.5x), {res['memory_vs_trl']:.2f}x peak RSS (target <= 0.5x)")
    save_results(args.out, "sft-gsm8k", res, stamp)


if __name__ == "__main__":
    main()
