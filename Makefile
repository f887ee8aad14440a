# simgap: set up, test, run the default study.
#   make setup   create .venv (torch/torchvision pair first, then the package with dev and
#                postgres extras) and install Debian's Fashion-MNIST and PostgreSQL server
#                when running as root with apt
#   make test    setup + pytest
#   make study   setup + the default quick study
#   make lint    ruff
# Re-running setup when nothing changed only checks stamp files (seconds).

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# Without a GPU: make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu (CPU-only wheels)
TORCH_INDEX ?=
FASHION_DIR ?= /usr/share/datasets/fashion-mnist
STUDY_CONFIG ?= studies/configs/quick.yaml
PYTEST_ARGS ?= -q

PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_STAMP := $(VENV)/.stamp-torch
INSTALL_STAMP := $(VENV)/.stamp-install

.PHONY: setup venv data postgres test study lint

setup: $(INSTALL_STAMP) data postgres

$(PY):
	$(PYTHON) -m venv $(VENV)

# The torch/torchvision pair goes in first: the CPU-only torch build has no working torchvision.
$(TORCH_STAMP): Makefile | $(PY)
	$(PIP) install $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	@echo "$(TORCH_SPEC) $(TORCH_INDEX)" > $@

# Re-installed only when pyproject.toml (or the torch pair) changes; the pair is pinned again
# so the resolver cannot swap it.
$(INSTALL_STAMP): pyproject.toml $(TORCH_STAMP)
	$(PIP) install -e '.[dev,postgres]' $(TORCH_SPEC)
	@touch $@

venv: $(INSTALL_STAMP)

# Fashion-MNIST from Debian's dataset-fashion-mnist (skipped when present, or when SIMGAP_DATA
# points elsewhere; without root or apt it only prints how to get it).
data:
	@if [ -f "$(FASHION_DIR)/train-images-idx3-ubyte.gz" ] || [ -n "$$SIMGAP_DATA" ]; then \
		exit 0; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian package dataset-fashion-mnist"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y --no-install-recommends dataset-fashion-mnist \
		|| { apt-get update && apt-get install -y --no-install-recommends dataset-fashion-mnist; } \
		|| echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST studies need --data-root"; \
	else \
		echo "note: Fashion-MNIST not found; run 'sudo apt-get install dataset-fashion-mnist' or set SIMGAP_DATA=PATH"; \
	fi

# Debian's PostgreSQL server, for the test of a study on PostgreSQL (.ci/run starts one on
# 127.0.0.1); skipped with a note without root or apt.
PG_BIN ?= $(lastword $(sort $(wildcard /usr/lib/postgresql/*/bin)))
postgres:
	@if [ -n "$(PG_BIN)" ] && [ -x "$(PG_BIN)/initdb" ]; then \
		exit 0; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian package postgresql"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y --no-install-recommends postgresql \
		|| { apt-get update && apt-get install -y --no-install-recommends postgresql; } \
		|| echo "warning: could not install postgresql; the PostgreSQL study test is skipped"; \
	else \
		echo "note: no PostgreSQL server; the PostgreSQL study test is skipped"; \
	fi

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

study: setup
	$(VENV)/bin/simgap study run $(STUDY_CONFIG)

lint: setup
	$(VENV)/bin/ruff check .
