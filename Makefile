# Two commands set everything up on a fresh machine:
#   make demo   install into .venv, train the default job, evaluate it
#   make test   install into .venv, run the test suite
# GPU users: make demo TORCH_SPEC=torch  (or any pip requirement / index for a CUDA build of torch)

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP_EXTRA  ?=
BIN        := $(VENV)/bin
DEMO_DIR   ?= runs/demo

.PHONY: install demo test bench pipeline study clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(PIP_EXTRA) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(PIP_EXTRA) -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/ebmtool train --seed 0 --overwrite -o $(DEMO_DIR)
	$(BIN)/ebmtool eval $(DEMO_DIR)/ckpt.safetensors

test: install
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest

# results into benchmarks/out/ (ignored); make bench BENCH_ARGS=--record writes the committed benchmarks/results/
BENCH_ARGS ?=
bench: install
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

pipeline: install
	$(MAKE) -C examples

# TASKS x ARMS x SEEDS at matched compute, compared and reported (studies/Makefile; `make -j 2 study`)
study: install
	$(MAKE) -f studies/Makefile study

clean:
	rm -rf $(VENV) runs .pytest_cache
