# golb: `make run` starts golb on config/golb.yaml (demo backends included),
# `make test` runs lint and the whole test suite. Both create .venv if missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.golb-installed
JOBS ?= 2
CONFIG ?= config/golb.yaml

.PHONY: install run test lint check bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) setup.py pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	$(PY) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/twistd -n --pidfile= golb --config $(CONFIG)

lint: install
	$(VENV)/bin/ruff check golb twisted $(wildcard bench)

check: install
	$(VENV)/bin/golb check $(CONFIG)

test: lint
	$(PY) -m twisted.trial --random=0 -j$(JOBS) golb

bench: install
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) _trial_temp* build dist *.egg-info
