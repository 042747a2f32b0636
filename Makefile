# Two commands do everything: `make demo` (the main job) and `make test` (lint + the whole test suite).
# Both create or refresh ./.venv and install what they need; nothing is downloaded at run time.
# They install every extra (setup.cfg): the client (the base install), [server], [export], [images] and [plot];
# `make test` adds [test,ray]. The install is editable (-e), which every test but tests/packaging exercises.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
SHARED ?= ../shared

.PHONY: venv venv-test demo test lint proto bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e '.[server,export,images,plot]'
	touch $@

# Test extras: torch (a CPU wheel on local disk) and the authors' resnest package for checkpoint parity.
$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -e '.[server,export,images,plot,test,ray]'
	$(PIP) install torch==2.13.0
	$(PIP) install --no-deps resnest==0.0.5
	touch $@

# tritonclient pins protobuf < 7 while this project needs >= 7.35: the Open Inference Protocol tests run
# the unchanged tritonclient from a second environment of its own (RESNEST_TRITON_PYTHON points at it).
TRITON_VENV ?= .venv-triton
$(TRITON_VENV)/.installed:
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip --disable-pip-version-check -q install 'tritonclient[http,grpc]==2.73.0' numpy
	touch $@

venv: $(VENV)/.installed
venv-test: $(VENV)/.installed-test $(TRITON_VENV)/.installed

demo: venv
	$(PY) -m resnest_serving.cli demo --shared $(SHARED) $(DEMO_ARGS)

lint: venv-test
	$(VENV)/bin/ruff check .

test: venv-test
	$(VENV)/bin/ruff check .
	RESNEST_SHARED=$(SHARED) RESNEST_TRITON_PYTHON=$(abspath $(TRITON_VENV))/bin/python $(PY) -m pytest -q

# Regenerate the committed protobuf/gRPC stubs in protocol/ (a test fails when they are stale).
proto: venv-test
	$(PY) -m resnest_serving.protocol.generate

clean:
	rm -rf $(VENV) $(TRITON_VENV) .pytest_cache .ruff_cache *.egg-info
