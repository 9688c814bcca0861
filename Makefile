# Two user commands: `make demo` (train + rank on the synthetic data) and `make test`.
# Each creates .venv when missing and installs the project into it.
#
# torch==2.14.1 / torchvision==0.29.1 are pinned: they are the newest pair this project is
# tested with, the pair pip's constraint on our build machines allows, and PyPI's torchvision
# only imports beside the torch it was built for.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test bench study clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test,export]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/train.py

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/bench_cost.py

study: $(STAMP)
	$(PY) benchmarks/synthetic_study.py

clean:
	rm -rf $(VENV) build dist *.egg-info
