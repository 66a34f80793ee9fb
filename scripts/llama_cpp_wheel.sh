#!/usr/bin/env bash
# Build llama-cpp-python portably and print the path of the wheel.
#
#   scripts/llama_cpp_wheel.sh PYTHON            # the project's build (what `make` installs)
#   scripts/llama_cpp_wheel.sh --where           # only print the cache folder of that build
#   LLAMA_CMAKE_ARGS="-DGGML_NATIVE=ON" scripts/llama_cpp_wheel.sh PYTHON   # another build, for benchmarks
#
# Why: pip builds llama.cpp with GGML_NATIVE=ON (-march=native), so a wheel fits only the CPU it
# was built on, and on Intel Xeons with AMX that build segfaults on prompts of a few hundred tokens
# (ggml's AMX matmul). The project's build names its instruction sets instead, in
# src/ragtune/generate/llama_cpp_cmake_args.txt; the figures behind the choice are in
# docs/benchmarks.md ("llama.cpp build").
#
# pip's wheel cache is keyed by the sdist alone, not by CMAKE_ARGS, so it could hand back a native
# wheel built earlier (on another CPU, with other flags). This script never uses it: it builds with
# --no-cache-dir into a cache of its own, keyed by the version and the exact flags, and the
# Makefile installs that file by path.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
where=0
if [ "${1:-}" = --where ]; then where=1; shift; fi
python="${1:-python3}"

# The version is pinned once, in pyproject.toml.
version="$(grep -o 'llama-cpp-python==[0-9.]*' "$here/pyproject.toml" | head -1 | cut -d= -f3)"
[ -n "$version" ] || { echo "no llama-cpp-python==X pin in pyproject.toml" >&2; exit 2; }

arch="$(uname -m)"
if [ -z "${LLAMA_CMAKE_ARGS:-}" ]; then
  if [ "$arch" = x86_64 ]; then  # the flags live in one file, which `ragtune doctor` reads too
    LLAMA_CMAKE_ARGS="$(grep -v '^#' "$here/src/ragtune/generate/llama_cpp_cmake_args.txt" | tr -s ' \n' ' ' | sed 's/ *$//')"
  else
    LLAMA_CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF"  # the architecture's baseline
  fi
fi
recipe=1  # bump when this script changes what it builds
key="$(printf '%s\n' "$recipe" "$version" "$arch" "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-16)"
cache="${RAGTUNE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ragtune}/wheels"  # beside the ONNX exports
dest="$cache/llama-cpp-python-$version-$key"
if [ $where = 1 ]; then echo "$dest"; exit 0; fi

if ! ls "$dest"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  mkdir -p "$cache"
  tmp="$(mktemp -d "$cache/.building-XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  echo "building llama-cpp-python $version from source (about 5 minutes on 2 cores; once per machine, then cached)" >&2
  echo "  CMAKE_ARGS=$LLAMA_CMAKE_ARGS" >&2
  start=$(date +%s)
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" FORCE_CMAKE=1 "$python" -m pip wheel -q --disable-pip-version-check \
    --no-deps --no-cache-dir --no-binary llama-cpp-python "llama-cpp-python==$version" -w "$tmp" >&2
  printf '{"version": "%s", "cmake_args": "%s", "arch": "%s", "recipe": %s, "built": "%s", "seconds": %s}\n' \
    "$version" "$LLAMA_CMAKE_ARGS" "$arch" "$recipe" "$(date -u +%FT%TZ)" "$(( $(date +%s) - start ))" > "$tmp/build.json"
  # One rename: a build that was interrupted leaves no half-filled entry behind.
  mv -T "$tmp" "$dest" 2>/dev/null || rm -rf "$tmp"  # another build finished first: keep that one
  trap - EXIT
fi
ls "$dest"/llama_cpp_python-*.whl | head -1
