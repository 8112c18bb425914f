# golb: `make run` starts golb on config/golb.yaml (demo backends included),
# `make test` runs lint and the whole test suite. Both create .venv if missing.
# `make test-pypy` runs the suite on PyPy (pypy3) in .venv-pypy, and
# `make run PYTHON=pypy3` serves with PyPy.
PYTHON ?= python3
ifneq (,$(findstring pypy,$(PYTHON)))
VENV ?= .venv-pypy
CONSTRAINTS := -c constraints/pypy.txt
else
VENV ?= .venv
CONSTRAINTS :=
endif
PY := $(VENV)/bin/python
STAMP := $(VENV)/.golb-installed
JOBS ?= 2
CONFIG ?= config/golb.yaml

.PHONY: install run test test-pypy suite lint check bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) setup.py pyproject.toml $(wildcard constraints/*.txt)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(CONSTRAINTS) -e '.[test]' --config-settings editable_mode=compat
	$(PY) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $(STAMP)

install: $(STAMP)

# PYPY_GC_NURSERY: see docs/performance.md (CPython ignores it)
run: install
	PYPY_GC_NURSERY=$${PYPY_GC_NURSERY:-16MB} $(VENV)/bin/twistd -n --pidfile= golb --config $(CONFIG)

lint: install
	$(VENV)/bin/ruff check golb twisted $(wildcard bench)

check: install
	$(VENV)/bin/golb check $(CONFIG)

test: lint suite

suite: install
	$(PY) -m twisted.trial --random=0 -j$(JOBS) golb

test-pypy:
	$(MAKE) PYTHON=pypy3 suite

bench: install
	$(PY) bench/run.py

clean:
	rm -rf .venv .venv-pypy _trial_temp* build dist *.egg-info
