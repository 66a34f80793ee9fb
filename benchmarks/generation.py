#!/usr/bin/env python3
"""Generation benchmark, one run on one machine: the llamacpp generator's overhead over plain
llama-cpp-python, end-to-end ``ask`` latency on a SciFact workspace next to retrieval + a raw
prefill of the identical prompt, and the peak memory of a ``ragtune ask`` process.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/generation.py --beir ../shared/data/scifact \
        [--repeats 3] [--queries 30] [--work DIR] [--limit-docs N]
"""
from __future__ import annotations

import argparse, os, re, shutil, subprocess, sys, tempfile, time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model is bundled; never reach the Hub
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
from llama_cpp import Llama
from rich.table import Table

import ragtune
from ragtune.config import CONFIG_FILE, GenerateConfig, render_toml
from ragtune.evaluate.beir import load_beir
from ragtune.evaluate.retrieval import scratch_workspace
from ragtune.generate import get_generator
from ragtune.models.bundled import smollm2_gguf
from retrieval import console, machine, reduced_beir
from common import save_results, utc_stamp

PACKAGES = ["ragtune", "llama-cpp-python", "lancedb", "onnxruntime", "numpy"]
SYSTEM = "You are a concise assistant."


def pct(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs, dtype=float)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "mean": float(a.mean())}


