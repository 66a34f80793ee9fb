#!/usr/bin/env python3
"""DPO and KTO on HH-RLHF: ragtune's loop vs TRL's DPOTrainer / KTOTrainer, same base (SmolLM2-135M),
pairs, LoRA settings, batch size, learning rate and beta, reference log-probs precomputed on both
sides; each arm in its own process (peak RSS is per process).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/dpo.py --data ../shared/data/preferences/hh_rlhf_helpful_base_test.jsonl.gz

The file is converted with ``ragtune.train.preferences.import_hh`` and split by prompt (seed 0,
``--held-fraction``, as benchmarks/reward.py): the held-out pairs are fixed for every arm and never
trained on. Each arm trains one epoch on the first ``--train`` training pairs that fit
``--max-length`` (KTO: each pair split into a liked and a disliked answer, as TRL unpairs them),
then every arm's tuned model is measured by the same function (``train.direct.evaluate_direct``)
on the first ``--held`` held-out pairs that fit: the share whose chosen answer gets the higher
implicit reward ``beta * (log p - log p_ref)``, with its bootstrap 95% interval. Speed: real
(non-padding) tokens per second over the training steps after the first (reference log-probs
excluded on both sides); memory: peak RSS. TRL runs with ``use_cpu=True, bf16=False,
gradient_checkpointing=False`` and ``precompute_ref_log_probs=True``; ours keeps its default activation
checkpointing unless ``--no-checkpointing``. Writes
benchmarks/results/dpo-hh-<stamp>.json and dpo-hh-latest.json.
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
    from ragtune.train.direct import encode_choice

    return hh_pairs(args, encode_choice, tokenizer)


def lora_model(base, args):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    return get_peft_model(model, LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                                            target_modules=TARGETS, task_type="CAUSAL_LM"))


def held_out_reference(model, held, pad, args) -> None:
    """The untrained model's log-probs of the held-out pairs (a fresh adapter changes nothing)."""
    from ragtune.train.direct import reference_logprobs, set_reference

    items = [e for _, e in held]
    set_reference(items, reference_logprobs(model, items, pad, args.batch))


def arm_ours(args, base, tokenizer, loss: str) -> dict:
    from ragtune.config import Config
    from ragtune.train.direct import (DpoLoss, KtoLoss, encode_answers, evaluate_direct, reference_logprobs, set_reference,
                                      thumbs_of)
    from ragtune.train.sft import build_model, train_loop

    train, held = data(args, tokenizer)
    cfg = Config().override("train", method="lora", batch_size=args.batch, lora_r=args.lora_r, lora_alpha=2 * args.lora_r,
                            learning_rate=args.lr, epochs=1.0, warmup_ratio=0.0, max_length=args.max_length,
                            activation_checkpointing=not args.no_checkpointing).train
    model = build_model(base, cfg, 0)
    pad = tokenizer.pad_token_id
    if loss == "dpo":
        items, objective = [e for _, e in train], DpoLoss(pad, args.beta)
    else:
        items, _ = encode_answers(thumbs_of([p for p, _ in train]), tokenizer, args.max_length)
        objective = KtoLoss(pad, args.beta)
    t = time.perf_counter()
    set_reference(items, reference_logprobs(model, items, pad, args.batch))
    held_out_reference(model, held, pad, args)
    reference_s = time.perf_counter() - t
    marks = []
    train_loop(model, items, cfg, objective, on_step=lambda r: marks.append((r["tokens"], r["seconds"])))
    result = evaluate_direct(model, [e for _, e in held], pad, args.beta, args.batch)
    (t0, s0), (t1, s1) = marks[0], marks[-1]
    return {"tokens_per_s": (t1 - t0) / (s1 - s0), "steps": len(marks), "tokens": t1, "reference_s": reference_s,
            "train_items": len(items), **result}


