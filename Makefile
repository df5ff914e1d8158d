# Set-up and main commands. `make train` and `make test` each create the virtual
# environment on first use (.venv, with torch pinned to the machine's build).
# TORCH_INDEX: where torch comes from, e.g. https://download.pytorch.org/whl/cpu for the CPU-only
# build on a Linux machine without a GPU (PyPI's default Linux wheel is the CUDA build).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
.DEFAULT_GOAL := install

.PHONY: install train test bench show clean FORCE

# The torch spec in use, rewritten only when TORCH or TORCH_INDEX changes: a new spec reinstalls.
$(VENV)/.torch-spec: FORCE
	@mkdir -p $(VENV)
	@echo '$(TORCH) $(TORCH_INDEX)' | cmp -s - $@ || echo '$(TORCH) $(TORCH_INDEX)' > $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch-spec
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)")
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

train: install
	$(BIN)/keepmix train

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/overhead.py

show: install
	$(BIN)/keepmix show

clean:
	rm -rf $(VENV) runs