def handbook_prompts(gen, n: int = 5, lo: int = 300, hi: int = 800) -> list[list[dict[str, str]]]:
    """``n`` "Summarise:" chats over consecutive slices of the handbook's markdown, lo..hi tokens of text."""
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in sorted(Path(__file__).parents[1].glob("examples/handbook/*.md")))
    tokens = gen.llm.tokenize(text.encode(), add_bos=False, special=False)
    chats, at = [], 0
    for size in np.linspace(lo, hi, n).astype(int):
        body = gen.llm.detokenize(tokens[at:at + size]).decode("utf-8", errors="ignore")
        at = at + size if at + 2 * hi < len(tokens) else 0
        chats.append([{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Summarise:\n\n{body}"}])
    return chats


def raw_run(llm: Llama, prompt: str, max_tokens: int) -> dict:
    """Plain llama-cpp-python on a formatted prompt, cache reset: the whole prompt is prefilled."""
    llm.reset()
    t0 = time.perf_counter()
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    first, parts = None, []
    for chunk in llm.create_completion(tokens, max_tokens=max_tokens, temperature=0, stream=True):
        piece = chunk["choices"][0]["text"]
        if piece:
            first = first if first is not None else time.perf_counter() - t0
            parts.append(piece)
    total, text = time.perf_counter() - t0, "".join(parts)
    return {"prompt_tokens": len(tokens), "completion_tokens": len(llm.tokenize(text.encode(), add_bos=False, special=True)),
            "first_token_s": first or total, "total_s": total, "text": text}


def ours_run(gen, messages) -> dict:
    gen.llm.reset()
    g = gen.generate(messages)
    return {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
            "first_token_s": g.first_token_s or g.total_s, "total_s": g.total_s, "text": g.text}


def rates(runs: list[dict]) -> dict[str, float]:
    """Token-weighted rates over all runs: prefill = prompt tokens / time to first token,
    decode = tokens after the first / time after the first."""
    decode_s = sum(r["total_s"] - r["first_token_s"] for r in runs)
    return {"prefill_tok_s": sum(r["prompt_tokens"] for r in runs) / sum(r["first_token_s"] for r in runs),
            "decode_tok_s": sum(max(r["completion_tokens"] - 1, 0) for r in runs) / decode_s if decode_s > 0 else 0.0,
            "prompt_tokens_mean": float(np.mean([r["prompt_tokens"] for r in runs])),
            "completion_tokens_mean": float(np.mean([r["completion_tokens"] for r in runs]))}


def generator_overhead(gen, raw: Llama, repeats: int, max_tokens: int) -> dict:
    """Each prompt ``repeats`` times through ours and raw, the order alternating to cancel drift."""
    chats = handbook_prompts(gen)
    ours_run(gen, chats[0]), raw_run(raw, gen.format(chats[0]), max_tokens)  # warm-up
    runs: dict[str, list[dict]] = {"ours": [], "raw": []}
    for r in range(repeats):
        for i, messages in enumerate(chats):
            sides = ("ours", "raw") if (r + i) % 2 == 0 else ("raw", "ours")
            for side in sides:
                runs[side].append(ours_run(gen, messages) if side == "ours" else raw_run(raw, gen.format(messages), max_tokens))
    out = {side: rates(rs) for side, rs in runs.items()}
    out["overhead_pct"] = {k: 100 * (out["raw"][k] / out["ours"][k] - 1) for k in ("prefill_tok_s", "decode_tok_s")}
    out["same_text"] = sum(a["text"] == b["text"] for a, b in zip(runs["ours"], runs["raw"])) / len(runs["ours"])
    out["prompts"], out["runs_per_side"] = len(chats), len(runs["ours"])
    out["per_run"] = {side: [{k: v for k, v in r.items() if k != "text"} for r in rs] for side, rs in runs.items()}
    return out


def transformers_overhead(chats: list, repeats: int, max_tokens: int, threads: int) -> dict:
    """The same comparison for our ``transformers`` generator on the same GGUF (de-quantised to fp32)
    against plain ``model.generate``: prefill timed as a 1-token generation, then the whole answer."""
    import torch
    from ragtune.generate.transformers import TransformersGenerator

    gen = TransformersGenerator(smollm2_gguf(), GenerateConfig(backend="transformers", max_tokens=max_tokens), threads)
    model, tok = gen.model, gen.tokenizer

    def raw_hf(messages) -> dict:
        ids = tok(gen.format(messages), add_special_tokens=False, return_tensors="pt").input_ids
        with torch.inference_mode():
            t0 = time.perf_counter()
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False, pad_token_id=tok.eos_token_id)
            t1 = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.eos_token_id)
            t2 = time.perf_counter()
        text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        return {"prompt_tokens": ids.shape[1], "completion_tokens": int(out.shape[1] - ids.shape[1]),
                "first_token_s": t1 - t0, "total_s": t2 - t1, "text": text}

    def ours_hf(messages) -> dict:
        g = gen.generate(messages)
        return {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
                "first_token_s": g.first_token_s or g.total_s, "total_s": g.total_s, "text": g.text}

    ours_hf(chats[0])  # warm-up
    runs: dict[str, list[dict]] = {"ours": [], "raw": []}
    for r in range(repeats):
        for i, messages in enumerate(chats):
            for side in (("ours", "raw") if (r + i) % 2 == 0 else ("raw", "ours")):
                runs[side].append(ours_hf(messages) if side == "ours" else raw_hf(messages))
    out = {side: rates(rs) for side, rs in runs.items()}
    out["overhead_pct"] = {k: 100 * (out["raw"][k] / out["ours"][k] - 1) for k in ("prefill_tok_s", "decode_tok_s")}
    out["same_text"] = sum(a["text"].strip() == b["text"].strip() for a, b in zip(runs["ours"], runs["raw"])) / len(runs["ours"])
    out["prompts"], out["runs_per_side"] = len(chats), len(runs["ours"])
    return out


def scifact_workspace(beir: Path, work: Path, tag: str, threads: int, max_tokens: int) -> tuple[ragtune.Workspace, dict]:
    """The corpus indexed in ``work/ws-TAG`` (reused when there) with the benchmark's RAG settings."""
    data = load_beir(beir, "test")
    ws = scratch_workspace(beir, work / f"ws-{tag}", None)
    config = (ws.config.override("retrieve", k=5).override("generate", max_tokens=max_tokens, threads=threads)
              .override("rag", context_tokens=1024, min_similarity=0.0))
    (ws.root / CONFIG_FILE).write_text(render_toml(config))
    ws = ragtune.Workspace(ws.root)
    t0 = time.perf_counter()
    report = ws.ingest([data.corpus])
    stats = ws.stats()
    return ws, {"path": str(ws.root), "ingest_s": time.perf_counter() - t0, "added": report.added,
                "documents": stats.documents, "chunks": stats.chunks}


def end_to_end(ws: ragtune.Workspace, raw: Llama, queries: list[str], max_tokens: int) -> dict:
    """``ws.stream`` per query (timed from the call), then raw llama.cpp on the identical prompt."""
    gen = ws.generator
    for _ in ws.stream(queries[0]):  # warm-up: embedder, index and model loaded
        pass
    rows = []
    for q in queries:
        gen.llm.reset()
        t0, first = time.perf_counter(), None
        s = ws.stream(q)
        for _ in s:
            first = first if first is not None else time.perf_counter() - t0
        total, a = time.perf_counter() - t0, s.answer
        if a.abstained:
            continue
        r = raw_run(raw, a.prompt, max_tokens)
        rows.append({"ttft_s": first or total, "total_s": total, "retrieve_s": a.timings["retrieve_s"],
                     "prompt_tokens": a.usage["prompt_tokens"], "raw_prefill_s": r["first_token_s"], "raw_total_s": r["total_s"],
                     "ratio": (first or total) / (a.timings["retrieve_s"] + r["first_token_s"]), "same_text": r["text"] == gen.last.text})
    col = lambda k: [row[k] for row in rows]
    return {"queries": len(queries), "answered": len(rows), "ours_ttft_s": pct(col("ttft_s")), "ours_total_s": pct(col("total_s")),
            "retrieve_s": pct(col("retrieve_s")), "raw_prefill_s": pct(col("raw_prefill_s")), "raw_total_s": pct(col("raw_total_s")),
            "ttft_ratio": pct(col("ratio")), "prompt_tokens_mean": float(np.mean(col("prompt_tokens"))),
            "same_text": float(np.mean(col("same_text"))), "per_query": rows}


def peak_memory(workspace: str, question: str) -> dict:
    """Peak RSS of a ``ragtune ask`` subprocess (GNU time when installed, else getrusage of children)."""
    exe = Path(sys.executable).with_name("ragtune")
    cmd = [str(exe) if exe.exists() else "ragtune", "ask", question, "--workspace", workspace]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    if Path("/usr/bin/time").exists():
        p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env, check=True)
        kb, how = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1)), "/usr/bin/time -v"
    else:
        import resource

        subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        kb, how = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "getrusage(RUSAGE_CHILDREN)"  # kB on Linux
    return {"peak_rss_mb": kb / 1024, "wall_s": time.perf_counter() - t0, "method": how, "command": cmd}


