# Each target sets up its own virtual environment on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint quick

$(VENV)/.installed: pyproject.toml runtime/pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(VENV)/bin/packd-demo --out runs/demo

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

test: lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

quick: lint  # the developers' loop: everything but the tests that need exported bundles
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow"
