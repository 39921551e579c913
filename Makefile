# The two README commands: `make demo` (the main job) and `make test`. Both create .venv with the pinned set.
# One venv holds one ENV (cpu, gpu, gpu-vllm): its stamp says which. `make test` / `make demo` reuse the ENV the venv
# was made with, and asking a venv for another ENV stops with an error instead of swapping torch under it.
PY ?= python3.11
VENV ?= .venv
INSTALLED_ENV := $(patsubst $(VENV)/.installed-%,%,$(firstword $(wildcard $(VENV)/.installed-*)))
ENV ?= $(or $(INSTALLED_ENV),cpu)
PIP = $(VENV)/bin/pip
STAMP = $(VENV)/.installed-$(ENV)

# What each ENV installs, in one pip resolution (so `pip check` speaks for the whole set). gpu-vllm: vLLM (pinned in
# constraints/gpu-vllm.txt) with the core set, without LLaMA-Factory and the web app (requirements-app.txt: gradio
# needs starlette < 1.0, vLLM 0.24 >= 1.0.1).
REQS_cpu = -r requirements.txt -r requirements-app.txt
REQS_gpu = -r requirements.txt -r requirements-app.txt
REQS_gpu-vllm = -r requirements.txt vllm
# sam2's CUDA extension (hole filling in mask post-processing) on the GPU ENVs; if it does not build (no nvcc),
# sam2 installs without it and the install says so (SAM2_BUILD_ALLOW_ERRORS=1; preflight's `sam2 extension` row).
SAM2_CUDA_cpu = 0
SAM2_CUDA_gpu = 1
SAM2_CUDA_gpu-vllm = 1

.PHONY: venv demo test clean check-env

check-env:
	@if [ -z "$(REQS_$(ENV))" ]; then echo "error: ENV=$(ENV): unknown (cpu, gpu, gpu-vllm)" >&2; exit 2; fi
	@for s in $(VENV)/.installed-*; do \
	  [ -e "$$s" ] || continue; [ "$$s" = "$(STAMP)" ] && continue; \
	  echo "error: $(VENV) holds ENV=$${s##*/.installed-}; ENV=$(ENV) would reinstall torch from constraints/$(ENV).txt" \
	       "over it. Use ENV=$${s##*/.installed-} (the default), another VENV=..., or 'make clean' first." >&2; exit 2; \
	done

$(STAMP): requirements.txt requirements-app.txt constraints/$(ENV).txt pyproject.toml | check-env
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(PIP) install -q -c constraints/$(ENV).txt torch torchvision setuptools wheel
	$(PIP) install -q -c constraints/$(ENV).txt $(REQS_$(ENV))
	SAM2_BUILD_CUDA=$(SAM2_CUDA_$(ENV)) SAM2_BUILD_ALLOW_ERRORS=1 $(PIP) install -q --no-cache-dir \
	    -c constraints/$(ENV).txt --no-build-isolation sam2==1.1.0
	@if [ "$(SAM2_CUDA_$(ENV))" = 1 ] && ! $(VENV)/bin/python -c "import torch; from sam2 import _C" 2>/dev/null; then \
	  echo "note: sam2's CUDA extension did not build (nvcc / CUDA_HOME missing?): SAM2 runs without hole filling" \
	       "(docs/reproduce.md, deviations)" >&2; fi
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PIP) check
	touch $(STAMP)

venv: check-env $(STAMP)

demo: check-env $(STAMP)
	$(VENV)/bin/veason-r1 demo --out demo_out

test: check-env $(STAMP)
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) demo_out
