#!/usr/bin/env python3
"""llama.cpp builds side by side: which build of llama-cpp-python is fastest *and* correct here.

Each build is a wheel (made by ``scripts/llama_cpp_wheel.sh`` with its own CMAKE_ARGS). A build with
ggml's CPU-variant backends (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS) is measured once per variant
library it ships. Every build runs in its own process (a crash is a result, not the end of the
benchmark), rounds alternate between the builds, and each run, with the bundled SmolLM2-135M-Instruct
Q4_1 on all cores, times:

- prefill: one 1,000-token prompt of handbook text (the size ``ragtune ask`` sends), cache empty;
- decode: 128 greedy tokens after it, one token per step (EOS never chosen);

and, untimed, computes the logits of every prompt position. Correctness is measured against the
same weights de-quantised to fp32 in transformers: the perplexity of the prompt's text, the share of
positions whose top token matches, and the mean absolute logit difference; and against the first
build: the top tokens and the greedy continuation.

    LLAMA_CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=ON" scripts/llama_cpp_wheel.sh .venv/bin/python
        # prints the wheel's path; one build per set of flags, the exact sets in docs/benchmarks.md
    .venv/bin/python benchmarks/llamacpp_build.py --build native=WHEEL --build portable=WHEEL \\
        --build variants=WHEEL [--variants haswell,zen4] [--repeats 12]
"""
from __future__ import annotations

import argparse, json, os, statistics, subprocess, sys, tempfile, time, zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import save_results, utc_stamp  # noqa: E402
from retrieval import machine  # noqa: E402

from ragtune.doctor import cpu_flags  # noqa: E402
from ragtune.models.bundled import smollm2_gguf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def measure(variant: str | None, prompt_tokens: int, decode_tokens: int, logits_out: str) -> dict:
    """In the child process: load the build (and the variant, if any), time prefill and decode,
    then save every prompt position's logits to ``logits_out``."""
    import ctypes

    import llama_cpp
    from llama_cpp import Llama

    if variant:  # what ggml_backend_load_all would pick, loaded by hand so each variant can be timed
        # libggml.so.0, the file libllama links: the wheel holds libggml.so as a separate copy (zip has no
        # symlinks), and a backend registered in that copy is invisible to llama.cpp.
        lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml.so.0"))
        lib.ggml_backend_load.restype, lib.ggml_backend_load.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
        if not lib.ggml_backend_load(variant.encode()):
            raise SystemExit(f"ggml_backend_load refused {variant} (this CPU lacks its instructions)")
    model = str(smollm2_gguf())
    llm = Llama(model_path=model, n_ctx=2048, n_threads=os.cpu_count(), seed=0, verbose=False)
    prompt = handbook_tokens(llm, prompt_tokens)
    n_vocab, eos = llm.n_vocab(), llm.token_eos()

    def last_logits():
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(n_vocab,)).copy()

    llm.eval(prompt[:32]); llm.reset()  # warm-up: page in the weights, spin up the threads
    t0 = time.perf_counter()
    llm.eval(prompt)
    prefill = time.perf_counter() - t0
    out = []
    t0 = time.perf_counter()
    for _ in range(decode_tokens):
        row = last_logits()
        row[eos] = -np.inf
        out.append(int(row.argmax()))
        llm.eval([out[-1]])
    decode = time.perf_counter() - t0
    text = llm.detokenize(out[:32]).decode("utf-8", errors="replace")
    llm.close()  # its memory back before the second model loads
    full = Llama(model_path=model, n_ctx=2048, n_threads=os.cpu_count(), seed=0, logits_all=True, verbose=False)
    full.eval(prompt)
    np.save(logits_out, full.scores[:prompt_tokens])
    return {"system_info": llama_cpp.llama_print_system_info().decode().strip(), "prompt": prompt,
            "prefill_tok_s": prompt_tokens / prefill, "decode_tok_s": decode_tokens / decode, "greedy": out, "text": text}