def overhead_table(title: str, stats: dict, label: str) -> Table:
    """Ours vs raw: tokens and rates per side, then our overhead in percent."""
    table = Table(title=title)
    for c in ("side", "prompt tok", "completion tok", "prefill tok/s", "decode tok/s"):
        table.add_column(c)
    for side in ("ours", "raw"):
        x = stats[side]
        table.add_row(side, f"{x['prompt_tokens_mean']:.0f}", f"{x['completion_tokens_mean']:.0f}", f"{x['prefill_tok_s']:.0f}", f"{x['decode_tok_s']:.1f}")
    o = stats["overhead_pct"]
    table.add_row(label, "", "", f"{o['prefill_tok_s']:+.1f}%", f"{o['decode_tok_s']:+.1f}%")
    return table


def report_tables(res: dict) -> None:
    g = res["generator"]
    t = overhead_table(f"Generator overhead: {g['prompts']} prompts x {res['repeats']} runs, max_tokens {res['max_tokens']}, "
                       f"{res['threads']} threads (same text {100 * g['same_text']:.0f}%)", g, "overhead (target ≤ 3%)")
    e = res["end_to_end"]
    w = res["workspace"]
    e2e = Table(title=f"End-to-end ask: {e['answered']}/{e['queries']} queries, {w['documents']} docs in {w['chunks']} chunks, "
                      f"k 5, mean prompt {e['prompt_tokens_mean']:.0f} tok (same text {100 * e['same_text']:.0f}%)")
    for c in ("measure", "p50", "p95", "mean"):
        e2e.add_column(c)
    for label, key in (("ours TTFT ms", "ours_ttft_s"), ("ours total ms", "ours_total_s"), ("retrieval ms", "retrieve_s"),
                       ("raw prefill ms", "raw_prefill_s"), ("raw total ms", "raw_total_s")):
        e2e.add_row(label, *(f"{1000 * e[key][k]:.0f}" for k in ("p50", "p95", "mean")))
    e2e.add_row("TTFT / (retrieval + raw prefill), target ≤ 1.1", *(f"{e['ttft_ratio'][k]:.3f}" for k in ("p50", "p95", "mean")))
    console.print(t)
    console.print(e2e)
    m = res["memory"]
    console.print(f"peak RSS of `ragtune ask`: {m['peak_rss_mb']:.0f} MB ({m['method']}, {m['wall_s']:.1f}s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--beir", type=Path, required=True, help="BEIR folder (corpus.jsonl[.gz], queries.jsonl, qrels/)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each overhead prompt per side")
    ap.add_argument("--queries", type=int, default=30, help="SciFact test queries asked end to end")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads, ours and raw")
    ap.add_argument("--limit-docs", type=int, help="smoke test: only the first N corpus documents")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--work", type=Path, help="folder for the scratch workspace (kept and reused); default: a temp dir")
    ap.add_argument("--transformers", action="store_true",
                    help="instead: our transformers generator vs plain model.generate on the same GGUF (writes generation-transformers-*.json)")
    args = ap.parse_args()
    if args.transformers:
        return transformers_main(args)
    work = (args.work or Path(tempfile.mkdtemp(prefix="ragtune-genbench-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stamp = utc_stamp()
    try:
        beir = reduced_beir(args.beir, "test", args.limit_docs, work / "data") if args.limit_docs else args.beir.resolve()
        data = load_beir(beir, "test")
        tag = data.name + (f"-first{args.limit_docs}" if args.limit_docs else "")  # a smoke run never overwrites the real latest
        model = smollm2_gguf()
        res: dict = {"dataset": data.name, "limit_docs": args.limit_docs, "model": model.name, "repeats": args.repeats,
                     "max_tokens": args.max_tokens, "threads": args.threads, "command": " ".join([sys.executable, *sys.argv]),
                     "started_utc": stamp, "machine": machine(), "versions": {p: metadata.version(p) for p in PACKAGES}}
        if res["machine"]["loadavg_at_start"][0] > 0.5 * (os.cpu_count() or 1):
            console.print(f"[yellow]load average {res['machine']['loadavg_at_start'][0]:.1f}: llama.cpp timings on busy cores are not comparable[/]")
        raw = Llama(model_path=str(model), n_ctx=2048, n_threads=args.threads, seed=0, verbose=False)
        console.print(f"[bold]generator overhead[/]: ours vs raw llama-cpp-python, {args.repeats} repeats")
        gen = get_generator(GenerateConfig(max_tokens=args.max_tokens, threads=args.threads))
        res["generator"] = generator_overhead(gen, raw, args.repeats, args.max_tokens)
        console.print(f"[bold]workspace[/]: {tag} in {work}")
        ws, res["workspace"] = scifact_workspace(beir, work, tag, args.threads, args.max_tokens)
        console.print(f"[bold]end-to-end ask[/]: {args.queries} queries, ours vs retrieval + raw prefill")
        queries = list(data.queries.values())[:args.queries]
        res["end_to_end"] = end_to_end(ws, raw, queries, args.max_tokens)
        console.print("[bold]peak memory[/]: ragtune ask subprocess")
        res["memory"] = peak_memory(str(ws.root), queries[0])
        res["wall_s"], res["machine"]["loadavg_at_end"] = time.perf_counter() - started, os.getloadavg()
        saved = save_results(args.out, f"generation-{tag}", res, stamp)
        report_tables(res)
        console.print(f"wrote {saved} (and -latest) in {res['wall_s']:.0f}s")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            console.print(f"scratch kept in {work}")


def transformers_main(args) -> None:
    stamp = utc_stamp()
    started = time.perf_counter()
    chats = handbook_prompts(get_generator(GenerateConfig(max_tokens=args.max_tokens, threads=args.threads)))
    res = {"model": smollm2_gguf().name, "repeats": args.repeats, "max_tokens": args.max_tokens, "threads": args.threads,
           "command": " ".join([sys.executable, *sys.argv]), "started_utc": stamp, "machine": machine(),
           "versions": {p: metadata.version(p) for p in [*PACKAGES, "transformers", "peft"] if p != "llama_cpp_python"}}
    console.print(f"[bold]transformers generator overhead[/]: ours vs plain model.generate, {args.repeats} repeats")
    res["transformers"] = t = transformers_overhead(chats, args.repeats, args.max_tokens, args.threads)
    res["wall_s"], res["machine"]["loadavg_at_end"] = time.perf_counter() - started, os.getloadavg()
    save_results(args.out, "generation-transformers", res, stamp)
    console.print(overhead_table(f"transformers (fp32) on the same GGUF: {t['prompts']} prompts x {args.repeats}, "
                                 f"same text {100 * t['same_text']:.0f}%", t, "overhead"))


if __name__ == "__main__":
    main()
