# `make demo` and `make test` each set up (or refresh) .venv and then run.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# On the development/CI machines a CPU torch wheel lies in /opt/wheels; the constraints keep pip on it
# (otherwise torchvision/timm pull a CUDA torch). Elsewhere any torch >= 2.4 is accepted.
CONSTRAINTS := $(if $(wildcard /opt/wheels/torch-2.13.0*),-c constraints.txt,)
FASHION_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo test lint data venv clean

$(VENV)/.stamp: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(CONSTRAINTS) -e '.[hub,dev,track]' 2>&1 \
		| { grep -v 'is ignored: it is neither a file nor a directory' || true; }
	touch $@

venv: $(VENV)/.stamp

# Offline Fashion-MNIST (Debian package) where we can install it; otherwise repflow downloads it.
data:
	@if [ ! -d $(FASHION_DIR) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		echo "note: could not apt-get dataset-fashion-mnist; repflow will try to download it"; \
	fi

demo: venv data
	HF_HUB_OFFLINE=1 $(VENV)/bin/repflow demo --out demo_out

test: venv data
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n 2 --timeout 600 tests
	$(VENV)/bin/ruff check src tests benchmarks

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) demo_out .pytest_cache