def handbook_tokens(llm, n: int) -> list[int]:
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "examples/handbook").glob("*.md")))
    tokens = llm.tokenize(text.encode(), add_bos=False, special=False)[:n]
    assert len(tokens) == n, f"the handbook gives only {len(tokens)} tokens"
    return tokens


def fp32_logits(prompt: list[int]) -> np.ndarray:
    """The same GGUF de-quantised to fp32 in transformers: what the quantised kernels approximate."""
    import torch
    from transformers import AutoModelForCausalLM

    path = smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([prompt])).logits[0].numpy()


def correctness(logits: np.ndarray, prompt: list[int], fp32: np.ndarray) -> dict:
    x = logits.astype(np.float64)
    top = x.max(axis=1, keepdims=True)
    logprobs = x - top - np.log(np.exp(x - top).sum(axis=1, keepdims=True))
    nll = -logprobs[np.arange(len(prompt) - 1), prompt[1:]].mean()
    return {"perplexity": float(np.exp(nll)), "top1_vs_fp32": float(np.mean(logits.argmax(1) == fp32.argmax(1))),
            "mean_abs_logit_diff_vs_fp32": float(np.abs(logits - fp32).mean())}


def unpack(wheel: Path, into: Path) -> Path:
    with zipfile.ZipFile(wheel) as z:
        z.extractall(into)
    return into


def variants(site: Path, only: set[str]) -> list[str | None]:
    """The CPU-variant libraries of a GGML_BACKEND_DL build (``only`` those named, if any);
    ``[None]`` for a build with one CPU backend linked in."""
    libs = sorted(site.rglob("libggml-cpu-*.so"))
    return [str(p) for p in libs if not only or _variant(p) in only] if libs else [None]


def _variant(lib: Path) -> str:
    return lib.name[len("libggml-cpu-"):-len(".so")]


