#!/usr/bin/env bash
# Build llama-cpp-python portably and print the path of the wheel.
#
#   scripts/llama_cpp_wheel.sh PYTHON            # the project's build (what `make` installs)
#   scripts/llama_cpp_wheel.sh --args            # only print the CMAKE_ARGS it would build with
#   scripts/llama_cpp_wheel.sh --where           # only print the cache folder of that build
#   LLAMA_CMAKE_ARGS="-DGGML_NATIVE=ON" scripts/llama_cpp_wheel.sh PYTHON   # another build, for benchmarks
#
# Why: pip builds llama.cpp with GGML_NATIVE=ON (-march=native), so a wheel fits only the CPU it
# was built on, and on Intel Xeons with AMX that build segfaults on prompts of a few hundred tokens
# (ggml's AMX matmul). On x86-64 the project's build names its instruction sets instead, in
# src/ragtune/generate/llama_cpp_cmake_args.txt (x86-64-v3; the figures behind the choice are in
# docs/benchmarks.md, "llama.cpp build"). A CPU below x86-64-v3, and other architectures (where
# the AMX crash cannot happen), get pip's own build for this CPU alone.
#
# pip's wheel cache is keyed by the sdist alone, not by CMAKE_ARGS, so it could hand back a native
# wheel built earlier (on another CPU, with other flags). This script never uses it: it builds with
# --no-cache-dir into a cache of its own, keyed by the version and the exact flags (and, for a
# build for this CPU alone, by the CPU), and the Makefile installs that file by path.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
mode=build
case "${1:-}" in --where|--args) mode="${1#--}"; shift ;; esac
python="${1:-python3}"

# The version is pinned once, in pyproject.toml.
version="$(grep -o 'llama-cpp-python==[0-9.]*' "$here/pyproject.toml" | head -1 | cut -d= -f3 || true)"
[ -n "$version" ] || { echo "no llama-cpp-python==X pin in pyproject.toml" >&2; exit 2; }

arch="$(uname -m)"
cpu="$( (grep -m1 -E '^(flags|Features)' /proc/cpuinfo || sysctl -n machdep.cpu.brand_string || uname -a) 2>/dev/null || true)"
if [ -z "${LLAMA_CMAKE_ARGS:-}" ]; then
  LLAMA_CMAKE_ARGS="-DLLAVA_BUILD=OFF"  # the multimodal library (mtmd) is never used here
  lacking=""
  if [ "$arch" = x86_64 ] && [ -r /proc/cpuinfo ]; then
    for f in avx2 fma f16c bmi2; do [[ " $cpu " == *" $f "* ]] || lacking+=" $f"; done
  fi
  if [ "$arch" = x86_64 ] && [ -z "$lacking" ]; then  # the flags live in one file, which `ragtune doctor` reads too
    LLAMA_CMAKE_ARGS="$(grep -v '^#' "$here/src/ragtune/generate/llama_cpp_cmake_args.txt" | tr -s ' \n' ' ' | sed 's/ *$//')"
  elif [ -n "$lacking" ] && [ "$mode" = build ]; then
    echo "this CPU lacks${lacking} (x86-64-v3): building llama.cpp for this CPU alone (-march=native)" >&2
  fi
fi
[ "$mode" = args ] && { echo "$LLAMA_CMAKE_ARGS"; exit 0; }

recipe=1  # bump when this script changes what it builds
key_of=("$recipe" "$version" "$arch" "$LLAMA_CMAKE_ARGS")
# A build without GGML_NATIVE=OFF fits this CPU alone: key it by the CPU too.
[[ "$LLAMA_CMAKE_ARGS" == *-DGGML_NATIVE=OFF* ]] || key_of+=("$cpu")
hash() { if command -v sha256sum >/dev/null; then sha256sum; else shasum -a 256; fi; }
key="$(printf '%s\n' "${key_of[@]}" | hash | cut -c1-16)"
cache="${RAGTUNE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ragtune}/wheels"  # beside the ONNX exports
dest="$cache/llama-cpp-python-$version-$key"
[ "$mode" = where ] && { echo "$dest"; exit 0; }

wheel() { ls "$dest"/llama_cpp_python-*.whl 2>/dev/null | head -1; }
if [ -z "$(wheel)" ]; then
  mkdir -p "$cache"
  rm -rf "$dest"  # a folder without a wheel (emptied by hand): build it again
  tmp="$(mktemp -d "$cache/.building-XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  echo "building llama-cpp-python $version from source (about 5 minutes on 2 cores; once per machine, then cached)" >&2
  echo "  CMAKE_ARGS=$LLAMA_CMAKE_ARGS" >&2
  start=$(date +%s)
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" FORCE_CMAKE=1 "$python" -m pip wheel -q --disable-pip-version-check \
    --no-deps --no-cache-dir --no-binary llama-cpp-python "llama-cpp-python==$version" -w "$tmp" >&2
  printf '{"version": "%s", "cmake_args": "%s", "arch": "%s", "recipe": %s, "built": "%s", "seconds": %s}\n' \
    "$version" "$LLAMA_CMAKE_ARGS" "$arch" "$recipe" "$(date -u +%FT%TZ)" "$(( $(date +%s) - start ))" > "$tmp/build.json"
  # One rename (rename(2) refuses a non-empty target): an interrupted build leaves no half-filled
  # entry behind, and when another build finished first, its wheel is kept and this one dropped.
  if ! "$python" -c 'import os, sys; os.rename(sys.argv[1], sys.argv[2])' "$tmp" "$dest" 2>/dev/null && [ -z "$(wheel)" ]; then
    echo "could not move the built wheel into $dest" >&2; exit 1
  fi
fi
wheel