def arm_trl(args, base, tokenizer, loss: str) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    from ragtune.train.direct import evaluate_direct

    train, held = data(args, tokenizer)
    model = lora_model(base, args)
    pad = tokenizer.pad_token_id
    held_out_reference(model, held, pad, args)
    common = dict(output_dir=str(args.work / f"trl-{loss}"), per_device_train_batch_size=args.batch, max_length=args.max_length,
                  num_train_epochs=1, learning_rate=args.lr, logging_steps=1, report_to=[], save_strategy="no",
                  use_cpu=True, bf16=False, gradient_checkpointing=False, dataloader_num_workers=0, seed=0,
                  lr_scheduler_type="cosine", warmup_steps=0, beta=args.beta, precompute_ref_log_probs=True)
    if loss == "dpo":
        rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p, _ in train]
        trainer = DPOTrainer(model=model, args=DPOConfig(**common), train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    else:
        rows = [{"prompt": p.prompt, "completion": answer, "label": label} for p, _ in train
                for answer, label in ((p.chosen, True), (p.rejected, False))]
        trainer = KTOTrainer(model=model, args=KTOConfig(**common), train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    fetched = []  # real tokens of each batch, in the order the data loader built them
    collate = trainer.data_collator

    def counting(features):
        batch = collate(features)
        fetched.append(sum(int(v.sum()) for k, v in batch.items() if k.endswith("attention_mask")))
        return batch

    trainer.data_collator = counting
    marks = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            fetched.clear()  # the reference pass before training used the collator too

        def on_step_end(self, args_, state, *a, **k):
            marks.append((sum(fetched[: state.global_step]), time.perf_counter()))

    trainer.add_callback(Clock())
    t = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t
    result = evaluate_direct(trainer.model, [e for _, e in held], pad, args.beta, args.batch)
    (t0, s0), (t1, s1) = marks[0], marks[-1]
    return {"tokens_per_s": (t1 - t0) / (s1 - s0), "steps": len(marks), "tokens": t1, "train_wall_s": wall,
            "train_items": len(rows), **result}


def child(args) -> None:
    import torch
    from transformers import AutoTokenizer

    from ragtune.models.base import materialise_base

    base = materialise_base("smollm2", args.work)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    torch.set_num_threads(args.threads or os.cpu_count())
    side, loss = args.arm.split("-")
    result = (arm_trl if side == "trl" else arm_ours)(args, base, tokenizer, loss)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="HH-RLHF JSONL[.gz] with chosen/rejected texts")
    ap.add_argument("--train", type=int, default=128, help="training pairs (one epoch)")
    ap.add_argument("--held", type=int, default=200, help="held-out pairs measured")
    ap.add_argument("--held-fraction", type=float, default=0.2, help="share of prompts held out (fixed by seed 0)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-checkpointing", action="store_true", help="ours without activation checkpointing (as TRL runs here)")
    ap.add_argument("--arms", default="ours-dpo,trl-dpo,ours-kto,trl-kto")
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ragtune-dpo-bench"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.arm:
        return child(args)
    stamp = utc_stamp()
    res = {"data": str(args.data), "train_pairs": args.train, "held_pairs": args.held, "batch": args.batch,
           "max_length": args.max_length, "lora_r": args.lora_r, "lr": args.lr, "beta": args.beta, "started_utc": stamp,
           "loadavg_at_start": os.getloadavg(), "command": " ".join([sys.executable, *sys.argv]), "arms": {}}
    for arm in args.arms.split(","):
        r = res["arms"][arm] = run_arm(__file__, arm)
        print(f"{arm:>8}: implicit-reward accuracy {r['reward_accuracy']:.3f} (95% {r['reward_accuracy_low']:.3f}-"
              f"{r['reward_accuracy_high']:.3f}) on {r['held_out_pairs']} held-out pairs · reference by log-prob "
              f"{r['reference_logprob_accuracy']:.3f} · {r['tokens_per_s']:.1f} tokens/s · peak RSS {r['peak_rss_mb']:.0f} MB · "
              f"{r['steps']} steps", flush=True)
    for loss in ("dpo", "kto"):
        if {f"ours-{loss}", f"trl-{loss}"} <= set(res["arms"]):
            ours, trl = res["arms"][f"ours-{loss}"], res["arms"][f"trl-{loss}"]
            cmp = res[f"{loss}_vs_trl"] = {"accuracy": ours["reward_accuracy"] - trl["reward_accuracy"],
                                           "speedup": ours["tokens_per_s"] / trl["tokens_per_s"],
                                           "memory": ours["peak_rss_mb"] / trl["peak_rss_mb"]}
            print(f"ours vs TRL ({loss}): accuracy {cmp['accuracy']:+.3f} (target >= -0.01), {cmp['speedup']:.2f}x tokens/s "
                  f"(target >= 1.3x), {cmp['memory']:.2f}x peak RSS (target <= 0.6x)")
    res["ours_activation_checkpointing"] = not args.no_checkpointing
    save_results(args.out, "dpo-hh" + ("-no-checkpointing" if args.no_checkpointing else ""), res, stamp)


if __name__ == "__main__":
    main()