def run_child(site: Path, variant: str | None, args, logits_out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, __file__, "--child", "--prompt-tokens", str(args.prompt_tokens),
           "--decode-tokens", str(args.decode_tokens), "--logits-out", str(logits_out)] + (["--variant", variant] if variant else [])
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        why = f"signal {-p.returncode}" if p.returncode < 0 else f"exit {p.returncode}"
        last = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
        return {"error": f"{why}: {last[-1] if last else ''}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def summarise(wheel: Path, results: list[dict], ref_runs: list[dict], logits: Path, fp32: np.ndarray | None) -> dict:
    """One build's figures: medians and bests, per-round ratios to the reference, correctness."""
    ref = next((x for x in ref_runs if "error" not in x), None)
    ok = [x for x in results if "error" not in x]
    row: dict = {"wheel": str(wheel), "runs": len(results), "failed": len(results) - len(ok)}
    if (wheel.parent / "build.json").exists():
        row["build"] = json.loads((wheel.parent / "build.json").read_text())
    if not ok:
        return {**row, "error": results[0]["error"]}
    prefill, decode = [x["prefill_tok_s"] for x in ok], [x["decode_tok_s"] for x in ok]
    row.update(prefill_runs=prefill, decode_runs=decode,
               prefill_tok_s=statistics.median(prefill), prefill_best=max(prefill),
               decode_tok_s=statistics.median(decode), decode_best=max(decode),
               system_info=ok[0]["system_info"], text=ok[0]["text"],
               deterministic=all(x["greedy"] == ok[0]["greedy"] for x in ok))
    if fp32 is not None:
        row.update(correctness(np.load(logits), ok[0]["prompt"], fp32))
    both = [(x, y) for x, y in zip(results, ref_runs) if "error" not in x and "error" not in y]
    if both:  # the same round, one run after the other: the fairest comparison on noisy cores
        row.update(prefill_vs_reference=statistics.median(x["prefill_tok_s"] / y["prefill_tok_s"] for x, y in both),
                   decode_vs_reference=statistics.median(x["decode_tok_s"] / y["decode_tok_s"] for x, y in both))
    if ref is not None:
        pairs = list(zip(ok[0]["greedy"], ref["greedy"]))
        row.update(greedy_same_as_reference=sum(a == b for a, b in pairs),
                   greedy_first_diff=next((i for i, (a, b) in enumerate(pairs) if a != b), None))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", action="append", default=[], help="NAME=WHEEL (repeatable); the first is the reference")
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--prompt-tokens", type=int, default=1000)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--variants", default="", help="CPU variants of a GGML_BACKEND_DL build to time, e.g. haswell,zen4 (default: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--logits-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.variant, args.prompt_tokens, args.decode_tokens, args.logits_out)))
        return
    if not args.build:
        ap.error("give at least one --build NAME=WHEEL")

    stamp, tmp = utc_stamp(), Path(tempfile.mkdtemp(prefix="llamabench-"))
    arms: list[tuple[str, Path, str | None, Path]] = []  # (name, site, variant, wheel)
    for spec in args.build:
        name, wheel = spec.split("=", 1)
        site = unpack(Path(wheel), tmp / name)
        for v in variants(site, set(filter(None, args.variants.split(",")))):
            arms.append((name if v is None else f"{name}:{_variant(Path(v))}", site, v, Path(wheel)))
    logits = {name: tmp / f"{name.replace(':', '_')}.npy" for name, *_ in arms}
    runs: dict[str, list[dict]] = {name: [] for name, *_ in arms}
    loadavg = os.getloadavg()
    for r in range(args.repeats):
        for name, site, variant, _ in arms:
            if r and not any("error" not in x for x in runs[name]):
                continue  # failed in the first round: the same failure every time
            res = run_child(site, variant, args, logits[name])
            runs[name].append(res)
            shown = res.get("error") or f"prefill {res['prefill_tok_s']:.0f} tok/s, decode {res['decode_tok_s']:.1f} tok/s"
            print(f"round {r + 1:2} {name:24} {shown}", flush=True)
    ref_name = arms[0][0]
    ref = next((x for x in runs[ref_name] if "error" not in x), None)
    fp32 = fp32_logits(ref["prompt"]) if ref else None
    table = {name: summarise(wheel, runs[name], runs[ref_name], logits[name], fp32) for name, _, _, wheel in arms}
    res = {"stamp": stamp, "reference": ref_name, "prompt_tokens": args.prompt_tokens, "decode_tokens": args.decode_tokens,
           "repeats": args.repeats, "threads": os.cpu_count(), "machine": {**machine(), "loadavg_at_start": loadavg},
           "cpu_flags": sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "f16c", "bmi", "sse4"))),
           "fp32_reference": {"perplexity": correctness(fp32, ref["prompt"], fp32)["perplexity"]} if ref else None,
           "builds": table}
    print(f"\n{'build':20} {'prefill tok/s':>24} {'decode tok/s':>22} {'perplexity':>11} {'top-1 = fp32':>13} "
          f"{'mean |Δlogit|':>14} {'greedy = ref':>13}")
    print(f"{'':20} {'median (best) ×ref':>24} {'median (best) ×ref':>22}")
    for name, row in table.items():
        if "error" in row:
            print(f"{name:20} failed: {row['error'][-110:]}")
            continue
        print(f"{name:20} {row['prefill_tok_s']:11.0f} ({row['prefill_best']:4.0f}) {row.get('prefill_vs_reference', 0):5.3f} "
              f"{row['decode_tok_s']:9.1f} ({row['decode_best']:4.1f}) {row.get('decode_vs_reference', 0):5.3f} "
              f"{row.get('perplexity', 0):11.4f} {row.get('top1_vs_fp32', 0):13.4f} "
              f"{row.get('mean_abs_logit_diff_vs_fp32', 0):14.4f} {row.get('greedy_same_as_reference', 0):>9}/{args.decode_tokens}")
    if fp32 is not None:
        print(f"{'fp32 transformers':20} {'':24} {'':22} {res['fp32_reference']['perplexity']:11.4f}")
    print(f"saved {save_results(args.out, 'llamacpp-build', res, stamp)}")


if __name__ == "__main__":
    main()
