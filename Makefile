# midiforge: `make demo` and `make test` are all a fresh machine needs.
#
# The CPU/GPU choice is TORCH_REQ, and only TORCH_REQ:
#   CPU (default):  requirements/torch-cpu.txt  (torch 2.13.0+cpu, no CUDA packages)
#   GPU images:     make install TORCH_REQ=requirements/torch-gpu.txt

PYTHON    ?= python3.11
VENV      ?= .venv
TORCH_REQ ?= requirements/torch-cpu.txt
EXTRAS    ?= data,train,serve,dev
DEMO_OUT  ?= out/demo
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.midiforge-installed
PIP       := $(BIN)/python -m pip --disable-pip-version-check -q
# PyPI's Linux torch wheel is the CUDA build; the CPU build is on PyTorch's own index. Where
# that index cannot be reached (machines that see PyPI only), pip's find-links must hold it.
TORCH_INDEX = $(shell $(PYTHON) -c "import urllib.request as u; u.urlopen('https://download.pytorch.org/whl/cpu/', timeout=5)" 2>/dev/null && echo --extra-index-url https://download.pytorch.org/whl/cpu)

.PHONY: install sysdeps demo test lint bench clean image

install: $(STAMP)

# Re-run when the venv is missing, made by another Python, or older than the inputs.
$(STAMP): pyproject.toml requirements/*.txt Makefile
	@$(MAKE) --no-print-directory sysdeps
	@if ! $(BIN)/python -c 'import sys, pip; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then \
		echo "creating $(VENV) with $(PYTHON)"; rm -rf $(VENV); $(PYTHON) -m venv $(VENV); fi
	$(PIP) install "setuptools<81" wheel
	$(PIP) install -r $(TORCH_REQ) $(if $(filter requirements/torch-cpu.txt,$(TORCH_REQ)),$(TORCH_INDEX))
	$(PIP) install -c requirements/constraints.txt -e ".[$(EXTRAS)]"
	$(PIP) install --no-deps -r requirements/basic-pitch.txt
	@if [ "$(TORCH_REQ)" = "requirements/torch-cpu.txt" ] && \
		$(BIN)/python -m pip list 2>/dev/null | grep -i -E '^(nvidia-|triton)'; then \
		echo "error: a CPU install pulled CUDA packages (listed above)" >&2; exit 1; fi
	@touch $(STAMP)

# FluidSynth renders the demo corpus; Debian's libfluidsynth3 provides it. The transcriber
# recipes train on csound's GM bank and OPL-3 (besides pretty_midi's TimGM6mb) and
# evaluate on FluidR3_GM, a soundfont training never hears.
SYSDEP_FILES := /usr/share/sounds/sf2/FluidR3_GM.sf2:fluid-soundfont-gm \
	/usr/share/sounds/sf2/OPL-3_FM_128M.sf2:opl3-soundfont /usr/share/sounds/sf2/sf_GMbank.sf2:csound-soundfont
sysdeps:
	@missing=""; \
	if ! (ldconfig -p 2>/dev/null || /sbin/ldconfig -p) | grep -q 'libfluidsynth\.so\.3'; then missing="libfluidsynth3"; fi; \
	if ! $(PYTHON) -c 'import ensurepip' 2>/dev/null; then missing="$$missing $(notdir $(PYTHON))-venv"; fi; \
	for fp in $(SYSDEP_FILES); do [ -f "$${fp%%:*}" ] || missing="$$missing $${fp##*:}"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; \
		else echo "midiforge needs Debian packages:$$missing (or your OS's equivalents)" >&2; exit 1; fi; \
		echo "installing$$missing"; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# The main job on embedded defaults: render a small corpus, then build a dataset from its
# audio (transcribed, scored against the exact MIDI) and its MIDI (as tier 3). Offline:
# no separation unless SEPARATOR names Demucs weights you have (see README).
SEPARATOR ?= none
demo: $(STAMP)
	rm -rf $(DEMO_OUT)
	$(BIN)/midiforge corpus render --styles chorale,fiddle,folk,quartet --per-style 3 --seconds 15 \
		--out $(DEMO_OUT)/corpus --seed 0
	$(BIN)/midiforge dataset build --audio $(DEMO_OUT)/corpus/audio --midi $(DEMO_OUT)/corpus/midi \
		--style-from-folder --reference-midi $(DEMO_OUT)/corpus/midi --tier-midi 3 \
		--separator $(SEPARATOR) --out $(DEMO_OUT) --seed 0

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache

# The container image at the pinned Ray version (pyproject.toml is the one pin):
#   make image                 midiforge:$(RAY_VERSION)-cpu
#   make image VARIANT=gpu     midiforge:$(RAY_VERSION)-gpu (CUDA torch, onnxruntime-gpu)
RAY_VERSION := $(shell sed -n 's/.*"ray\[[^]]*\]==\([0-9.]*\)".*/\1/p' pyproject.toml | head -n 1)
VARIANT ?= cpu
image:
	docker build -f docker/Dockerfile --build-arg RAY_VERSION=$(RAY_VERSION) \
		--build-arg VARIANT=$(VARIANT) -t midiforge:$(RAY_VERSION)-$(VARIANT) .
