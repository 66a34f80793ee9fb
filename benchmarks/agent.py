#!/usr/bin/env python3
"""The agent on GSM8K with the bundled SmolLM2-135M: (a) plain, (b) as an agent with `calculate`,
(c) as an agent after SFT on its own successful traces plus GSM8K demonstrations rewritten to call
`calculate`; and, with --handbook, the agent against one-shot RAG on questions that need two lookups.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/agent.py --gsm8k ../shared/data/sft/gsm8k_train_subset.jsonl

The file's rows are split by sha256 of their id: the first --test are the questions measured, the
next --harvest are answered by (b) to collect its successful traces, the next --demos have their
worked answers rewritten into calls: every ``<<48/2=24>>`` annotation becomes a `calculate` call (its
result from the calculator itself), and the final answer the ``#### N`` number. A question counts as right
when the last number in the answer equals the reference. (a) and (b) run on llama.cpp, (b)'s replies
grammar-constrained; (c) is a registered fine-tune, served by transformers, whose replies are parsed
strictly (invalid ones counted). Prints and saves benchmarks/results/agent-gsm8k-<stamp>.json and
-latest.json: accuracy, tool-call validity, steps, calls, budget stops, seconds per question, training time.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rich.console import Console

import ragtune
from common import save_results, utc_stamp
from ragtune.agent.calculator import CalculatorError, calculate
from ragtune.agent.protocol import system_prompt
from ragtune.agent.tools import toolbox
from ragtune.agent.traces import successful_traces
from ragtune.evaluate.qa_eval import agent_arm, closed_book_arm, evaluate_qa
from ragtune.files import read_jsonl
from ragtune.train.data import write_examples
from ragtune.types import Example, QAItem

console = Console()
CALL = re.compile(r"<<([^=<>]+)=([^<>]+)>>")
NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")


def last_number(text: str | None) -> float | None:
    found = NUMBER.findall(text or "")
    try:
        return float(found[-1].replace(",", "").rstrip(".")) if found else None
    except ValueError:
        return None


def right(prediction: str | None, final: str) -> bool:
    got = last_number(prediction)
    return got is not None and abs(got - float(final.replace(",", ""))) < 1e-6


def split(path: Path, test: int, harvest: int, demos: int) -> tuple[list[dict], list[dict], list[dict]]:
    rows = [r for _, r in read_jsonl(path, strict=True)]
    rows.sort(key=lambda r: hashlib.sha256(str(r["id"]).encode()).hexdigest())
    return rows[:test], rows[test:test + harvest], rows[test + harvest:test + harvest + demos]


def items(rows: list[dict]) -> list[QAItem]:
    return [QAItem(str(r["id"]), r["question"], [str(r["final_answer"])]) for r in rows]


def rewritten(row: dict, system: str) -> Example | None:
    """A worked GSM8K answer as an agent trace: one `calculate` call per annotation, then the number."""
    messages: list[dict] = [{"role": "system", "content": system}, {"role": "user", "content": row["question"]}]
    for i, (expression, _) in enumerate(CALL.findall(row["answer"])):
        try:
            result = calculate(expression)
        except CalculatorError:
            return None
        messages += [{"role": "assistant", "content": "", "tool_calls": [{"id": f"call_{i + 1}", "type": "function",
                      "function": {"name": "calculate", "arguments": {"expression": expression.strip()}}}]},
                     {"role": "tool", "tool_call_id": f"call_{i + 1}", "name": "calculate", "content": result}]
    if len(messages) == 2:
        return None
    messages.append({"role": "assistant", "content": str(row["final_answer"])})
    return Example(f"demo-{row['id']}", messages, {"source": "gsm8k-rewritten"})


def measure(name: str, answerer, rows: list[dict]) -> tuple[dict, list[dict]]:
    t = time.perf_counter()
    result = evaluate_qa(items(rows), answerer)
    took = time.perf_counter() - t
    preds = [json.loads(json.dumps(p.to_dict())) for p in result.predictions]
    acc = sum(right(p.get("prediction"), r["final_answer"]) for p, r in zip(preds, rows)) / len(rows)
    m = result.metrics
    fig = {"accuracy": acc, "questions": len(rows), "s_per_question": took / len(rows), "generator": result.generator,
           **{k: m[k] for k in ("steps_mean", "tool_calls_mean", "tool_call_validity", "tool_error_rate", "stopped_by_budget", "stopped_by_repeat",
                                "prompt_tokens_mean", "completion_tokens_mean") if k in m}}
    console.print(f"{name}: accuracy {acc:.3f} on {len(rows)} · " + " · ".join(
        f"{k} {v:.2f}" for k, v in fig.items() if isinstance(v, float) and k != "accuracy"))
    return fig, preds


def agent_for(ws, model: str | None):
    if model:
        ws = ws.with_config(ws.config.override("generate", model=model))
    return ws.agent()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gsm8k", type=Path, required=True, help="GSM8K JSONL with question, answer (worked, <<a=b>> annotations), final_answer")
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--harvest", type=int, default=100, help="questions (b) answers to collect its successful traces")
    ap.add_argument("--demos", type=int, default=300, help="worked answers rewritten into calculate calls")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--method", default="lora", choices=["lora", "full"])
    ap.add_argument("--max-steps", type=int, default=6)
    ap.add_argument("--arms", default="plain,agent,sft", help="which of plain (a), agent (b), sft (c) to run; sft harvests with (b)")
    ap.add_argument("--handbook", type=Path, help="also: agent vs one-shot RAG on these two-lookup questions (examples/handbook-multihop.jsonl)")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    started, stamp = time.perf_counter(), utc_stamp()
    work = (args.work or Path(tempfile.mkdtemp(prefix="ragtune-agent-"))).resolve()
    root = work / "ws"
    ws = ragtune.Workspace(root) if (root / "ragtune.toml").exists() else ragtune.Workspace.init(root)
    ws.config = (ws.config.override("agent", builtins=["calculate"], max_steps=args.max_steps, max_tokens=160)
                 .override("generate", max_tokens=256)
                 .override("train", method=args.method, learning_rate=args.lr, epochs=args.epochs, max_length=1024))
    test, harvest, demo_rows = split(args.gsm8k, args.test, args.harvest, args.demos)
    res: dict = {"data": str(args.gsm8k), "command": " ".join([sys.executable, *sys.argv]), "started_utc": stamp,
                 "loadavg_at_start": os.getloadavg(), "arms": {}}
    arms = set(args.arms.split(","))
    if unknown := arms - {"plain", "agent", "sft"}:
        sys.exit(f"--arms: unknown {', '.join(sorted(unknown))}; choose from plain, agent, sft")
    if "plain" in arms:
        res["arms"]["plain"], _ = measure("(a) plain", closed_book_arm(ws.generator), test)
    if "agent" in arms:
        res["arms"]["agent"], _ = measure("(b) agent + calculate", agent_arm(agent_for(ws, None)), test)
    if "sft" in arms:
        sft_arm(args, ws, root, work, test, harvest, demo_rows, res)
    if args.handbook:
        handbook(args, work, res)
    res["wall_s"] = time.perf_counter() - started
    res["targets"] = {}
    if "agent" in arms:
        res["targets"]["tool-call validity 100% on llama.cpp"] = res["arms"]["agent"].get("tool_call_validity") == 1.0
    if "sft" in arms:
        res["targets"]["(c) accuracy >= 0.10"] = res["arms"]["agent-sft"]["accuracy"] >= 0.10
    save_results(args.out, "agent-gsm8k", res, stamp)
    for name, ok in res["targets"].items():
        console.print(f"  {'✔' if ok else '✘'} {name}")
    console.print(f"{res['wall_s'] / 60:.1f} min; work folder {work}")


def sft_arm(args, ws, root: Path, work: Path, test: list[dict], harvest: list[dict], demo_rows: list[dict], res: dict) -> None:
    """(c): harvest (b)'s successful traces, add the rewritten demonstrations, fine-tune, measure."""
    _, harvested = measure("    harvest", agent_arm(agent_for(ws, None)), harvest)
    good = [p for p, r in zip(harvested, harvest) if right(p.get("prediction"), r["final_answer"])]
    traces = successful_traces(good, min_f1=0.0).examples
    system = system_prompt(toolbox(["calculate"], []))
    demos = [e for e in (rewritten(r, system) for r in demo_rows) if e is not None]
    data = work / "agent-sft.jsonl"
    write_examples(traces + demos, data)
    res["training_data"] = {"own_traces": len(traces), "harvested_right": len(good), "rewritten_demos": len(demos)}
    console.print(f"training data: {len(traces)} own successful traces + {len(demos)} rewritten demonstrations")
    from ragtune.models.registry import registered
    from ragtune.train.finetune import finetune

    t = time.perf_counter()
    if not registered(root, "agent-gsm8k"):
        finetune(root, "agent-gsm8k", data, ws.config.train, log=lambda *a: None)
    res["training_s"] = time.perf_counter() - t
    res["arms"]["agent-sft"], _ = measure("(c) agent after SFT", agent_arm(agent_for(ws, "agent-gsm8k")), test)


def handbook(args, work: Path, res: dict) -> None:
    """The agent against one-shot RAG on the handbook's two-lookup questions."""
    from ragtune.evaluate.qa import load_qa
    from ragtune.evaluate.qa_eval import workspace_answerer

    folder = work / "handbook-ws"
    hb = ragtune.Workspace(folder) if (folder / "ragtune.toml").exists() else ragtune.Workspace.init(folder)
    hb.ingest([Path(__file__).resolve().parent.parent / "examples" / "handbook"])
    res["handbook"] = {}
    for arm in ("rag", "agent"):
        r = evaluate_qa(load_qa(args.handbook), workspace_answerer(hb, arm))
        res["handbook"][arm] = {k: v for k, v in r.metrics.items() if isinstance(v, float)}
        console.print(f"handbook two-lookup questions, {arm}: F1 {r.metrics['f1']:.3f} · contains {r.metrics['contains']:.3f}")


if __name__ == "__main__":
    main()
