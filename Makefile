# SynthASR developer entry points. Every target installs what it needs first (idempotent: a stamp
# file makes a repeated install take well under a second).
#
#   make test         fast unit tests + the smoke recipe end to end (what CI runs)
#   make medication   the medication recipe on its default config (recipes/medication/conf/default.yaml)
#   make bench        benchmarks -> bench/results/*.json
#   make test-all     everything, including tests marked slow

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.synthasr-installed
# Debian packages: TTS engine, offline general-domain text (fortunes, wordnet), packaged real noise, and
# real human speech for the evaluation-only test set (Asterisk prompts, pocketsphinx test data).
APT_PACKAGES := espeak-ng fortunes wordnet-base etw-data asterisk-core-sounds-en asterisk-core-sounds-en-wav pocketsphinx-testdata
# torch CPU build: on a machine without an NVIDIA driver install the pinned CPU wheel before anything
# else, so the `torch` range in setup.cfg never pulls a multi-GB CUDA build. GPU users keep theirs.
TORCH_CPU_PIN ?= torch==2.13.0
STAGE ?= 0
STOP_STAGE ?= 100
CONFIG ?= conf/default.yaml

ORACLE_STAMP := $(VENV)/.fast-rnnt-oracle

.PHONY: install system-deps oracle test test-all medication smoke bench bench-gpu clean-venv

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml Makefile
	@$(MAKE) --no-print-directory system-deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "[install] torch $$($(PY) -c 'import torch; print(torch.__version__)') already present"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
	  echo "[install] NVIDIA driver found: torch comes from setup.cfg's range"; \
	else \
	  echo "[install] no GPU: installing $(TORCH_CPU_PIN) (CPU build)"; \
	  $(PY) -m pip install -q "$(TORCH_CPU_PIN)"; \
	fi
	@$(PY) -m pip install -q -e ".[all]"
	@$(PY) -m pip install -q -e ".[ray]" || echo "[install] WARNING: no ray wheel for this platform; its executor test will skip" >&2
	@touch $@
	@echo "[install] done: $(VENV)"

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "[install] apt-get install$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "[install] ERROR: missing Debian packages:$$missing; run: sudo apt-get install$$missing" >&2; exit 1; \
	  fi; \
	fi

# fast_rnnt (built from its sdist, CPU only) is the independent oracle for tests/test_loss_fast_rnnt.py.
# Built once per venv; a failed build is reported and those tests skip, the rest still run.
oracle: install
	@if [ ! -f $(ORACLE_STAMP) ]; then \
	  if $(PY) -c "import fast_rnnt" 2>/dev/null || bash tools/build_fast_rnnt.sh $(PY) > $(VENV)/fast_rnnt-build.log 2>&1; then \
	    touch $(ORACLE_STAMP); echo "[oracle] fast_rnnt available"; \
	  else \
	    echo "[oracle] WARNING: fast_rnnt build failed (see $(VENV)/fast_rnnt-build.log); its comparison tests will skip" >&2; \
	  fi; \
	fi

test: install oracle
	$(PY) -m pytest -q -m "not slow" -p no:cacheprovider

test-all: install oracle
	$(PY) -m pytest -q -p no:cacheprovider

medication: install
	cd recipes/medication && PATH="$(CURDIR)/$(VENV)/bin:$$PATH" ./run.sh --config $(CONFIG) --stage $(STAGE) --stop-stage $(STOP_STAGE)

smoke:
	$(MAKE) medication CONFIG=conf/smoke.yaml

bench: install oracle
	@mkdir -p bench/results
	@for b in bench/*.py; do case $$b in bench/gpu_*) continue ;; esac; echo "== $$b"; $(PY) $$b || exit 1; done
	@echo "results in bench/results/ (GPU checks: make bench-gpu on a CUDA machine)"

bench-gpu: install
	$(PY) bench/gpu_loss_check.py --device cuda
	$(PY) bench/train_throughput.py --device cuda --amp bf16

clean-venv:
	rm -rf $(VENV)
