# Each target sets up its own virtual environment on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

TRITON_VENV ?= .venv-triton
# the runtime alone, as camera software installs it (no torch), on the oldest Python it supports (JetPack 6: 3.10)
RUNTIME_VENV ?= .venv-runtime
RUNTIME_PYTHON ?= $(firstword $(shell for p in python3.10 $(wildcard $(HOME)/.pyenv/versions/3.10*/bin/python3.10); do \
	$$p -c 'import venv' 2>/dev/null && echo $$p; done) python3)

# the line station alone, as a line PC installs it (no torch), on Python 3.10 too
STATION_VENV ?= .venv-station

.PHONY: demo test lint docs quick triton-env runtime-env station-env station-servers bench-accuracy mutation

$(VENV)/.installed: pyproject.toml runtime/pyproject.toml station/pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]' -e ./runtime -e './station[postgres]'
	touch $@

# A real Triton for the serving tests on the CPU: nvidia-pytriton ships tritonserver with the Python
# backend; it needs numpy < 2, so it gets an environment of its own, with packd-runtime in it.
$(TRITON_VENV)/.installed: runtime/pyproject.toml
	python3 -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install -q "nvidia-pytriton==0.7.0" "numpy<2" -e ./runtime
	touch $@

triton-env: $(TRITON_VENV)/.installed

# The runtime's own tests run here, where torch is not installed: onnx builds their toy bundles.
$(RUNTIME_VENV)/.installed: runtime/pyproject.toml
	$(RUNTIME_PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install -q --upgrade pip
	$(RUNTIME_VENV)/bin/python -m pip install -q -e './runtime[signing]' "pytest>=8" "hypothesis>=6.100" "onnx>=1.16"
	touch $@

runtime-env: $(RUNTIME_VENV)/.installed

# The station's tests start real servers and a real browser from Debian's packages: mosquitto, PostgreSQL 15 and
# chromium (installed here when missing; as root, as on CI and the development machines).
station-servers:
	@if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ] || ! command -v chromium >/dev/null 2>&1 \
		|| [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			mosquitto postgresql chromium fonts-dejavu-core > /dev/null; fi

$(STATION_VENV)/.installed: runtime/pyproject.toml station/pyproject.toml
	$(RUNTIME_PYTHON) -m venv $(STATION_VENV)
	$(STATION_VENV)/bin/python -m pip install -q --upgrade pip
	$(STATION_VENV)/bin/python -m pip install -q -e ./runtime -e './station[test]'
	touch $@

station-env: $(STATION_VENV)/.installed station-servers

demo: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(VENV)/bin/packd-demo --out runs/demo

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

docs: $(VENV)/.installed  # the documentation site, into runs/site; a broken link or page fails the build
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# pytest-xdist: 2 workers, one file each at a time (module fixtures built once), one thread each (tests/conftest.py)
XDIST := -n 2 --dist loadfile

test: lint docs triton-env runtime-env station-env  # torch-free runtime and station first, then the suite
	$(RUNTIME_VENV)/bin/python -m pytest -q runtime/tests
	$(STATION_VENV)/bin/python -m pytest -q station/tests
	HF_HUB_OFFLINE=1 PACKD_TRITON_ENV=$(TRITON_VENV) $(PY) -m pytest -q $(XDIST) --durations=20

quick: lint station-env  # the developers' loop: every module touched, no bundle exported but the shared ones
	$(PY) -m pytest -q runtime/tests
	$(STATION_VENV)/bin/python -m pytest -q station/tests -m "not slow"
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(XDIST) -m "not slow"

bench-accuracy: $(VENV)/.installed  # every recorded accuracy table again, and what moved beyond its noise band
	HF_HUB_OFFLINE=1 $(PY) benchmarks/tables/accuracy_check.py --out runs/accuracy

# Mutation testing with mutmut (docs/development.md records the scores): each mutant is one small change to one
# function, run in a forked process against the tests that cover that function (mutmut's coverage), so thousands
# run in minutes. The runtime's modules (runtime/pyproject.toml's [tool.mutmut]) against its torch-free tests;
# packd.models.scoring (pyproject.toml's) against the PyTorch tests of the maps and scores. Scores per module, the
# equivalent survivors (mutation/equivalent.toml) taken out: mutation/score.py, which fails below 90 %. One torch
# thread: a forked child of a process whose OpenMP pool is running hangs (mutants would "time out", not be killed).
MUTMUT_SPEC ?= mutmut==3.8.1
mutation: $(VENV)/.installed runtime-env
	$(RUNTIME_VENV)/bin/python -m pip install -q "$(MUTMUT_SPEC)"
	cd runtime && rm -rf mutants && ../$(RUNTIME_VENV)/bin/mutmut run --max-children 2 > /dev/null
	$(PY) -m pip install -q -e '.[mutation]'
	rm -rf mutants && OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(VENV)/bin/mutmut run --max-children 2 > /dev/null
	$(PY) mutation/score.py runtime/mutants && $(PY) mutation/score.py mutants
