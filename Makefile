# thoraxseg — every target sets up .venv on a fresh machine first.
# torch is installed alone and pinned first; everything else is installed with a
# constraints file that pins it, so no package can pull a newer (CUDA) torch.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
STAMP   = $(VENV)/.thoraxseg-installed
OUT    ?= runs/demo
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint bench venv clean chromium dicom-tools

demo: $(STAMP)
	$(VENV)/bin/thoraxseg study --config configs/demo.yaml --out $(OUT)

test: $(STAMP) chromium dicom-tools
	$(PY) -m pytest $(PYTEST_ARGS)

# Quick iteration: everything but the slow end-to-end tests.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports --no-cache

bench: $(STAMP)
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=24"
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -c requirements/constraints.txt -e ".[test]"
	$(PY) -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else f'torch {v} installed, expected 2.13.0')"
	touch $(STAMP)

# The report test screenshots the HTML page in headless Chromium (Debian package).
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium; the report screenshot test will fail"; \
	    else echo "warning: chromium not found (apt-get install chromium)"; fi; }

# The DICOM export tests validate every object with dciodvfy (dicom3tools) and read RTSTRUCTs back
# with plastimatch, an independent implementation (Debian packages).
dicom-tools:
	@command -v dciodvfy >/dev/null 2>&1 && command -v plastimatch >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools plastimatch >/dev/null) \
	      || echo "warning: could not install dicom3tools/plastimatch; the DICOM export tests will fail"; \
	    else echo "warning: dciodvfy/plastimatch not found (apt-get install dicom3tools plastimatch)"; fi; }

clean:
	rm -rf $(VENV) runs .pytest_cache
