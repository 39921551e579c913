# The two README commands: `make demo` (the main job) and `make test`. Both create .venv with the pinned set.
PY ?= python3.11
VENV ?= .venv
ENV ?= cpu
PIP = $(VENV)/bin/pip
STAMP = $(VENV)/.installed-$(ENV)

.PHONY: venv demo test clean

$(STAMP): requirements.txt constraints/$(ENV).txt pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(PIP) install -q -c constraints/$(ENV).txt torch torchvision setuptools wheel
	$(PIP) install -q -c constraints/$(ENV).txt -r requirements.txt
	SAM2_BUILD_CUDA=0 $(PIP) install -q -c constraints/$(ENV).txt --no-build-isolation sam2==1.1.0
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PIP) check
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/veason-r1 demo --out demo_out

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) demo_out
