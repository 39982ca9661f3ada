# Two commands set everything up on a fresh machine:
#   make demo   venv + install, write a sample slide, print its info, save a thumbnail and a region
#   make test   venv + install (with the reference readers), ruff, mypy, the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	mkdir -p demo
	$(BIN)/python -m tools.synth svs demo/sample.svs --width 8000 --height 6000
	$(BIN)/tilescope info demo/sample.svs
	$(BIN)/tilescope thumbnail demo/sample.svs demo/thumbnail.png --max-size 1024
	$(BIN)/tilescope region demo/sample.svs demo/region.png --rect 3000,2000,1024,1024
	$(BIN)/tilescope region demo/sample.svs demo/overview.png --rect 0,0,8000,6000 --size 2000,0

test: $(BIN)/.installed
	$(BIN)/ruff check src tests tools benchmarks fuzz
	$(BIN)/mypy src/tilescope
	$(BIN)/python -m pytest -q

# every fuzzer for SECONDS_EACH (20) seconds; fails on any finding (CI runs it after make test)
fuzz-smoke: $(BIN)/.installed
	PY=$(BIN)/python fuzz/smoke.sh

.PHONY: demo test fuzz-smoke
