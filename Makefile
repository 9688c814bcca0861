# Two user commands: `make demo` (train + rank on the synthetic data) and `make test`;
# `make lint` runs ruff (configured in pyproject.toml); `make mutants` runs the mutation check.
# Each creates .venv when missing and installs the project into it.
#
# torch==2.14.1 / torchvision==0.29.1 are pinned: they are the newest pair this project is
# tested with, the pair pip's constraint on our build machines allows, and PyPI's torchvision
# only imports beside the torch it was built for.
#
# `make test` also runs the tests against upstream torchreid (deep-person-reid 1.4, whose source
# is $(UPSTREAM_TGZ); PyPI only has the `torchreid.reid.*` repackaging) in a second environment,
# .venv-upstream: the same torch pins, upstream torchreid built from the tarball (its Cython
# extension needs Cython and a C compiler), this project with `pip install -e`. Without the
# tarball that part is skipped with a message.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  := torch==2.14.1 torchvision==0.29.1

UPVENV       ?= .venv-upstream
UPPY         := $(UPVENV)/bin/python
UPSTAMP      := $(UPVENV)/.installed
UPSTREAM_TGZ ?= ../shared/upstream/deep-person-reid-f8cd150.tar.gz
# upstream's requirements.txt minus its linters and with the headless OpenCV (no GUI on CI)
UPSTREAM_REQ := numpy Cython scipy h5py Pillow six opencv-python-headless matplotlib tensorboard \
                future yacs gdown imageio chardet

.PHONY: install demo test test-upstream lint bench study mutants clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test,export,index]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/train.py

test: $(STAMP)
	$(PY) -m pytest -q tests
	@if [ -f $(UPSTREAM_TGZ) ]; then $(MAKE) --no-print-directory test-upstream; \
	else echo "skipping the upstream-torchreid tests: $(UPSTREAM_TGZ) not found"; fi

$(UPSTAMP): setup.py $(UPSTREAM_TGZ)
	test -x $(UPPY) || $(PYTHON) -m venv $(UPVENV)
	$(UPPY) -m pip install -q --upgrade pip setuptools wheel
	$(UPPY) -m pip install -q $(TORCH) $(UPSTREAM_REQ)
	$(UPPY) -m pip install -q --no-build-isolation --no-deps $(UPSTREAM_TGZ)
	$(UPPY) -m pip install -q -e '.[test]'
	touch $(UPSTAMP)

test-upstream: $(UPSTAMP)
	UPSTREAM_TGZ=$(abspath $(UPSTREAM_TGZ)) $(UPPY) -m pytest -q tests/test_upstream.py tests/test_compat_layouts.py

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) benchmarks/bench_cost.py

study: $(STAMP)
	$(PY) benchmarks/synthetic_study.py

# the mutation check (docs/testing.md): each listed break of the package must fail a test;
# minutes, so not part of `make test`
mutants: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/mutants.py

clean:
	rm -rf $(VENV) $(UPVENV) build dist *.egg-info
